"""Parity against published checkpoints: ``python -m doge_from_scratch.parity MODEL``.

MODEL is a Hub id (read from the local Hub cache, downloaded when online) or a local folder. The
checkpoint is loaded into our model and into a reference that can run it, both run the same token
ids, and the report gives the max abs logits difference in float32 and bfloat16, the greedy-token
agreement over N new tokens and, on a mismatch, the first layer and sub-module where the two part
(``debug``: forward hooks on both models).

Which reference runs a checkpoint
---------------------------------
- Generation C (native): transformers' ``DogeForCausalLM`` from the same folder, eager attention.
- Generations A/B (classic): first its own remote code (``auto_map`` in config.json) when you pass
  ``--trust-remote-code`` and it imports. On transformers 5.x it usually does not; running
  downloaded code is your decision, so it is never tried silently.
  Otherwise, transformers' ``DogeForCausalLM`` converted to compute the classic formula:

  *A weights-only conversion to native form does not exist.* Native attention always applies
  ``q_norm``/``k_norm``, an RMS normalisation of every query and key (per token and head); no weight
  value turns ``w * x / rms(x)`` into ``x`` unless every q and k already has unit RMS, which trained
  projections do not produce. The bias would fit: classic has one bias per query head, native one per
  KV head, and expanding the KV heads (each KV head copied to the query heads it serves, ``dt_proj``
  reading the first copy and zeros for the rest) is exact in real arithmetic. So the reference is
  transformers' own model with two labelled changes: q/k norms replaced by the identity and KV heads
  expanded. Embedding, RoPE, the bias formula, the mask (transformers *replaces* masked scores by
  the dtype minimum where classic *adds* the bias to it; for any bias below ~1e31 the two are the same
  float), the eager softmax, MLP/CDMoE, residual scales and head are transformers' unmodified code.
  Classic code has no keep-window top-k: with ``dynamic_mask_ratio`` 0 (the published configs) the
  converted model's keep window is set beyond any input, so the comparison holds at every length.
- If neither works (for instance transformers refuses the config), the report says that no reference
  can run the checkpoint and exits with status 3.

``--against FOLDER`` loads the reference from other weights, which turns the tool into a diff between
two checkpoints (an edited or corrupted copy against its original): the debugger names the first
module whose output changed.

Exit status: 0 parity holds, 1 mismatch, 2 the checkpoint cannot be read (one line, no traceback),
3 no reference can run it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from . import debug
from .atomic import atomic_save_safetensors, atomic_write_text, replace_folder
from .attention import BACKENDS
from .checkpoint import (CheckpointError, detect_generation, inspect_checkpoint, read_tensors, resolve_folder,
                         weight_files)
from .model import DogeForCausalLM
from .testing import randomize_

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# A float32 mismatch is a real difference; bfloat16 is reported, not judged by the same bar.
FLOAT32_RTOL = 1e-4


# ------------------------------------------------------------------------------------------- devices
def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda asked for, but torch sees no CUDA GPU")
    return device


# ----------------------------------------------------------------------------------------- references
@dataclass
class Reference:
    model: nn.Module
    label: str


class NoReference(RuntimeError):
    """No implementation other than ours can run this checkpoint; the message says what was tried."""


def _cast_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Parameters to ``dtype``, buffers (RoPE frequencies) left in float32 as ``from_pretrained`` does."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


def transformers_native(folder: Path, dtype: torch.dtype, device: torch.device) -> Reference:
    import transformers

    model = transformers.DogeForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager")
    return Reference(model.to(device).eval(),
                     f"transformers {transformers.__version__} DogeForCausalLM (eager attention), same files")


def remote_code(source: str, folder: Path, dtype: torch.dtype, device: torch.device) -> Reference:
    """The checkpoint's own modelling code, built from its config, with the folder's tensors loaded by name.

    ``source``: the Hub id (its code files are fetched or read from the cache) or the local folder;
    ``folder``: where the weights are. Not ``from_pretrained``: transformers 5 builds that model without
    running its ``__init__`` arithmetic and then initialises only what its own ``_init_weights`` knows,
    so a buffer that is neither saved nor known there (the classic rotary ``inv_freq``, registered with
    ``persistent=False``) is left as uninitialised memory, and the reference would run with garbage
    RoPE frequencies. Constructing the model computes every such buffer as its code means it to be.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, attn_implementation="eager")
    tensors = read_tensors(weight_files(folder))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # a tied head shares the embedding's parameter, which the checkpoint filled under its own name
    params = dict(model.named_parameters(remove_duplicate=False))
    filled = {params[key].data_ptr() for key in tensors if key in params}
    missing = [key for key in missing if not (key in params and params[key].data_ptr() in filled)]
    if missing or unexpected:
        raise ValueError(f"the checkpoint's tensors do not fit its own code: missing {missing}, "
                         f"unexpected {unexpected}")
    return Reference(_cast_parameters(model, dtype).to(device).eval(),
                     "the checkpoint's own remote code (trust_remote_code=True), built from its config "
                     "(non-persistent buffers computed by its __init__) with the folder's tensors")


def expand_kv_heads(tensors: dict[str, torch.Tensor], n_heads: int, n_kv: int, head_dim: int) -> dict:
    """Classic GQA attention weights -> one KV head per query head (exact: the same keys, values, bias).

    k_proj/v_proj rows of KV head j are copied to query heads j*g .. j*g+g-1 (g = n_heads / n_kv), the
    order ``repeat_kv`` serves them in. ``dt_proj`` reads the concatenated values of all KV heads, so
    its columns for KV head j move to the first copy of j and the other copies get zero columns.
    """
    groups = n_heads // n_kv
    out = dict(tensors)
    for key, value in tensors.items():
        if re.search(r"self_attn\.[kv]_proj\.(weight|bias)$", key):
            rows = value.reshape(n_kv, head_dim, *value.shape[1:])
            out[key] = rows.repeat_interleave(groups, dim=0).reshape(n_heads * head_dim, *value.shape[1:])
        elif key.endswith("self_attn.dt_proj.weight"):
            columns = value.reshape(value.shape[0], n_kv, head_dim)
            wide = torch.zeros(value.shape[0], n_kv, groups, head_dim, dtype=value.dtype)
            wide[:, :, 0] = columns
            out[key] = wide.reshape(value.shape[0], n_heads * head_dim)
    return out


# The reference reads classic files with its own copy of the published renames (doge-reference.md),
# not with ``checkpoint.rename_classic``, so a wrong rename in our loader shows up as a mismatch.
CLASSIC_KEY_FRAGMENTS = [
    ("model.word_embed.", "model.embed_tokens."),
    ("model.final_layernorm.", "model.norm."),
    (".pre_layernorm.", ".input_layernorm."),
    (".pre_residual.weight", ".input_residual"),
    (".post_layernorm.", ".post_attention_layernorm."),
    (".post_residual.weight", ".post_attention_residual"),
    (".feed_forward.", ".mlp."),
]
CLASSIC_CONFIG_FIELDS = {"hidden_bias": ("attention_bias", "mlp_bias"), "num_cdmoe_experts": ("num_experts",),
                         "num_cdmoe_experts_per_head": ("num_experts_per_tok",)}
_NOT_TRANSFORMERS_FIELDS = ("attention_variant", "moe_router_split", "architectures", "auto_map",
                            "transformers_version", "model_type")


def classic_tensors_for_transformers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in tensors.items():
        if key.endswith("router_gate.bias"):
            if bool(value.abs().max() > 0):
                raise NoReference(f"{key} is non-zero and transformers' router has no bias")
            continue
        for old, new in CLASSIC_KEY_FRAGMENTS:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


NO_KEEP_WINDOW = 2 ** 62  # more keys than any input has


def classic_config_for_transformers(folder: Path):
    import transformers

    fields = json.loads((folder / "config.json").read_text())
    for old, news in CLASSIC_CONFIG_FIELDS.items():
        if old in fields:
            for new in news:
                fields.setdefault(new, fields[old])
    fields = {k: v for k, v in fields.items() if k not in _NOT_TRANSFORMERS_FIELDS}
    n_heads = fields.get("num_attention_heads", 8)
    n_kv = fields.get("num_key_value_heads") or n_heads
    head_dim = fields.get("head_dim") or fields["hidden_size"] // n_heads
    if not fields.get("dynamic_mask_ratio"):
        # classic code with ratio 0 attends every allowed key at any length; transformers' keep-window
        # top-k must never engage (with a ratio above 0 the reference holds only within the window)
        fields["keep_window_size"] = NO_KEEP_WINDOW
    config = transformers.DogeConfig(**{**fields, "num_key_value_heads": n_heads})
    return config, n_heads, n_kv, head_dim


def transformers_classic(folder: Path, dtype: torch.dtype, device: torch.device) -> Reference:
    """transformers' model computing the classic formula (see the module docstring)."""
    import transformers

    config, n_heads, n_kv, head_dim = classic_config_for_transformers(folder)
    config._attn_implementation = "eager"
    model = transformers.DogeForCausalLM(config)
    for layer in model.model.layers:
        layer.self_attn.q_norm = nn.Identity()
        layer.self_attn.k_norm = nn.Identity()
    tensors = classic_tensors_for_transformers(read_tensors(weight_files(folder)))
    tensors = expand_kv_heads(tensors, n_heads, n_kv, head_dim)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise NoReference(f"the classic tensors do not fit transformers' model: missing {missing}, "
                          f"unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return Reference(_cast_parameters(model, dtype).to(device).eval(),
                     f"transformers {transformers.__version__} DogeForCausalLM (eager) computing the classic "
                     "formula: q_norm/k_norm -> identity, KV heads expanded to one per query head")


def load_reference(folder: Path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
                   source: str | None = None) -> tuple[Reference, list[str]]:
    """The best reference that runs this folder, plus notes on what was tried before it.

    ``source``: the Hub id the folder was resolved from, if any (remote code lives there, not in the
    weights-only snapshot).
    """
    generation = checkpoint_generation(folder)
    notes: list[str] = []
    if generation == "C":
        try:
            return transformers_native(folder, dtype, device), notes
        except Exception as err:  # transformers raises many types; the message is what matters
            raise NoReference(f"transformers could not load this native checkpoint: {_one_line(err)}") from None
    has_remote = "auto_map" in json.loads((folder / "config.json").read_text())
    if has_remote and trust_remote_code:
        try:
            return remote_code(source or str(folder), folder, dtype, device), notes
        except Exception as err:
            notes.append(f"its own remote code did not run: {_one_line(err)}")
    elif has_remote:
        notes.append("its own remote code was not tried (pass --trust-remote-code to try it)")
    try:
        return transformers_classic(folder, dtype, device), notes
    except NoReference as err:
        raise NoReference("; ".join(notes + [str(err)])) from None
    except Exception as err:
        notes.append(f"transformers' model could not be converted to the classic formula: {_one_line(err)}")
        raise NoReference("; ".join(notes)) from None


def checkpoint_generation(folder: Path) -> str:
    """A, B or C from the tensor names alone (the headers; no tensor is read)."""
    keys = []
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            keys.extend(f.keys())
    return detect_generation(keys)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'no details'}"


# ----------------------------------------------------------------------------------------- stand-ins
CLASSIC_AUTO_MAP = {"AutoConfig": "configuration_doge.DogeConfig",
                    "AutoModelForCausalLM": "modeling_doge.DogeForCausalLM"}


def classic_key(native_key: str) -> str:
    """transformers' name -> the generation A name (the published renames, read backwards)."""
    for classic, native in CLASSIC_KEY_FRAGMENTS:
        native_key = native_key.replace(native, classic) if not native.endswith("residual") else (
            native_key[: -len(native)] + classic if native_key.endswith(native) else native_key)
    return native_key


def classic_config_json(config) -> dict:
    """A config.json in the classic repos' spelling for ``config`` (a DogeConfig)."""
    rope = dict(config.rope_parameters or {})
    scaling = ({"type": rope["rope_type"], "factor": rope.get("factor", 1.0),
                "original_max_position_embeddings": rope.get("original_max_position_embeddings",
                                                             config.max_position_embeddings)}
               if rope.get("rope_type", "default") != "default" else None)
    return {
        "architectures": ["DogeForCausalLM"], "auto_map": CLASSIC_AUTO_MAP, "model_type": "doge",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
        "hidden_bias": bool(config.attention_bias), "hidden_dropout": config.hidden_dropout,
        "hidden_act": config.hidden_act, "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps, "use_cache": True, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": rope.get("rope_theta", 10000.0), "rope_scaling": scaling,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "attention_dropout": config.attention_dropout or 0.0, "dynamic_mask_ratio": 0.0,
        "keep_window_size": config.keep_window_size, "is_moe": config.is_moe,
        "num_cdmoe_experts": config.num_experts, "num_cdmoe_experts_per_head": config.num_experts_per_tok,
        "torch_dtype": "float32",
    }


def write_stand_in(folder: str | Path, config, generation: str = "C", seed: int = 0,
                   max_shard_size: int | str | None = None) -> Path:
    """A random-weight checkpoint of ``config``'s shapes, laid out as generation ``C`` or ``A``.

    Weights are the usual initialisation moved by ``testing.randomize_`` (A, norms and residual
    scales away from their trivial values), so every part of the formula matters. The folder
    stands in for a published model when its weights are not at hand; it is not that model.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    config = type(config)(**{**config.to_dict(), "attention_variant": "native" if generation == "C" else "classic"})
    model = randomize_(DogeForCausalLM(config).eval(), seed=seed)
    if generation == "C":
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        return folder
    if generation != "A":
        raise ValueError(f"generation {generation!r}: write 'C' (native) or 'A' (classic)")
    state = {k: v for k, v in model.state_dict().items() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    # weights and config are swapped in together, as save_pretrained does for generation C
    with replace_folder(folder) as staging:
        atomic_save_safetensors({classic_key(k): v.contiguous() for k, v in state.items()},
                                staging / "model.safetensors", {"format": "pt"})
        atomic_write_text(staging / "config.json", json.dumps(classic_config_json(config), indent=2))
    return folder


# ------------------------------------------------------------------------------------------- running
@torch.no_grad()
def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] -> float32 logits [B, T, V] on the CPU (a plain forward, no cache)."""
    return model(input_ids=input_ids, use_cache=False).logits.float().cpu()


@torch.no_grad()
def greedy(model: nn.Module, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding with each model's own KV cache. [B, T] -> new token ids [B, new_tokens]."""
    out = model(input_ids=input_ids, use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(tokens, dim=-1).cpu()


def prompt_ids(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """Deterministic token ids (no tokenizer needed, so the check also runs on weights alone). -> [B, T]"""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


@dataclass
class DtypeResult:
    dtype: str
    max_abs_diff: float
    max_abs_logit: float
    argmax_agree: int
    positions: int
    greedy_agree: int  # length of the common prefix of the two greedy continuations (per batch row: minimum)
    greedy_tokens: int
    ok: bool
    # for a low-precision dtype, how far each model moved from its own float32 logits (None: not measured)
    ours_vs_float32: float | None = None
    reference_vs_float32: float | None = None


@dataclass
class ParityReport:
    model: str
    folder: str
    generation: str
    variant: str
    device: str
    reference: str
    notes: list[str]
    results: list[DtypeResult] = field(default_factory=list)
    divergence: str | None = None
    divergence_layer: int | None = None
    divergence_module: str | None = None
    layers: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results if r.dtype == "float32")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok})


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    same = (a == b).all(dim=0)  # [N]: every batch row agrees at this step
    return int(same.long().cumprod(0).sum())


def run_parity(model: str, *, against: str | None = None, device: str = "auto",
               dtypes: tuple[str, ...] = ("float32", "bfloat16"), batch: int = 1, seq_len: int = 32,
               new_tokens: int = 16, seed: int = 0, rtol: float = FLOAT32_RTOL, backend: str = "auto",
               trust_remote_code: bool = False) -> ParityReport:
    """Load MODEL into ours and into a reference, compare, and debug a float32 mismatch. See the module doc."""
    folder = resolve_folder(model)
    ref_folder = resolve_folder(against) if against else folder
    dev = pick_device(device)
    generation = checkpoint_generation(folder)
    report = None
    float32_logits = None
    for name in sorted(dtypes, key=lambda d: d != "float32"):  # float32 first: the others are measured against it
        dtype = DTYPES[name]
        ours = DogeForCausalLM.from_pretrained(folder, dtype=dtype, device=dev)
        ours.set_attention_backend(backend)
        ref_source = against or model
        reference, notes = load_reference(ref_folder, dtype, dev, trust_remote_code,
                                          source=None if Path(ref_source).is_dir() else ref_source)
        if report is None:
            report = ParityReport(model=str(model), folder=str(folder), generation=generation,
                                  variant=ours.config.attention_variant, device=str(dev),
                                  reference=reference.label + (f" (weights from {against})" if against else ""),
                                  notes=notes)
        ids = prompt_ids(ours.config.vocab_size, batch, seq_len, seed).to(dev)
        ours_logits, ref_logits = logits_of(ours, ids), logits_of(reference.model, ids)
        diff = float((ours_logits - ref_logits).abs().max())
        scale = float(ref_logits.abs().max())
        argmax_agree = int((ours_logits.argmax(-1) == ref_logits.argmax(-1)).sum())
        ours_greedy, ref_greedy = greedy(ours, ids, new_tokens), greedy(reference.model, ids, new_tokens)
        agree = _common_prefix(ours_greedy, ref_greedy)
        ok = diff <= rtol * max(scale, 1.0) and agree == new_tokens if name == "float32" else True
        result = DtypeResult(name, diff, scale, argmax_agree, ids.numel(), agree, new_tokens, ok)
        if name == "float32":
            float32_logits = (ours_logits, ref_logits)
        elif float32_logits is not None:
            result.ours_vs_float32 = float((ours_logits - float32_logits[0]).abs().max())
            result.reference_vs_float32 = float((ref_logits - float32_logits[1]).abs().max())
        report.results.append(result)
        if name == "float32" and not ok:
            divergence = debug.compare_recordings(
                debug.record_outputs(ours, lambda m: m(input_ids=ids, use_cache=False)),
                debug.record_outputs(reference.model, lambda m: m(input_ids=ids, use_cache=False)),
                rtol=rtol, model=ours)
            report.divergence = divergence.summary()
            report.divergence_layer = divergence.layer
            report.divergence_module = divergence.sub_module
            report.layers = debug.layer_table(divergence)
        del ours, reference
    return report


# ---------------------------------------------------------------------------------------------- output
def format_report(report: ParityReport) -> str:
    lines = [f"parity: {report.model}",
             f"  folder     {report.folder}",
             f"  checkpoint generation {report.generation} ({report.variant} attention); device {report.device}",
             "  ours       doge_from_scratch DogeForCausalLM",
             f"  reference  {report.reference}"]
    lines += [f"  note       {note}" for note in report.notes]
    lines.append("")
    lines.append(f"  {'dtype':<9} {'max|dlogits|':>12} {'max|logits|':>11} {'argmax agree':>13} "
                 f"{'greedy agree':>13}  verdict")
    for r in report.results:
        verdict = ("ok" if r.ok else "MISMATCH") if r.dtype == "float32" else "(reported)"
        lines.append(f"  {r.dtype:<9} {r.max_abs_diff:>12.3g} {r.max_abs_logit:>11.3g} "
                     f"{r.argmax_agree:>6}/{r.positions:<6} {r.greedy_agree:>6}/{r.greedy_tokens:<6}  {verdict}")
    for r in report.results:
        if r.ours_vs_float32 is not None:
            lines.append(f"  {r.dtype} vs each model's own float32 logits: ours {r.ours_vs_float32:.3g}, "
                         f"reference {r.reference_vs_float32:.3g} (max abs)")
    if report.divergence:
        lines += ["", f"  {report.divergence}", "", "  per layer (float32):",
                  f"    {'output of':<28} {'max|diff|':>10} {'relative':>9}"]
        lines += [f"    {name:<28} {d:>10.3g} {rel:>9.2g}" for name, d, rel in report.layers]
    return "\n".join(lines)


class UsageError(Exception):
    """A command-line argument the tool cannot use; main prints it as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block and exit; main decides instead
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def _device_name(text: str) -> str:
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m doge_from_scratch.parity", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="Hub id (e.g. SmallDoge/Doge-20M) or local model folder")
    parser.add_argument("--against", help="load the reference from these weights instead (a checkpoint diff)")
    parser.add_argument("--device", default="auto", type=_device_name,
                        help="auto (CUDA when present, else CPU), cpu or cuda")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32,bfloat16")
    parser.add_argument("--batch", type=_positive_int, default=1)
    parser.add_argument("--seq-len", type=_positive_int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=_positive_int, default=16, help="greedy tokens compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=_positive_float, default=FLOAT32_RTOL,
                        help="float32 tolerance relative to max|logits| (and per module in the debugger)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="our attention backend")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="for classic checkpoints, try their own remote code first (runs downloaded code)")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown or not args.dtypes:
        raise UsageError(f"argument --dtypes: unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    return args


def _error_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _quiet_transformers() -> None:
    """Loading reports and progress bars would bury the report; errors still show."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 parity, 1 mismatch, 2 bad arguments or unreadable checkpoint (one line), 3 no reference."""
    try:
        args = _parse(argv)
        _quiet_transformers()
        # Read and check both folders with our loader first (config.json, safetensors headers, shapes): any
        # unreadable file is then a CheckpointError naming it, before a reference loader meets it.
        for name in filter(None, (args.model, args.against)):
            inspect_checkpoint(DogeForCausalLM, name)
        report = run_parity(args.model, against=args.against, device=args.device, dtypes=args.dtypes,
                            batch=args.batch, seq_len=args.seq_len, new_tokens=args.new_tokens, seed=args.seed,
                            rtol=args.rtol, backend=args.backend, trust_remote_code=args.trust_remote_code)
    except (UsageError, CheckpointError) as err:
        print(f"parity: error: {_error_line(err)}", file=sys.stderr)
        return 2
    except NoReference as err:
        print(f"parity: no reference can run {args.model}: {err}", file=sys.stderr)
        return 3
    print(format_report(report))
    if args.json:
        print(report.to_json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
