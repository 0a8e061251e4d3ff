"""Checkpoint I/O (lesson 04): Hugging Face model folders of all three Doge generations, safetensors only.

A folder holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. The generation is read off the tensors, never guessed from a name:

- A (classic Hub repos): ``model.word_embed`` & co. Classic attention (no q/k norm, one bias per query head).
- B (small-doge after mid-2025): transformers' names, classic attention (no ``q_norm``).
- C (transformers native): transformers' names with ``q_norm``/``k_norm``; one bias per KV head.

Loading renames A's keys to B's, checks every tensor's presence and shape against the model the
config describes, and reports *all* problems at once. Saving writes the native layout that
``transformers.AutoModelForCausalLM.from_pretrained`` reads (for native-attention models).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import DogeConfig

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")

# generation A key fragments -> transformers' names (order matters: the longest, most specific first)
CLASSIC_RENAMES = [
    (r"^model\.word_embed\.", "model.embed_tokens."),
    (r"^model\.final_layernorm\.", "model.norm."),
    (r"\.pre_layernorm\.", ".input_layernorm."),
    (r"\.pre_residual\.weight$", ".input_residual"),
    (r"\.post_layernorm\.", ".post_attention_layernorm."),
    (r"\.post_residual\.weight$", ".post_attention_residual"),
    (r"\.feed_forward\.", ".mlp."),
]
# classic config.json spellings -> ours
CLASSIC_CONFIG_ALIASES = {"num_cdmoe_experts": "num_experts", "num_cdmoe_experts_per_head": "num_experts_per_tok"}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message lists every problem found."""


# --------------------------------------------------------------------------------------------- reading
def resolve_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; a Hub id through the local Hub cache, then (if online) a download."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the model folder that holds config.json")
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", str(name_or_path)):
        raise CheckpointError(f"{name_or_path}: no such folder (and not a Hub id of the form org/name)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(f"{name_or_path}: not in the local Hub cache and HF_HUB_OFFLINE is set; "
                              "download it on a machine with internet or pass a local folder")
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=patterns))
    except Exception as err:  # network errors come in many types; the message is what matters
        raise CheckpointError(f"{name_or_path}: could not download from the Hub ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no details'}); "
                              "check the network or pass a local folder") from None


def refuse_pickle(folder: Path) -> None:
    found = [n for n in PICKLE_NAMES if (folder / n).exists()] + [p.name for p in folder.glob("*.bin")]
    if found:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(sorted(set(found)))}); this project never unpickles "
            "files (a pickle can run arbitrary code). Convert them once, in an environment you trust, e.g.\n"
            "  sd = torch.load('pytorch_model.bin', weights_only=True, map_location='cpu')\n"
            "  safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors', "
            "metadata={'format': 'pt'})")
    raise CheckpointError(f"{folder}: no {SAFE_SINGLE} and no {SAFE_INDEX}")


def weight_files(folder: Path) -> list[Path]:
    if (folder / SAFE_INDEX).exists():
        index = json.loads((folder / SAFE_INDEX).read_text())
        if "weight_map" not in index:
            raise CheckpointError(f"{folder / SAFE_INDEX}: no 'weight_map' field")
        files = sorted(set(index["weight_map"].values()))
        absent = [f for f in files if not (folder / f).exists()]
        if absent:
            raise CheckpointError(f"{folder / SAFE_INDEX} names shards that are not there: {absent}")
        return [folder / f for f in files]
    if (folder / SAFE_SINGLE).exists():
        return [folder / SAFE_SINGLE]
    refuse_pickle(folder)
    return []


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key in tensors:
                    raise CheckpointError(f"tensor {key} appears in two shards (second: {file.name})")
                tensors[key] = f.get_tensor(key)
    return tensors


def read_config(folder: Path, **overrides) -> DogeConfig:
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        fields = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if fields.get("model_type") not in (None, "doge"):
        raise CheckpointError(f"{path}: model_type is {fields['model_type']!r}, not 'doge'")
    for old, new in CLASSIC_CONFIG_ALIASES.items():
        if old in fields and new not in fields:
            fields[new] = fields[old]
    if "hidden_bias" in fields:  # classic configs have one switch for every projection bias
        fields.setdefault("attention_bias", fields["hidden_bias"])
        fields.setdefault("mlp_bias", fields["hidden_bias"])
    for key in ("architectures", "auto_map", "transformers_version", "model_type"):
        fields.pop(key, None)
    try:
        return DogeConfig(**{**fields, **overrides})
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from None


# ------------------------------------------------------------------------------------ generations
def detect_generation(keys) -> str:
    """'A' (classic names), 'B' (transformers names, classic attention) or 'C' (native), from the keys."""
    keys = list(keys)
    if any(k.startswith("model.word_embed.") or ".pre_layernorm." in k for k in keys):
        return "A"
    if any(k.endswith("self_attn.q_norm.weight") for k in keys):
        return "C"
    if any(k.endswith("self_attn.q_proj.weight") for k in keys):
        return "B"
    raise CheckpointError("these tensors are not a Doge checkpoint (no attention projections found)")


def rename_classic(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Generation A names -> transformers' names; the classic router bias is dropped (see below)."""
    renamed = {}
    for key, value in tensors.items():
        if key.endswith("feed_forward.router_gate.bias"):
            # transformers' router has no bias; a zero bias changes nothing, a non-zero one would.
            if value.abs().max() > 0:
                raise CheckpointError(f"{key} is non-zero; the native router has no bias, so this checkpoint "
                                      "cannot be represented exactly")
            continue
        for pattern, repl in CLASSIC_RENAMES:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    return renamed


MOE_ONLY = (".mlp.router_gate.weight", ".mlp.down_embed.weight", ".mlp.up_embed.weight")


def check_against(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str,
                  may_be_missing=lambda key: False) -> None:
    """Every expected tensor present with its shape, nothing extra; all problems in one error."""
    expected = model.state_dict()
    tied = model.config.tie_word_embeddings
    problems = []
    for key, param in expected.items():
        if key not in tensors:
            if not (tied and key == "lm_head.weight") and not may_be_missing(key):
                problems.append(f"missing {key} {tuple(param.shape)}")
        elif tuple(tensors[key].shape) != tuple(param.shape):
            problems.append(f"mis-shaped {key}: checkpoint {tuple(tensors[key].shape)}, model {tuple(param.shape)}")
    problems += [f"unexpected {key} {tuple(tensors[key].shape)}" for key in tensors if key not in expected]
    if problems:
        raise CheckpointError(f"{where}: {len(problems)} tensor problem(s):\n  " + "\n  ".join(problems))


def load_pretrained(cls, name_or_path, *, dtype: torch.dtype | str | None = None, device="cpu",
                    inherit_mlp: bool = False, **overrides):
    """Build ``cls`` from a folder or Hub id. dtype None -> float32; "auto" -> the stored dtype.

    inherit_mlp=True loads a *dense* checkpoint into an ``is_moe`` config (pass is_moe=True and the
    expert counts as overrides): the MLP becomes the shared expert, and only the router and the expert
    embeddings start from fresh initialisation. Their names are kept in ``model.new_tensors``.
    """
    folder = resolve_folder(name_or_path)
    tensors = read_tensors(weight_files(folder))
    generation = detect_generation(tensors)
    if generation == "A":
        tensors = rename_classic(tensors)
    overrides.setdefault("attention_variant", "native" if generation == "C" else "classic")
    config = read_config(folder, **overrides)
    if dtype == "auto":
        dtype = next(iter(tensors.values())).dtype
    if inherit_mlp and not config.is_moe:
        raise CheckpointError("inherit_mlp=True needs an MoE config: pass is_moe=True (and num_experts, "
                              "num_experts_per_tok)")
    model = cls(config)
    new_tensors = [k for k in model.state_dict() if inherit_mlp and k.endswith(MOE_ONLY) and k not in tensors]
    check_against(model, tensors, str(folder), may_be_missing=set(new_tensors).__contains__)
    model.load_state_dict(tensors, strict=False)
    model.new_tensors = new_tensors
    model.to(device=device, dtype=dtype or torch.float32)
    model.checkpoint_generation = generation
    model.config._name_or_path = str(name_or_path)
    return model.eval()


# --------------------------------------------------------------------------------------------- writing
def _to_bytes(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r}: use an int of bytes or e.g. '200MB'")
    return int(float(match[1]) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match[2]])


def plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if max_bytes is not None and current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = value
        size += nbytes
    return shards + [current] if current else shards


def save_pretrained(model, folder, state_dict: dict | None = None, max_shard_size: int | str | None = None) -> None:
    """Write config.json and safetensors weights; every file appears atomically (temp file + rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = dict(state_dict if state_dict is not None else model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # transformers re-ties it on load
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    shards = plan_shards(tensors, None if max_shard_size is None else _to_bytes(max_shard_size))
    metadata = {"format": "pt"}
    if len(shards) == 1:
        _atomic_save(shards[0], folder / SAFE_SINGLE, metadata)
        (folder / SAFE_INDEX).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, folder / name, metadata)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in tensors.values())
        _atomic_write_text(folder / SAFE_INDEX, json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (folder / SAFE_SINGLE).unlink(missing_ok=True)
    for stale in folder.glob("model-*-of-*.safetensors"):  # shards of an earlier, differently split save
        if len(shards) == 1 or stale.name not in weight_map.values():
            stale.unlink()
    config = model.config
    config.architectures = ["DogeForCausalLM"]
    _atomic_write_text(folder / "config.json", config.to_json_string(use_diff=False))


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
