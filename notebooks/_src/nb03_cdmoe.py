"""Generator for notebooks/03_cdmoe.ipynb (run: python notebooks/_src/nb03_cdmoe.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 03 - Cross Domain Mixture of Experts (CDMoE)

> **Run time**: about 13 s on the project's 2-core CPU. **Uses**: nothing from earlier lessons.

A Doge layer can use a dense MLP or a **CDMoE** after its attention. CDMoE keeps the dense MLP as a *shared
expert* that every token uses, and adds a large pool of tiny experts of which each token picks a handful.
Its headline promise: an MoE model can start from a trained dense checkpoint and *inherit* its MLP.

**What you will learn**

1. The dense SiLU-gated MLP, and how each of its hidden units is already a tiny rank-one "expert".
2. Product-key retrieval: choosing the best `k` out of `E` experts while the router outputs only
   `2 * sqrt(E)` scores.
3. The full CDMoE forward pass in plain PyTorch.
4. Growing an MoE model out of a dense checkpoint: which tensors are kept, which are new, and why a zeroed
   `up_embed` makes the new model compute exactly what the dense one did.
5. How evenly tokens spread over experts (a histogram).
6. A caveat of the published router: its `view(2, B*T, K)` split lets *later* tokens change the routing of
   *earlier* ones. We show it, and show that the per-token split does not.
7. Parity with `doge_from_scratch.moe` and transformers' `DogeCDMoE`.
"""),
code("""
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.testing import randomize_, tiny_config
from doge_from_scratch.paths import DATA_DIR
from doge_from_scratch.tokenizer import load_tokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
torch.set_printoptions(precision=3, sci_mode=False)
%matplotlib inline
"""),
md("""
## 1. The dense MLP

After attention has mixed information *between* tokens, the MLP transforms each token on its own. Doge
uses the gated form popularised by LLaMA:

$$\\mathrm{MLP}(x) = W_{down}\\,\\big(\\mathrm{silu}(W_{gate} x) \\odot W_{up} x\\big).$$

One branch decides *how much* (the SiLU gate), the other *what* (the up projection); their product is
mapped back to the model width. Read it one hidden unit at a time and it is a sum of `n_units` rank-one
pieces:
unit `j` looks at the input along one direction, squashes, and writes along one output direction.
"""),
code("""
# NBVAL_CHECK_OUTPUT
H, n_units = 64, 96
g = torch.Generator().manual_seed(0)
W_gate, W_up = torch.randn(n_units, H, generator=g) / 8, torch.randn(n_units, H, generator=g) / 8
W_down = torch.randn(H, n_units, generator=g) / 10


def dense_mlp(x: torch.Tensor) -> torch.Tensor:
    \"\"\"x: [..., H] -> [..., H]\"\"\"
    return F.linear(F.silu(F.linear(x, W_gate)) * F.linear(x, W_up), W_down)


x = torch.randn(5, H, generator=g)
unit_by_unit = sum(
    (F.silu(x @ W_gate[j]) * (x @ W_up[j]))[:, None] * W_down[:, j] for j in range(n_units)
)
print("MLP == sum of its", n_units, "rank-one units:", torch.allclose(dense_mlp(x), unit_by_unit, atol=1e-5))
"""),
md("""
## 2. Tiny experts and product-key retrieval

CDMoE adds a pool of `E` experts that are exactly such rank-one units, stored as two embedding tables:

$$\\mathrm{expert}_e(x) = \\mathrm{silu}(\\mathrm{down\\_embed}_e \\cdot x)\\;\\mathrm{up\\_embed}_e .$$

(`down_embed` is the reading side, `up_embed` the writing side.) A released MoE Doge has 1024 of them per
layer, the config default is 16384 - far too many to run them all, so each token picks `k` (16, or 64).

Scoring `E` experts with a linear router would cost `H x E` weights per layer. **Product keys** cut that to
`H x 2K` with `K = sqrt(E)`: arrange the experts in a `K x K` grid, let the router emit one score per row
(`s_x`) and one per column (`s_y`), and give expert `(i, j)` - id `i * K + j` - the score `s_x[i] + s_y[j]`.
The best `k` of the `K * K` sums are the chosen experts; their softmax gives the mixing weights.

Below: 16 experts in a 4 x 4 grid, 4 chosen.
"""),
code("""
# NBVAL_CHECK_OUTPUT
def product_key_topk(sx: torch.Tensor, sy: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    \"\"\"sx, sy: [N, K] row/column scores -> (scores [N, k], expert ids [N, k]).\"\"\"
    grid = sx[:, :, None] + sy[:, None, :]  # [N, K, K]: score of expert i*K + j
    scores, flat = grid.flatten(1).topk(k, dim=-1)
    return scores, flat  # flat index into the grid == expert id


sx, sy = torch.tensor([[0.9, -0.2, 0.4, 0.0]]), torch.tensor([[0.1, 0.7, -0.5, 0.3]])
scores, ids = product_key_topk(sx, sy, k=4)
print("grid of scores (row i, column j -> expert i*4+j):")
print(sx[0, :, None] + sy[0, None, :])
print("chosen experts:", ids[0].tolist(), " scores:", [round(v, 2) for v in scores[0].tolist()])
print("weights:", F.softmax(scores, dim=-1)[0])
"""),
md("""
No approximation is involved: every one of the `K * K` pair sums is formed, and they are cheap additions.
(One could even prune first - the best `k` pairs can only use rows among the `k` best `s_x` and columns among
the `k` best `s_y` - which is what the original product-key memory does; the reference simply forms them all.)

## 3. The full CDMoE layer

Output = shared expert (the dense MLP, same three weight matrices) + the weighted sum of the chosen tiny
experts. Per token that is `k` dot products and `k` scaled vector additions on top of the MLP.
"""),
code("""
def split_router_logits(logits: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    \"\"\"logits [B, T, 2K] -> (s_x, s_y), each [B*T, K]. See section 6 for why there are two ways.\"\"\"
    b, t, two_k = logits.shape
    if per_token:
        halves = logits.reshape(b * t, 2, two_k // 2)
        return halves[:, 0], halves[:, 1]
    halves = logits.reshape(2, b * t, two_k // 2)  # the published code's view(2, B*T, K)
    return halves[0], halves[1]


def cdmoe(x: torch.Tensor, P: dict, k: int, per_token: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    \"\"\"x: [B, T, H] -> (output [B, T, H], chosen expert ids [B*T, k]). P: the layer's tensors by name.\"\"\"
    b, t, h = x.shape
    sx, sy = split_router_logits(F.linear(x, P["router_gate.weight"]), per_token)
    scores, ids = product_key_topk(sx, sy, k)
    weights = F.softmax(scores, dim=-1)                                     # [N, k]
    tokens = x.reshape(b * t, h)
    gate = F.silu(torch.einsum("nkh,nh->nk", P["down_embed.weight"][ids], tokens)) * weights
    routed = torch.einsum("nk,nkh->nh", gate, P["up_embed.weight"][ids]).view(b, t, h)
    shared = F.linear(F.silu(F.linear(x, P["gate_proj.weight"])) * F.linear(x, P["up_proj.weight"]),
                      P["down_proj.weight"])
    return shared + routed, ids
"""),
md("""
## 4. Inheriting a dense checkpoint

Because the shared expert uses the dense MLP's parameter names (`gate_proj`, `up_proj`, `down_proj`), a dense
checkpoint already contains most of an MoE model. We save a small randomised dense Doge, then build the same
architecture with `is_moe=True` (256 experts, 8 per token) and load the dense tensors into it. Our package's
`from_pretrained` deliberately refuses a checkpoint that lacks tensors the model needs, so inheriting is an
explicit step: load what is there, and list what is new.
"""),
code("""
tmp = Path(tempfile.mkdtemp(prefix="doge_lesson03_"))
dense_config = tiny_config()
dense = randomize_(DogeForCausalLM(dense_config), seed=0).eval()
dense.save_pretrained(tmp / "dense")

moe_config = tiny_config(is_moe=True, num_experts=256, num_experts_per_tok=8)
try:
    DogeForCausalLM.from_pretrained(tmp / "dense", is_moe=True, num_experts=256, num_experts_per_tok=8)
except ValueError as err:
    lines = str(err).split(": ", 1)[1].splitlines()  # (the first part is the temp folder's name)
    print("from_pretrained refuses:", lines[0], lines[1].strip(), "...")
"""),
code("""
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
moe = DogeForCausalLM(moe_config).eval()
dense_tensors = load_file(tmp / "dense" / "model.safetensors")
missing, unexpected = moe.load_state_dict(dense_tensors, strict=False)

kept = [name for name in moe.state_dict() if name in dense_tensors]
print(f"kept from the dense checkpoint: {len(kept)} tensors, e.g.")
for name in kept:
    if name.startswith("model.layers.0.mlp"):
        print("   ", name, tuple(dense_tensors[name].shape))
print(f"new in the MoE model: {len(missing)} tensors")
for name in missing:
    print("   ", name, tuple(moe.state_dict()[name].shape))
print("dense tensors the MoE model did not want:", unexpected)
"""),
md("""
Only three tensors per layer are new: the router (`H -> 2K = 32` scores), and the two expert tables. The
router and `down_embed` can start random. `up_embed` is what every expert *writes*, so if it starts at zero
the routed experts add exactly nothing and the MoE model computes the dense model's function - training then
starts from the dense model's quality instead of from a perturbed one. Zero is the right table to clear:
the gradient reaching `up_embed` is the (non-zero) gate value times the output gradient, so the experts can
grow from there; clearing `down_embed` instead would leave `silu(0) = 0` gates and nothing would learn.
"""),
code("""
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    for layer in moe.model.layers:
        layer.mlp.up_embed.weight.zero_()
    ids = torch.randint(0, dense_config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    gap = (moe(ids).logits - dense(ids).logits).abs().max().item()
print("max |MoE logits - dense logits| with up_embed = 0:", gap)
assert gap == 0.0
"""),
md("""
## 5. Expert usage

How evenly do tokens spread over the 256 experts? We embed real text (the lesson's pretraining data), normalise it
as the first layer would, and run it through that layer's router in a randomised MoE model and count how
often each expert is picked. An untrained router is lopsided: a few experts collect many picks, some none.
During training the Switch-style load-balancing loss (`router_aux_loss_coef = 0.001`) pushes against that: it
multiplies each expert's share of the picks by its average router probability and sums, scaled so that a
perfectly balanced router scores 1.0.
"""),
code("""
from doge_from_scratch.moe import load_balancing_loss

tokenizer = load_tokenizer()
rows = [json.loads(line)["text"] for line in (DATA_DIR / "pretrain/test.jsonl").read_text().splitlines()]
token_ids = torch.tensor(tokenizer("\\n".join(rows[:8])).input_ids[:1024])[None]
usage_model = randomize_(DogeForCausalLM(tiny_config(vocab_size=len(tokenizer), is_moe=True, num_experts=256,
                                                     num_experts_per_tok=8)), seed=1).eval()
moe_layer = usage_model.model.layers[0].mlp
P = {name: p.detach() for name, p in moe_layer.named_parameters()}
with torch.no_grad():
    h = usage_model.model.layers[0].post_attention_layernorm(usage_model.model.embed_tokens(token_ids))
    _, chosen = cdmoe(h, P, k=8, per_token=True)
counts = torch.bincount(chosen.flatten(), minlength=256)
sx, sy = split_router_logits(F.linear(h, P["router_gate.weight"]), per_token=True)
aux = load_balancing_loss([torch.stack((sx, sy))], num_experts=256, top_k=8)

fig, ax = plt.subplots(1, 2, figsize=(12, 3.2))
ax[0].bar(range(256), counts.numpy(), width=1.0)
ax[0].axhline(counts.float().mean().item(), color="red", ls="--", label="uniform")
ax[0].set(title=f"picks per expert ({token_ids.shape[1]} tokens x 8)", xlabel="expert id", ylabel="picks")
ax[0].legend()
ax[1].hist(counts.numpy(), bins=30)
ax[1].set(title="how many experts got n picks", xlabel="picks", ylabel="experts")
plt.tight_layout()
plt.show()
print(f"experts never picked: {(counts == 0).sum().item()} of 256;  "
      f"load-balancing loss: {aux.item():.2f} (1.0 = balanced)")
"""),
md("""
**The load-balancing loss, written out** (Switch Transformer, Fedus et al. 2021, eq. 4). With `N` tokens each
picking `k` experts, let `f_e` be the share of the `N k` picks that went to expert `e` and `P_e` the router's
probability for `e` averaged over the tokens, the probability being the softmax over all `K * K` pair scores:

$$\\mathcal{L}_{\\text{aux}} = E \\sum_{e=1}^{E} f_e \\, P_e .$$

A perfectly balanced router has `f_e = P_e = 1/E` and scores exactly 1. `f_e` comes from a top-k and has no
gradient; `P_e` carries it, so the loss lowers the probability of the experts that are picked most. Below, from
the picks counted above and the router's scores, evaluated in float64, against the package's float32 `aux`:
"""),
code("""
def switch_balance_loss(sx: torch.Tensor, sy: torch.Tensor, chosen: torch.Tensor, num_experts: int) -> torch.Tensor:
    \"\"\"sx, sy: [N, K] row/column scores, chosen: [N, k] picked expert ids -> E * sum_e f_e * P_e.\"\"\"
    pair_scores = (sx[:, :, None] + sy[:, None, :]).flatten(1)       # [N, K*K]; column i * K + j is expert id
    mean_prob = pair_scores.softmax(-1).mean(0)                        # P_e
    fraction = torch.bincount(chosen.flatten(), minlength=num_experts) / chosen.numel()   # f_e
    return num_experts * (fraction.to(mean_prob.dtype) * mean_prob).sum()


by_hand = switch_balance_loss(sx.double(), sy.double(), chosen, 256)
# float32 sums over 1024 tokens and 256 experts: worst-case relative round-off about (1024 + 256) * 2**-24 = 8e-5
print(f"by hand (float64): {by_hand.item():.6f}   package load_balancing_loss (float32): {aux.item():.6f}")
assert abs(aux.item() - by_hand.item()) <= 8e-5 * by_hand.item()
"""),
md("""
Two things to notice. The loss is still close to 1.0 although the picks are lopsided: an untrained router
has small logits, so its probabilities over the 256 experts are nearly flat, and the loss only climbs once the
router grows *confident* about its favourites - which is exactly when it starts to push back. And the grid
structure shows: an expert's score is a row score plus a column score, so experts sharing a popular row
(`id // 16`, e.g. the block at the right end) are picked together.

## 6. The router split caveat

The router emits `2K` numbers per token, and they must be cut into the row scores `s_x` and the column scores
`s_y`. The natural cut is per token: first `K` and last `K`. The published code instead calls
`router_logits.view(2, B*T, K)` on the `[B*T, 2K]` logits. That reshape takes the first half of the
*flattened buffer* as all the `s_x` rows and the second half as all the `s_y` rows - so token `n`'s
column scores come from the logits of token `B*T/2 + n//2`. Below, for 8 tokens, where each token's two
halves really come from:
"""),
code("""
# NBVAL_CHECK_OUTPUT
N, K = 8, 4
# label every logit with (token, position) and push the labels through both splits
owner = torch.arange(N)[:, None].expand(N, 2 * K).reshape(1, N, 2 * K).float()
ref_x, ref_y = split_router_logits(owner, per_token=False)
tok_x, tok_y = split_router_logits(owner, per_token=True)
print("token | reference: s_x from token, s_y from token | per_token: s_x, s_y")
for n in range(N):
    print(f"  {n}   |          {sorted(set(ref_x[n].int().tolist()))}"
          f"             {sorted(set(ref_y[n].int().tolist()))}"
          f"          |       {int(tok_x[n, 0])}    {int(tok_y[n, 0])}")
"""),
md("""
So under the reference split token 0 is routed partly by token 4's logits, token 2 by token 5's, and so on -
information flows from later tokens to earlier ones, and across the rows of a batch. The direct test: change
only the **last** token's hidden state and see which earlier tokens change their experts.
"""),
code("""
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(7)
h8 = torch.randn(1, 8, 64, generator=g)
h8_changed = h8.clone()
h8_changed[0, -1] = torch.randn(64, generator=g)
with torch.no_grad():
    for per_token in (False, True):
        _, before = cdmoe(h8, P, k=8, per_token=per_token)
        _, after = cdmoe(h8_changed, P, k=8, per_token=per_token)
        changed = [n for n in range(7) if not torch.equal(before[n], after[n])]
        name = "per_token" if per_token else "reference"
        print(f"{name:9s}: earlier tokens whose experts changed after editing token 7: {changed}")
    # decoding one token at a time: B*T = 1, and both splits are the same
    one = h8[:, :1]
    same = torch.equal(cdmoe(one, P, k=8)[0], cdmoe(one, P, k=8, per_token=True)[0])
    print("single-token step, reference == per_token:", same)
"""),
md("""
With the reference split an edit to the future reaches into the past, which a causal language model must never
allow; a prompt processed all at once and the same prompt decoded token by token also route differently. The
released MoE checkpoints were trained this way, so transformers keeps the reference split for compatibility.
Our package offers both: `moe_router_split="reference"` (the default, for parity with published weights) and
`"per_token"` (the causal one, for training new MoE models).

## 7. Check against the package and transformers

Same weights, three implementations: ours from this notebook, `doge_from_scratch.moe.DogeCDMoE` (both
splits) and transformers' `DogeCDMoE` (reference split only).
"""),
code("""
# NBVAL_CHECK_OUTPUT
from transformers.models.doge.modeling_doge import DogeCDMoE as ReferenceCDMoE

from doge_from_scratch import moe as pkg_moe
from doge_from_scratch.testing import reference_model

cfg = usage_model.config
ref_layer = reference_model(cfg).model.layers[0].mlp
ref_layer.load_state_dict(moe_layer.state_dict())
assert isinstance(ref_layer, ReferenceCDMoE)
with torch.no_grad():
    h_batch = h[:, :64].reshape(2, 32, 64)  # two rows, so the batch mixing is exercised too
    mine_ref, ids_ref = cdmoe(h_batch, P, k=8)
    mine_tok, ids_tok = cdmoe(h_batch, P, k=8, per_token=True)

    ref_out, ref_logits = ref_layer(h_batch)
    assert torch.allclose(ref_out, mine_ref, atol=1e-6)

    pkg_out, pkg_halves = moe_layer(h_batch)           # config default: reference split
    assert torch.allclose(pkg_out, mine_ref, atol=1e-6) and torch.equal(pkg_halves, ref_logits)
    moe_layer.split = "per_token"
    pkg_tok, _ = moe_layer(h_batch)
    moe_layer.split = "reference"
    assert torch.allclose(pkg_tok, mine_tok, atol=1e-6)
    assert not torch.allclose(pkg_tok, pkg_out)       # the two splits really differ on a full sequence

    mlp = dense.model.layers[0].mlp  # the package's dense MLP, from the checkpoint we inherited
    assert isinstance(mlp, pkg_moe.DogeMLP)
    Pd = {n: p.detach() for n, p in mlp.named_parameters()}
    xs = torch.randn(3, 5, 64)
    dense_mine = F.linear(F.silu(F.linear(xs, Pd["gate_proj.weight"])) * F.linear(xs, Pd["up_proj.weight"]),
                          Pd["down_proj.weight"])
    assert torch.allclose(mlp(xs), dense_mine, atol=1e-6)
print("notebook == doge_from_scratch.moe (both splits) == transformers DogeCDMoE (reference split)")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/03_cdmoe.ipynb`.

1. Product-key retrieval: the k best of the K*K pairs. Predict the expert id of the pair (i=1, j=2) when K=3.
2. The per-token router split (section 6): write the split that keeps each token's logits together.
3. Write the Switch load-balancing loss yourself. Predict its value when routing is perfectly uniform.
"""),
code("""
from doge_from_scratch.exercises import check_load_balancing_loss, check_per_token_split, check_product_key_topk


def product_key_topk(sx, sy, k):
    \"\"\"product_key_topk(sx, sy, k) -> (scores [N, k], expert ids [N, k]): the k best of the K*K pairs (i, j) with
    score sx[i] + sy[j] and expert id i * K + j. sx, sy: [N, K] (moe.product_key_topk).\"\"\"
    raise NotImplementedError  # your code here


check_product_key_topk(product_key_topk)
"""),
code("""
def per_token_split(logits):
    \"\"\"split(logits) -> [2, B*T, K]: the x and y halves of each token's own 2K router logits. logits: [B, T, 2K]
    (moe.split_router_logits(..., "per_token")).\"\"\"
    raise NotImplementedError  # your code here


check_per_token_split(per_token_split)
"""),
code("""
def load_balancing_loss(router_halves, num_experts, top_k):
    \"\"\"load_balancing_loss(router_halves, num_experts, top_k) -> scalar: E * sum_e f_e * P_e, f_e the share of
    all picks that went to expert e and P_e its softmax probability over the K*K pair scores, averaged over
    the tokens of every layer. router_halves: list of [2, N, K] (moe.load_balancing_loss).\"\"\"
    raise NotImplementedError  # your code here


check_load_balancing_loss(load_balancing_loss)
"""),
md("""
## Further reading

- Lample et al., *Large Memory Layers with Product Keys*, [arXiv:1907.05242](https://arxiv.org/abs/1907.05242)
- Fedus, Zoph, Shazeer, *Switch Transformers*, [arXiv:2101.03961](https://arxiv.org/abs/2101.03961) (the
  auxiliary load-balancing loss)
- Shi et al., *Wonderful Matrices* (Cross Domain MoE), [arXiv:2412.11834](https://arxiv.org/abs/2412.11834)
- Checked against: transformers `models/doge/modeling_doge.py` (`DogeCDMoE`, `load_balancing_loss_func`); our
  `doge_from_scratch.moe`
"""),
]

if __name__ == "__main__":
    print(write_notebook("03_cdmoe.ipynb", cells))
