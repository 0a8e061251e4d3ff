"""Lesson 03 checks: product-key top-k, the per-token router split, the load-balancing loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import moe
from ._core import Case, CheckResult, all_of, describe, exact, float_case, run_cases


def _by_score(answer):
    """(scores, ids) with each row sorted by descending score: the order of the k picks does not matter."""
    scores, ids = answer  # the learner's tuple; a wrong type raises inside the check's call, reported there
    order = scores.argsort(dim=-1, descending=True, stable=True)
    return scores.gather(-1, order), ids.gather(-1, order)


def check_product_key_topk(product_key_topk: Callable) -> CheckResult:
    """``product_key_topk(sx, sy, k) -> (scores [N, k], expert ids [N, k])``: the k best of the K*K pairs
    (i, j) with score sx[i] + sy[j] and expert id i * K + j. sx, sy: [N, K] (``moe.product_key_topk``)."""
    g = torch.Generator().manual_seed(6)
    cases = []
    for n, k_keys, top in ((1, 3, 2), (4, 4, 5), (3, 8, 16)):
        sx, sy = torch.randn(n, k_keys, generator=g), torch.randn(n, k_keys, generator=g)
        want = moe.product_key_topk(torch.stack((sx, sy)), k_keys, top)
        judge = all_of(("scores", "expert ids"), (exact(want[0]), exact(want[1])))
        cases.append(Case(f"sx, sy: {describe(sx)}, k={top}", (sx, sy, top), judge))
    return run_cases("check_product_key_topk", lambda sx, sy, k: _by_score(product_key_topk(sx, sy, k)), cases,
                     hint="the candidate (i, j) is expert i * K + j, i indexing sx; scores add, they do not multiply")


def check_per_token_split(split: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``split(logits) -> [2, B*T, K]``: the x and y halves of each token's own 2K router logits.
    logits: [B, T, 2K] (``moe.split_router_logits(..., "per_token")``)."""
    inputs = [torch.arange(2 * 3 * 4.0).view(2, 3, 4), torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(7))]
    cases = [Case(f"logits {describe(x)}", (x,), exact(moe.split_router_logits(x, "per_token"))) for x in inputs]
    return run_cases("check_per_token_split", split, cases,
                     hint="logits.reshape(2, B*T, K) is the reference's split, which mixes tokens; reshape per token "
                          "first ([B*T, 2, K]), then move the half axis to the front")


def _package_balance(halves, num_experts, top_k):
    return moe.load_balancing_loss(list(halves), num_experts, top_k)


def check_load_balancing_loss(load_balancing_loss: Callable) -> CheckResult:
    """``load_balancing_loss(router_halves, num_experts, top_k) -> scalar``: E * sum_e f_e * P_e, f_e the share
    of all picks that went to expert e and P_e its softmax probability over the K*K pair scores, averaged over
    the tokens of every layer. router_halves: list of [2, N, K] (``moe.load_balancing_loss``)."""
    g = torch.Generator().manual_seed(8)
    cases = []
    for layers_, n, k_keys, top in ((1, 6, 2, 1), (2, 10, 4, 3), (3, 7, 8, 8)):
        halves = [2 * torch.randn(2, n, k_keys, generator=g) for _ in range(layers_)]
        cases.append(float_case(f"{layers_} layer(s) of halves {describe(halves[0])}, top_k={top}",
                                (halves, k_keys * k_keys, top), _package_balance))
    return run_cases("check_load_balancing_loss", load_balancing_loss, cases,
                     hint="f_e counts picks (k per token), P_e averages probabilities over tokens; multiply by E so "
                          "that perfectly uniform routing gives 1")
