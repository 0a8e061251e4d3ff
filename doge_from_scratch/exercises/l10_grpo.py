"""Lesson 10 (GRPO) checks: group-relative advantages, the clipped token loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..grpo import clipped_token_loss, group_advantages
from ._core import CheckResult, float_case, run_cases


def _advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    return group_advantages(rewards, num_generations, "group")[0]


def check_group_advantages(advantages: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """``advantages(rewards, num_generations) -> [N]``: each reward minus its group's mean, divided by the
    group's sample (n - 1) standard deviation + 1e-4; groups are consecutive rows
    (``grpo.group_advantages(scale_rewards="group")``)."""
    rows = [([1.0, 0.0, 0.0, 1.0], 4), ([1.0, 0.0, 0.5, 2.0, 1.0, 1.0], 3), ([0.0, 0.0, 1.0, 0.0, 2.0, 2.0], 2)]
    cases = [float_case(f"rewards={r}, num_generations={n}", (torch.tensor(r), n), _advantages) for r, n in rows]
    return run_cases("check_group_advantages", advantages, cases,
                     hint="rewards.view(-1, num_generations); std with Bessel's correction (torch's default); a group "
                          "with equal rewards gets advantage 0, not nan")


def _clipped(logps, old_logps, adv, eps_low, eps_high):
    return clipped_token_loss(logps, old_logps, adv, eps_low, eps_high)[0]


def check_clipped_loss(clipped_loss: Callable) -> CheckResult:
    """``clipped_loss(logps, old_logps, advantages, eps_low, eps_high) -> [b, C]``: per token
    -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = exp(logps - old_logps). logps, old_logps: [b, C];
    advantages: [b] (``grpo.clipped_token_loss`` with beta = 0)."""
    g = torch.Generator().manual_seed(30)
    cases = []
    for b, c, lo, hi in ((4, 5, 0.2, 0.2), (6, 3, 0.2, 0.28)):
        old = -3 * torch.rand(b, c, generator=g)
        new = old + 0.5 * torch.randn(b, c, generator=g)  # ratios well inside and outside the clip range
        adv = torch.randn(b, generator=g)
        cases.append(float_case(f"[{b}, {c}] tokens, eps_low={lo}, eps_high={hi}", (new, old, adv, lo, hi), _clipped))
    return run_cases("check_clipped_loss", clipped_loss, cases,
                     hint="the MIN of the two objectives (pessimistic), negated; broadcast the advantage over tokens "
                          "with advantages[:, None]")
