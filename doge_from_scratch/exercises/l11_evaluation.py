"""Lesson 11 checks: acc / acc_norm of one question, the mean and its standard error."""

from __future__ import annotations

from collections.abc import Callable

from ..evaluate import choice_metrics, mean_stderr
from ._core import Case, CheckResult, all_of, close_scalar, exact, run_cases


def check_choice_metrics(metrics: Callable) -> CheckResult:
    """``metrics(lls, choices, gold) -> {"acc": 0/1, "acc_norm": 0/1}``: acc picks the largest log-likelihood,
    acc_norm the largest per CHARACTER of the choice text; ties go to the first (``evaluate.choice_metrics``)."""
    rows = [([-4.0, -2.0, -6.0], [" Paris", " Rome", " Madrid"], 1),
            ([-4.0, -5.0], [" a", " a very long answer"], 1),
            ([-3.0, -3.0, -9.0], [" yes", " yes", " absolutely"], 1),
            ([-12.0, -10.0, -20.0, -8.0], [" red apple", " blue", " very green grass", " ok"], 2)]
    cases = [Case(f"lls={lls}, choices={ch}, gold={gold}", (lls, ch, gold),
                  exact(choice_metrics(lls, ch, gold))) for lls, ch, gold in rows]
    return run_cases("check_choice_metrics", lambda *a: {k: float(v) for k, v in metrics(*a).items()}, cases,
                     hint="acc_norm divides by len(choice) in characters (leading space included); on a tie the "
                          "first choice wins")


def check_mean_stderr(mean_and_stderr: Callable) -> CheckResult:
    """``mean_and_stderr(values) -> (mean, stderr)``: the standard error of the mean with the sample standard
    deviation (n - 1), as lm-evaluation-harness reports it (``evaluate.mean_stderr``)."""
    rows = [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0], [0.25, 0.5, 0.75, 1.0, 0.0, 0.5]]
    cases = [Case(f"values={v}", (v,), all_of(("mean", "stderr"), [close_scalar(x) for x in mean_stderr(v)]))
             for v in rows]
    return run_cases("check_mean_stderr", lambda v: tuple(mean_and_stderr(v)), cases,
                     hint="stderr = sqrt(sum((v - mean)^2) / (n - 1) / n)")
