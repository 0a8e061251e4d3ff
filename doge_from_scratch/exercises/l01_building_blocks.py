"""Lesson 01 checks: RMSNorm, rotate-half, the dynamic NTK base."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import layers
from ._core import Case, CheckResult, close_scalar, describe, exact, float_case, run_cases


def _package_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = layers.RMSNorm(x.shape[-1], eps=eps).to(x.dtype)
    norm.weight.data = weight
    return norm(x)


def check_rms_norm(rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """``rms_norm(x, weight, eps) -> [..., H]`` against ``layers.RMSNorm`` (float32, judged against float64).

    The cases have small inputs (where eps is as large as the mean square, so leaving it out shows), a gain
    far from ones, and a last axis that differs from the others (so a norm over the wrong axis shows).
    """
    g = torch.Generator().manual_seed(1)
    cases = []
    for scale, shape in ((1.0, (3, 16)), (1e-3, (2, 5, 16)), (30.0, (4, 2, 24))):
        x = torch.randn(shape, generator=g) * scale
        w = 1 + 0.5 * torch.randn(shape[-1], generator=g)
        cases.append(float_case(f"x = {scale} * randn {list(shape)}, a random gain, eps=1e-6", (x, w, 1e-6),
                                _package_rms_norm))
    x = torch.randn(2, 8, generator=g) * 0.01
    cases.append(float_case("x = 0.01 * randn [2, 8], unit gain, eps=1e-2", (x, torch.ones(8), 1e-2),
                            _package_rms_norm))
    return run_cases("check_rms_norm", rms_norm, cases,
                     hint="mean of squares over the last axis, plus eps, inside the square root; then times weight")


def check_rotate_half(rotate_half: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``rotate_half(x) -> [..., d]``: (x1, x2) -> (-x2, x1) over halves of the last axis (``layers.rotate_half``)."""
    g = torch.Generator().manual_seed(2)
    inputs = [torch.arange(1.0, 9.0), torch.randn(2, 3, 5, 16, generator=g), torch.randn(1, 4, 128, generator=g)]
    cases = [Case(describe(x), (x,), exact(layers.rotate_half(x))) for x in inputs]
    return run_cases("check_rotate_half", rotate_half, cases,
                     hint="split the last axis into two halves (not even/odd entries); the second half, negated, "
                          "goes first")


def check_ntk_theta(ntk_theta: Callable[[float, float, int, int, int], float]) -> CheckResult:
    """``ntk_theta(theta, factor, seq_len, max_positions, head_dim) -> float`` (``layers.dynamic_ntk_theta``):
    unchanged up to ``max_positions``, larger past it."""
    settings = [(10_000.0, 4.0, 100, 2048, 128), (10_000.0, 4.0, 2048, 2048, 128), (10_000.0, 4.0, 2049, 2048, 128),
                (10_000.0, 4.0, 8192, 2048, 128), (40_000.0, 2.0, 10_000, 4096, 64)]
    cases = [Case(f"theta={t}, factor={f}, seq_len={n}, max_positions={m}, head_dim={d}", (t, f, n, m, d),
                  close_scalar(layers.dynamic_ntk_theta(t, f, n, m, d))) for t, f, n, m, d in settings]
    return run_cases("check_ntk_theta", ntk_theta, cases,
                     hint="seq_len counts only once it passes max_positions; the exponent is d / (d - 2)")
