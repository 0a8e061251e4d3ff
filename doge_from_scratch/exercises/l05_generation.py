"""Lesson 05 checks: repetition penalty, top-k and top-p filters."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import generation
from ._core import Case, CheckResult, describe, exact, float_case, run_cases


def _scores(seed: int, rows: int = 3, vocab: int = 11) -> torch.Tensor:
    return 3 * torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def check_repetition_penalty(repetition_penalty: Callable) -> CheckResult:
    """``repetition_penalty(scores, seen, penalty) -> [B, V]``: every seen token made less likely - a positive
    logit divided by the penalty, a negative one multiplied (``generation.apply_repetition_penalty``).
    scores: [B, V]; seen: bool [B, V]."""
    g = torch.Generator().manual_seed(9)
    cases = []
    for seed, penalty in ((0, 1.3), (1, 2.0), (2, 0.8)):
        scores = _scores(seed)
        seen = torch.rand(scores.shape, generator=g) < 0.5
        cases.append(float_case(f"scores {describe(scores)} (both signs), penalty={penalty}", (scores, seen, penalty),
                                generation.apply_repetition_penalty))
    return run_cases("check_repetition_penalty", repetition_penalty, cases,
                     hint="dividing a negative logit by the penalty makes that token MORE likely; multiply those")


def check_top_k(top_k: Callable) -> CheckResult:
    """``top_k(scores, k) -> [B, V]``: the k largest scores of each row kept, the rest -inf
    (``generation.top_k_filter``)."""
    cases = [Case(f"scores {describe(_scores(s))}, k={k}", (_scores(s), k),
                  exact(generation.top_k_filter(_scores(s), k))) for s, k in ((3, 1), (4, 3), (5, 11))]
    return run_cases("check_top_k", top_k, cases, hint="topk(...).values[..., -1:] is the k-th largest: keep >= it")


# rows of probabilities with cumulative sums far from every p tried, so any summation order agrees
_TOP_P_ROWS = [[0.5, 0.25, 0.15, 0.1], [0.04, 0.6, 0.06, 0.3], [0.97, 0.01, 0.01, 0.01]]


def check_top_p(top_p: Callable) -> CheckResult:
    """``top_p(scores, p) -> [B, V]``: the smallest set of most likely tokens whose probability reaches p kept
    (always at least one), the rest -inf (``generation.top_p_filter``)."""
    scores = torch.tensor([[math.log(q) for q in row] for row in _TOP_P_ROWS])
    cases = [float_case(f"probabilities {_TOP_P_ROWS}, p={p}", (scores, p), generation.top_p_filter)
             for p in (0.3, 0.7, 0.8, 0.92)]
    return run_cases("check_top_p", top_p, cases,
                     hint="sorted from most likely, keep a token while the probability BEFORE it is still < p; "
                          "the top token always stays")
