"""Reasoning distillation (lesson 09): sequence-level, as the Doge-160M-Reason-Distill card did, and logit-level.

Sequence-level: plain SFT on a teacher's traces (``<|begin_of_thought|> ... <|end_of_solution|>``) under the card's
system prompt - ``sft.train_sft`` on the reasoning records, nothing new.

Logit-level (beyond the card): the student matches the teacher's whole next-token distribution at every
assistant position, with the generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2306.13649):

    m    = (1 - beta) p_s + beta p_t
    JSD  = beta KL(p_t || m) + (1 - beta) KL(p_s || m)

beta -> 0 tends to the forward KL(p_t || p_s) after division by beta, and TRL defines the end points as
KL(p_t || p_s) for beta = 0 (mass covering) and KL(p_s || p_t) for beta = 1 (mode seeking); we do the same.
Every divergence is summed over the vocabulary and then over assistant tokens; the shared loop divides by
the number of those tokens in the optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import load_lesson_dataset
from .model import DogeForCausalLM
from .pretrain import ensure_student_base
from .sft import (IGNORE, SFTSettings, collate_padded, count_trainable, finished_stage, model_inputs, save_stage,
                  sft_examples, sft_step_batches, train_sft)
from .generation import chat_replies
from .tasks import check_answer, is_well_formed_reasoning, prompt_and_reference
from .tokenizer import BEGIN_SOLUTION, EOS_TOKEN, load_tokenizer
from .train_utils import OptimizerSettings, StageLoss, StepLog, cosine_schedule, make_optimizer, train


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities. [..., V] -> [...]"""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """Per-position generalized JSD. logits [..., V] -> [...] (at least float32)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1]")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    # log m = log((1 - beta) p_s + beta p_t), computed stably in log space
    log_m = torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))
    return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)


def jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
             beta: float = 0.5, temperature: float = 1.0, shift: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed JSD over counted positions, their number).

    logits [B, T, V]; labels [B, T] with -100 for positions that do not count. ``shift=True`` reads labels
    the causal-LM way (logits at t are judged where labels[t + 1] counts).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ (same tokenizer and vocabulary needed)")
    jsd = generalized_jsd(student_logits, teacher_logits, beta, temperature)
    if labels is None:
        return jsd.sum(), torch.tensor(jsd.numel())
    if shift:
        jsd, labels = jsd[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    return jsd[mask].sum(), mask.sum()


class LogitDistillation(StageLoss):
    """Summed JSD between a trainable student and a frozen teacher over assistant positions."""

    def __init__(self, teacher, beta: float = 0.5, temperature: float = 1.0) -> None:
        self.teacher, self.beta, self.temperature = teacher.eval(), beta, temperature
        super().__init__(self.summed, count_trainable)

    def summed(self, model, batch: Mapping[str, torch.Tensor]):
        inputs = model_inputs(batch)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        student_logits = model(**inputs).logits
        total, count = jsd_loss(student_logits, teacher_logits, batch["labels"], self.beta, self.temperature,
                                shift=True)
        return total, count, {}


@dataclass
class DistillSettings(OptimizerSettings):
    lr: float = 3e-3
    beta: float = 0.5
    temperature: float = 1.0
    epochs: int = 2
    max_length: int = 512
    rows_per_micro_batch: int = 4
    accumulation: int = 1
    packing: bool = True


def train_logit_distill(student, teacher, tokenizer, records: Sequence[Mapping[str, Any]],
                        settings: DistillSettings | None = None, progress: bool = True) -> list[StepLog]:
    """Train ``student`` in place to match ``teacher`` on the assistant turns of ``records`` (same batches as SFT)."""
    settings = settings or DistillSettings()
    torch.manual_seed(settings.seed)
    examples = sft_examples(tokenizer, records, settings.max_length)
    steps = sft_step_batches(examples, tokenizer, settings)  # type: ignore[arg-type]
    optimizer = make_optimizer(student, settings.lr, settings.weight_decay, settings.betas)
    scheduler = cosine_schedule(optimizer, len(steps), settings.warmup, settings.min_lr_rate)
    objective = LogitDistillation(teacher, settings.beta, settings.temperature)
    return train(student, steps, objective, optimizer, scheduler, settings.max_grad_norm, progress, len(steps),
                 f"JSD beta={settings.beta}")


@torch.no_grad()
def trace_metrics(model, tokenizer, records: Sequence[Mapping[str, Any]], batch_rows: int = 8) -> dict[str, float]:
    """Teacher-forced scores on held-out reasoning records (cheap, deterministic, no sampling).

    nll: mean NLL per trace token; token_accuracy: argmax = the trace's next token; solution_exact: share of
    records whose every token from ``<|begin_of_solution|>`` to the end of the turn is predicted exactly (the
    answer, given the reference thought).
    """
    model.eval()
    begin = tokenizer.convert_tokens_to_ids(BEGIN_SOLUTION)
    examples = sft_examples(tokenizer, records)
    nll_sum, count, correct, exact = 0.0, 0, 0, 0
    for start in range(0, len(examples), batch_rows):
        chunk = examples[start:start + batch_rows]
        batch = collate_padded(chunk, tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        trained = targets != IGNORE
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        hit = (logits.argmax(-1) == targets) & trained
        nll_sum += float(nll[trained].sum())
        count += int(trained.sum())
        correct += int(hit.sum())
        for row in range(len(chunk)):
            solution = solution_mask(targets[row], trained[row], begin)
            exact += bool(solution.any()) and bool(hit[row][solution].all())
    return {"nll": nll_sum / max(count, 1), "token_accuracy": correct / max(count, 1),
            "solution_exact": exact / max(len(examples), 1)}


def solution_mask(targets: torch.Tensor, trained: torch.Tensor, begin_id: int) -> torch.Tensor:
    """The trained positions from the reply's ``<|begin_of_solution|>`` on (all False if it has none).

    targets, trained: [T]. Only a trained tag counts: the card's system prompt names the tags too, and a span
    starting there would cover the whole thought.
    """
    starts = ((targets == begin_id) & trained).nonzero()
    mask = torch.zeros_like(trained)
    if len(starts):
        mask[int(starts[0]):] = trained[int(starts[0]):]
    return mask


def teacher_traces(teacher: DogeForCausalLM, tokenizer, records: Sequence[Mapping[str, Any]],
                   only_correct: bool = True, max_new_tokens: int = 110,
                   batch_size: int = 24) -> tuple[list[dict[str, Any]], list[str]]:
    """Sequence-level distillation's data: the teacher's own greedy reply to each record's question.

    Returns (records, replies): ``replies`` holds every reply in order; ``records`` are copies of the input
    records whose assistant turn is the teacher's reply, for the replies that are well formed and, with
    ``only_correct``, right by the task's checker (the rest are dropped, as curated trace sets drop wrong traces).
    """
    prompts = [prompt_and_reference(r)[0] for r in records]
    replies = chat_replies(teacher, tokenizer, prompts, max_new_tokens, batch_size)
    kept = []
    for record, prompt, reply in zip(records, prompts, replies):
        text = reply.split(EOS_TOKEN)[0].strip()
        if not is_well_formed_reasoning(text) or (only_correct and not check_answer(record, reply)):
            continue
        kept.append({**record, "messages": [*prompt, {"role": "assistant", "content": text}]})
    return kept, replies


# lesson 09's sequence-level recipe: SFT of the student on the reasoning traces
REASON_DISTILL_SETTINGS = SFTSettings(lr=3e-3, epochs=2, max_length=1024, rows_per_micro_batch=2, accumulation=1)


def ensure_reason_distill(folder: str | Path | None = None, progress: bool = True) -> Path:
    """Lesson 09's sequence-level student (the pretrained student base, data/tiny-doge-student, SFT on the dataset's
    reasoning traces with the lesson's settings), trained here unless ``folder`` (default artifacts/reason_distill)
    holds it."""
    folder, done = finished_stage(folder, "reason_distill", "ensure_reason_distill")
    if done:
        return folder
    base = ensure_student_base(progress=progress)
    student = DogeForCausalLM.from_pretrained(base)
    tokenizer = load_tokenizer(base)
    history = train_sft(student, tokenizer, list(load_lesson_dataset("reasoning", "train")),
                        REASON_DISTILL_SETTINGS, progress)
    return save_stage(student, tokenizer, folder, history, REASON_DISTILL_SETTINGS)
