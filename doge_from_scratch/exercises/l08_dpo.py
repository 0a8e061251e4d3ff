"""Lesson 08 checks: sequence log-probs, the sigmoid DPO loss, IPO's loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..dpo import dpo_loss
from ..train_utils import token_nll
from ._core import Case, CheckResult, close, describe, float_case, next_token_logps64, run_cases


def _pairs(seed: int, n: int = 5):
    """Policy and reference log-probs of n (chosen, rejected) pairs, margins of both signs."""
    g = torch.Generator().manual_seed(seed)
    ref_c, ref_r = -20 - 10 * torch.rand(n, generator=g), -20 - 10 * torch.rand(n, generator=g)
    return ref_c + 4 * torch.randn(n, generator=g), ref_r + 4 * torch.randn(n, generator=g), ref_c, ref_r


def check_sequence_logps(sequence_logps: Callable) -> CheckResult:
    """``sequence_logps(logits, input_ids, completion_mask) -> [B]``: the SUM of log p(token) over each row's
    completion tokens, token t read from logits[t - 1]. logits [B, T, V]; input_ids, completion_mask [B, T]
    (``dpo.sequence_logps``)."""
    g = torch.Generator().manual_seed(11)
    cases = []
    for b, t, v in ((2, 6, 7), (4, 10, 13)):
        logits, ids = 2 * torch.randn(b, t, v, generator=g), torch.randint(0, v, (b, t), generator=g)
        mask = torch.zeros(b, t, dtype=torch.long)
        for row in range(b):
            mask[row, 2 + row % 3: t - row % 2] = 1  # prompts and completions of different lengths
        labels = ids.masked_fill(mask == 0, -100)
        cases.append(Case(f"logits {describe(logits)}", (logits, ids, mask),
                          close(-token_nll(logits, labels).sum(1), next_token_logps64(logits, labels).sum(1))))
    return run_cases("check_sequence_logps", sequence_logps, cases,
                     hint="log_softmax(logits[:, :-1]) gathered at input_ids[:, 1:], kept where completion_mask[:, 1:] "
                          "is 1, summed (not averaged)")


def _sigmoid(c, r, rc, rr, beta):
    return dpo_loss(c, r, rc, rr, beta)[0]


def check_dpo_loss(dpo: Callable) -> CheckResult:
    """``dpo(chosen, rejected, ref_chosen, ref_rejected, beta) -> [B]``: -log sigmoid(beta * ((chosen -
    ref_chosen) - (rejected - ref_rejected))) per pair, all inputs [B] sequence log-probs (``dpo.dpo_loss``)."""
    cases = [float_case(f"{describe(args[0])} pairs, beta={beta}", (*args, beta), _sigmoid)
             for args, beta in ((_pairs(12), 0.1), (_pairs(13, 8), 0.5))]
    return run_cases("check_dpo_loss", dpo, cases,
                     hint="the loss must fall as the chosen answer gains on the rejected one; "
                          "torch.nn.functional.logsigmoid is the stable way")


def _ipo(c, r, rc, rr, beta, len_c, len_r):
    return dpo_loss(c, r, rc, rr, beta, "ipo", len_c, len_r)[0]


def check_ipo_loss(ipo: Callable) -> CheckResult:
    """``ipo(chosen, rejected, ref_chosen, ref_rejected, beta, chosen_lengths, rejected_lengths) -> [B]``:
    IPO's squared loss (h - 1/(2 beta))^2 with h the difference of the per-token (length-averaged) log-ratios,
    as TRL computes it (``dpo.dpo_loss(loss_type="ipo")``)."""
    g = torch.Generator().manual_seed(14)
    cases = []
    for seed, beta in ((15, 0.1), (16, 0.5)):
        args = _pairs(seed, 6)
        lengths = (torch.randint(1, 30, (6,), generator=g), torch.randint(1, 30, (6,), generator=g))
        cases.append(float_case(f"6 pairs, beta={beta}, completion lengths {lengths[0].tolist()} / "
                                f"{lengths[1].tolist()}", (*args, beta, *lengths), _ipo))
    return run_cases("check_ipo_loss", ipo, cases,
                     hint="divide each log-ratio by its completion's length before subtracting; the target margin "
                          "is 1 / (2 * beta)")
