"""Lesson 02 checks: causal attention, the dynamic bias, the keep-window mask."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .. import attention
from ._core import Case, CheckResult, describe, exact, float_case, run_cases


def _package_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, _, t, d = q.shape
    allowed = attention.causal_padding_mask(None, b, t, t, q.device)
    mask = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, torch.finfo(q.dtype).min)
    return attention.attend_materialised(q, k, v, mask.expand(b, q.shape[1], t, t), 1 / math.sqrt(d))


def check_causal_attention(causal_attention: Callable[..., torch.Tensor]) -> CheckResult:
    """``causal_attention(q, k, v) -> [B, H, T, d]``: softmax(q k^T / sqrt(d)) v, each query seeing itself and
    the keys before it. q, k, v: [B, H, T, d] (as many key heads as query heads)."""
    g = torch.Generator().manual_seed(3)
    cases = []
    for b, h, t, d in ((1, 1, 5, 4), (2, 3, 7, 16), (1, 2, 12, 8)):
        q, k, v = (torch.randn(b, h, t, d, generator=g) for _ in range(3))
        cases.append(float_case(f"q, k, v: {describe(q)}", (q, k, v), _package_causal_attention))
    return run_cases("check_causal_attention", causal_attention, cases,
                     hint="scores [.., T, S]: softmax over the keys (last axis); a query may see keys at positions "
                          "<= its own; divide by sqrt(head_dim)")


def _package_dynamic_bias(v: torch.Tensor, dt_weight: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    dt_proj = nn.Linear(dt_weight.shape[1], dt_weight.shape[0], bias=False).to(dt_weight.dtype)
    dt_proj.weight.data = dt_weight
    return attention.dynamic_bias(v, dt_proj, A)


def check_dynamic_bias(dynamic_bias: Callable[..., torch.Tensor]) -> CheckResult:
    """``dynamic_bias(v, dt_weight, A) -> [B, n_kv, S]``: exp(A * softplus(dt)) with dt = the values of all KV
    heads of a key, concatenated head after head, times dt_weight^T. v: [B, n_kv, S, d]; dt_weight:
    [n_kv, n_kv * d]; A: [n_kv] (``attention.dynamic_bias``)."""
    g = torch.Generator().manual_seed(4)
    cases = []
    for b, n_kv, s, d in ((1, 1, 6, 4), (2, 2, 9, 8), (1, 3, 5, 4)):
        v = torch.randn(b, n_kv, s, d, generator=g)
        w = torch.randn(n_kv, n_kv * d, generator=g) / math.sqrt(n_kv * d)
        a = torch.randn(n_kv, generator=g)
        cases.append(float_case(f"v: {describe(v)}, A = {[round(x, 3) for x in a.tolist()]}", (v, w, a),
                                _package_dynamic_bias))
    return run_cases("check_dynamic_bias", dynamic_bias, cases,
                     hint="v.transpose(1, 2) puts the heads of one key side by side before the reshape to "
                          "[B, S, n_kv * d]; the bias is exp(A * softplus(dt)), per KV head")


def check_dynamic_mask(dynamic_mask: Callable[..., torch.Tensor]) -> CheckResult:
    """``dynamic_mask(bias, allowed, keep_window_size) -> [B, h, T, S]`` in float32: the bias on every allowed
    key, float32's minimum on every forbidden one, then only the keep_window_size largest entries of each row
    kept (the rest set to the minimum) when S > keep_window_size. bias: [B, h, S]; allowed: bool [B, 1, T, S]
    (``attention.dynamic_mask``)."""
    g = torch.Generator().manual_seed(5)
    cases = []
    for b, h, s, window, padded in ((1, 1, 6, 8, False), (2, 2, 10, 4, False), (2, 1, 9, 3, True)):
        bias = torch.rand(b, h, s, generator=g) * 4 - 2
        pad = torch.ones(b, s, dtype=torch.long)
        if padded:
            pad[1, :3] = 0  # left padding of the second row
        allowed = attention.causal_padding_mask(pad, b, s, s, bias.device)
        want = attention.dynamic_mask(bias, allowed, window, torch.float32)
        cases.append(Case(f"bias {describe(bias)}, keep_window_size={window}{', left padding' if padded else ''}",
                          (bias, allowed, window), exact(want)))
    return run_cases("check_dynamic_mask", dynamic_mask, cases,
                     hint="first replace the forbidden entries by torch.finfo(torch.float32).min, then take the "
                          "top-k of each row over the keys (last axis)")
