"""Lesson 06 checks: the warmup-stable-decay schedule, one AdamW step by hand."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..train_utils import wsd_lr_factor
from ._core import Case, CheckResult, all_of, close, close_scalar, run_cases


def check_wsd(wsd: Callable[[int, int, int, int, float], float]) -> CheckResult:
    """``wsd(step, warmup, stable, decay, min_ratio) -> float``: the learning-rate factor of a warmup-stable-
    decay schedule with a cosine decay (``train_utils.wsd_lr_factor``), at every step of three schedules."""
    cases = []
    for warmup, stable, decay, floor in ((4, 6, 5, 0.0), (10, 20, 8, 0.1), (1, 3, 2, 0.05)):
        for step in range(warmup + stable + decay + 2):
            cases.append(Case(f"step={step} of warmup={warmup}, stable={stable}, decay={decay}, min_ratio={floor}",
                              (step, warmup, stable, decay, floor),
                              close_scalar(wsd_lr_factor(step, warmup, stable, decay, "cosine", floor))))
    return run_cases("check_wsd", wsd, cases,
                     hint="warmup rises linearly from min_ratio at step 0; the cosine ends at min_ratio, not 0")


def _torch_adamw(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    p = torch.nn.Parameter(param.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
    p.grad = grad.clone()
    opt.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": exp_avg.clone(),
                    "exp_avg_sq": exp_avg_sq.clone()}
    opt.step()
    state = opt.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


def check_adamw_step(adamw_step: Callable) -> CheckResult:
    """``adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay)
    -> (param, exp_avg, exp_avg_sq)``: optimizer step number ``step`` (1 for the first) of
    ``torch.optim.AdamW``, decoupled weight decay and bias correction included."""
    g = torch.Generator().manual_seed(10)
    cases = []
    for step, wd in ((1, 0.01), (5, 0.1), (200, 0.0)):
        param, grad = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
        m = 0.1 * torch.randn(6, 4, generator=g) if step > 1 else torch.zeros(6, 4)
        v = 0.01 * torch.rand(6, 4, generator=g) if step > 1 else torch.zeros(6, 4)
        args = (param, grad, m, v, step, 1e-2, (0.9, 0.95), 1e-8, wd)
        want = _torch_adamw(*args)
        want64 = _torch_adamw(*(a.double() if isinstance(a, torch.Tensor) else a for a in args))
        cases.append(Case(f"step={step}, lr=1e-2, betas=(0.9, 0.95), weight_decay={wd}", args,
                          all_of(("param", "exp_avg", "exp_avg_sq"),
                                 [close(w, w64) for w, w64 in zip(want, want64)])))
    return run_cases("check_adamw_step", adamw_step, cases,
                     hint="AdamW shrinks the parameter by lr * weight_decay * param directly (not through the "
                          "gradient); divide m by 1 - beta1**step and v by 1 - beta2**step")
