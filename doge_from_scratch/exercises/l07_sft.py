"""Lesson 07 checks: the SFT loss per token, the loss of an optimizer step, packed position ids."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model import causal_lm_loss
from ..sft import IGNORE, collate_packed
from ._core import Case, CheckResult, close, exact, next_token_logps64, run_cases


def _logits_and_labels(seed: int, trained: list[int], t: int = 9, v: int = 13):
    """Rows with very different numbers of trained tokens, so a per-sequence mean differs from a per-token one."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(len(trained), t, v, generator=g)
    labels = torch.randint(0, v, (len(trained), t), generator=g)
    for row, n in enumerate(trained):
        labels[row, : t - n] = IGNORE  # the prompt part; the last n tokens are the trained answer
    return logits, labels


def _sft_case(seed: int, trained: list[int]) -> Case:
    logits, labels = _logits_and_labels(seed, trained)
    exact64 = -next_token_logps64(logits, labels).sum() / (labels[:, 1:] != IGNORE).sum()
    return Case(f"logits [{len(trained)}, 9, 13], trained tokens per row {trained}", (logits, labels),
                close(causal_lm_loss(logits, labels), exact64))


def check_sft_loss(sft_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``sft_loss(logits, labels) -> scalar``: logits[t] predicts labels[t + 1]; the summed NLL over every
    label that is not -100, divided by how many there are in the whole batch (``model.causal_lm_loss``)."""
    cases = [_sft_case(0, [8]), _sft_case(1, [1, 7]), _sft_case(2, [2, 8, 4])]
    return run_cases("check_sft_loss", sft_loss, cases,
                     hint="shift by one; average over tokens of the batch, not per sequence (a long answer counts "
                          "more than a short one)")


def check_step_loss(step_loss: Callable) -> CheckResult:
    """``step_loss(micro_batches) -> scalar``: the loss of one optimizer step made of several micro-batches,
    each a (logits, labels) pair - every trained token of the step weighs the same (TRL's
    ``num_items_in_batch``: ``model.causal_lm_loss`` with the step's token count)."""
    cases = []
    for seed, shapes in ((3, [[6], [1]]), (4, [[2, 3], [8], [1, 1]])):
        micro = [_logits_and_labels(seed + i, trained) for i, trained in enumerate(shapes)]
        count = sum(int((lab[:, 1:] != IGNORE).sum()) for _, lab in micro)
        want = sum(causal_lm_loss(lg, lab, num_items_in_batch=count) for lg, lab in micro)
        want64 = -sum(next_token_logps64(lg, lab).sum() for lg, lab in micro) / count
        cases.append(Case(f"{len(micro)} micro-batches, trained tokens per row {shapes}", (micro,),
                          close(want, want64)))
    return run_cases("check_step_loss", step_loss, cases,
                     hint="sum the NLL of all micro-batches and divide once by the step's number of trained tokens; "
                          "the mean of micro-batch means weighs a small micro-batch's tokens more")


def check_packed_positions(packed_positions: Callable[[list[int], int], torch.Tensor]) -> CheckResult:
    """``packed_positions(lengths, length) -> [length]`` int64: the position ids of one packed row holding
    examples of these lengths, restarting at 0 for each; padding up to ``length`` gets 0
    (``sft.collate_packed``)."""
    cases = []
    for lengths, length in (([3, 2], 5), ([4, 1, 2], 9), ([6], 6), ([1, 1, 1], 4)):
        row = [{"input_ids": [5] * n, "labels": [IGNORE] * n} for n in lengths]
        want = collate_packed([row], pad_token_id=0, length=length)["position_ids"][0]
        cases.append(Case(f"lengths={lengths}, length={length}", (lengths, length), exact(want)))
    return run_cases("check_packed_positions", packed_positions, cases,
                     hint="torch.arange(n) per example, concatenated, then zeros up to length")
