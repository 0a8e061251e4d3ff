"""Generator for notebooks/02_dynamic_mask_attention.ipynb.

Run: python notebooks/_src/nb02_dynamic_mask_attention.py
"""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 02 - Dynamic Mask Attention

> **Run time**: about 16 s on the project's 2-core CPU. **Uses**: the trained tiny Doge committed in
> `data/tiny-doge` (lesson 06's model; no training here).

Doge's attention is ordinary causal self-attention with one twist: every key gets a learned,
content-dependent **bias** that is added to all scores pointing at it, and once a sequence is longer than a
`keep_window_size`, each query keeps only the keys with the largest bias and ignores the rest. The paper
calls this *Dynamic Mask Attention* (DMA).

**What you will learn**

1. Plain causal attention in a few lines, then grouped-query attention (GQA), where several query heads
   share one key/value head.
2. The dynamic bias `exp(A * softplus(dt_proj(v)))`: where it comes from, why it is harmless at
   initialisation, and what it looks like on a real sentence (heatmaps).
3. The final mask: causal positions replaced by the dtype minimum, then the keep-window top-k - drawn for a
   few windows (and, in a live kernel, with a slider to watch the mask thin out as the window shrinks).
4. The *bias inside q.k* trick: because the bias depends only on the key, it can be folded into `q` and `k`, so no
   `T x S` mask is ever built - and the numbers stay the same.
5. Parity: our hand-built layer against transformers' `DogeAttention` (eager) and against
   `doge_from_scratch.attention`.
"""),
code("""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.layers import RotaryEmbedding, apply_rotary  # built in lesson 01
from doge_from_scratch.pretrain import TINY_DOGE_DIR
from doge_from_scratch.tokenizer import load_tokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
torch.set_printoptions(precision=3, sci_mode=False)
%matplotlib inline
"""),
md("""
## A real input

We tokenize a real sentence with the project's tokenizer and run it through a **trained** tiny Doge: the
lesson-06 model, shipped in `data/tiny-doge` (4 layers, hidden size 192, 3 query heads sharing 1 key/value
head of size 64; `python -m doge_from_scratch.pretrain --out data/tiny-doge --save-dtype bfloat16` remakes it).
The shapes are smaller than the published models', every formula is the same. We take the input of the
attention layer whose learned `A` moved furthest from its initial 0, caught with a forward hook, and from
there on rebuild that layer from its weights.
"""),
code("""
# NBVAL_CHECK_OUTPUT
tokenizer = load_tokenizer()
text = "The capital of Sweden is Stockholm. Many people visit Vienna, the capital of Austria."
input_ids = torch.tensor([tokenizer(text).input_ids])
labels = [t.replace("\\u0120", " ").strip() for t in tokenizer.convert_ids_to_tokens(input_ids[0])]
T = input_ids.shape[1]

model = DogeForCausalLM.from_pretrained(TINY_DOGE_DIR).eval()  # stored in bfloat16, loaded as float32
config = model.config
layer_index = max(range(config.num_hidden_layers), key=lambda i: model.model.layers[i].self_attn.A.abs().max())
layer = model.model.layers[layer_index].self_attn
caught = {}
hook = layer.register_forward_pre_hook(lambda module, args: caught.update(x=args[0]))
with torch.no_grad():
    model(input_ids)
hook.remove()
x = caught["x"]  # [B, T, H]: the residual stream after this layer's input RMSNorm
W = {name: p.detach() for name, p in layer.named_parameters()}  # plain tensors from here on

n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
d = config.hidden_size // n_heads
print(f"{T} tokens: {labels}")
print(f"layer {layer_index}: x {tuple(x.shape)}, heads {n_heads}, kv heads {n_kv}, head_dim {d}")
"""),
md("""
## 1. Plain causal attention

Each token asks a question (query `q`), advertises what it holds (key `k`) and what it would hand over
(value `v`). Scores are `q . k / sqrt(d)`; the `sqrt(d)` keeps their spread independent of the head size,
so the softmax neither saturates nor flattens as `d` changes. A token may only look at itself and the past,
so future positions get `-inf` before the softmax. We check our version against PyTorch's fused kernel.
"""),
code("""
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    \"\"\"q, k, v: [B, h, T, d] -> [B, h, T, d].\"\"\"
    t = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


qkv = torch.randn(3, 1, 2, T, d).unbind(0)
print("matches F.scaled_dot_product_attention:",
      torch.allclose(causal_attention(*qkv), F.scaled_dot_product_attention(*qkv, is_causal=True), atol=1e-6))
"""),
md("""
## 2. Grouped-query attention, q/k norms and RoPE

During generation every past key and value has to be kept in memory (the KV cache). GQA shrinks that cache
by letting a **group** of query heads share one key/value head: here 3 query heads share 1 KV head, so the
cache is a third of the size. Before the scores are computed, each KV head is simply repeated for the query
heads of its group.

Doge (the transformers-native generation) also RMS-normalises each query and key head over its 64 channels
(`q_norm`, `k_norm`) - that keeps the dot products in a predictable range no matter how large the
projections grow in training - and then applies the rotary embedding from lesson 01.
"""),
code("""
def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    \"\"\"RMSNorm of lesson 01 over the last dimension.\"\"\"
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def repeat_kv(t: torch.Tensor, groups: int) -> torch.Tensor:
    \"\"\"[B, n_kv, ...] -> [B, n_kv * groups, ...]: KV head j serves query heads j*groups ... j*groups+groups-1.\"\"\"
    return t.repeat_interleave(groups, dim=1)


rotary = RotaryEmbedding(config)
cos, sin = rotary(x, torch.arange(T)[None])  # [B, T, d] each (lesson 01)


def project(x: torch.Tensor):
    \"\"\"x: [B, T, H] -> q [B, n_h, T, d], k and v [B, n_kv, T, d].\"\"\"
    b, t, _ = x.shape
    q = rms(F.linear(x, W["q_proj.weight"]).view(b, t, n_heads, d), W["q_norm.weight"]).transpose(1, 2)
    k = rms(F.linear(x, W["k_proj.weight"]).view(b, t, n_kv, d), W["k_norm.weight"]).transpose(1, 2)
    v = F.linear(x, W["v_proj.weight"]).view(b, t, n_kv, d).transpose(1, 2)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


q, k, v = project(x)
groups = n_heads // n_kv
print("q", tuple(q.shape), " k", tuple(k.shape), " v", tuple(v.shape), " group size", groups)
"""),
md("""
## 3. The dynamic bias

Now the Doge part. For every key position `s`, the values of all KV heads at that position are concatenated
(`n_kv * d = 64` numbers here) and projected by `dt_proj` to **one number per KV head**. Then

$$b_s = \\exp\\big(A \\cdot \\mathrm{softplus}(dt_s)\\big).$$

* `softplus` turns `dt` into a positive "step size" (the name comes from state-space models, where `dt` is
  the time step of a discretised system);
* `A` (one learned scalar per KV head) sets the direction: with `A < 0` the bias lies in `(0, 1]` and keys
  with large `dt` are pushed *down*; with `A > 0` it is `>= 1` and they are pushed *up*;
* `A` starts at **zero**, so `b = 1` for every key. A constant added to a whole row of scores does not
  change a softmax, so a freshly initialised Doge is exactly plain attention and learns to use the bias
  only if it helps.

Because `b` depends only on the key, it says how much *any* query should care about this token - a learned
"is this token worth remembering" score.
"""),
code("""
def dynamic_bias(v: torch.Tensor) -> torch.Tensor:
    \"\"\"v: [B, n_kv, S, d] -> b [B, n_kv, S].\"\"\"
    b, _, s, _ = v.shape
    dt = F.linear(v.transpose(1, 2).reshape(b, s, -1), W["dt_proj.weight"])  # [B, S, n_kv]
    return torch.exp(W["A"] * F.softplus(dt)).transpose(1, 2)


bias = dynamic_bias(v)
print("learned A per KV head:", [f"{a:+.5f}" for a in W["A"].tolist()])
print("bias per KV head: min", [f"{b:.5f}" for b in bias.amin(-1)[0].tolist()],
      " max", [f"{b:.5f}" for b in bias.amax(-1)[0].tolist()])

scores = torch.randn(5)
print("softmax unchanged by a constant shift:",
      torch.allclose(torch.softmax(scores, 0), torch.softmax(scores + 1.0, 0)))
"""),
code("""
fig, ax = plt.subplots(figsize=(10, 2.2))
im = ax.imshow(bias[0].numpy(), aspect="auto", cmap="viridis")
ax.set_xticks(range(T), labels, rotation=60, ha="right")
ax.set_yticks(range(n_kv), [f"KV head {h} (A={W['A'][h]:+.1f})" for h in range(n_kv)])
ax.set_title(f"learned dynamic bias b_s per key, layer {layer_index}: one row per KV head")
fig.colorbar(im, ax=ax, fraction=0.03)
plt.show()
"""),
md("""
## 4. From bias to mask, and the keep window

The bias is turned into an additive mask of shape `[B, n_kv, T, S]`: every query row gets the same
per-key bias, and every position the causal rule forbids is **replaced** by the most negative number of the
dtype (`finfo.min`, finite rather than `-inf` so that a row with nothing visible still gives a defined,
uniform softmax instead of NaN).

Then the *dynamic* part of DMA: if there are more keys than `keep_window_size` (2048 in the released models),
each row keeps only its `keep_window_size` largest entries and sets the others to the minimum too. Forbidden
positions already hold the minimum, so the survivors are the visible keys with the largest bias. However long
the context grows, each token then attends to at most `keep_window_size` keys - a bounded working memory,
much like the fixed-size state of a state-space model.
"""),
code("""
NEG = torch.finfo(torch.float32).min


def dynamic_mask(bias: torch.Tensor, keep_window_size: int) -> torch.Tensor:
    \"\"\"bias [B, n_kv, S] -> additive mask [B, n_kv, T, S] (T = S, no cache here).\"\"\"
    s = bias.shape[-1]
    allowed = torch.ones(s, s, dtype=torch.bool).tril()
    mask = bias[:, :, None, :].expand(-1, -1, s, -1).masked_fill(~allowed, NEG)
    if s > keep_window_size:
        keep = torch.topk(mask, keep_window_size, dim=-1).indices
        kept = torch.zeros_like(mask, dtype=torch.bool).scatter(-1, keep, True)
        mask = mask.masked_fill(~kept, NEG)
    return mask


def plot_dynamic_mask(keep_window_size: int = 8) -> None:
    \"\"\"Heatmaps of the final mask for both KV heads; grey = masked (finfo.min).\"\"\"
    mask = dynamic_mask(bias, keep_window_size)[0]
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightgrey")
    fig, axes = plt.subplots(1, n_kv, figsize=(6 * n_kv, 5), squeeze=False)
    for h, ax in enumerate(axes[0]):
        shown = np.where(mask[h].numpy() == NEG, np.nan, mask[h].numpy())  # NaN -> drawn grey
        im = ax.imshow(shown, cmap=cmap)
        ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(T), labels, fontsize=7)
        ax.set_title(f"KV head {h} (A={W['A'][h]:+.1f}): keep_window_size={keep_window_size}")
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        fig.colorbar(im, ax=ax, fraction=0.045)
    plt.tight_layout()
    plt.show()


plot_dynamic_mask(keep_window_size=2048)  # the released default: longer than our sentence, no top-k
plot_dynamic_mask(keep_window_size=6)     # a tiny window: each query keeps its 6 highest-bias keys
"""),
md("""
Read the printout and the colorbars first: the trained model's `A` stayed within about a hundredth of its
initial 0, so every key's bias is within 0.012 of 1. That is what this training run taught it: its rows are 256
tokens, far shorter than the 2048-key window, so the top-k never fired during training, and differences of a
hundredth barely move a softmax whose scores spread over several units (section 5 measures by how much).
`A` does grow with training (an 800-step run of the same recipe left it near 0.003, this 1400-step one near
0.01), but whether it would matter on longer rows is not something this small run can tell.

The keep window still works on it, because top-k only needs an *order*: with a window of 6, rows further down
keep six keys each, and since the bias is the same for every query row, they agree on *which* six - the keys
with the largest bias (with `A > 0` the largest `dt`, with `A < 0` the smallest).

Below, one KV head's mask for a few windows side by side: the rows thin out from the full causal triangle to a
few shared columns.
"""),
code("""
windows = (T, 8, 4, 2)
cmap = plt.get_cmap("viridis").copy()
cmap.set_bad("lightgrey")
fig, axes = plt.subplots(1, len(windows), figsize=(4 * len(windows), 4))
for ax, window in zip(axes, windows):
    m = dynamic_mask(bias, window)[0, 0].numpy()
    im = ax.imshow(np.where(m == NEG, np.nan, m), cmap=cmap)
    ax.set_title(f"KV head 0, keep_window_size={window}\\n(each row keeps <= {window} keys)", fontsize=9)
    ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(T), labels, fontsize=6)
fig.colorbar(im, ax=axes, fraction=0.02, label="bias b_s (grey: masked)")
plt.show()


def keep_window_slider():
    \"\"\"In a live kernel: a slider over keep_window_size that redraws plot_dynamic_mask.\"\"\"
    from ipywidgets import IntSlider, interact

    interact(plot_dynamic_mask, keep_window_size=IntSlider(value=8, min=1, max=T, step=1, description="keep window"))

# keep_window_slider()  # a live kernel only: a saved page would show the widget's repr, not the slider
"""),
md("""
## 5. Attention with the dynamic mask

The mask is built once per KV head and then repeated over the query heads of each group, exactly like the
keys and values. Everything else is the attention of step 1, with the softmax taken in float32.
"""),
code("""
scale = d ** -0.5


def dma_attention(x: torch.Tensor, keep_window_size: int = 2048) -> torch.Tensor:
    \"\"\"The whole layer, materialised: x [B, T, H] -> [B, T, H].\"\"\"
    q, k, v = project(x)
    mask = repeat_kv(dynamic_mask(dynamic_bias(v), keep_window_size), groups)  # [B, n_h, T, S]
    scores = q @ repeat_kv(k, groups).transpose(-1, -2) * scale + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = probs @ repeat_kv(v, groups)  # [B, n_h, T, d]
    return F.linear(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1), W["o_proj.weight"])


def attention_probs(keep_window_size: int) -> torch.Tensor:
    q, k, v = project(x)
    mask = repeat_kv(dynamic_mask(dynamic_bias(v), keep_window_size), groups)
    return torch.softmax(q @ repeat_kv(k, groups).transpose(-1, -2) * scale + mask, dim=-1)


fig, axes = plt.subplots(1, 3, figsize=(13, 4))
plain = torch.softmax((q @ repeat_kv(k, groups).transpose(-1, -2) * scale).masked_fill(
    torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
for ax, (title, p) in zip(axes, [("plain causal", plain), ("DMA, window 2048", attention_probs(2048)),
                                 ("DMA, window 6", attention_probs(6))]):
    im = ax.imshow(p[0, 0].detach().numpy(), cmap="magma", vmin=0, vmax=1)
    ax.set_title(f"query head 0: {title}", fontsize=10)
    ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(T), labels, fontsize=6)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
fig.colorbar(im, ax=axes, fraction=0.02, label="attention probability")
plt.show()
with torch.no_grad():
    gap = (attention_probs(2048) - plain).abs().max().item()
    kept6 = (attention_probs(6)[0, 0] > 0).sum(-1)
print(f"largest change the learned bias makes to any probability (window 2048): {gap:.1e}")
print("keys each query row attends to with window 6:", kept6.tolist())
"""),
md("""
How to read these: each panel is query head 0's attention, one row per query token, one column per key, the
colour the probability (each row sums to 1; black is 0). The left and middle panels look alike, and the first
printed number says by how much they differ at most: the learned bias is that flat. The right panel is the
keep window at work: from the seventh row on, each row spreads its probability over exactly six keys (the
second printout counts them), the same columns in every late row, and everything else in the row is exactly
zero rather than small.
"""),
md("""
## 6. The bias inside q.k: no mask tensor at all

Materialising `[B, heads, T, S]` floats costs memory quadratic in the length and rules out the fast fused
attention kernels, which accept at most a causal flag. But as long as there are no more keys than the window
(no top-k), the mask is "causal + a term that depends only on the key", and a per-key term can ride
*inside* the dot product. Append a 1 to every query and `b_s * sqrt(d)` to every key:

$$\\frac{[q, 1] \\cdot [k_s, b_s \\sqrt{d}]}{\\sqrt{d}} = \\frac{q \\cdot k_s}{\\sqrt{d}} + b_s.$$

The head grows from 64 to 65 channels, the causal rule becomes the kernel's `is_causal=True`, GQA is the
kernel's `enable_gqa=True`, and the output is the same.
"""),
code("""
# NBVAL_CHECK_OUTPUT
def dma_attention_fused(x: torch.Tensor) -> torch.Tensor:
    q, k, v = project(x)
    b = dynamic_bias(v)  # [B, n_kv, S]
    q_ext = torch.cat((q, torch.ones_like(q[..., :1])), dim=-1)
    k_ext = torch.cat((k, (b * math.sqrt(d)).unsqueeze(-1)), dim=-1)
    out = F.scaled_dot_product_attention(q_ext, k_ext, v, is_causal=True, scale=scale, enable_gqa=True)
    return F.linear(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1), W["o_proj.weight"])


with torch.no_grad():
    materialised, fused = dma_attention(x), dma_attention_fused(x)
print("fused == materialised:", torch.allclose(fused, materialised, atol=1e-5))
print(f"floats in the materialised mask: {n_heads * T * T}; extra floats on the fused path: {n_kv * T}")
"""),
md("""
Past the window the bias-inside-q.k trick no longer applies (which keys survive differs per query row), so a long
prefill falls back to the materialised mask; single-token decoding has only one row and stays cheap either way.

## 7. Parity with transformers' `DogeAttention`

The executable reference is the `DogeAttention` shipped in transformers 5.23. We load our weights into it
(the parameter names are the same), run it eagerly with a standard additive causal mask, and compare -
once with the default window and once with a window of 6 to exercise the top-k.
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch.testing import copy_into_reference, float32_error_check, float64_copy, reference_model

reference = reference_model(config, attn_implementation="eager")
copy_into_reference(model, reference)
ref_layer = reference.model.layers[layer_index].self_attn
causal4d = torch.zeros(1, 1, T, T).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), NEG)
# Two float32 computations of the same formula differ by round-off; the fair judge is the float64 result:
# ours may be at most 4x further from it than transformers is (plus a few ulps), the rule the tests use.
exact_layer = float64_copy(layer)

with torch.no_grad():
    for window in (2048, 6):
        ref_layer.keep_window_size = exact_layer.keep_window_size = window
        ref_out = ref_layer(hidden_states=x, position_embeddings=(cos, sin), attention_mask=causal4d)[0]
        exact = exact_layer(x.double(), (cos.double(), sin.double()), plain_causal=True)
        check = float32_error_check(f"window {window}", dma_attention(x, window), ref_out, exact)
        print(f"keep_window_size={window:4d}: as close to float64 as transformers is: {check['ok']}")
        assert check["ok"], check
"""),
md("""
## 8. Check against the package

`doge_from_scratch.attention` holds the finished layer: the same projections, the bias, the mask (with
padding and KV-cache offsets handled), the bias inside q.k (`attend_bias_in_qk`) used automatically when it
is valid, and the materialised path otherwise. On our sentence it must agree with everything built above.
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch import attention

with torch.no_grad():
    q, k, v = project(x)
    pkg_q, pkg_k, pkg_v = layer.project(x, cos, sin)
    assert torch.equal(pkg_q, q) and torch.equal(pkg_k, k) and torch.equal(pkg_v, v)
    assert torch.equal(attention.dynamic_bias(v, layer.dt_proj, layer.A), dynamic_bias(v))
    allowed = attention.causal_padding_mask(None, 1, T, T, x.device)
    for window in (2048, 6, 1):
        assert torch.equal(attention.dynamic_mask(dynamic_bias(v), allowed, window, torch.float32),
                           dynamic_mask(dynamic_bias(v), window)), window
    assert torch.equal(attention.repeat_kv(k, groups), repeat_kv(k, groups))

    for backend in ("auto", "materialised"):
        layer.backend = backend
        for window in (2048, 6):
            layer.keep_window_size = window
            out = layer(x, (cos, sin), plain_causal=True)
            assert torch.allclose(out, dma_attention(x, window), atol=1e-6), (backend, window)
    layer.backend, layer.keep_window_size = "auto", config.keep_window_size
print("doge_from_scratch.attention matches the notebook (fused and materialised, with and without top-k)")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/02_dynamic_mask_attention.ipynb`.

1. Plain causal attention. Predict what changes in the output if the softmax runs over the queries (dim=-2)
   instead of the keys.
2. The dynamic bias from the values (section 3): mind the order in which the KV heads of one key are
   concatenated.
3. The keep-window mask (section 4). Does it matter whether the forbidden positions are filled before or after
   the top-k? Predict, then let the check's second case answer.
"""),
code("""
from doge_from_scratch.exercises import check_causal_attention, check_dynamic_bias, check_dynamic_mask


def causal_attention(q, k, v):
    \"\"\"causal_attention(q, k, v) -> [B, H, T, d]: softmax(q k^T / sqrt(d)) v, each query seeing itself and the
    keys before it. q, k, v: [B, H, T, d] (as many key heads as query heads).\"\"\"
    raise NotImplementedError  # your code here


check_causal_attention(causal_attention)
"""),
code("""
def dynamic_bias(v, dt_weight, A):
    \"\"\"dynamic_bias(v, dt_weight, A) -> [B, n_kv, S]: exp(A * softplus(dt)) with dt = the values of all KV heads
    of a key, concatenated head after head, times dt_weight^T. v: [B, n_kv, S, d]; dt_weight: [n_kv, n_kv *
    d]; A: [n_kv] (attention.dynamic_bias).\"\"\"
    raise NotImplementedError  # your code here


check_dynamic_bias(dynamic_bias)
"""),
code("""
def dynamic_mask(bias, allowed, keep_window_size):
    \"\"\"dynamic_mask(bias, allowed, keep_window_size) -> [B, h, T, S] in float32: the bias on every allowed key,
    float32's minimum on every forbidden one, then only the keep_window_size largest entries of each row kept
    (the rest set to the minimum) when S > keep_window_size. bias: [B, h, S]; allowed: bool [B, 1, T, S]
    (attention.dynamic_mask).\"\"\"
    raise NotImplementedError  # your code here


check_dynamic_mask(dynamic_mask)
"""),
md("""
## Further reading

- Shi et al., *Wonderful Matrices* (Dynamic Mask Attention),
  [arXiv:2412.11834](https://arxiv.org/abs/2412.11834)
- Vaswani et al., *Attention Is All You Need*, [arXiv:1706.03762](https://arxiv.org/abs/1706.03762)
- Ainslie et al., *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints*,
  [arXiv:2305.13245](https://arxiv.org/abs/2305.13245)
- Checked against: transformers `models/doge/modeling_doge.py` (`DogeAttention`, `flex_attention_forward` /
  eager path); our `doge_from_scratch.attention`
"""),
]

if __name__ == "__main__":
    print(write_notebook("02_dynamic_mask_attention.ipynb", cells))
