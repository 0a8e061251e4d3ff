"""Pieces the training stages share: the optimizer and its weight-decay rule (pretraining too), and for the
post-training stages (lessons 07-10) their cosine schedule, the accumulation loop and decoding.

The loop is written once for SFT, DPO, distillation and GRPO. Each stage supplies a function that returns, for one
micro-batch, a *summed* loss and how many items it counted (tokens for SFT and distillation, pairs for DPO, the
loss type's normaliser for GRPO).
The loop divides by the item count of the whole optimizer step - over every micro-batch and every process -
which is what makes gradient accumulation and DistributedDataParallel give the gradient of one big batch:

    loss_step = sum over micro-batches and ranks of summed_loss / items_in_step

Under DDP each rank multiplies its share by the world size, because DDP averages (not sums) gradients.
"""

from __future__ import annotations

import math
import re
import sys
import time
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR


# Which parameters get weight decay, decided in one place. Two rules, because two recipes are reproduced:
# - "trainer": transformers' Trainer rule, by name (no decay for biases and every norm weight; the residual
#   scales and A do decay). The post-training stages (SFT, DPO, distillation, GRPO) use it so that our runs
#   and TRL's decay the same tensors - the parity tests compare the two step for step.
# - "matrices": decay only tensors with two or more dimensions (projections, embeddings); every vector
#   (norm weights, residual scales, A) stays undecayed, since pulling a residual scale or a norm weight towards
#   0 shrinks the signal rather than regularising it. Pretraining (lesson 06) uses it.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
DECAY_RULES = ("trainer", "matrices")


def decayed_parameter_names(model: nn.Module, rule: str = "trainer") -> set[str]:
    """Names of the parameters that ``rule`` (one of ``DECAY_RULES``, see above) gives weight decay."""
    if rule == "trainer":
        return {name for name, _ in model.named_parameters()
                if not any(re.search(p, name.lower()) for p in NO_DECAY_PATTERNS)}
    if rule == "matrices":
        return {name for name, param in model.named_parameters() if param.dim() >= 2}
    raise ValueError(f"weight-decay rule {rule!r}: expected one of {DECAY_RULES}")


@dataclass
class OptimizerSettings:
    """The optimizer and schedule knobs every training stage shares (the post-training recipes' values; pretraining
    overrides ``lr`` and ``min_lr_rate``)."""

    warmup: float = 0.1
    min_lr_rate: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.95),
                   eps: float = 1e-8, decay: str = "trainer") -> torch.optim.AdamW:
    """AdamW with two parameter groups: [0] the parameters ``decay`` (a rule of ``DECAY_RULES``) decays, with
    ``weight_decay``; [1] the rest, with none. Each group keeps ``named_parameters`` order (a tied tensor once)."""
    decayed = decayed_parameter_names(model, decay)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if n in decayed], "weight_decay": weight_decay},
              {"params": [p for n, p in params if n not in decayed], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def warmup_steps_for(total_steps: int, warmup: float) -> int:
    """``warmup`` < 1 is a fraction of the run (rounded up), otherwise a step count (as transformers reads it)."""
    return int(warmup) if warmup >= 1 else math.ceil(total_steps * warmup)


def cosine_with_min_lr(step: int, warmup_steps: int, total_steps: int, min_lr_rate: float = 0.1) -> float:
    """LR multiplier: linear warmup 0 -> 1, then half a cosine from 1 down to ``min_lr_rate`` at ``total_steps``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, min_lr_rate + (1 - min_lr_rate) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1,
                    min_lr_rate: float = 0.1) -> LambdaLR:
    """The post-training recipes' schedule: ``cosine_with_min_lr`` with warmup 0.1 and min LR ratio 0.1."""
    warmup_steps = warmup_steps_for(total_steps, warmup)
    return LambdaLR(optimizer, lambda s: cosine_with_min_lr(s, warmup_steps, total_steps, min_lr_rate))


def wsd_lr_factor(step: int, warmup: int, stable: int, decay: int, decay_type: str = "cosine",
                  min_lr_rate: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based) of a warmup-stable-decay schedule.

    Linear warmup from min_lr_rate to 1, a long flat stretch, then a short decay back to min_lr_rate.
    The flat stretch is what makes WSD convenient: a run can be extended (or branched) from any stable
    checkpoint, and only the short decay has to be redone.
    """
    if step < warmup:
        return min_lr_rate + (1.0 - min_lr_rate) * step / max(1, warmup)
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
        return min_lr_rate + (1.0 - min_lr_rate) * shapes[decay_type]
    return min_lr_rate


def wsd_phase_steps(total_steps: int, warmup: float, decay_phase: float) -> tuple[int, int, int]:
    """(warmup, stable, decay) step counts; ``warmup`` and ``decay_phase`` read as ``warmup_steps_for`` reads them."""
    warmup_steps, decay_steps = warmup_steps_for(total_steps, warmup), warmup_steps_for(total_steps, decay_phase)
    return warmup_steps, total_steps - warmup_steps - decay_steps, decay_steps


def wsd_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1, decay_phase: float = 0.2,
                 decay_type: str = "cosine", min_lr_rate: float = 0.0) -> LambdaLR:
    """Pretraining's schedule: ``wsd_lr_factor`` over ``wsd_phase_steps`` (the post-training stages use
    ``cosine_schedule``)."""
    phases = wsd_phase_steps(total_steps, warmup, decay_phase)
    return LambdaLR(optimizer, lambda step: wsd_lr_factor(step, *phases, decay_type, min_lr_rate))


# ----------------------------------------------------------------------------------------------------------
# Distributed helpers: every function works unchanged in a single process.
# ----------------------------------------------------------------------------------------------------------


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (a copy; identity without torch.distributed)."""
    value = value.detach().clone()
    if world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def shard(items: Sequence[Any]) -> list[Any]:
    """This process's share of a global micro-batch list: rank r takes items r, r + W, r + 2W, ..."""
    return list(items[rank()::world_size()])


# ----------------------------------------------------------------------------------------------------------
# The optimizer-step loop
# ----------------------------------------------------------------------------------------------------------

SummedLoss = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class StepLog:
    """What one optimizer step reports. ``loss`` is the step's loss over all processes; ``grad_norm`` is the
    total 2-norm before clipping (what Trainer logs); ``metrics`` are item-weighted averages over the step."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    items: int
    metrics: dict[str, float] = field(default_factory=dict)


def optimizer_step(model: nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]], summed_loss: SummedLoss,
                   optimizer: torch.optim.Optimizer, scheduler: LambdaLR | None = None,
                   max_grad_norm: float | None = 1.0, step: int = 0) -> StepLog:
    """One optimizer step over this process's micro-batches.

    ``summed_loss(model, batch)`` returns (loss summed over the batch's items, number of items, metric sums).
    Two passes over the micro-batches: the first only counts items (cheap, no forward), so that every
    backward can already be divided by the step's total - the same thing TRL/Trainer do with
    ``num_items_in_batch``.
    """
    counts = [summed_loss.count(batch) for batch in micro_batches]  # type: ignore[attr-defined]
    total = all_reduce_sum(torch.tensor(float(sum(counts)))).item()
    if total == 0:
        raise ValueError(f"optimizer step {step}: no trainable items in any micro-batch (all labels are -100?)")
    scale = world_size() / total
    loss_sum = torch.zeros(())
    metric_sums: dict[str, torch.Tensor] = {}
    model.train()
    for i, batch in enumerate(micro_batches):
        # Under DDP, gradients are averaged across processes once per step (at the last micro-batch).
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext()
        with sync:
            loss, _, metrics = summed_loss(model, batch)
            (loss * scale).backward()
        loss_sum += loss.detach().float()
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, torch.zeros(())) + v.detach().float()
    params = [p for p in model.parameters() if p.grad is not None]
    clip = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    global_loss = all_reduce_sum(loss_sum).item() / total
    metrics = {k: all_reduce_sum(v).item() / total for k, v in metric_sums.items()}
    return StepLog(step=step, loss=global_loss, grad_norm=float(grad_norm), lr=lr, items=int(total), metrics=metrics)


class StageLoss:
    """Adapter giving a stage's loss the two calls ``optimizer_step`` needs: ``count(batch)`` and ``__call__``."""

    def __init__(self, fn: Callable, count: Callable[[dict[str, torch.Tensor]], int]) -> None:
        self.fn, self.count = fn, count

    def __call__(self, model, batch):
        return self.fn(model, batch)


class StaticProgress:
    """Iterates like a tqdm bar but draws nothing live: one summary line when the loop ends.

    A saved notebook keeps every state a live bar passed through (a widget's text fallback is its first
    frame, ``0%|``), so outside a terminal the page shows only the final line, e.g.
    ``pretraining: 800/800 in 321 s (2.49 it/s), loss=0.61, val=0.53``. ``set_postfix`` values go into it.
    """

    def __init__(self, iterable: Iterable, desc: str = "", total: int | None = None, disable: bool = False,
                 file: TextIO | None = None, **_ignored: Any) -> None:
        self.iterable, self.desc, self.disable, self.file = iterable, desc, disable, file
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix = 0, {}

    def __iter__(self):
        started = time.perf_counter()
        for item in self.iterable:
            yield item
            self.n += 1
        if not self.disable:
            print(self.summary(time.perf_counter() - started), file=self.file or sys.stdout, flush=True)

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = values

    def summary(self, seconds: float) -> str:
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        rate = f"{self.n / seconds:.2f} it/s" if seconds > 0 else "-"
        extras = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc or 'progress'}: {done} in {seconds:.0f} s ({rate}){extras}"


def progress_bar(iterable: Iterable, **kwargs):
    """A progress display for a loop: a live tqdm bar in a terminal, one final line anywhere else.

    Pass postfixes with ``set_postfix(refresh=False, ...)``. In a terminal the bar redraws at most once a
    second. In a notebook (or a log file) a live bar would be saved frame by frame, and every widget redraw is a
    kernel message - thousands overflow the kernel's queue and nbval waits for output that was dropped - so
    there ``StaticProgress`` prints only the summary line.
    """
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, mininterval=1.0, **kwargs)
    return StaticProgress(iterable, **kwargs)


def train(model: nn.Module, steps: Iterable[Sequence[dict[str, torch.Tensor]]], summed_loss: StageLoss,
          optimizer: torch.optim.Optimizer, scheduler: LambdaLR | None = None, max_grad_norm: float | None = 1.0,
          progress: bool = True, total: int | None = None, desc: str = "train") -> list[StepLog]:
    """Run optimizer steps; ``steps`` yields, per step, this process's list of micro-batches."""
    history = []
    bar = progress_bar(steps, total=total, desc=desc, disable=not progress or rank() != 0)
    for i, micro_batches in enumerate(bar):
        log = optimizer_step(model, micro_batches, summed_loss, optimizer, scheduler, max_grad_norm, step=i + 1)
        history.append(log)
        bar.set_postfix(refresh=False, loss=f"{log.loss:.3f}")
    return history


def step_groups(items: Sequence[Any], micro_batch: int, accumulation: int, epochs: int = 1,
                seed: int = 0, shuffle: bool = True) -> list[list[list[Any]]]:
    """Split items into optimizer steps of ``accumulation`` micro-batches of ``micro_batch`` items (per process).

    With W processes a step holds W * accumulation micro-batches in total; each process gets its share
    through ``shard``. A last incomplete step is dropped so every step has the same size.
    """
    per_step = micro_batch * accumulation * world_size()
    steps = []
    for epoch in range(epochs):
        order = list(range(len(items)))
        if shuffle:
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, len(order) - per_step + 1, per_step):
            chunk = [items[i] for i in order[start:start + per_step]]
            micro = [chunk[j:j + micro_batch] for j in range(0, per_step, micro_batch)]
            steps.append(shard(micro))
    return steps


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position NLL of the next label. logits [B, T, V], labels [B, T] -> [B, T-1] (0 where label is -100)."""
    targets = labels[:, 1:]
    logits = logits[:, :-1].float()
    # logsumexp - target logit: on CPU this is ~50x more accurate in float32 than cross_entropy over a
    # [B, V, T] layout (measured against float64), and it is what TRL's fused head computes.
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll.masked_fill(targets == -100, 0.0)


def trl_ready(model: nn.Module) -> nn.Module:
    """What TRL's trainers need beyond ``PreTrainedModel``: a ``generation_config`` to write pad/eos ids into.

    transformers only creates one for classes that inherit ``GenerationMixin``; ours decodes with its own loop.
    """
    if getattr(model, "generation_config", None) is None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_model_config(model.config)
    return model
