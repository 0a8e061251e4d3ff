"""Lesson 09 checks: KL divergence, the generalized Jensen-Shannon divergence."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import distill
from ._core import CheckResult, describe, float_case, run_cases


def _logits(seed: int, shape=(2, 3, 10)) -> torch.Tensor:
    return 2 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def check_kl(kl: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``kl(log_p, log_q) -> [...]``: KL(p || q) = sum_v p (log p - log q) over the last axis, from
    log-probabilities (``distill._kl``)."""
    cases = []
    for seed in (20, 21):
        log_p, log_q = _logits(seed).log_softmax(-1), _logits(seed + 10).log_softmax(-1)
        cases.append(float_case(f"log_p, log_q: {describe(log_p)}", (log_p, log_q), distill._kl))
    return run_cases("check_kl", kl, cases, hint="weigh by p = log_p.exp(), the FIRST argument; sum the last axis")


def check_generalized_jsd(jsd: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """``jsd(student_logits, teacher_logits, beta) -> [...]``: with m = (1 - beta) p_s + beta p_t,
    beta KL(p_t || m) + (1 - beta) KL(p_s || m); beta = 0 is KL(p_t || p_s), beta = 1 KL(p_s || p_t)
    (``distill.generalized_jsd``, TRL's GKD loss)."""
    cases = [float_case(f"logits {describe(_logits(22))}, beta={beta}", (_logits(22), _logits(23), beta),
                        distill.generalized_jsd) for beta in (0.5, 0.2, 0.9, 0.0, 1.0)]
    return run_cases("check_generalized_jsd", jsd, cases,
                     hint="beta weighs the TEACHER inside m and KL(p_t || m) outside; the limits 0 and 1 are KLs, "
                          "not 0 (mind 0 * log 0)")
