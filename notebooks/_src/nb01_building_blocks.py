"""Generator for notebooks/01_building_blocks.ipynb (run: python notebooks/_src/nb01_building_blocks.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 01 - Building blocks: RMSNorm and rotary position embeddings

> **Run time**: about 13 s on the project's 2-core CPU. **Uses**: nothing from earlier lessons.

Every Doge layer leans on two small pieces that carry no attention and no expert logic at all, yet get
silently wrong surprisingly often: the **RMSNorm** that keeps activations at a sane scale, and the
**rotary position embedding (RoPE)** that tells attention where each token sits.

**What you will learn**

1. RMSNorm from its one-line formula, and why its statistic is computed in float32 even when the model runs
   in half precision (we break it on purpose to see why).
2. RoPE step by step: rotation frequencies, the *rotate-half* pairing, the cos/sin tables, and the property
   that makes it worth the trouble - attention scores depend only on the *distance* between two tokens.
3. How *dynamic NTK scaling* (the setting of the classic Doge configs) stretches the frequencies once a
   sequence runs past `max_position_embeddings`, with a plot.
4. Finally we import `doge_from_scratch.layers` and check that it computes exactly what we built here.
"""),
code("""
import math

import matplotlib.pyplot as plt
import torch

torch.manual_seed(0)
torch.set_num_threads(2)
torch.set_printoptions(precision=4, sci_mode=False)
%matplotlib inline
"""),
md("""
## 1. RMSNorm

A pre-norm transformer normalises the residual stream before every sub-layer. LayerNorm subtracts the mean
and divides by the standard deviation; RMSNorm drops the mean subtraction and only divides by the
root-mean-square of the vector. It is cheaper, has no bias, and works just as well in practice:

$$\\mathrm{RMSNorm}(x) = w \\odot \\frac{x}{\\sqrt{\\tfrac{1}{H}\\sum_i x_i^2 + \\varepsilon}}$$

`w` is a learned per-channel gain (starting at ones) and `eps` (1e-6 in Doge) keeps an all-zero vector from
dividing by zero.
"""),
code("""
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    \"\"\"x: [..., H] -> [..., H]; statistic in float32, cast back to x's dtype before the gain.\"\"\"
    x32 = x.to(torch.float32)
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * (x32 * inv_rms).to(x.dtype)


x = torch.randn(3, 8) * 5
w = torch.ones(8)
y = rms_norm(x, w)
print("rms before:", x.pow(2).mean(-1).sqrt())
print("rms after: ", y.pow(2).mean(-1).sqrt())
"""),
md("""
After the norm every row has root-mean-square 1 (up to `eps`), whatever scale it came in with. The gain
`w` then lets the model choose a different scale per channel.

### Why the statistic is computed in float32

Models are trained and served in bfloat16 or float16, so it is tempting to compute the norm in that dtype
too. Two things go wrong:

* **float16 overflows.** Its largest value is 65504, so any activation above ~256 has a square that
  becomes `inf`. Residual streams of big models do carry outliers of hundreds. The RMS turns into `inf`,
  `1/inf = 0`, and the whole vector is wiped out.
* **bfloat16 rounds.** It has only 8 bits of mantissa (about 2-3 decimal digits). The mean of squares and
  its reciprocal square root each pick up a rounding error, and that error multiplies *every* channel.

Up-casting to float32 for the statistic costs almost nothing (it is one reduction per vector) and fixes both.
"""),
code("""
# NBVAL_CHECK_OUTPUT
def rms_norm_same_dtype(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    \"\"\"The tempting version: everything in x's own dtype.\"\"\"
    return weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps))


g = torch.Generator().manual_seed(1)
big = torch.randn(4, 1024, generator=g) * 300  # a residual stream with large activations
w16 = torch.ones(1024, dtype=torch.float16)
naive = rms_norm_same_dtype(big.half(), w16)
careful = rms_norm(big.half(), w16)
print("float16, statistic in float16: all zeros?", bool((naive == 0).all()))
print("float16, statistic in float32: rms of output =",
      careful.float().pow(2).mean(-1).sqrt().round(decimals=2).tolist())
"""),
code("""
# bfloat16: measure the error of each variant against a float64 ground truth
h = torch.randn(256, 1024, generator=g, dtype=torch.float64) * 3
truth = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
w_bf16 = torch.ones(1024, dtype=torch.bfloat16)
for name, fn in [("statistic in bfloat16", rms_norm_same_dtype), ("statistic in float32 ", rms_norm)]:
    out = fn(h.to(torch.bfloat16), w_bf16).to(torch.float64)
    rel = ((out - truth).abs() / truth.abs().clamp_min(1e-3)).mean().item()
    print(f"{name}: mean relative error {rel:.2e}")
"""),
md("""
The float32 statistic leaves only the unavoidable error of storing the *result* in bfloat16; computing the
statistic in bfloat16 adds its own rounding on top. Note also where the cast back happens: the
reference casts the normalised vector to the model dtype and *then* multiplies by the gain. In float32 the
order is irrelevant, in bfloat16 it changes the last bit, so we follow the reference exactly.

## 2. Rotary position embeddings (RoPE)

Attention by itself is blind to order: shuffle the keys and the scores shuffle with them. RoPE injects
position by **rotating** queries and keys. Split a head's `d` channels into `d/2` pairs and treat each pair
as a point in the plane; the pair `i` of the token at position `m` is turned by the angle `m * f_i`, where
the frequencies fall off geometrically:

$$f_i = \\theta^{-2i/d}, \\qquad i = 0, \\dots, d/2 - 1,
\\qquad \\theta = 10\\,000 \\text{ for the classic Doge sizes.}$$

The first pairs spin fast (they resolve neighbouring tokens), the last ones barely move (they tell far
apart tokens apart without wrapping around).
"""),
code("""
# NBVAL_CHECK_OUTPUT
def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    \"\"\"f_i = theta^(-2i/d) for i < d/2, in float32. -> [d/2]\"\"\"
    exponents = torch.arange(0, head_dim, 2).to(torch.float32) / head_dim
    return 1.0 / theta ** exponents


inv_freq = inverse_frequencies(128, 10_000.0)
wavelengths = 2 * math.pi / inv_freq
print("pairs:", inv_freq.numel())
print("fastest pair: one turn every", round(wavelengths[0].item(), 2), "tokens")
print("slowest pair: one turn every", round(wavelengths[-1].item()), "tokens")
"""),
code("""
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
ax[0].semilogy(inv_freq.numpy(), ".")
ax[0].set(title="rotation frequency f_i (radians per token)", xlabel="pair index i", ylabel="f_i")
ax[1].semilogy(wavelengths.numpy(), ".")
ax[1].axhline(2048, color="gray", ls="--", label="2048 positions")
ax[1].set(title="wavelength 2*pi / f_i (tokens per full turn)", xlabel="pair index i", ylabel="tokens")
ax[1].legend()
plt.tight_layout()
"""),
md("""
### The rotate-half pairing

Which channels form a pair is a convention, and it must match the checkpoint. Llama (and Doge) pair channel
`j` with channel `j + d/2` - the first half of the head holds all the "x" coordinates, the second half all
the "y" coordinates. Rotating each `(x, y)` by an angle `a` gives `(x cos a - y sin a, y cos a + x sin a)`,
which in vector form is

$$x \\cdot \\cos + \\mathrm{rotate\\_half}(x) \\cdot \\sin, \\qquad \\mathrm{rotate\\_half}(x_1, x_2) = (-x_2, x_1),$$

with the cos/sin tables repeated twice along the head so that channel `j` and `j + d/2` see the same angle.
"""),
code("""
# NBVAL_CHECK_OUTPUT
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    \"\"\"(x1, x2) -> (-x2, x1) over the last dim: a quarter turn of every (x1_i, x2_i) pair.\"\"\"
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


print(rotate_half(torch.arange(1.0, 9.0)))
"""),
code("""
def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    \"\"\"positions: [T] -> cos, sin [T, d]; angles in float32 (positions up to thousands need the bits).\"\"\"
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    \"\"\"x: [..., T, d], cos/sin: [T, d] -> x rotated by its position.\"\"\"
    return x * cos + rotate_half(x) * sin


d = 16
cos, sin = rope_tables(torch.arange(6), inverse_frequencies(d, 10_000.0))
print("cos table", tuple(cos.shape), "- row = position, columns = the d/2 angles, twice")
"""),
md("""
Let us convince ourselves that this really is a rotation of each pair, by building the explicit 2x2
rotation matrices for one position and comparing. A rotation never changes length, so the norm of every
vector must survive too.
"""),
code("""
# NBVAL_CHECK_OUTPUT
pos = 5
v = torch.randn(d)
half = d // 2
angles = pos * inverse_frequencies(d, 10_000.0)
explicit = torch.empty(d)
for i in range(half):
    c, s = math.cos(angles[i]), math.sin(angles[i])
    explicit[i] = c * v[i] - s * v[i + half]
    explicit[i + half] = s * v[i] + c * v[i + half]

rotated = apply_rope(v[None], *rope_tables(torch.tensor([pos]), inverse_frequencies(d, 10_000.0)))[0]
print("same as explicit 2x2 rotations:", torch.allclose(rotated, explicit, atol=1e-6))
print("norm preserved:", torch.allclose(rotated.norm(), v.norm()))
"""),
md("""
### The property that makes RoPE worth it: only the distance matters

Rotate the query at position `m` by `m f_i` and the key at position `n` by `n f_i`. The dot product of two
rotated vectors depends only on the *difference* of the two angles, so the attention score depends on
`m - n` and not on where the pair sits in the sequence. The model learns "the word two to the left" once
and can use it everywhere.

Below: one query and one key, placed at four pairs of positions that are always 3 apart. The score does not
move (up to float32 rounding of the larger angles); change the gap and it does.
"""),
code("""
# scores are float32 dot products of random vectors: the digits may differ between CPUs, so they are not compared
d = 64
inv64 = inverse_frequencies(d, 10_000.0)
q, k = torch.randn(d), torch.randn(d)


def rope_score(q: torch.Tensor, k: torch.Tensor, m: int, n: int) -> float:
    cos, sin = rope_tables(torch.tensor([m, n]), inv64)
    rq = apply_rope(q[None], cos[:1], sin[:1])[0]
    rk = apply_rope(k[None], cos[1:], sin[1:])[0]
    return (rq @ rk).item()


for m, n in [(3, 0), (10, 7), (100, 97), (1500, 1497)]:
    print(f"query at {m:4d}, key at {n:4d} (gap 3): score {rope_score(q, k, m, n):8.3f}")
print(f"query at   10, key at    2 (gap 8): score {rope_score(q, k, 10, 2):8.3f}")
# In exact arithmetic the gap-3 scores are equal. In float32 each angle m * f_i is rounded by at most
# 1500 * 2**-24 rad (f_i's own error is shared by query and key), so the relative angle of every pair is off by
# at most twice that, and the score by at most that times |q| |k|; a factor 2 covers cos, sin and the dot product.
bound = 4 * 1500 * 2**-24 * (q.norm() * k.norm()).item()
assert all(abs(rope_score(q, k, m, m - 3) - rope_score(q, k, 3, 0)) < bound for m in (10, 100, 1500))
"""),
md("""
A related picture: if query and key are the *same* vector, how similar do they still look after being
moved `gap` tokens apart? Averaged over random vectors this is the mean of `cos(gap * f_i)` over the pairs.
It starts at 1 and decays (with ripples) as the gap grows: distant tokens have to earn their attention with
content rather than get it for free.
"""),
code("""
gaps = torch.arange(0, 2049)
similarity = torch.cos(gaps[:, None].float() * inverse_frequencies(128, 10_000.0)[None]).mean(-1)
plt.figure(figsize=(7, 3))
plt.plot(gaps.numpy(), similarity.numpy())
plt.xscale("symlog", linthresh=10)
plt.xlabel("gap between query and key (tokens)")
plt.ylabel("mean cos(gap * f_i)")
plt.title("RoPE: a vector compared with itself, moved by `gap` (head_dim 128)")
plt.tight_layout()
"""),
md("""
## 3. Dynamic NTK scaling: stretching RoPE past the trained length

The classic Doge configs ask for `rope_scaling = {type: dynamic, factor: 4}` with 2048 positions. Up to
2048 tokens this does **nothing** - it is plain RoPE. Beyond that, the slowest pairs would start to turn
further than they ever did in training, so the base `theta` is raised just enough to squeeze the longer
sequence back into the familiar range:

$$\\theta' = \\theta \\left( \\frac{\\text{factor} \\cdot L}{L_{max}} - (\\text{factor} - 1) \\right)^{d / (d - 2)},
\\qquad L = \\text{sequence length} > L_{max}.$$

("NTK-aware": changing the base instead of dividing all positions by a factor keeps the fast, local pairs
almost untouched and stretches mostly the slow ones.) The frequencies are recomputed from the longest
position actually in the batch, which is why it is called *dynamic*.
"""),
code("""
# NBVAL_CHECK_OUTPUT
def ntk_theta(theta: float, factor: float, seq_len: int, max_positions: int, head_dim: int) -> float:
    seq_len = max(seq_len, max_positions)  # no change at or below the trained length
    return theta * ((factor * seq_len / max_positions) - (factor - 1)) ** (head_dim / (head_dim - 2))


for L in (1024, 2048, 4096, 8192, 16384):
    print(f"sequence of {L:5d} tokens -> theta = {ntk_theta(10_000.0, 4.0, L, 2048, 128):12.1f}")
"""),
code("""
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for L in (2048, 4096, 8192, 16384):
    f = inverse_frequencies(128, ntk_theta(10_000.0, 4.0, L, 2048, 128))
    ax[0].semilogy(f.numpy(), label=f"L = {L}")
    ax[1].plot((f / inverse_frequencies(128, 10_000.0)).numpy(), label=f"L = {L}")
ax[0].set(title="frequencies f_i with dynamic NTK", xlabel="pair index i", ylabel="f_i")
ax[1].set(title="ratio to plain RoPE", xlabel="pair index i", ylabel="f_i / f_i(plain)")
ax[0].legend()
ax[1].legend()
plt.tight_layout()
"""),
md("""
The first pairs keep (almost) their original speed; the slow ones are slowed further the longer the
sequence. At `L = 2048` the ratio is exactly 1.

Let us check the whole pipeline (frequencies, dynamic base, tables) against transformers' own Doge rotary
module, below and above the trained length. transformers computes the new base in float32 tensors while we
use a Python float, so above 2048 positions we allow a tiny tolerance.
"""),
code("""
import transformers
from transformers.models.doge.modeling_doge import DogeRotaryEmbedding as ReferenceRotary

# (transformers' dynamic rule reads the trained length from max_position_embeddings)
classic_rope = {"rope_type": "dynamic", "rope_theta": 10_000.0, "factor": 4.0}
ref_cfg = transformers.DogeConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=2048,
                                  rope_parameters=classic_rope)
reference_rotary = ReferenceRotary(ref_cfg)
dummy = torch.zeros(1, dtype=torch.float32)
for L in (1000, 3000):
    positions = torch.arange(L)
    ref_cos, ref_sin = reference_rotary(dummy, positions[None])
    ours = rope_tables(positions, inverse_frequencies(128, ntk_theta(10_000.0, 4.0, L, 2048, 128)))
    diff = max((ref_cos[0] - ours[0]).abs().max().item(), (ref_sin[0] - ours[1]).abs().max().item())
    print(f"L = {L}: largest difference to transformers' tables {diff:.1e}")
    assert diff < (1e-6 if L <= 2048 else 1e-3)
"""),
md("""
## 4. Check against the package

`doge_from_scratch.layers` holds the finished versions of everything above (`RMSNorm`, `RotaryEmbedding`,
`rotate_half`, `apply_rotary`, `rope_inverse_frequencies`, `dynamic_ntk_theta`). They must give *exactly*
the numbers we built by hand, in float32 and in bfloat16.
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch import DogeConfig
from doge_from_scratch import layers

# RMSNorm, with a non-trivial gain, in float32 and bfloat16
norm = layers.RMSNorm(64, eps=1e-6)
with torch.no_grad():
    norm.weight.copy_(torch.randn(64))
for dtype in (torch.float32, torch.bfloat16):
    xs = torch.randn(2, 5, 64).to(dtype)
    assert torch.equal(norm.to(dtype)(xs), rms_norm(xs, norm.weight.to(dtype))), dtype

# frequencies, dynamic base, rotate-half
assert torch.equal(layers.rope_inverse_frequencies(128, 10_000.0), inverse_frequencies(128, 10_000.0))
for L in (100, 2048, 5000):
    assert layers.dynamic_ntk_theta(10_000.0, 4.0, L, 2048, 128) == ntk_theta(10_000.0, 4.0, L, 2048, 128)
xs = torch.randn(2, 3, 7, 16)
assert torch.equal(layers.rotate_half(xs), rotate_half(xs))

# the rotary module of a classic-size config, below and above 2048 positions, and applying it
config = DogeConfig.from_preset("Doge-20M")
rotary = layers.RotaryEmbedding(config)
for L in (300, 3000):
    positions = torch.arange(L)
    pkg_cos, pkg_sin = rotary(dummy, positions[None])
    my_cos, my_sin = rope_tables(positions, inverse_frequencies(128, ntk_theta(10_000.0, 4.0, L, 2048, 128)))
    assert torch.equal(pkg_cos[0], my_cos) and torch.equal(pkg_sin[0], my_sin), L
heads = torch.randn(1, 2, 300, 128)
cos300, sin300 = rotary(dummy, torch.arange(300)[None])
assert torch.equal(layers.apply_rotary(heads, cos300, sin300), apply_rope(heads, cos300[0], sin300[0]))
print("doge_from_scratch.layers matches the notebook exactly")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/01_building_blocks.ipynb`.

1. RMSNorm. Predict first: with `eps` left out, which inputs go wrong - large ones or tiny ones? The check's
   second case tells you.
2. `rotate_half`. Change one line of your solution to pair even and odd entries instead of the two halves and
   predict whether the check still passes (it must not: Llama-style RoPE pairs halves).
3. The dynamic NTK base. Predict `ntk_theta(1e4, 4.0, 100, 2048, 128)` before you run it.
"""),
code("""
from doge_from_scratch.exercises import check_ntk_theta, check_rms_norm, check_rotate_half


def rms_norm(x, weight, eps=1e-6):
    \"\"\"rms_norm(x, weight, eps) -> [..., H] against layers.RMSNorm (float32, judged against float64).\"\"\"
    raise NotImplementedError  # your code here


check_rms_norm(rms_norm)
"""),
code("""
def rotate_half(x):
    \"\"\"rotate_half(x) -> [..., d]: (x1, x2) -> (-x2, x1) over halves of the last axis (layers.rotate_half).\"\"\"
    raise NotImplementedError  # your code here


check_rotate_half(rotate_half)
"""),
code("""
def ntk_theta(theta, factor, seq_len, max_positions, head_dim):
    \"\"\"ntk_theta(theta, factor, seq_len, max_positions, head_dim) -> float (layers.dynamic_ntk_theta): unchanged
    up to max_positions, larger past it.\"\"\"
    raise NotImplementedError  # your code here


check_ntk_theta(ntk_theta)
"""),
md("""
## Further reading

- Su et al., *RoFormer: Enhanced Transformer with Rotary Position Embedding*,
  [arXiv:2104.09864](https://arxiv.org/abs/2104.09864)
- NTK-aware scaling: bloc97's 2023 r/LocalLLaMA post, and Peng et al., *YaRN: Efficient Context Window
  Extension of Large Language Models*, [arXiv:2309.00071](https://arxiv.org/abs/2309.00071) (which reviews it)
- Zhang and Sennrich, *Root Mean Square Layer Normalization*, NeurIPS 2019
- Shi et al., *Wonderful Matrices* (the Doge paper), [arXiv:2412.11834](https://arxiv.org/abs/2412.11834)
- Checked against: transformers `models/doge/modeling_doge.py` (`DogeRMSNorm`, `DogeRotaryEmbedding`) and
  `modeling_rope_utils` (dynamic NTK); our `doge_from_scratch.layers`
"""),
]

if __name__ == "__main__":
    print(write_notebook("01_building_blocks.ipynb", cells))
