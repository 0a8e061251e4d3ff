"""The machinery every exercise check shares: run the learner's function on prepared cases, judge each
answer, and report the first wrong one in words (which input, expected against got).

A check never raises: a stub that still raises ``NotImplementedError`` gets "not yet", any other error is
reported with the case that caused it, so an executed lesson keeps running. ``CheckResult.require()`` turns
a failure into an ``AssertionError`` for the solution notebooks and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..testing import float32_error_check

Judge = Callable[[Any], "str | None"]  # the learner's answer -> None when right, else what is wrong


@dataclass
class CheckResult:
    """The outcome of one check: truthy when passed; shows as its message in a notebook."""

    exercise: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    def require(self) -> CheckResult:
        """Raise ``AssertionError`` with the message unless passed (solution notebooks, tests)."""
        if not self.passed:
            raise AssertionError(self.message)
        return self


@dataclass
class Case:
    """One input to try: ``args``/``kwargs`` for the learner's function and the judge of its answer."""

    description: str
    args: tuple
    judge: Judge
    kwargs: dict | None = None


def _fresh(value: Any) -> Any:
    """A copy of tensors (in lists, tuples, dicts) so a function that edits its inputs in place cannot spoil
    the expected answers computed from them."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def run_cases(exercise: str, fn: Callable, cases: Iterable[Case], hint: str = "") -> CheckResult:
    """Call ``fn`` on each case; the first wrong answer (or error) ends the check with a message."""
    n = 0
    for case in cases:
        n += 1
        try:
            got = fn(*_fresh(case.args), **_fresh(case.kwargs or {}))
        except NotImplementedError:
            return CheckResult(exercise, False, f"{exercise}: not yet - replace the `raise NotImplementedError` "
                               "in your function with your code, then run this cell again.")
        except Exception as err:  # the learner's bug, reported instead of breaking the notebook
            return CheckResult(exercise, False, f"{exercise}: on {case.description} your function raised "
                               f"{type(err).__name__}: {err}")
        problem = case.judge(got)
        if problem:
            tip = f"\n  hint: {hint}" if hint else ""
            return CheckResult(exercise, False, f"{exercise}: wrong on {case.description}:\n  {problem}{tip}")
    return CheckResult(exercise, True, f"{exercise}: correct on all {n} cases.")


# ------------------------------------------------------------------------------------------------ judges


def _shape_problem(got: Any, expected: torch.Tensor) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    return None


def _where(index: tuple) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def exact(expected: Any) -> Judge:
    """Right when equal to ``expected``: tensors element by element (and dtype kind), other values by ``==``.

    For answers that involve no rounding at all: indexing, concatenation, masking, integers, strings.
    """
    def judge(got: Any) -> str | None:
        if not isinstance(expected, torch.Tensor):
            return None if got == expected else f"expected {expected!r}\n  got      {got!r}"
        problem = _shape_problem(got, expected)
        if problem:
            return problem
        if got.dtype.is_floating_point != expected.dtype.is_floating_point or (got.dtype == torch.bool) != (
                expected.dtype == torch.bool):
            return f"expected dtype {expected.dtype}, got {got.dtype}"
        differ = got.to(expected.dtype) != expected
        if not differ.any():
            return None
        first = tuple(differ.nonzero()[0].tolist())
        return (f"{int(differ.sum())} of {differ.numel()} entries differ; first at {_where(first)}: "
                f"expected {expected[first].item()!r}, got {got[first].item()!r}")
    return judge


def close(expected32: torch.Tensor, exact64: torch.Tensor) -> Judge:
    """Right when the float32 answer is as close to the float64 one as the package's float32 result is.

    The rule of ``testing.float32_error_check``: the learner's distance to float64 may be 4x the package's
    plus 8 float32 ulps of the quantity's size, so any sound order of operations passes and a wrong formula,
    whose error is of the size of the quantity, does not. Infinite entries (masked scores) must sit exactly
    where the expected ones do.
    """
    def judge(got: Any) -> str | None:
        problem = _shape_problem(got, expected32)
        if problem:
            return problem
        if not got.dtype.is_floating_point:
            return f"expected a floating-point tensor ({expected32.dtype}), got {got.dtype}"
        got64 = got.detach().double()
        special = ~torch.isfinite(exact64)
        if not torch.equal(special, ~torch.isfinite(got64)) or not torch.equal(got64[special], exact64[special]):
            bad = (got64 != exact64) & (special | ~torch.isfinite(got64))
            first = tuple(bad.nonzero()[0].tolist())
            return (f"infinite / nan entries in the wrong places; first at {_where(first)}: expected "
                    f"{exact64[first].item():.6g}, got {got64[first].item():.6g}")
        finite = ~special
        result = float32_error_check("answer", got64[finite].float(), expected32.detach()[finite], exact64[finite])
        if result["ok"]:
            return None
        flat = int((got64 - exact64).abs().masked_fill(special, -1).reshape(-1).argmax())
        worst = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(got64.shape)))
        return (f"largest error at {_where(worst)}: expected {exact64[worst].item():.8g}, got "
                f"{got64[worst].item():.8g} (max error {result['ours_error']:.3g}; float32 rounding allows "
                f"{result['bound']:.3g})")
    return judge


def close_scalar(expected: float, rel: float = 1e-9) -> Judge:
    """Right when a Python number is within ``rel`` (relative) of ``expected`` (both computed in float64)."""
    def judge(got: Any) -> str | None:
        try:
            value = float(got)
        except (TypeError, ValueError):
            return f"expected a number, got {type(got).__name__}"
        if math.isclose(value, expected, rel_tol=rel, abs_tol=rel):
            return None
        return f"expected {expected!r}, got {value!r}"
    return judge


def to64(value: Any) -> Any:
    """Floating tensors (in lists, tuples, dicts) in float64; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.double() if value.dtype.is_floating_point else value
    if isinstance(value, (list, tuple)):
        return type(value)(to64(v) for v in value)
    if isinstance(value, dict):
        return {k: to64(v) for k, v in value.items()}
    return value


@torch.no_grad()
def float_case(description: str, args: Sequence, reference: Callable[..., torch.Tensor]) -> Case:
    """A case judged by ``close``: ``reference`` (the package) evaluated in float32 and in float64."""
    return Case(description, tuple(args), close(reference(*args), reference(*to64(tuple(args)))))


def describe(t: torch.Tensor) -> str:
    """A short name for an input tensor in a case description."""
    return f"{t.dtype} {list(t.shape)}".replace("torch.", "")


def all_of(names: Sequence[str], judges: Sequence[Judge]) -> Judge:
    """Judge a tuple answer part by part (``names`` say which part is wrong)."""
    def judge(got: Any) -> str | None:
        if not isinstance(got, (tuple, list)) or len(got) != len(judges):
            return f"expected a tuple of {len(judges)} ({', '.join(names)}), got {type(got).__name__}"
        for name, part, j in zip(names, got, judges):
            problem = j(part)
            if problem:
                return f"{name}: {problem}"
        return None
    return judge


def next_token_logps64(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[t + 1]) from logits[t] in float64, 0 where the label is -100. [B, T, V], [B, T] -> [B, T-1]

    The float64 "exact" answer for the loss checks: the package's ``train_utils.token_nll`` works in float32
    on purpose (it is the float32 answer), so the exact one cannot come from it.
    """
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets == -100, 0.0)
