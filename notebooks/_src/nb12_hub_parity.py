"""Generator for notebooks/12_hub_parity.ipynb (run: python notebooks/_src/nb12_hub_parity.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 12 - Parity with the published checkpoints, a layer-by-layer debugger, and DMA on long sequences

> **Run time**: about 48 s on the project's 2-core CPU. **Uses**: nothing from earlier lessons; published
> checkpoints if they are in the local Hugging Face cache, otherwise stand-ins of the same shapes (labelled as
> such).

The series promised to check our rebuild against the weights SmallDoge published. That is harder than it
sounds: the classic checkpoints (Doge-60M-Instruct, Doge-160M-Reason-Distill and their siblings) do not load
in transformers 5.x, and their own remote code breaks on it. This lesson builds the tool that loads them anyway,
compares two implementations number for number, and - when they disagree - says *where*.

**What you will learn**

1. How to find a checkpoint's weights offline, and what to do when they are not there (stand-ins of the same
   shapes, clearly labelled).
2. Why a classic checkpoint cannot be rewritten as a native one by changing weights alone, and which
   conversion of transformers' model *does* compute the classic formula exactly.
3. A layer-by-layer debugger built from forward hooks: run both models, keep every module's output, and walk
   them in execution order until the first one that differs.
4. The parity report: max |logits difference| in float32 and bfloat16, greedy-token agreement, and the
   debugger's verdict on a deliberately corrupted checkpoint.
5. Dynamic Mask Attention past the keep window without the [batch, heads, queries, keys] mask: the same
   top-k, a block of query rows at a time.

The command-line version of everything here is `python -m doge_from_scratch.parity MODEL`.
"""),
code("""
import os
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import transformers
from safetensors.torch import load_file, save_file

from doge_from_scratch import DogeConfig, DogeForCausalLM
from doge_from_scratch.testing import randomize_, tiny_config

torch.manual_seed(0)
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
work = Path(tempfile.mkdtemp(prefix="lesson12-"))
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("running on", device)
%matplotlib inline
"""),
md("""
## 1. Where are the weights?

A Hub id such as `SmallDoge/Doge-20M` can be satisfied three ways: a local folder you point at, the local
Hugging Face cache (filled by an earlier download), or a download. This lesson never downloads - it runs with
`HF_HUB_OFFLINE=1` - so it looks in the first two places only. Set `DOGE_WEIGHTS=/some/dir` with one
sub-folder per model (`/some/dir/Doge-20M/config.json` ...) to use weights you copied by hand.

When a model's weights are missing, we build a **stand-in**: a random-weight checkpoint with exactly the
published shapes and file layout (generation C for the re-uploaded Doge-20M, generation A - the classic key
names and config spelling - for the two classic models). A stand-in tests the loading, the conversion and the
arithmetic at full size; it says nothing about the published numbers, and every report below says which of the
two it is.
"""),
code("""
from huggingface_hub import snapshot_download

MODELS = {  # Hub id -> (preset shapes, generation of the published files)
    "SmallDoge/Doge-20M": ("Doge-20M", "C"),
    "SmallDoge/Doge-60M-Instruct": ("Doge-60M", "A"),
    "SmallDoge/Doge-160M-Reason-Distill": ("Doge-160M", "A"),
}


def find_weights(hub_id: str) -> Path | None:
    \"\"\"A folder holding the published files: $DOGE_WEIGHTS/<name>, else the local Hub cache, else None.\"\"\"
    manual = os.environ.get("DOGE_WEIGHTS")
    if manual and (Path(manual) / hub_id.split("/")[1] / "config.json").exists():
        return Path(manual) / hub_id.split("/")[1]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors"], local_files_only=True))
    except Exception:  # not cached (or no safetensors in the cache)
        return None


found = {hub_id: find_weights(hub_id) for hub_id in MODELS}
for hub_id, folder in found.items():
    print(f"{hub_id:38s} {'published weights at ' + str(folder) if folder else 'not present -> stand-in'}")
"""),
md("""
## 2. The three generations, and why classic is not native

The checkpoint generation is read off the tensor names (lesson 04): `model.word_embed...` is generation A,
transformers' names with `q_norm` is C, transformers' names without it is B. A and B compute *classic*
attention: no q/k RMSNorm, and one dynamic-bias head per **query** head. C is *native*: q/k RMSNorm and one bias
per **KV** head.

Could we rewrite a classic checkpoint as a native one and let transformers' `DogeForCausalLM` be the reference?
Only if some choice of weights made the native formula equal the classic one. The bias part works: copy each
KV head to the query heads it serves (exactly what `repeat_kv` does at run time) and the per-query-head bias
becomes a per-KV-head bias. The norm part does not: `q_norm(q) = w * q / rms(q)` divides every query by its own
RMS, a different number for every token and head, and no weight `w` can undo a division by something that
changes from token to token. Let's look at how far from 1 those RMS values are in a classic attention layer:
"""),
code("""
classic = DogeForCausalLM(tiny_config(attention_variant="classic")).eval()
randomize_(classic, seed=0)
x = torch.randn(1, 12, classic.config.hidden_size)
attn = classic.model.layers[0].self_attn
q = attn.q_proj(x).view(1, 12, -1, attn.head_dim)
rms = q.pow(2).mean(-1).sqrt()            # [B, T, heads]: what q_norm would divide by
print("per-token RMS of q, head 0:", [round(v, 2) for v in rms[0, :6, 0].tolist()])
print(f"spread across tokens and heads: {rms.min().item():.2f} .. {rms.max().item():.2f} "
      "(a norm is a no-op only at 1.00)")
"""),
md("""
So the reference for a classic checkpoint is transformers' model with **two labelled changes** - q/k norms
replaced by the identity, KV heads expanded to one per query head (`dt_proj` reads the first copy of each KV
head and zeros for the other copies) - and everything else, from RoPE and the mask's top-k to the softmax, MLP
and residual scales, is transformers' own code. One more difference is harmless: classic *adds* the bias to a
causal mask holding the dtype minimum, native *replaces* masked entries with that minimum; since
`finfo.min + b` rounds back to `finfo.min` for any bias below ~1e31, both give the same floats.

The expansion of the weights is exact (it only copies rows). The keys it produces are equal to the repeated
GQA keys only up to float32 rounding: `[5, 32] @ [32, 32]` and `[5, 32] @ [32, 16]` are different products, and a
BLAS may block and sum them in a different order. So the check below is exact for the weights and, for the keys,
bounded by the float32 error of a 32-term dot product. Here it is in a few lines:
"""),
code("""
# NBVAL_CHECK_OUTPUT
def expand_kv(k_weight: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    \"\"\"[n_kv*d, H] -> [n_heads*d, H]: KV head j copied to query heads j*g .. j*g+g-1.\"\"\"
    return k_weight.view(n_kv, head_dim, -1).repeat_interleave(n_heads // n_kv, dim=0).reshape(n_heads * head_dim, -1)


g = torch.Generator().manual_seed(0)
k_w = torch.randn(2 * 8, 32, generator=g)
x = torch.randn(5, 32, generator=g)
k_gqa = (x @ k_w.T).view(5, 2, 8)
k_mha = (x @ expand_kv(k_w, 4, 2, 8).T).view(5, 4, 8)
print("expanded weights == KV weights copied per query head:",
      torch.equal(expand_kv(k_w, 4, 2, 8).view(2, 2, 8, 32), k_w.view(2, 1, 8, 32).expand(2, 2, 8, 32)))
# each of the two products is within 32 * 2**-24 * sum_i |x_i w_i| of the exact dot product,
# so they are within twice that
bound = 2 * 32 * 2**-24 * (x.abs() @ k_w.abs().T).view(5, 2, 8).repeat_interleave(2, dim=1)
print("expanded keys == repeat_kv'd keys (to float32 rounding):",
      bool(((k_mha - k_gqa.repeat_interleave(2, dim=1)).abs() <= bound).all()))
"""),
md("""
## 3. A layer-by-layer debugger from forward hooks

`module.register_forward_hook(fn)` calls `fn(module, inputs, output)` every time the module finishes. Hooking
every named module and keeping its output gives a complete trace of a forward pass. Because our parameter names
equal transformers', the same module names appear in both traces.

Hooks fire when a module *finishes*, so children come before parents: `q_proj` before `self_attn`, `self_attn`
before the decoder layer. Walking our trace in that order, the first module whose output differs is the most
specific place where the two computations part. Two refinements make the verdict precise:

- if that module's *input* already differed, the difference was made between hooked modules (a residual
  scale, the softmax inside attention): name the parent instead;
- if a composite module differs while all its sub-modules agree, the culprit is its own arithmetic or its own
  parameters (`A` of an attention block, the residual scales of a layer).
"""),
code("""
def trace(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[dict, dict]:
    \"\"\"({module name: output}, {module name: first input}) in the order the modules finished.\"\"\"
    outputs, inputs, handles = {}, {}, []

    def first(value):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (tuple, list)):
            return next((t for t in map(first, value) if t is not None), None)
        return None

    def hook_for(name):
        def hook(module, args, output):
            out = first(output)
            if out is not None and out.is_floating_point() and name not in outputs:
                outputs[name] = out.detach().float().cpu()
                inp = first(tuple(args))
                if inp is not None and inp.is_floating_point():
                    inputs[name] = inp.detach().float().cpu()
        return hook

    for name, module in model.named_modules():
        if name and not isinstance(module, torch.nn.ModuleList):
            handles.append(module.register_forward_hook(hook_for(name)))
    with torch.no_grad():
        model(input_ids=input_ids)
    for h in handles:
        h.remove()
    return outputs, inputs


def first_divergence(ours: tuple, ref: tuple, rtol: float = 1e-4, atol: float = 1e-6):
    \"\"\"(name, max|diff|) of the first module whose output differs beyond atol + rtol * max|ref|.\"\"\"
    (out_a, in_a), (out_b, in_b) = ours, ref

    def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and not (a - b).abs().max() <= atol + rtol * b.abs().max()

    for name, a in out_a.items():
        if name in out_b and differs(a, out_b[name]):
            if name in in_a and name in in_b and differs(in_a[name], in_b[name]) and "." in name:
                name = name.rsplit(".", 1)[0]          # made between sub-modules: blame the parent
            return name, (out_a[name] - out_b[name]).abs().max().item()
    return None, 0.0
"""),
md("""
Try it on a small model and a copy with one tensor of layer 2 perturbed. Both traces come from the *same*
code, so every module before the corruption agrees exactly:
"""),
code("""
# NBVAL_CHECK_OUTPUT
small = randomize_(DogeForCausalLM(tiny_config(num_hidden_layers=4)), seed=1).eval()
broken = DogeForCausalLM(small.config).eval()
broken.load_state_dict(small.state_dict())
with torch.no_grad():
    broken.model.layers[2].mlp.up_proj.weight.add_(0.05 * torch.randn_like(broken.model.layers[2].mlp.up_proj.weight))
ids = torch.randint(1, small.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
trace_broken, trace_small = trace(broken, ids), trace(small, ids)
print(first_divergence(trace_broken, trace_small)[0])
"""),
code("""
layer_names = ["model.embed_tokens"] + [f"model.layers.{i}" for i in range(4)] + ["model.norm", "lm_head"]
gaps = [(trace_broken[0][n] - trace_small[0][n]).abs().max().item() for n in layer_names]
plt.figure(figsize=(7, 2.6))
plt.bar(range(len(gaps)), [max(g, 1e-12) for g in gaps], color=["tab:green" if g == 0 else "tab:red" for g in gaps])
plt.yscale("log")
plt.xticks(range(len(gaps)), [n.replace("model.", "") for n in layer_names], rotation=30)
plt.ylabel("max |diff| (0 shown at 1e-12)")
plt.title("where a corrupted layer 2 shows up")
plt.tight_layout()
plt.show()
"""),
md("""
## 4. The parity report

`doge_from_scratch.parity.run_parity` puts it together: load the folder into our model and into the reference
that can run it (transformers' `DogeForCausalLM` for native files; for classic files their own remote code if you
pass `--trust-remote-code` and it imports, else the converted transformers model of section 2), feed both the
same token ids, and report

- the max |logits difference| in float32 and in bfloat16 (bfloat16 keeps ~3 significant digits, so it is
  reported, not judged by the float32 bar),
- argmax agreement at every prompt position and greedy agreement over 8 new tokens (each model decodes with
  its own KV cache; the count is the common prefix),
- on a float32 mismatch, the debugger's first divergence and a per-layer table.

First the stand-ins for the models whose weights are missing (published shapes, random weights, written in
the published file layout):
"""),
code("""
from doge_from_scratch import parity, references

targets = {}
for hub_id, (preset, generation) in MODELS.items():
    if found[hub_id] is not None:
        targets[hub_id] = (str(found[hub_id]), "published weights")
        continue
    folder = work / f"stand-in-{preset}"
    references.write_stand_in(folder, DogeConfig.from_preset(preset), generation=generation, seed=0)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    targets[hub_id] = (str(folder), f"STAND-IN: random weights, {preset} shapes, generation {generation} layout")
    print(f"{hub_id}: stand-in written ({size:.0f} MiB, generation {generation})")
"""),
code("""
reports = {}
for hub_id, (folder, what) in targets.items():
    start = time.perf_counter()
    reports[hub_id] = parity.run_parity(folder, device=str(device), seq_len=24, new_tokens=8)
    print(f"=== {hub_id} - {what}  ({time.perf_counter() - start:.0f} s)")
    print(parity.format_report(reports[hub_id]))
    print()
"""),
code("""
# NBVAL_CHECK_OUTPUT
for hub_id, report in reports.items():
    f32 = next(r for r in report.results if r.dtype == "float32")
    print(f"{hub_id:38s} generation {report.generation}  float32 parity: {report.ok}  "
          f"greedy {f32.greedy_agree}/{f32.greedy_tokens}")
"""),
md("""
On the machine this notebook was last executed on there was no CUDA GPU and no copy of the published weights,
so the reports above are CPU runs on the stand-ins (each report names its device and reference). With a GPU the
same cells run there (`device` is picked automatically), and with the weights in the Hub cache or in
`$DOGE_WEIGHTS` the same cells report on the published checkpoints.

### The debugger on a corrupted full-size checkpoint

Perturb one tensor in layer 5 of the Doge-20M checkpoint and compare it against the original with
`against=`: the reference now loads the untouched weights, and the debugger must point at layer 5.
"""),
code("""
# NBVAL_CHECK_OUTPUT
source = Path(targets["SmallDoge/Doge-20M"][0])
corrupt = work / "Doge-20M-corrupted"
shutil.copytree(source, corrupt)
weights = load_file(str(corrupt / "model.safetensors"))
key = "model.layers.5.self_attn.v_proj.weight"
weights[key] = weights[key] + 0.05 * torch.randn(weights[key].shape, generator=torch.Generator().manual_seed(0))
save_file(weights, str(corrupt / "model.safetensors"), metadata={"format": "pt"})
del weights
corrupted_report = parity.run_parity(str(corrupt), against=str(source), dtypes=("float32",), seq_len=24, new_tokens=8)
print("parity:", corrupted_report.ok)
print("debugger: layer", corrupted_report.divergence_layer, "sub-module", corrupted_report.divergence_module)
"""),
code("""
print(parity.format_report(corrupted_report))
"""),
md("""
## 5. DMA past the keep window without the full mask

Up to `keep_window_size` keys, the dynamic bias depends on the key only, so lesson 02's bias-inside-q.k path
folds it into the dot product and never builds a mask. Past the window each query row keeps its
`keep_window_size` largest biases - a different set per row - and the reference builds the whole
[B, heads, T, S] mask to take that top-k. At 32k tokens that is 4 GiB per head in float32 before the scores are
even computed.

The top-k of a row depends only on that row. So we can build the mask **a block of rows at a time**: the same
`topk` call on the same row values keeps the same keys (ties included - with `A = 0` every bias is 1 and
`torch.topk` alone picks which keys survive; the CPU kernel treats each row on its own, so the block size does
not change its choice). Under autograd each block is checkpointed, so the backward pass rebuilds one block's
mask at a time too. Here it is in plain PyTorch:
"""),
code("""
def topk_rows_block(q, k, v, bias, keep: int, scale: float, rows: int) -> torch.Tensor:
    \"\"\"Causal native DMA with the keep-window top-k, `rows` query rows at a time.
    q: [B, n_h, T, d]; k, v: [B, n_kv, S, d] (T == S); bias: [B, n_kv, S] -> [B, n_h, T, d]\"\"\"
    b, n_h, t, d = q.shape
    groups = n_h // k.shape[1]
    neg = torch.finfo(q.dtype).min
    k_all, v_all = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = []
    for start in range(0, t, rows):
        stop = min(t, start + rows)
        visible = torch.arange(t)[None, :] <= torch.arange(start, stop)[:, None]          # [rows, S]
        mask = bias[:, :, None, :].expand(b, bias.shape[1], stop - start, t).masked_fill(~visible, neg)
        if t > keep:
            kept = torch.zeros_like(mask, dtype=torch.bool).scatter(-1, mask.topk(keep, dim=-1).indices, True)
            mask = mask.masked_fill(~kept, neg)
        scores = q[:, :, start:stop] @ k_all.transpose(-1, -2) * scale + mask.repeat_interleave(groups, 1)
        out.append(torch.softmax(scores, -1, dtype=torch.float32) @ v_all)
    return torch.cat(out, dim=2)


from doge_from_scratch.attention import attend_materialised, causal_padding_mask, dynamic_mask, repeat_kv

t, keep = 1536, 256
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, h, t, 32, generator=g) for h in (4, 2, 2))
for label, bias in (("learned bias", torch.rand(1, 2, t, generator=g) * 3), ("all ties (A = 0)", torch.ones(1, 2, t))):
    full_mask = repeat_kv(dynamic_mask(bias, causal_padding_mask(None, 1, t, t, "cpu"), keep, torch.float32), 2)
    full = attend_materialised(q, k, v, full_mask, 32 ** -0.5)
    blocks = topk_rows_block(q, k, v, bias, keep, 32 ** -0.5, rows=200)
    print(f"{label:17s} max |blocks - full mask| = {(blocks - full).abs().max().item():.1e}")
"""),
md("""
How much memory that saves is simple arithmetic: the full path holds several float32 [heads, T, T] tensors
(mask, its repeat over the query heads, scores, probabilities), the block path the same tensors for one block of
rows. For the Doge-20M attention shape (2 query heads, 1 KV head) and blocks of 2^24 numbers:
"""),
code("""
lengths = [2048, 4096, 8192, 16384, 32768]
full_gib = [(1 + 2 + 2 + 2) * n * n * 4 / 2**30 for n in lengths]   # mask, repeated mask, scores, probs
block_gib = [(1 + 2 + 2 + 2) / 2 * min(n, 2**24 // (2 * n)) * n * 4 / 2**30 for n in lengths]
plt.figure(figsize=(6, 3))
plt.plot(lengths, full_gib, "o-", label="full [heads, T, S] mask (reference)")
plt.plot(lengths, block_gib, "o-", label="a block of rows at a time (chunked)")
plt.xscale("log", base=2)
plt.yscale("log")
plt.xlabel("tokens")
plt.ylabel("GiB (float32, one layer), computed")
plt.legend()
plt.title("attention working set past the keep window: arithmetic, not a measurement", fontsize=9)
plt.tight_layout()
plt.show()
"""),
md("""
The measured version is a benchmark, not a lesson cell: `python -m doge_from_scratch.bench dma` times one
Doge-20M attention layer forward and forward+backward at 2k, 8k and 32k tokens for transformers' eager and sdpa
paths, our materialised and default paths and the `chunked` backend, each in a fresh process so that its peak
memory is its own, and skips (with the estimate) whatever would not fit. The package's backend is selected with
`model.set_attention_backend("chunked")`: the bias inside q.k up to the keep window, blocks of rows past it.

## 6. Check against the package

The package's debugger must find the same first divergence as ours, its chunked backend must give the numbers
of the block-by-block function above, and the parity claims above must hold.
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch import debug
from doge_from_scratch.attention import attend_topk_chunked

package = debug.compare_recordings(debug.record_outputs(broken, lambda m: m(input_ids=ids)),
                                   debug.record_outputs(small, lambda m: m(input_ids=ids)), model=broken)
assert package.first.name == first_divergence(trace_broken, trace_small)[0] == "model.layers.2.mlp.up_proj"
assert (package.layer, package.sub_module) == (2, "mlp.up_proj")

for bias in (torch.rand(1, 2, t, generator=g) * 3, torch.ones(1, 2, t)):
    ours_blocks = attend_topk_chunked(q, k, v, bias, None, keep, 32 ** -0.5, rows=200)
    assert (ours_blocks - topk_rows_block(q, k, v, bias, keep, 32 ** -0.5, rows=200)).abs().max() < 1e-5

assert all(report.ok for report in reports.values())
assert not corrupted_report.ok and corrupted_report.divergence_layer == 5
print("doge_from_scratch.debug, parity and the chunked backend match the notebook")
"""),
code("""
shutil.rmtree(work, ignore_errors=True)
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/12_hub_parity.ipynb`.

1. Expand a classic GQA checkpoint's KV heads to one per query head (section 2). Predict what `.repeat`
   instead of `repeat_interleave` would break.
2. Find the first module whose output differs (section 3), with a tolerance rather than exact equality.
"""),
code("""
from doge_from_scratch.exercises import check_expand_kv, check_first_divergence


def expand_kv(k_weight, n_heads, n_kv, head_dim):
    \"\"\"expand_kv(k_weight, n_heads, n_kv, head_dim) -> [n_heads * head_dim, H]: the rows of KV head j copied to
    query heads j*g .. j*g+g-1, g = n_heads / n_kv (references.expand_kv_heads).
    k_weight: [n_kv * head_dim, H].\"\"\"
    raise NotImplementedError  # your code here


check_expand_kv(expand_kv)
"""),
code("""
def first_divergence(ours, reference, rtol, atol):
    \"\"\"first_divergence(ours, reference, rtol, atol) -> str | None: the first module name, in the order the dicts
    were recorded (the forward order), whose outputs are not within torch.allclose(rtol, atol) of the
    reference's; None when all agree. The answers are known by construction: one output is perturbed.\"\"\"
    raise NotImplementedError  # your code here


check_first_divergence(first_divergence)
"""),
md("""
## Further reading

- Shi et al., *Wonderful Matrices*, [arXiv:2412.11834](https://arxiv.org/abs/2412.11834)
- Model cards: [SmallDoge/Doge-60M-Instruct](https://huggingface.co/SmallDoge/Doge-60M-Instruct),
  [SmallDoge/Doge-160M-Reason-Distill](https://huggingface.co/SmallDoge/Doge-160M-Reason-Distill)
- Checked against: transformers `models/doge/` and each checkpoint's own remote code; our
  `doge_from_scratch.parity` and `debug`
"""),
]

if __name__ == "__main__":
    print(write_notebook("12_hub_parity.ipynb", cells))
