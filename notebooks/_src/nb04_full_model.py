"""Generator for notebooks/04_full_model.ipynb (run: python notebooks/_src/nb04_full_model.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 04 - The full model: decoder layers, sizes, checkpoints and end-to-end parity

> **Run time**: about 12 s on the project's 2-core CPU. **Uses**: nothing from earlier lessons (checkpoints
> are written to a temporary folder).

Lessons 01-03 built the parts. Here we stack them into a complete Doge language model and make sure it
speaks the same file format and computes the same numbers as the reference implementation.

**What you will learn**

1. The decoder layer: pre-norm attention and MLP blocks whose skip connections carry **learnable residual
   scales**, and what those scales do to the residual stream.
2. The whole stack: embedding, layers, final norm and a language-model head tied to the embedding.
3. Where the parameters live: a table of the published sizes (13M / 54M / 152M / 335M), counted on the
   `meta` device - no memory allocated - and checked against a closed-form formula.
4. Checkpoints: our save loaded by transformers, transformers' save loaded by us, and the three
   generations of "Doge" checkpoints, including converting a classic one.
5. The end-to-end parity check: logits against transformers' `DogeForCausalLM` (eager and sdpa).
"""),
code("""
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import transformers

from doge_from_scratch import DogeConfig, DogeForCausalLM
from doge_from_scratch.testing import copy_into_reference, randomize_, reference_model, tiny_config

torch.manual_seed(0)
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()      # keep transformers' load reports out of the lesson
transformers.utils.logging.disable_progress_bar()
%matplotlib inline
"""),
md("""
## 1. The decoder layer

Each layer does two things, each in a pre-norm residual block: attention moves information *between* tokens
(lesson 02), the MLP or CDMoE transforms each token *on its own* (lesson 03). "Pre-norm" means the block
sees a normalised copy of the stream, while the stream itself passes by on the skip path:

```
x = input_residual          * x + attention(input_layernorm(x))
x = post_attention_residual * x + mlp(post_attention_layernorm(x))
```

The twist is the two vectors `input_residual` and `post_attention_residual` (one number per channel, starting
at ones). A plain transformer adds each block's output to an untouched stream; Doge lets every layer learn how
much of the stream to keep, channel by channel - below 1 it fades older content, above 1 it amplifies it.
At initialisation (all ones) this is an ordinary pre-norm block.
"""),
code("""
config = tiny_config(num_hidden_layers=8)
model = randomize_(DogeForCausalLM(config), seed=0).eval()


def decoder_layer(x: torch.Tensor, layer, position_embeddings) -> torch.Tensor:
    \"\"\"x: [B, T, H] -> [B, T, H]; attention and MLP are the modules of lessons 02 and 03.\"\"\"
    x = layer.input_residual * x + layer.self_attn(layer.input_layernorm(x), position_embeddings)
    h = layer.mlp(layer.post_attention_layernorm(x))
    h = h[0] if isinstance(h, tuple) else h  # CDMoE also returns its router logits
    return layer.post_attention_residual * x + h


def stream_rms(model, input_ids: torch.Tensor) -> list[float]:
    \"\"\"RMS of the residual stream after the embedding and after every layer.\"\"\"
    x = model.model.embed_tokens(input_ids)
    pe = model.model.rotary_emb(x, torch.arange(input_ids.shape[1])[None])
    sizes = [x.pow(2).mean().sqrt().item()]
    for layer in model.model.layers:
        x = decoder_layer(x, layer, pe)
        sizes.append(x.pow(2).mean().sqrt().item())
    return sizes


ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
plt.figure(figsize=(6, 3))
with torch.no_grad():
    saved = [(layer.input_residual.clone(), layer.post_attention_residual.clone()) for layer in model.model.layers]
    for scale in (1.0, 0.9, 0.7):
        for layer in model.model.layers:
            layer.input_residual.fill_(scale)
            layer.post_attention_residual.fill_(scale)
        plt.plot(stream_rms(model, ids), marker="o", label=f"all residual scales = {scale}")
    for layer, (a, b) in zip(model.model.layers, saved):  # back to the randomised values
        layer.input_residual.copy_(a)
        layer.post_attention_residual.copy_(b)
plt.xlabel("after layer (0 = embedding)")
plt.ylabel("RMS of the stream")
plt.legend()
plt.title("with scales of 1 every block piles onto the stream")
plt.tight_layout()
"""),
md("""
With unit scales the stream grows layer after layer, because every block adds its output and nothing is ever
removed; scales below one let a layer trade old content for new. A trained Doge learns per-channel values,
so it can keep some features for many layers and refresh others quickly.

## 2. The whole stack

Token ids -> embedding -> `L` decoder layers -> final RMSNorm -> a linear head to vocabulary logits. The
rotary tables are computed once and shared by all layers. In the published dense models the head is **tied**
to the embedding: `lm_head.weight` *is* `embed_tokens.weight`, so a checkpoint stores it once.
"""),
code("""
# NBVAL_CHECK_OUTPUT
def causal_lm_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    \"\"\"input_ids [B, T] -> logits [B, T, V], written out layer by layer.\"\"\"
    x = model.model.embed_tokens(input_ids)
    pe = model.model.rotary_emb(x, torch.arange(input_ids.shape[1])[None])
    for layer in model.model.layers:
        x = decoder_layer(x, layer, pe)
    return F.linear(model.model.norm(x), model.lm_head.weight)


with torch.no_grad():
    same = torch.allclose(causal_lm_logits(model, ids), model(ids).logits, atol=1e-5)
print("layer-by-layer logits == DogeForCausalLM:", same)
tied = DogeForCausalLM(tiny_config(tie_word_embeddings=True))
print("tied head shares the embedding tensor:", tied.lm_head.weight is tied.model.embed_tokens.weight)
"""),
md("""
## 3. Where the parameters live: the published sizes

We count every tensor of each published configuration without allocating a single weight: building the model
under `torch.device("meta")` creates tensors that have a shape but no storage, so even the 335M model costs
nothing. Shared (tied) tensors are counted once. Next to it, the closed-form count, so we know *where* the
numbers come from (`H` hidden, `I` intermediate, `L` layers, `n_h`/`n_kv` heads, `d = H / n_h`, `V` vocab):

* attention: `q` and `o` are `H x n_h d` each, `k` and `v` are `H x n_kv d` each, `dt_proj` is `n_kv d x n_kv`,
  plus `A` (`n_kv`) and the q/k norms (`2d`);
* MLP: three `H x I` matrices; norms and residual scales: `4H` per layer;
* embedding `V x H` (tied, so once) and the final norm `H`; CDMoE adds a `2K x H` router and two `E x H` tables.
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch.config import PRESETS


def count_by_formula(c: DogeConfig) -> int:
    H, I, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size  # noqa: E741 - formula letters
    d, nh, nkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    attention = 2 * H * nh * d + 2 * H * nkv * d + nkv * d * nkv + nkv + 2 * d
    mlp = 3 * H * I + (2 * c.num_keys * H + 2 * c.num_experts * H if c.is_moe else 0)
    per_layer = attention + mlp + 4 * H
    return V * H * (1 if c.tie_word_embeddings else 2) + L * per_layer + H


def count_on_meta(c: DogeConfig) -> tuple[int, int]:
    with torch.device("meta"):
        m = DogeForCausalLM(c)
    total = sum(p.numel() for p in m.parameters())  # .parameters() yields a tied tensor once
    return total, m.model.embed_tokens.weight.numel()


published = {"Doge-20M": "13M", "Doge-60M": "54M", "Doge-160M": "152M", "Doge-320M": "335M"}
print(f"{'model':13s} {'H':>5s} {'I':>5s} {'L':>3s} {'heads':>6s} {'params':>12s} {'formula':>12s} "
      f"{'embedding':>10s} {'published':>10s}")
counts = {}
for name in PRESETS:
    c = DogeConfig.from_preset(name)
    total, embed = count_on_meta(c)
    counts[name] = total
    heads = f"{c.num_attention_heads}/{c.num_key_value_heads}"
    print(f"{name:13s} {c.hidden_size:5d} {c.intermediate_size:5d} {c.num_hidden_layers:3d} {heads:>6s} "
          f"{total:12,d} {count_by_formula(c):12,d} {embed / total:9.0%} {published.get(name, '-'):>10s}")
    assert total == count_by_formula(c)
    if name in published:
        assert f"{total // 10**6}M" == published[name]
"""),
md("""
Every published figure is our count cut down to whole millions (54.57M is quoted as 54M, 335.75M as 335M).
The small models are mostly vocabulary: two thirds of Doge-20M is its embedding table. The MoE variant adds
1024 experts per layer (two `1024 x 256` tables), about a third more parameters than the dense 20M model, while
each token only touches 16 experts of them.

## 4. Checkpoints

A Hugging Face model folder is a `config.json` plus `model.safetensors` (or shards listed in an index). We
write and read only safetensors: a pickle file can execute code when loaded, a safetensors file is just bytes
and shapes. `save_pretrained` writes the whole folder beside the target and then swaps it in, so an
interrupted save leaves the old checkpoint whole (never a mix of old and new files, nor a half-written one).

### 4a. Our save, transformers' load
"""),
code("""
tmp = Path(tempfile.mkdtemp(prefix="doge_lesson04_"))
small = randomize_(DogeForCausalLM(tiny_config(tie_word_embeddings=True, num_hidden_layers=3)), seed=2).eval()
small.save_pretrained(tmp / "ours")
print(sorted(p.name for p in (tmp / "ours").iterdir()))
saved_config = json.loads((tmp / "ours" / "config.json").read_text())
print({k: saved_config[k] for k in ("model_type", "architectures", "tie_word_embeddings", "attention_variant")})

theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp / "ours", attn_implementation="eager").eval()
x = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
with torch.no_grad():
    print(type(theirs).__module__, "- max |logits difference|:",
          (theirs(x).logits - small(x).logits).abs().max().item())
"""),
md("""
transformers reads the folder as its own `DogeForCausalLM` and computes the same logits. It simply keeps the two
config fields it does not know (`attention_variant`, `moe_router_split`) as attributes.

### 4b. transformers' save, our load
"""),
code("""
native = reference_model(tiny_config(tie_word_embeddings=True, num_hidden_layers=3))
randomize_(native, seed=4)
native.save_pretrained(tmp / "theirs")
ours = DogeForCausalLM.from_pretrained(tmp / "theirs")
with torch.no_grad():
    print("generation:", ours.checkpoint_generation,
          "- max |logits difference|:", (ours(x).logits - native(x).logits).abs().max().item())
"""),
md("""
### 4c. Three generations of "Doge" checkpoints

The name has covered three file layouts. Which one a folder holds is read off its tensors, never guessed from
the repository name:

| gen | where | attention | tensor names |
|---|---|---|---|
| **A** | the classic Hub repos with custom code (Doge-20M/60M/160M/320M, their -Instruct / -SFT / -Reason-Distill, our two seed models) | no q/k norm; `A` and `dt_proj` per **query** head; the bias is *added* to the causal mask | `word_embed`, `pre_layernorm`, `pre_residual.weight`, `post_layernorm`, `post_residual.weight`, `feed_forward.*`, `final_layernorm` |
| **B** | small-doge after mid-2025 | as A | transformers' names |
| **C** | transformers-native (Doge-40M and newer) | `q_norm`/`k_norm`; `A`, `dt_proj` per **KV** head; forbidden positions *replaced* by the minimum, then top-k | transformers' names |

Generation A has no keep-window top-k. Its code adds the bias to the causal mask, and only past
`keep_window_size` keys does it drop anything: the keys whose bias is below the k-th smallest, with
`k = int((S - keep_window_size) * dynamic_mask_ratio)`. The published configs set `dynamic_mask_ratio` to 0, so
k = 0 and a classic checkpoint attends to every earlier token at any length. Our `classic` variant does exactly
this (an earlier version of the package raised an error for sequences longer than the keep window).

**Classic attention by hand.** Written from the formula above - no q/k norm, `A` and `dt_proj` with one entry
per query head, the bias *added* to the 0 / minimum causal mask, and the `dynamic_mask_ratio` rule past the
window - and checked against the package's `attention_variant="classic"` layer, once with the published
setting (ratio 0: nothing dropped) and once with a window of 6 and ratio 0.5, where the rule drops keys:
"""),  # noqa: E501 - rows of a markdown table cannot be wrapped
code("""
from doge_from_scratch.layers import RotaryEmbedding, apply_rotary

NEG = torch.finfo(torch.float32).min


def classic_attention(x, W, cos, sin, n_heads, n_kv, keep_window_size=2048, dynamic_mask_ratio=0.0):
    \"\"\"Generation A's attention from its formula. x [B, T, H] -> [B, T, H]; W: the layer's weights by name.\"\"\"
    b, t, _ = x.shape
    d = W["q_proj.weight"].shape[0] // n_heads
    q = F.linear(x, W["q_proj.weight"]).view(b, t, n_heads, d).transpose(1, 2)    # no q_norm
    k = F.linear(x, W["k_proj.weight"]).view(b, t, n_kv, d).transpose(1, 2)       # no k_norm
    v = F.linear(x, W["v_proj.weight"]).view(b, t, n_kv, d).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    # the bias: one per *query* head, from the values of all KV heads at each key position
    dt = F.linear(v.transpose(1, 2).reshape(b, t, n_kv * d), W["dt_proj.weight"])   # [B, S, n_heads]
    bias = torch.exp(W["A"] * F.softplus(dt)).transpose(1, 2)                        # [B, n_heads, S]
    drop = int((t - keep_window_size) * dynamic_mask_ratio) if t > keep_window_size else 0
    if drop > 0:  # past the window: keys below the drop-th smallest bias (over all S) get the minimum
        threshold = bias.sort(dim=-1).values[..., drop - 1:drop]
        bias = bias.masked_fill(bias < threshold, NEG)
    causal = torch.zeros(t, t).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), NEG)
    mask = causal + bias[:, :, None, :]                                     # *added*, not replaced
    groups = n_heads // n_kv
    scores = q @ k.repeat_interleave(groups, 1).transpose(-1, -2) / d ** 0.5 + mask
    out = torch.softmax(scores, dim=-1, dtype=torch.float32) @ v.repeat_interleave(groups, 1)
    return F.linear(out.transpose(1, 2).reshape(b, t, -1), W["o_proj.weight"])


for window, ratio in ((2048, 0.0), (6, 0.5)):
    cfg_a = tiny_config(attention_variant="classic", keep_window_size=window)
    cfg_a.dynamic_mask_ratio = ratio
    model_a = randomize_(DogeForCausalLM(cfg_a), seed=7).eval()
    layer_a = model_a.model.layers[0].self_attn
    x_a = torch.randn(2, 16, cfg_a.hidden_size, generator=torch.Generator().manual_seed(8))
    cos_a, sin_a = RotaryEmbedding(cfg_a)(x_a, torch.arange(16)[None])
    W_a = {name: p.detach() for name, p in layer_a.named_parameters()}
    with torch.no_grad():
        mine = classic_attention(x_a, W_a, cos_a, sin_a, cfg_a.num_attention_heads, cfg_a.num_key_value_heads,
                                 window, ratio)
        package = layer_a(x_a, (cos_a, sin_a))
    print(f"keep_window_size={window:4d}, dynamic_mask_ratio={ratio}: A has {W_a['A'].numel()} entries "
          f"(one per query head), max |hand - package| = {(mine - package).abs().max():.1e}")
    assert torch.allclose(mine, package, atol=1e-5)
"""),
md("""
transformers 5 only knows generation C. Our loader detects the generation, renames A's keys to B's, and builds
the `classic` attention variant for A and B. We cannot download a classic checkpoint here, so we *make* one:
a randomised classic-variant model whose tensors we store under generation A's names, with a `config.json` in
the classic spelling (`rope_scaling`, `hidden_bias`, `num_cdmoe_experts`, ...).
"""),
code("""
# NBVAL_CHECK_OUTPUT
from safetensors.torch import load_file, save_file

from doge_from_scratch.checkpoint import detect_generation

TO_GENERATION_A = [("model.embed_tokens.", "model.word_embed."), ("model.norm.", "model.final_layernorm."),
                   (".input_layernorm.", ".pre_layernorm."), (".input_residual", ".pre_residual.weight"),
                   (".post_attention_layernorm.", ".post_layernorm."),
                   (".post_attention_residual", ".post_residual.weight"), (".mlp.", ".feed_forward.")]

classic = randomize_(DogeForCausalLM(tiny_config(attention_variant="classic", tie_word_embeddings=True)), seed=5).eval()
tensors_a = {}
for name, value in classic.state_dict().items():
    if name == "lm_head.weight":
        continue  # tied: stored once, as the embedding
    for new, old in TO_GENERATION_A:
        name = name.replace(new, old)
    tensors_a[name] = value.contiguous().clone()

folder_a = tmp / "classic-A"
folder_a.mkdir()
save_file(tensors_a, folder_a / "model.safetensors", metadata={"format": "pt"})
c = classic.config
(folder_a / "config.json").write_text(json.dumps({
    "architectures": ["DogeForCausalLM"], "model_type": "doge",
    "auto_map": {"AutoConfig": "configuration_doge.DogeConfig",
                 "AutoModelForCausalLM": "modeling_doge.DogeForCausalLM"},
    "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
    "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
    "num_key_value_heads": c.num_key_value_heads, "hidden_bias": False, "hidden_dropout": 0.0, "hidden_act": "silu",
    "max_position_embeddings": c.max_position_embeddings, "rope_theta": 10000.0,
    "rope_scaling": {"rope_type": "dynamic", "factor": 4.0,
                     "original_max_position_embeddings": c.max_position_embeddings},
    "keep_window_size": c.keep_window_size, "dynamic_mask_ratio": 0.0, "is_moe": False,
    "num_cdmoe_experts": 16384, "num_cdmoe_experts_per_head": 8, "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
}, indent=2))

print("generation read off the tensors:", detect_generation(tensors_a))
print("layer 0 tensors as stored:")
for name, value in tensors_a.items():
    if ".layers.0." in name and ("proj" not in name or "dt_proj" in name):
        print(f"    {name:42s} {tuple(value.shape)}")
"""),
md("""
Note `self_attn.A` with 4 entries and `dt_proj` mapping to 4 outputs: one per *query* head. That is the telling
shape difference from generation C, and it is why transformers 5 cannot load this folder - its loader finds the
names it does not know *and* tensors of the wrong shape:
"""),
code("""
# NBVAL_CHECK_OUTPUT
import re

expected = reference_model(tiny_config(tie_word_embeddings=True)).state_dict()  # what transformers would build
def short(name: str) -> str:
    return re.sub(r"^model\\.layers\\.\\d+\\.", "", name)  # one entry for all layers


unknown = sorted({short(k) for k in tensors_a if k not in expected})
absent = sorted({short(k) for k in expected if k not in tensors_a and k != "lm_head.weight"})
mismatched = {k: (tuple(tensors_a[k].shape), tuple(expected[k].shape))
              for k in tensors_a if k in expected and tensors_a[k].shape != expected[k].shape}
print("names transformers does not know:", unknown)
print("names transformers needs but the file lacks:", absent)
print("shape mismatches (file vs transformers):")
for k, (have, want) in mismatched.items():
    print(f"    {k:38s} {have} vs {want}")
try:
    transformers.DogeForCausalLM.from_pretrained(folder_a)
except Exception as err:
    print("from_pretrained ->", type(err).__name__ + ":", str(err).split(",")[0])
"""),
md("""
Our loader reads it (renaming the keys, building the classic attention), and saving it again **converts** it to
generation B: transformers' names, classic attention. Both give the logits of the model we started from.
"""),
code("""
# NBVAL_CHECK_OUTPUT
loaded_a = DogeForCausalLM.from_pretrained(folder_a)
loaded_a.save_pretrained(tmp / "classic-B")
loaded_b = DogeForCausalLM.from_pretrained(tmp / "classic-B")
with torch.no_grad():
    reference_logits = classic(x).logits
    for label, m in (("A", loaded_a), ("B", loaded_b)):
        same = torch.equal(m(x).logits, reference_logits)
        print(f"folder {label}: detected generation {m.checkpoint_generation}, "
              f"attention {m.config.attention_variant!r}, identical logits: {same}")
print("renamed on conversion:",
      [k for k in load_file(tmp / "classic-B" / "model.safetensors") if ".layers.0.input" in k])
"""),
md("""
## 5. End-to-end parity with transformers

The final test of the rebuild: a randomised model (every weight moved away from its initial value, `A` non-zero,
residual scales and norms perturbed, so no formula can hide behind a one or a zero), a batch with left padding,
a keep window shorter than the sequence (so the top-k runs) - and transformers' `DogeForCausalLM` on the same
weights, with eager and with sdpa attention. We do it for a dense and for a CDMoE model.
"""),
code("""
# NBVAL_CHECK_OUTPUT
input_ids = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(6))
attention_mask = torch.ones_like(input_ids)
attention_mask[1, :5] = 0  # left padding in the second row
worst = {}
for moe in (False, True):
    cfg = tiny_config(num_hidden_layers=3, keep_window_size=12, is_moe=moe, num_experts=64, num_experts_per_tok=4)
    ours = randomize_(DogeForCausalLM(cfg), seed=7).eval()
    for impl in ("eager", "sdpa"):
        theirs = reference_model(cfg, attn_implementation=impl)
        copy_into_reference(ours, theirs)
        with torch.no_grad():
            for mask in (None, attention_mask):
                a, b = ours(input_ids, attention_mask=mask).logits, theirs(input_ids, attention_mask=mask).logits
                rows = slice(None) if mask is None else (mask.bool())  # padded positions are not compared
                diff = (a[rows] - b[rows]).abs().max().item()
                worst[(moe, impl, mask is not None)] = diff
                print(f"{'CDMoE' if moe else 'dense'} {impl:5s} {'padded' if mask is not None else 'full  '}: "
                      f"max |logits difference| < 1e-5: {diff < 1e-5}")
"""),
md("""
## 6. Check against the package

The package's `DogeDecoderLayer` must be the decoder layer we wrote, its model the stack we wrote, and the
numbers above must hold.
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch.model import DogeDecoderLayer

with torch.no_grad():
    h = model.model.embed_tokens(ids)
    pe = model.model.rotary_emb(h, torch.arange(ids.shape[1])[None])
    for layer in model.model.layers:
        assert isinstance(layer, DogeDecoderLayer)
        assert torch.allclose(layer(h, pe)[0], decoder_layer(h, layer, pe), atol=1e-6)
    assert torch.allclose(causal_lm_logits(model, ids), model(ids).logits, atol=1e-5)
    # our own save -> our own load is exact
    assert torch.equal(DogeForCausalLM.from_pretrained(tmp / "ours")(x).logits, small(x).logits)
for name, text in published.items():
    assert f"{counts[name] // 10**6}M" == text
assert max(worst.values()) < 1e-5
print("doge_from_scratch.model matches the notebook; sizes, checkpoints and parity hold")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/04_full_model.ipynb`.

1. The decoder layer from its parts (section 1). Where do `input_residual` and `post_attention_residual`
   multiply?
2. Count the parameters of a config without building the model (section 3). Predict first: does Doge-20M's
   count change with `tie_word_embeddings=False`, and by how much?
3. Rename a classic (generation A) tensor name to transformers' name (section 4).
"""),
code("""
from doge_from_scratch.exercises import check_classic_name, check_decoder_layer, check_parameter_count


def decoder_layer(layer, x, position_embeddings):
    \"\"\"decoder_layer(layer, x, position_embeddings) -> [B, T, H] from the layer's parts: input_layernorm,
    self_attn, input_residual, post_attention_layernorm, mlp, post_attention_residual (DogeDecoderLayer).\"\"\"
    raise NotImplementedError  # your code here


check_decoder_layer(decoder_layer)
"""),
code("""
def count_parameters(c):
    \"\"\"count(config) -> int: the number of parameters of DogeForCausalLM(config) without building it (a tied
    lm_head is the embedding, not a second matrix).\"\"\"
    raise NotImplementedError  # your code here


check_parameter_count(count_parameters)
"""),
code("""
def classic_name(key):
    \"\"\"classic_name(key) -> key: a generation A tensor name in transformers' naming (checkpoint.classic_name).\"\"\"
    raise NotImplementedError  # your code here


check_classic_name(classic_name)
"""),
md("""
## Further reading

- Shi et al., *Wonderful Matrices*, [arXiv:2412.11834](https://arxiv.org/abs/2412.11834)
- Model cards: [SmallDoge/Doge-60M-Instruct](https://huggingface.co/SmallDoge/Doge-60M-Instruct),
  [SmallDoge/Doge-160M-Reason-Distill](https://huggingface.co/SmallDoge/Doge-160M-Reason-Distill) (classic
  checkpoints)
- Checked against: transformers `models/doge/` (`DogeDecoderLayer`, `DogeForCausalLM`,
  `configuration_doge.py`); our `doge_from_scratch.model` and `checkpoint`
"""),
]

if __name__ == "__main__":
    print(write_notebook("04_full_model.ipynb", cells))
