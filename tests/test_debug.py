"""debug's comparison of two recordings: the tolerances it is given decide what counts as a difference."""

from __future__ import annotations

import torch

from doge_from_scratch import debug


def test_differs_judges_by_its_own_tolerances():
    ref = torch.tensor([1.0, -2.0, 4.0])
    out = ref + torch.tensor([0.0, 1e-3, 0.0])
    assert not debug._differs(out, ref, rtol=0.0, atol=2e-3).exceeds
    assert debug._differs(out, ref, rtol=0.0, atol=5e-4).exceeds
    assert not debug._differs(out, ref, rtol=1e-3, atol=0.0).exceeds  # 1e-3 <= 1e-3 * max|ref| = 4e-3
    assert debug._differs(out, ref, rtol=1e-4, atol=0.0).exceeds
    assert debug._differs(out * float("nan"), ref, rtol=1.0, atol=1.0).exceeds  # NaN is never within tolerance
    assert debug._differs(out[:2], ref, rtol=1.0, atol=1.0) is None  # shapes differ: nothing to measure
