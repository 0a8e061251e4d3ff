"""Pretraining a tiny Doge from scratch (lesson 06).

The recipe is the small-doge one scaled down to a CPU: AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.01),
a warmup-stable-decay learning-rate schedule, gradient clipping at 1.0, gradient accumulation, optional
bfloat16 autocast. Documents are packed into fixed-length rows (bos + text + eos, one after another), so every
token is a training token and every micro-batch has the same number of them.

Checkpoints hold everything needed to continue exactly where training stopped - weights, AdamW moments,
scheduler position, RNG state, loss history - as safetensors (tensors) plus JSON (scalars), never pickle.
Each is written into a temporary folder that replaces the step's folder in one step (``atomic``), and
`latest.json` is replaced atomically after that, so an interrupted save never leaves a half-written
checkpoint behind. Resuming checks that the
run is the one that was saved (same data, batch, seed, schedule, optimizer settings) and refuses otherwise,
unless ``allow_config_change=True`` asks for the new settings explicitly; a checkpoint that cannot be read
is named in a warning and the previous one is used instead.

    from doge_from_scratch.pretrain import ensure_pretrained
    folder = ensure_pretrained()   # data/tiny-doge, the recipe's committed run (retrained only if it was deleted)
    student = ensure_student_base()   # data/tiny-doge-student: the same recipe on lesson 09's smaller student
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .atomic import atomic_save_safetensors, atomic_write_text, replace_folder
from .checkpoint import CheckpointError
from .config import DogeConfig
from .data import data_file, read_jsonl
from .model import DogeForCausalLM
from .paths import DATA_DIR, PRETRAINED_DIR, TINY_DOGE_DIR, TINY_DOGE_STUDENT_DIR, TOKENIZER_DIR
from .tokenizer import load_tokenizer
from .train_utils import (OptimizerSettings, StageLoss, make_optimizer, optimizer_step, progress_bar, wsd_phase_steps,
                          wsd_schedule)


# ----------------------------------------------------------------------------------------------------------
# Recipe
# ----------------------------------------------------------------------------------------------------------


def tiny_doge_config(vocab_size: int, **overrides: Any) -> DogeConfig:
    """A Doge-20M-shaped model shrunk for a CPU: 4 layers, hidden 192, 3 query heads sharing 1 KV head.

    `vocab_size` is rounded up to a multiple of 64 (unused rows are never produced by the tokenizer).
    """
    fields: dict[str, Any] = dict(
        vocab_size=64 * math.ceil(vocab_size / 64),
        hidden_size=192,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=3,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        keep_window_size=2048,
    )
    fields.update(overrides)
    return DogeConfig.from_preset("Doge-20M", **fields)


@dataclass
class PretrainSettings(OptimizerSettings):
    """Everything that decides a pretraining run; the defaults are the lessons' recipe.

    The fields every training stage has (``lr``, ``warmup``, ``min_lr_rate``, ``weight_decay``, ``betas``, ``eps``,
    ``max_grad_norm``, ``seed``, ``rows_per_micro_batch``, ``accumulation``) mean here what they mean in SFT, DPO,
    distillation and GRPO (``train_utils.OptimizerSettings``); ``warmup`` and ``decay_phase`` are fractions of
    ``steps`` (or step counts, if >= 1), the warmup-stable-decay schedule's first and last phase.
    """

    lr: float = 2e-3
    min_lr_rate: float = 0.0
    seq_len: int = 256
    rows_per_micro_batch: int = 8
    accumulation: int = 1
    steps: int = 1400  # data/tiny-doge; lesson 06 runs 800 to fit its time (docs/lesson-models.md: why 1400)
    decay_phase: float = 0.2
    decay_type: str = "cosine"
    bf16: bool = False
    eval_every: int = 100
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    num_threads: int = 2
    max_train_docs: int | None = None
    max_val_docs: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.rows_per_micro_batch * self.accumulation

    def phase_steps(self) -> tuple[int, int, int]:
        """(warmup, stable, decay) step counts of the warmup-stable-decay schedule."""
        return wsd_phase_steps(self.steps, self.warmup, self.decay_phase)

    def __post_init__(self) -> None:
        if not isinstance(self.keep_checkpoints, int) or self.keep_checkpoints < 1:
            raise ValueError(f"PretrainSettings.keep_checkpoints={self.keep_checkpoints!r}: must be an integer >= 1 "
                             "(the checkpoint latest.json points to is always kept; pass checkpoint_dir=None "
                             "for no checkpoints)")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def pack_documents(texts: Sequence[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Concatenate `bos text eos` for every document and cut the stream into rows. -> [N, seq_len]

    Documents that already carry bos/eos (chat transcripts rendered with the chat template) are not
    wrapped again. The tail that does not fill a row is dropped.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or ids[0] != bos:
            ids = [bos] + ids
        if ids[-1] != eos:
            ids = ids + [eos]
        stream.extend(ids)
    n_rows = len(stream) // seq_len
    if n_rows == 0:
        raise ValueError(f"{len(stream)} tokens do not fill a single row of seq_len={seq_len}")
    return torch.tensor(stream[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)


def load_corpus(split: str, limit: int | None = None, data_dir: str | Path = DATA_DIR) -> list[str]:
    rows = read_jsonl(data_file("pretrain", split, data_dir), "pretrain")
    return [row["text"] for row in rows[:limit]]


def validation_rows(limit_docs: int | None = 64, seq_len: int = 128, data_dir: str | Path = DATA_DIR) -> torch.Tensor:
    """Packed rows [N, seq_len] of the validation split ("test"), with the lesson tokenizer (what int8's quality
    check and the benchmarks score on)."""
    return pack_documents(load_corpus("test", limit_docs, data_dir), load_tokenizer(), seq_len)


class RowSchedule:
    """Which packed rows make up each micro-batch: a fresh seeded shuffle per epoch.

    The order is a pure function of (seed, micro-batch index), so a resumed run sees exactly the rows
    the uninterrupted run would have seen, with no data-loader state to save.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n_rows, generator=g)
        return self._perms[epoch]

    def rows(self, micro_batch_index: int) -> torch.Tensor:
        start = micro_batch_index * self.batch_size
        sample_ids = range(start, start + self.batch_size)
        return torch.stack([self._perm(k // self.n_rows)[k % self.n_rows] for k in sample_ids])


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    model: DogeForCausalLM
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0  # optimizer steps done
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per step: step, loss, lr, grad_norm
    val_history: list[dict[str, float]] = field(default_factory=list)  # step, val_loss
    train_data: dict[str, Any] | None = None  # data_fingerprint of the packed training rows


def build_state(cfg: PretrainSettings, vocab_size: int) -> TrainState:
    torch.manual_seed(cfg.seed)
    model = DogeForCausalLM(tiny_doge_config(vocab_size, **cfg.model_overrides))
    model.train()
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, decay="matrices")
    return TrainState(model, optimizer, wsd_schedule(optimizer, cfg.steps, cfg.warmup, cfg.decay_phase, cfg.decay_type,
                                                      cfg.min_lr_rate))


def lm_loss(model: DogeForCausalLM, rows: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Mean next-token loss of packed rows [B, T] (every position is a real token)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(input_ids=rows, labels=rows).loss.float()


def packed_rows_loss(bf16: bool) -> StageLoss:
    """Pretraining's loss in the shape ``train_utils.optimizer_step`` takes: each micro-batch of packed rows is one
    item, its mean next-token loss. Every packed row holds the same number of tokens, so the mean of the micro-batch
    means is the step's mean over tokens, and one process or several compute the same step."""
    return StageLoss(lambda model, batch: (lm_loss(model, batch["input_ids"], bf16), 1, {}), count=lambda batch: 1)


def train_step(state: TrainState, train_rows: torch.Tensor, schedule: RowSchedule, cfg: PretrainSettings) -> dict:
    """One optimizer step over `accumulation` micro-batches (``train_utils.optimizer_step``, the loop every
    training stage shares). Returns the step's log entry."""
    first = state.step * cfg.accumulation
    micro_batches = [{"input_ids": train_rows[schedule.rows(first + micro)]} for micro in range(cfg.accumulation)]
    log = optimizer_step(state.model, micro_batches, packed_rows_loss(cfg.bf16), state.optimizer, state.scheduler,
                         cfg.max_grad_norm, step=state.step + 1)
    state.step += 1
    entry = {"step": state.step, "loss": log.loss, "lr": log.lr, "grad_norm": log.grad_norm}
    state.history.append(entry)
    return entry


@torch.no_grad()
def evaluate(model: DogeForCausalLM, rows: torch.Tensor, batch_size: int = 16, bf16: bool = False) -> float:
    """Mean next-token loss over all packed validation rows [N, T]."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        total += lm_loss(model, batch, bf16).item() * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors for tensors, JSON for everything else
# ----------------------------------------------------------------------------------------------------------

LATEST = "latest.json"
_STEP_DIR = re.compile(r"step_(\d+)")
# Settings that change nothing a resumed run computes: when and where it reports and saves.
RESUME_NEUTRAL_FIELDS = frozenset({"eval_every", "checkpoint_every", "keep_checkpoints", "num_threads"})


def data_fingerprint(rows: torch.Tensor) -> dict[str, Any]:
    """What identifies the packed training rows [N, T]: their count and a SHA-256 of the token ids."""
    ids = rows.to(torch.int64).contiguous().numpy().tobytes()
    return {"rows": int(rows.shape[0]), "sha256": hashlib.sha256(ids).hexdigest()}


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, param_state in sd["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [dict(g, betas=tuple(g["betas"])) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def checkpoint_steps(folder: str | Path) -> dict[int, Path]:
    """{step: folder} of every ``step_N`` checkpoint folder in ``folder`` (numbers compared as numbers)."""
    found = {}
    for path in Path(folder).glob("step_*"):
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return found


def prune_checkpoints(folder: str | Path, newest: int, keep: int) -> None:
    """Keep checkpoint ``newest`` (the one latest.json points to) and the ``keep - 1`` before it; delete older ones.

    Folders with a higher step belong to an earlier run that went further: they are left alone (this run
    overwrites them when it gets there), and they are never taken for this run's own newest checkpoint.
    """
    steps = checkpoint_steps(folder)
    older = sorted(step for step in steps if step < newest)
    for step in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(steps[step])


def save_checkpoint(state: TrainState, cfg: PretrainSettings, folder: str | Path) -> Path:
    """Write `folder/step_XXXXXX/` (complete before it appears) and point `folder/latest.json` at it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{state.step:06d}"
    with replace_folder(final) as tmp:
        state.model.save_pretrained(tmp)
        opt_tensors, opt_meta = _optimizer_to_files(state.optimizer)
        atomic_save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        atomic_save_safetensors({"torch_cpu": torch.get_rng_state()}, tmp / "rng.safetensors")
        # Our lambda is rebuilt from the config on resume; LambdaLR stores None for plain functions.
        scheduler_state = dict(state.scheduler.state_dict(), lr_lambdas=[None] * len(state.optimizer.param_groups))
        trainer_state = {
            "step": state.step,
            "optimizer": opt_meta,
            "scheduler": scheduler_state,
            "history": state.history,
            "val_history": state.val_history,
            "pretrain_settings": cfg.to_json(),
            "train_data": state.train_data,
        }
        atomic_write_text(tmp / "trainer_state.json", json.dumps(trainer_state, indent=1))
    atomic_write_text(folder / LATEST, json.dumps({"step": state.step, "path": final.name}, indent=1))
    prune_checkpoints(folder, state.step, cfg.keep_checkpoints)
    return final


def latest_checkpoint(folder: str | Path) -> Path | None:
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    return Path(folder) / json.loads(pointer.read_text())["path"]


@dataclass
class Checkpoint:
    """Everything one checkpoint folder holds, read and checked before any of it touches a TrainState."""

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    rng: torch.Tensor
    trainer_state: dict[str, Any]


def _read_file(path: Path, reader):
    try:
        return reader(path)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: file missing") from err
    except (OSError, SafetensorError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from err


def read_checkpoint(checkpoint: str | Path) -> Checkpoint:
    """Read and sanity-check the four files of a checkpoint folder; CheckpointError names the first bad one."""
    checkpoint = Path(checkpoint)
    weights = _read_file(checkpoint / "model.safetensors", lambda p: load_file(str(p)))
    optimizer_tensors = _read_file(checkpoint / "optimizer.safetensors", lambda p: load_file(str(p)))
    rng = _read_file(checkpoint / "rng.safetensors", lambda p: load_file(str(p))).get("torch_cpu")
    if rng is None:
        raise CheckpointError(f"{checkpoint / 'rng.safetensors'}: no 'torch_cpu' tensor")
    trainer_state = _read_file(checkpoint / "trainer_state.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
    needed = ("step", "optimizer", "scheduler", "history", "val_history")
    if not isinstance(trainer_state, dict) or any(key not in trainer_state for key in needed):
        raise CheckpointError(f"{checkpoint / 'trainer_state.json'}: expected an object with keys {list(needed)}")
    return Checkpoint(checkpoint, weights, optimizer_tensors, rng, trainer_state)


def resume_differences(saved: Checkpoint, cfg: PretrainSettings, train_data: dict[str, Any] | None) -> list[str]:
    """The settings in which ``cfg`` (and the packed training rows) differ from the run that wrote ``saved``.

    Checkpoints written before the config was stored compare as equal: there is nothing to compare with.
    """
    stored = saved.trainer_state.get("pretrain_settings")
    if stored is None and "pretrain_config" in saved.trainer_state:
        raise CheckpointError(f"{saved.path}: written before the settings were renamed (pretrain_config, "
                              "PretrainConfig); its fields cannot be compared with PretrainSettings: start again")
    changes = []
    if stored is not None:
        current = json.loads(json.dumps(cfg.to_json()))  # tuples as lists, as stored
        for name in sorted(set(stored) | set(current)):
            if name not in RESUME_NEUTRAL_FIELDS and stored.get(name) != current.get(name):
                changes.append(f"{name} {stored.get(name)!r} -> {current.get(name)!r}")
    saved_data = saved.trainer_state.get("train_data")
    if saved_data is not None and train_data is not None and saved_data != train_data:
        changes.append(f"data (packed training rows) {saved_data} -> {train_data}")
    return changes


def _apply_current_settings(state: TrainState, cfg: PretrainSettings) -> None:
    """Give the restored optimizer and scheduler this run's settings.

    ``load_state_dict`` brings back the saved learning rate, weight decay, betas and eps with the moments;
    set them from ``cfg`` so an accepted change takes effect. For an unchanged config this recomputes the
    saved values exactly (the same products), so resuming stays bit-exact.
    """
    decays = (cfg.weight_decay, 0.0)  # make_optimizer's two groups: decayed (matrices), then the rest
    factor = state.scheduler.lr_lambdas[0](state.scheduler.last_epoch)
    for group, weight_decay in zip(state.optimizer.param_groups, decays):
        group.update(weight_decay=weight_decay, betas=cfg.betas, eps=cfg.eps, initial_lr=cfg.lr,
                     lr=cfg.lr * factor)
    state.scheduler.base_lrs = [cfg.lr] * len(state.optimizer.param_groups)
    state.scheduler._last_lr = [group["lr"] for group in state.optimizer.param_groups]


def apply_checkpoint(state: TrainState, saved: Checkpoint, cfg: PretrainSettings | None = None) -> None:
    """Restore weights, optimizer, scheduler, RNG and history from ``saved`` into a freshly built ``state``.

    With ``cfg``, the optimizer and schedule take its settings (see ``_apply_current_settings``); without,
    the saved ones.
    """
    missing, unexpected = state.model.load_state_dict(saved.weights, strict=False)
    tied_ok = {"lm_head.weight"} if state.model.config.tie_word_embeddings else set()
    if set(missing) - tied_ok or unexpected:
        raise KeyError(f"{saved.path}: checkpoint does not match the model: missing "
                       f"{sorted(set(missing) - tied_ok)}, unexpected {sorted(unexpected)}")
    trainer_state = saved.trainer_state
    state.optimizer.load_state_dict(_optimizer_from_files(saved.optimizer_tensors, trainer_state["optimizer"]))
    state.scheduler.load_state_dict(trainer_state["scheduler"])
    if cfg is not None:
        _apply_current_settings(state, cfg)
    torch.set_rng_state(saved.rng)
    state.step = trainer_state["step"]
    state.history = trainer_state["history"]
    state.val_history = trainer_state["val_history"]


def load_checkpoint(state: TrainState, checkpoint: str | Path, cfg: PretrainSettings | None = None) -> None:
    """Read ``checkpoint`` and restore it into ``state`` (with ``cfg``'s optimizer settings, else the saved ones)."""
    apply_checkpoint(state, read_checkpoint(checkpoint), cfg)


def resume_candidates(folder: str | Path) -> list[Path]:
    """Where to resume from, best first: latest.json's checkpoint, then the older ones, newest first.

    An unreadable latest.json is warned about and every checkpoint folder becomes a candidate.
    """
    folder = Path(folder)
    pointer = folder / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"resume=True but no {LATEST} in {folder}")
    steps = checkpoint_steps(folder)
    try:
        latest = json.loads(pointer.read_text(encoding="utf-8"))
        newest, path = int(latest["step"]), folder / latest["path"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"{pointer}: unreadable ({type(err).__name__}: {err}); trying the checkpoint folders "
                      f"{[steps[s].name for s in sorted(steps, reverse=True)]}", stacklevel=3)
        return [steps[s] for s in sorted(steps, reverse=True)]
    return [path] + [steps[s] for s in sorted(steps, reverse=True) if s < newest]


def resume_from(state: TrainState, folder: str | Path, cfg: PretrainSettings,
                allow_config_change: bool = False) -> Path:
    """Restore the newest readable checkpoint of ``folder`` into ``state``; returns its path.

    A checkpoint that cannot be read is named in a warning and the previous one is tried. A run whose settings
    or data differ from the saved run's raises ValueError listing the differences, unless
    ``allow_config_change`` (then they are listed in a warning and the new settings are used).
    """
    failures = []
    for path in resume_candidates(folder):
        try:
            saved = read_checkpoint(path)
        except CheckpointError as err:
            failures.append(str(err))
            warnings.warn(f"cannot resume from {path.name}: {err}; trying the previous checkpoint", stacklevel=3)
            continue
        changes = resume_differences(saved, cfg, state.train_data)
        if changes and not allow_config_change:
            raise ValueError(f"resuming {path} with different settings: {'; '.join(changes)}. Use the saved "
                             "settings, or pass allow_config_change=True to continue with the new ones")
        if changes:
            warnings.warn(f"resuming {path} with changed settings (allow_config_change=True): {'; '.join(changes)}",
                          stacklevel=3)
        apply_checkpoint(state, saved, cfg)
        return path
    raise CheckpointError(f"no readable checkpoint in {folder}: {'; '.join(failures)}")


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    model: DogeForCausalLM
    history: list[dict[str, float]]
    val_history: list[dict[str, float]]
    tokens_per_second: float
    seconds: float

    @property
    def final_val_loss(self) -> float:
        return self.val_history[-1]["val_loss"]


def pretrain(cfg: PretrainSettings | None = None, tokenizer=None, checkpoint_dir: str | Path | None = None,
             resume: bool = False, stop_after: int | None = None, progress: bool = True,
             data_dir: str | Path = DATA_DIR, allow_config_change: bool = False) -> PretrainResult:
    """Run (or continue) the recipe. `stop_after` ends early at that step, as an interruption would.

    ``resume=True`` continues from ``checkpoint_dir`` (see ``resume_from``): it refuses settings or data that
    differ from the saved run's unless ``allow_config_change=True``.
    """
    cfg = cfg or PretrainSettings()
    torch.set_num_threads(cfg.num_threads)
    tokenizer = tokenizer or load_tokenizer()
    train_rows = pack_documents(load_corpus("train", cfg.max_train_docs, data_dir), tokenizer, cfg.seq_len)
    val_rows = pack_documents(load_corpus("test", cfg.max_val_docs, data_dir), tokenizer, cfg.seq_len)
    schedule = RowSchedule(len(train_rows), cfg.rows_per_micro_batch, cfg.seed)
    state = build_state(cfg, len(tokenizer))
    state.train_data = data_fingerprint(train_rows)
    if resume:
        if checkpoint_dir is None:
            raise FileNotFoundError(f"resume=True but no checkpoint_dir (the folder holding {LATEST})")
        resume_from(state, checkpoint_dir, cfg, allow_config_change)
    elif not state.val_history:
        state.val_history.append({"step": 0, "val_loss": evaluate(state.model, val_rows, bf16=cfg.bf16)})
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    start_step, started = state.step, time.perf_counter()
    bar = progress_bar(range(state.step, end), desc="pretraining", disable=not progress, initial=0)
    for _ in bar:
        entry = train_step(state, train_rows, schedule, cfg)
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            state.val_history.append({"step": state.step, "val_loss": evaluate(state.model, val_rows, bf16=cfg.bf16)})
        bar.set_postfix(refresh=False, loss=f"{entry['loss']:.3f}", val=f"{state.val_history[-1]['val_loss']:.3f}",
                        lr=f"{entry['lr']:.2e}")
        if checkpoint_dir is not None and (state.step % cfg.checkpoint_every == 0 or state.step == end):
            save_checkpoint(state, cfg, checkpoint_dir)
    seconds = time.perf_counter() - started
    tokens = (state.step - start_step) * cfg.tokens_per_step
    state.model.eval()
    return PretrainResult(state.model, state.history, state.val_history, tokens / max(seconds, 1e-9), seconds)


def save_pretrained_model(result: PretrainResult, tokenizer, folder: str | Path, cfg: PretrainSettings) -> Path:
    """Write the model and tokenizer in Hugging Face layout, plus the run's curves (replaced as a whole)."""
    folder = Path(folder)
    with replace_folder(folder) as tmp:
        result.model.save_pretrained(tmp)
        tokenizer.save_pretrained(str(tmp))
        summary = {"final_val_loss": result.final_val_loss, "history": result.history,
                   "val_history": result.val_history, "tokens_per_second": result.tokens_per_second,
                   "seconds": result.seconds, "pretrain_settings": cfg.to_json()}
        atomic_write_text(tmp / "pretrain_summary.json", json.dumps(summary, indent=1))
    return folder


# Lesson 09's student: 0.47M parameters against the 1.58M of `tiny_doge_config` (3.4x), for the teacher to be
# clearly the larger model. The width shrinks, not the depth: at this vocabulary the embedding is a large share
# of the parameters, and carrying a number from the question to the answer needs the layers (a 4-layer chat model
# cut to 3 layers answered 57% of held-out comparisons, cut to 2 layers nothing).
STUDENT_MODEL: dict[str, Any] = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=4,
                                     num_attention_heads=3, num_key_value_heads=1, head_dim=32)


def student_settings(**changes: Any) -> PretrainSettings:
    """The lessons' recipe, unchanged, on the student's model (`STUDENT_MODEL`): data/tiny-doge-student's run."""
    return PretrainSettings(**{"model_overrides": dict(STUDENT_MODEL), **changes})


def ensure_pretrained(path: str | Path | None = None, progress: bool = True,
                      settings: PretrainSettings | None = None) -> Path:
    """The pretrained tiny Doge the lessons after 06 start from: ``path`` (default data/tiny-doge, committed);
    if that folder is incomplete, ``settings`` (default the lessons' recipe) is run first and saved there in
    bfloat16, as committed."""
    folder = Path(path) if path is not None else TINY_DOGE_DIR

    def complete() -> bool:
        needed = ("config.json", "model.safetensors", "tokenizer.json", "pretrain_summary.json")
        return all((folder / name).is_file() for name in needed)

    if complete():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Several notebooks may ask at once (e.g. 07-09 under one pytest run): the first trains, the others wait
    # on the lock and then find the folder.
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        _lock_exclusive(lock)
        if complete():
            return folder
        cfg = settings or PretrainSettings()
        tokenizer = load_tokenizer(TOKENIZER_DIR)
        result = pretrain(cfg, tokenizer, progress=progress)
        result.model.to(torch.bfloat16)
        return save_pretrained_model(result, tokenizer, folder, cfg)


def ensure_student_base(progress: bool = True) -> Path:
    """Lesson 09's student before distillation: data/tiny-doge-student (committed), the recipe's run on
    `STUDENT_MODEL`; rerun (about 4-5 minutes on 2 cores) and saved in bfloat16 only if that folder is incomplete."""
    return ensure_pretrained(TINY_DOGE_STUDENT_DIR, progress, student_settings())


def _lock_exclusive(handle) -> None:
    """Block until this process holds an exclusive lock on the open file (released when it is closed)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst two processes train the same model
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


# data/tiny-doge (paths.TINY_DOGE_DIR) was made by `python -m doge_from_scratch.pretrain --out data/tiny-doge
# --save-dtype bfloat16`: the default recipe, seeded; bfloat16 on disk keeps it near 3 MB, and from_pretrained loads
# it as float32. data/tiny-doge-student is the same command with `--student --out data/tiny-doge-student` (0.9 MB).
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the lessons' tiny Doge and save it.")
    parser.add_argument("--out", default=str(PRETRAINED_DIR))
    parser.add_argument("--steps", type=int, default=PretrainSettings.steps)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--checkpoints", default=None, help="folder for resumable checkpoints")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="float32",
                        help="dtype of the saved weights (training is unchanged); bfloat16 halves the file, which "
                             f"is how {TINY_DOGE_DIR.relative_to(DATA_DIR.parent)} is shipped")
    parser.add_argument("--student", action="store_true",
                        help="the recipe on lesson 09's smaller student model (pretrain.STUDENT_MODEL)")
    args = parser.parse_args(argv)
    cfg = (student_settings if args.student else PretrainSettings)(steps=args.steps, bf16=args.bf16)
    tokenizer = load_tokenizer()
    result = pretrain(cfg, tokenizer, checkpoint_dir=args.checkpoints, resume=args.resume)
    result.model.to(SAVE_DTYPES[args.save_dtype])
    save_pretrained_model(result, tokenizer, args.out, cfg)
    print(json.dumps({"final_val_loss": result.final_val_loss, "tokens_per_second": result.tokens_per_second,
                      "seconds": result.seconds, "out": args.out}))


if __name__ == "__main__":
    main()
