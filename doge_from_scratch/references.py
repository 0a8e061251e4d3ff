"""The references our model is compared with (lesson 12), and stand-in checkpoints in the published layouts.

A reference is an installed implementation that runs the same checkpoint: ``load_reference`` picks one, and
``parity`` runs both and reports.

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

Stand-ins: ``write_stand_in`` writes a random-weight checkpoint laid out as generation C (native) or A (classic),
for the tests and the lessons when a published model's weights are not at hand. The classic names are the
published renames read backwards, written here independently of ``checkpoint.rename_classic``, so a wrong rename
in our loader shows up as a mismatch instead of cancelling out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .atomic import atomic_save_safetensors, atomic_write_text, replace_folder
from .checkpoint import detect_generation, read_tensors, weight_files
from .model import DogeForCausalLM
from .testing import randomize_


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


def quiet_transformers() -> None:
    """Loading reports and progress bars would bury the report; errors still show."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
