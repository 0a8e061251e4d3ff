"""Checkpoint I/O (lesson 04): Hugging Face model folders of all three Doge generations, safetensors only.

A folder holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json`` (both at once is refused: nobody can tell which is current). The
generation is read off the tensors, never guessed from a name:

- A (classic Hub repos): ``model.word_embed`` & co. Classic attention (no q/k norm, one bias per query head).
- B (small-doge after mid-2025): transformers' names, classic attention (no ``q_norm``).
- C (transformers native): transformers' names with ``q_norm``/``k_norm``; one bias per KV head.

Loading reads the safetensors *headers* and config.json first, renames A's keys to B's and checks every
tensor's presence and shape against the model the config describes (built on the meta device, so a
config.json that says ``vocab_size=50_000_000`` beside tiny weights costs nothing), reporting *all*
problems at once; only then is memory taken. Every unreadable file (truncated safetensors, bad JSON,
non-UTF-8, a JSON value that is not an object) is a ``CheckpointError`` naming the file.

Saving writes the native layout that ``transformers.AutoModelForCausalLM.from_pretrained`` reads (for
native-attention models), into a fresh sibling folder that replaces the old one in a single step
(``atomic.replace_folder``): a save killed at any point leaves the old checkpoint or the new one, never
new shards beside an old index or new weights beside an old config. Files of the old folder that are
not checkpoint files (a tokenizer, a README) are carried over; old shards and temp files are not."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from safetensors import safe_open

from .atomic import TMP_SUFFIX, atomic_save_safetensors, atomic_write_text, interrupted_swap, replace_folder
from .config import DogeConfig

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
HUB_ID = re.compile(r"[\w.\-]+/[\w.\-]+")

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
CLASSIC_ROUTER_BIAS = "feed_forward.router_gate.bias"
# classic config.json spellings -> ours
CLASSIC_CONFIG_ALIASES = {"num_cdmoe_experts": "num_experts", "num_cdmoe_experts_per_head": "num_experts_per_tok"}


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be loaded; the message names it and lists every problem."""


# ------------------------------------------------------------------------------------------ folders
def resolve_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; a Hub id through the local Hub cache, then (if online) a download.

    Anything that looks like a path (``./x``, ``../x``, ``~/x``, absolute, ``runs/x`` when ``runs`` is a
    local folder, more than one ``/``) and does not exist is "no such folder", never a Hub lookup.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the model folder that holds {CONFIG}")
    text = str(name_or_path)
    previous = interrupted_swap(path)
    if previous is not None:
        raise CheckpointError(f"no such folder: {text} (a save into it was interrupted; the previous "
                              f"checkpoint is whole in {previous}: rename it back)")
    if _looks_local(text) or not HUB_ID.fullmatch(text):
        raise CheckpointError(f"no such folder: {text}")
    return _from_hub(text)


def _looks_local(text: str) -> bool:
    path = Path(text).expanduser()
    return (path.is_absolute() or text.startswith((".", "~")) or "\\" in text
            or text.endswith("/") or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()))


def _from_hub(repo_id: str) -> Path:
    import huggingface_hub.constants
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: what to do next depends on whether we may go online
        pass
    offline = huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in (
        "0", "", "false", "False")
    if offline:
        raise CheckpointError(f"{repo_id}: no local folder of that name, not in the local Hub cache, and "
                              "HF_HUB_OFFLINE is set; download it on a machine with internet or pass a local folder")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # network errors come in many types; the message is what matters
        raise CheckpointError(f"{repo_id}: could not download from the Hub ({_one_line(err)}); "
                              "check the network or pass a local folder") from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'no details'}"


# -------------------------------------------------------------------------------------------- files
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def read_json_object(path: Path) -> dict:
    """A JSON object from a UTF-8 file, or a ``CheckpointError`` naming the file and what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not an error
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: holds {_JSON_TYPES.get(type(value), type(value).__name__)}, "
                              "not a JSON object of fields")
    return value


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
    """The safetensors files of a folder: its single file, or the shards its index names (checked)."""
    index, single = folder / SAFE_INDEX, folder / SAFE_SINGLE
    if index.exists() and single.exists():
        raise CheckpointError(f"{folder} holds both {SAFE_INDEX} and {SAFE_SINGLE}, so which weights are "
                              "current is ambiguous (a save of one layout over the other was mixed up); "
                              "delete the stale one")
    if index.exists():
        return _shards_of(index)
    if single.exists():
        return [single]
    refuse_pickle(folder)
    return []


def _shards_of(index: Path) -> list[Path]:
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: no 'weight_map' object of tensor name -> shard file name")
    names = sorted(set(weight_map.values()))
    outside = [n for n in names if not _inside_folder(n)]
    if outside:
        raise CheckpointError(f"{index} names shards outside its folder (refused): {outside}")
    absent = [n for n in names if not (index.parent / n).is_file()]
    if absent:
        raise CheckpointError(f"{index} names shards that are not there: {absent}")
    return [index.parent / n for n in names]


def _inside_folder(name: str) -> bool:
    """A relative ``.safetensors`` path that stays inside the folder (no ``..``, no root, no drive)."""
    path = PurePosixPath(name)
    return (name.endswith(".safetensors") and not path.is_absolute() and ".." not in path.parts
            and "\\" not in name and ":" not in name)


def _read_safetensors(files: list[Path], take) -> dict:
    """``take(handle, key)`` for every tensor of every file; a duplicate or unreadable file is named."""
    out = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key in out:
                        raise CheckpointError(f"tensor {key} appears in two shards (second: {file.name})")
                    out[key] = take(handle, key)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error type for every kind of damage
            raise CheckpointError(f"{file}: not a readable safetensors file ({_one_line(err)})") from None
    return out


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers alone (no tensor data is read)."""
    return _read_safetensors(files, lambda handle, key: tuple(handle.get_slice(key).get_shape()))


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    return _read_safetensors(files, lambda handle, key: handle.get_tensor(key))


def read_config(folder: Path, keys=None, **overrides) -> DogeConfig:
    """``folder/config.json`` as a DogeConfig (classic spellings understood), ``overrides`` applied.

    ``keys``: the checkpoint's tensor names, when known. Some classic configs leave out
    ``tie_word_embeddings``; a checkpoint without ``lm_head.weight`` was then used tied, so it is read tied.
    """
    path = folder / CONFIG
    if not path.exists():
        raise CheckpointError(f"{folder}: no {CONFIG}")
    fields = read_json_object(path)
    if fields.get("model_type") not in (None, "doge"):
        raise CheckpointError(f"{path}: model_type is {fields['model_type']!r}, not 'doge'")
    for old, new in CLASSIC_CONFIG_ALIASES.items():
        if old in fields and new not in fields:
            fields[new] = fields[old]
    if "hidden_bias" in fields:  # classic configs have one switch for every projection bias
        fields.setdefault("attention_bias", fields["hidden_bias"])
        fields.setdefault("mlp_bias", fields["hidden_bias"])
    if "tie_word_embeddings" not in fields and keys is not None and "lm_head.weight" not in keys:
        fields["tie_word_embeddings"] = True
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


def classic_name(key: str) -> str:
    """One generation A tensor name -> transformers' name."""
    for pattern, repl in CLASSIC_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def rename_classic(tensors: dict) -> dict:
    """Generation A names -> transformers' names (values: tensors or shapes); the router bias is dropped.

    transformers' router has no bias: a zero bias changes nothing, a non-zero one would, so a tensor
    value is checked (a shape cannot be, and is simply dropped).
    """
    renamed = {}
    for key, value in tensors.items():
        if key.endswith(CLASSIC_ROUTER_BIAS):
            if isinstance(value, torch.Tensor) and value.abs().max() > 0:
                raise CheckpointError(f"{key} is non-zero; the native router has no bias, so this checkpoint "
                                      "cannot be represented exactly")
            continue
        renamed[classic_name(key)] = value
    return renamed


MOE_ONLY = (".mlp.router_gate.weight", ".mlp.down_embed.weight", ".mlp.up_embed.weight")


def check_against(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], where: str,
                  may_be_missing=lambda key: False) -> None:
    """Every tensor ``model`` expects present in ``shapes`` with its shape, nothing extra; all problems at once."""
    expected = model.state_dict()
    tied = model.config.tie_word_embeddings
    problems = []
    for key, param in expected.items():
        if key not in shapes:
            if not (tied and key == "lm_head.weight") and not may_be_missing(key):
                problems.append(f"missing {key} {tuple(param.shape)}")
        elif tuple(shapes[key]) != tuple(param.shape):
            problems.append(f"mis-shaped {key}: checkpoint {tuple(shapes[key])}, model {tuple(param.shape)}")
    problems += [f"unexpected {key} {tuple(shapes[key])}" for key in shapes if key not in expected]
    if problems:
        raise CheckpointError(f"{where}: {len(problems)} tensor problem(s):\n  " + "\n  ".join(problems))


@dataclass
class Inspection:
    """What a checkpoint folder holds, read from config.json and the safetensors headers only."""

    folder: Path
    files: list[Path]
    generation: str
    config: DogeConfig
    new_tensors: list[str] = field(default_factory=list)  # MoE tensors an inherited dense MLP lacks


def inspect_checkpoint(cls, name_or_path, *, inherit_mlp: bool = False, **overrides) -> Inspection:
    """Read and check a folder without taking memory: headers, config, and shapes against ``cls(config)``.

    The model the config describes is built on the meta device (shapes, no storage), so every size in
    config.json is checked against the weights before anything of that size is allocated.
    """
    folder = resolve_folder(name_or_path)
    files = weight_files(folder)
    shapes = read_shapes(files)
    generation = detect_generation(shapes)
    if generation == "A":
        shapes = rename_classic(shapes)
    overrides.setdefault("attention_variant", "native" if generation == "C" else "classic")
    config = read_config(folder, keys=shapes, **overrides)
    _check_layer_count(config, shapes, folder)
    if inherit_mlp and not config.is_moe:
        raise CheckpointError("inherit_mlp=True needs an MoE config: pass is_moe=True (and num_experts, "
                              "num_experts_per_tok)")
    with torch.device("meta"):
        skeleton = cls(config)
    new_tensors = [k for k in skeleton.state_dict() if inherit_mlp and k.endswith(MOE_ONLY) and k not in shapes]
    check_against(skeleton, shapes, str(folder), may_be_missing=set(new_tensors).__contains__)
    return Inspection(folder, files, generation, config, new_tensors)


def _check_layer_count(config: DogeConfig, shapes: dict, folder: Path) -> None:
    """Before the skeleton is built: even on the meta device, 10**5 layers take minutes to construct."""
    layers = {int(m[1]) for key in shapes if (m := re.match(r"model\.layers\.(\d+)\.", key))}
    if layers != set(range(config.num_hidden_layers)):
        held = f"layers 0..{max(layers)} ({len(layers)} distinct)" if layers else "no layers"
        raise CheckpointError(f"{folder / CONFIG}: num_hidden_layers={config.num_hidden_layers}, but the weights "
                              f"hold {held}")


def load_pretrained(cls, name_or_path, *, dtype: torch.dtype | str | None = None, device="cpu",
                    inherit_mlp: bool = False, **overrides):
    """Build ``cls`` from a folder or Hub id. dtype None -> float32; "auto" -> the stored dtype.

    inherit_mlp=True loads a *dense* checkpoint into an ``is_moe`` config (pass is_moe=True and the
    expert counts as overrides): the MLP becomes the shared expert, and only the router and the expert
    embeddings start from fresh initialisation. Their names are kept in ``model.new_tensors``.
    """
    found = inspect_checkpoint(cls, name_or_path, inherit_mlp=inherit_mlp, **overrides)
    tensors = read_tensors(found.files)
    if found.generation == "A":
        tensors = rename_classic(tensors)
    if dtype == "auto":
        dtype = next(iter(tensors.values())).dtype
    model = cls(found.config)
    model.load_state_dict(tensors, strict=False)
    model.new_tensors = found.new_tensors
    model.to(device=device, dtype=dtype or torch.float32)
    model.checkpoint_generation = found.generation
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


def is_checkpoint_file(path: Path) -> bool:
    """Files a save rewrites (weights, index, config) and temp files: never carried into the new folder."""
    name = path.name
    return (name in (CONFIG, SAFE_SINGLE, SAFE_INDEX) or SHARD_NAME.fullmatch(name) is not None
            or name.endswith(TMP_SUFFIX))


def save_pretrained(model, folder, state_dict: dict | None = None, max_shard_size: int | str | None = None) -> None:
    """Write config.json and safetensors weights as one unit (see the module docstring).

    The new checkpoint is written into a temporary sibling folder, which then replaces ``folder`` in one
    step; other files of the old folder are carried over (hard links), its old shards and temp files are not.
    """
    folder = Path(folder)
    _refuse_working_directory(folder)
    state = dict(state_dict if state_dict is not None else model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # transformers re-ties it on load
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    shards = plan_shards(tensors, None if max_shard_size is None else _to_bytes(max_shard_size))
    config = model.config
    config.architectures = ["DogeForCausalLM"]
    with replace_folder(folder, keep=lambda entry: not is_checkpoint_file(entry)) as staging:
        _write_weights(staging, shards)
        atomic_write_text(staging / CONFIG, config.to_json_string(use_diff=False))


def _write_weights(folder: Path, shards: list[dict[str, torch.Tensor]]) -> None:
    metadata = {"format": "pt"}
    if len(shards) == 1:
        atomic_save_safetensors(shards[0], folder / SAFE_SINGLE, metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        atomic_save_safetensors(shard, folder / name, metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for shard in shards for v in shard.values())
    atomic_write_text(folder / SAFE_INDEX, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                      indent=2))


def _refuse_working_directory(folder: Path) -> None:
    """Swapping the folder a process stands in would leave that process in the deleted old copy."""
    target, cwd = Path(os.path.realpath(folder)), Path(os.getcwd())
    if cwd == target or target in cwd.parents:
        raise ValueError(f"save_pretrained({str(folder)!r}): the folder holds the current working directory; "
                         "save into a subfolder (e.g. './my-doge')")
