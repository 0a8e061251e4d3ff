"""Pretraining a tiny Doge from scratch (lesson 06).

The recipe is the small-doge one scaled down to a CPU: AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.01),
a warmup-stable-decay learning-rate schedule, gradient clipping at 1.0, gradient accumulation, optional
bfloat16 autocast. Documents are packed into fixed-length rows (bos + text + eos, one after another), so every
token is a training token and every micro-batch has the same number of them.

Checkpoints hold everything needed to continue exactly where training stopped - weights, AdamW moments,
scheduler position, RNG state, loss history - as safetensors (tensors) plus JSON (scalars), never pickle.
They are written into a temporary folder and renamed into place, and `latest.json` is replaced atomically
after that, so an interrupted save never leaves a half-written checkpoint behind.

    from doge_from_scratch.pretrain import ensure_pretrained
    folder = ensure_pretrained()   # artifacts/pretrained: runs the recipe below once if it is not there
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import DogeConfig
from .data import DATA_DIR, data_file, read_jsonl
from .model import DogeForCausalLM
from .tokenizer import DEFAULT_TOKENIZER_DIR, PROJECT_ROOT, load_tokenizer
from .train_utils import progress_bar

DEFAULT_PRETRAINED_DIR = PROJECT_ROOT / "artifacts" / "pretrained"


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
class PretrainConfig:
    """Everything that decides a pretraining run; the defaults are the lessons' recipe."""

    seed: int = 0
    seq_len: int = 256
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int = 800
    peak_lr: float = 2e-3
    warmup_ratio: float = 0.1
    decay_ratio: float = 0.2
    decay_type: str = "cosine"
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
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
        return self.seq_len * self.micro_batch_size * self.grad_accum_steps

    def phase_steps(self) -> tuple[int, int, int]:
        """(warmup, stable, decay) step counts of the warmup-stable-decay schedule."""
        warmup = round(self.warmup_ratio * self.max_steps)
        decay = round(self.decay_ratio * self.max_steps)
        return warmup, self.max_steps - warmup - decay, decay

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "PretrainConfig":
        values = dict(values)
        values["betas"] = tuple(values["betas"])
        return cls(**values)


def wsd_lr_factor(step: int, warmup: int, stable: int, decay: int, decay_type: str = "cosine",
                  min_lr_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based) of a warmup-stable-decay schedule.

    Linear warmup from min_lr_ratio to 1, a long flat stretch, then a short decay back to min_lr_ratio.
    The flat stretch is what makes WSD convenient: a run can be extended (or branched) from any stable
    checkpoint, and only the short decay has to be redone.
    """
    if step < warmup:
        return min_lr_ratio + (1.0 - min_lr_ratio) * step / max(1, warmup)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / max(1, decay)
        shapes = {
            "linear": 1.0 - progress,
            "cosine": 0.5 * (1.0 + math.cos(math.pi * progress)),
            "1-sqrt": 1.0 - math.sqrt(progress),
        }
        if decay_type not in shapes:
            raise ValueError(f"decay_type={decay_type!r}; choose one of {sorted(shapes)}")
        return min_lr_ratio + (1.0 - min_lr_ratio) * shapes[decay_type]
    return min_lr_ratio


def make_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only.

    Vectors (RMSNorm weights, the residual scales, A) are left undecayed: pulling a residual scale or a
    norm weight towards 0 would shrink the signal rather than regularise it.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():  # each tied tensor appears once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=cfg.betas, eps=cfg.eps)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: PretrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, stable, decay = cfg.phase_steps()
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: wsd_lr_factor(step, warmup, stable, decay, cfg.decay_type, cfg.min_lr_ratio))


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

    def epoch_of(self, micro_batch_index: int) -> float:
        return micro_batch_index * self.batch_size / self.n_rows


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


def build_state(cfg: PretrainConfig, vocab_size: int) -> TrainState:
    torch.manual_seed(cfg.seed)
    model = DogeForCausalLM(tiny_doge_config(vocab_size, **cfg.model_overrides))
    model.train()
    optimizer = make_optimizer(model, cfg)
    return TrainState(model, optimizer, make_scheduler(optimizer, cfg))


def lm_loss(model: DogeForCausalLM, rows: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Mean next-token loss of packed rows [B, T] (every position is a real token)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(input_ids=rows, labels=rows).loss.float()


def train_step(state: TrainState, train_rows: torch.Tensor, schedule: RowSchedule, cfg: PretrainConfig) -> dict:
    """One optimizer step over `grad_accum_steps` micro-batches. Returns the step's log entry."""
    model, optimizer = state.model, state.optimizer
    lr = optimizer.param_groups[0]["lr"]
    total = 0.0
    for micro in range(cfg.grad_accum_steps):
        rows = train_rows[schedule.rows(state.step * cfg.grad_accum_steps + micro)]
        # Equal token counts per micro-batch, so the mean of micro-batch means is the step's mean loss.
        loss = lm_loss(model, rows, cfg.bf16) / cfg.grad_accum_steps
        loss.backward()
        total += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    state.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    entry = {"step": state.step, "loss": total, "lr": lr, "grad_norm": float(grad_norm)}
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


def _atomic_write_json(path: Path, value: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


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


def save_checkpoint(state: TrainState, cfg: PretrainConfig, folder: str | Path) -> Path:
    """Write `folder/step_XXXXXX/` (complete before it appears) and point `folder/latest.json` at it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{final.name}.tmp-"))
    try:
        state.model.save_pretrained(tmp)
        opt_tensors, opt_meta = _optimizer_to_files(state.optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"torch_cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        # Our lambda is rebuilt from the config on resume; LambdaLR stores None for plain functions.
        scheduler_state = dict(state.scheduler.state_dict(), lr_lambdas=[None] * len(state.optimizer.param_groups))
        trainer_state = {
            "step": state.step,
            "optimizer": opt_meta,
            "scheduler": scheduler_state,
            "history": state.history,
            "val_history": state.val_history,
            "pretrain_config": cfg.to_json(),
        }
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _atomic_write_json(folder / LATEST, {"step": state.step, "path": final.name})
    kept = sorted(folder.glob("step_*"))
    for old in kept[: max(0, len(kept) - cfg.keep_checkpoints)]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(folder: str | Path) -> Path | None:
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    return Path(folder) / json.loads(pointer.read_text())["path"]


def load_checkpoint(state: TrainState, checkpoint: str | Path) -> None:
    """Restore weights, optimizer, scheduler, RNG and history into a freshly built `state`."""
    checkpoint = Path(checkpoint)
    weights = load_file(str(checkpoint / "model.safetensors"))
    missing, unexpected = state.model.load_state_dict(weights, strict=False)
    tied_ok = {"lm_head.weight"} if state.model.config.tie_word_embeddings else set()
    if set(missing) - tied_ok or unexpected:
        raise KeyError(f"{checkpoint}: checkpoint does not match the model: missing {sorted(set(missing) - tied_ok)}, "
                       f"unexpected {sorted(unexpected)}")
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    opt_tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    state.optimizer.load_state_dict(_optimizer_from_files(opt_tensors, trainer_state["optimizer"]))
    state.scheduler.load_state_dict(trainer_state["scheduler"])
    torch.set_rng_state(load_file(str(checkpoint / "rng.safetensors"))["torch_cpu"])
    state.step = trainer_state["step"]
    state.history = trainer_state["history"]
    state.val_history = trainer_state["val_history"]


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


def pretrain(cfg: PretrainConfig | None = None, tokenizer=None, checkpoint_dir: str | Path | None = None,
             resume: bool = False, stop_after: int | None = None, progress: bool = True,
             data_dir: str | Path = DATA_DIR) -> PretrainResult:
    """Run (or continue) the recipe. `stop_after` ends early at that step, as an interruption would."""
    cfg = cfg or PretrainConfig()
    torch.set_num_threads(cfg.num_threads)
    tokenizer = tokenizer or load_tokenizer()
    train_rows = pack_documents(load_corpus("train", cfg.max_train_docs, data_dir), tokenizer, cfg.seq_len)
    val_rows = pack_documents(load_corpus("test", cfg.max_val_docs, data_dir), tokenizer, cfg.seq_len)
    schedule = RowSchedule(len(train_rows), cfg.micro_batch_size, cfg.seed)
    state = build_state(cfg, len(tokenizer))
    if resume:
        found = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
        if found is None:
            raise FileNotFoundError(f"resume=True but no {LATEST} in {checkpoint_dir}")
        load_checkpoint(state, found)
    elif not state.val_history:
        state.val_history.append({"step": 0, "val_loss": evaluate(state.model, val_rows, bf16=cfg.bf16)})
    end = cfg.max_steps if stop_after is None else min(stop_after, cfg.max_steps)
    start_step, started = state.step, time.perf_counter()
    bar = progress_bar(range(state.step, end), desc="pretraining", disable=not progress, initial=0)
    for _ in bar:
        entry = train_step(state, train_rows, schedule, cfg)
        if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
            state.val_history.append({"step": state.step, "val_loss": evaluate(state.model, val_rows, bf16=cfg.bf16)})
        bar.set_postfix(refresh=False, loss=f"{entry['loss']:.3f}", val=f"{state.val_history[-1]['val_loss']:.3f}",
                        lr=f"{entry['lr']:.2e}")
        if checkpoint_dir is not None and (state.step % cfg.checkpoint_every == 0 or state.step == end):
            save_checkpoint(state, cfg, checkpoint_dir)
    seconds = time.perf_counter() - started
    tokens = (state.step - start_step) * cfg.tokens_per_step
    state.model.eval()
    return PretrainResult(state.model, state.history, state.val_history, tokens / max(seconds, 1e-9), seconds)


def save_pretrained_model(result: PretrainResult, tokenizer, folder: str | Path, cfg: PretrainConfig) -> Path:
    """Write the model and tokenizer in Hugging Face layout, plus the run's curves (replaced as a whole)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        result.model.save_pretrained(tmp)
        tokenizer.save_pretrained(str(tmp))
        summary = {"final_val_loss": result.final_val_loss, "history": result.history,
                   "val_history": result.val_history, "tokens_per_second": result.tokens_per_second,
                   "seconds": result.seconds, "pretrain_config": cfg.to_json()}
        (tmp / "pretrain_summary.json").write_text(json.dumps(summary, indent=1))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process (a notebook running ensure_pretrained) filled the folder between our rmtree and
            # the rename; theirs is complete, so replace it the same two-step way once more.
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def ensure_pretrained(path: str | Path | None = None, progress: bool = True) -> Path:
    """The pretrained tiny Doge folder; trains it with the lesson-06 recipe first if it is missing."""
    folder = Path(path) if path is not None else DEFAULT_PRETRAINED_DIR

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
        cfg = PretrainConfig()
        tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
        result = pretrain(cfg, tokenizer, progress=progress)
        return save_pretrained_model(result, tokenizer, folder, cfg)


def _lock_exclusive(handle) -> None:
    """Block until this process holds an exclusive lock on the open file (released when it is closed)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst two processes train the same model
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


# ----------------------------------------------------------------------------------------------------------
# Looking at what the model writes
# ----------------------------------------------------------------------------------------------------------


def generate(model: DogeForCausalLM, input_ids: list[int], max_new_tokens: int = 60, temperature: float = 0.0,
             top_k: int | None = None, seed: int = 0, stop_ids: Sequence[int] = (1,)) -> list[int]:
    """Continue one prompt with lesson 05's ``generate`` (KV cache); temperature 0 is greedy. -> new token ids."""
    from .generation import generate as continue_ids

    was_training = model.training
    model.eval()
    sampling = dict(do_sample=True, temperature=temperature, top_k=top_k or 0, seed=seed) if temperature > 0 else {}
    out = continue_ids(model, torch.tensor([list(input_ids)]), max_new_tokens=max_new_tokens,
                       eos_token_id=list(stop_ids), **sampling)
    model.train(was_training)
    new = out[0, len(input_ids):].tolist()
    stop = next((i for i, t in enumerate(new) if t in stop_ids), None)
    return new if stop is None else new[: stop + 1]


def sample_text(model: DogeForCausalLM, tokenizer, prompt: str, max_new_tokens: int = 60, **kwargs: Any) -> str:
    """Continue raw text (a bos is put in front, as in pretraining)."""
    ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt + tokenizer.decode(generate(model, ids, max_new_tokens, **kwargs))


def chat_reply(model: DogeForCausalLM, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 60) -> str:
    """The model's greedy reply to a conversation, rendered with the chat template (special tokens dropped)."""
    from .generation import chat_reply as reply_with_specials

    return reply_with_specials(model, tokenizer, messages, max_new_tokens, skip_special_tokens=True).strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the lessons' tiny Doge and save it.")
    parser.add_argument("--out", default=str(DEFAULT_PRETRAINED_DIR))
    parser.add_argument("--steps", type=int, default=PretrainConfig.max_steps)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--checkpoints", default=None, help="folder for resumable checkpoints")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    cfg = PretrainConfig(max_steps=args.steps, bf16=args.bf16)
    tokenizer = load_tokenizer()
    result = pretrain(cfg, tokenizer, checkpoint_dir=args.checkpoints, resume=args.resume)
    save_pretrained_model(result, tokenizer, args.out, cfg)
    print(json.dumps({"final_val_loss": result.final_val_loss, "tokens_per_second": result.tokens_per_second,
                      "seconds": result.seconds, "out": args.out}))


if __name__ == "__main__":
    main()
