"""Lesson 12 (hub parity) checks: expanding classic KV heads, finding the first diverging module."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..references import expand_kv_heads
from ._core import Case, CheckResult, describe, exact, run_cases

KEY = "model.layers.0.self_attn.k_proj.weight"


def check_expand_kv(expand_kv: Callable) -> CheckResult:
    """``expand_kv(k_weight, n_heads, n_kv, head_dim) -> [n_heads * head_dim, H]``: the rows of KV head j copied
    to query heads j*g .. j*g+g-1, g = n_heads / n_kv (``references.expand_kv_heads``).
    k_weight: [n_kv * head_dim, H]."""
    g = torch.Generator().manual_seed(31)
    cases = []
    for n_heads, n_kv, d, h in ((2, 1, 2, 3), (4, 2, 3, 5), (6, 3, 2, 4)):
        w = torch.randn(n_kv * d, h, generator=g)
        want = expand_kv_heads({KEY: w}, n_heads, n_kv, d)[KEY]
        cases.append(Case(f"k_weight {describe(w)}, n_heads={n_heads}, n_kv={n_kv}, head_dim={d}",
                          (w, n_heads, n_kv, d), exact(want)))
    return run_cases("check_expand_kv", expand_kv, cases,
                     hint="copies of one KV head sit next to each other (repeat_interleave over heads), as "
                          "repeat_kv serves them; .repeat would tile the heads instead")


def _outputs(names: list[str], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(3, 4, generator=g) for n in names}


def check_first_divergence(first_divergence: Callable) -> CheckResult:
    """``first_divergence(ours, reference, rtol, atol) -> str | None``: the first module name, in the order the
    dicts were recorded (the forward order), whose outputs are not within ``torch.allclose(rtol, atol)`` of the
    reference's; None when all agree. The answers are known by construction: one output is perturbed."""
    names = ["embed", "layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp", "norm"]
    cases = []
    ref = _outputs(names, 32)
    rounding = {n: t * (1 + 1e-7) for n, t in ref.items()}  # float32-rounding-size noise everywhere: no divergence
    cases.append(Case("outputs equal up to 1e-7 relative noise", (rounding, ref, 1e-4, 1e-6), exact(None)))
    for bad in ("layers.0.mlp", "embed", "norm"):
        ours = dict(rounding)
        ours[bad] = ours[bad] + 1e-2
        later = names[names.index(bad) + 1:]
        for n in later:
            ours[n] = ours[n] + 1.0  # everything downstream of the first bad module differs too
        cases.append(Case(f"{bad!r} off by 1e-2 (and every later module off too)", (ours, ref, 1e-4, 1e-6),
                          exact(bad)))
    return run_cases("check_first_divergence", first_divergence, cases,
                     hint="walk the names in insertion order and stop at the first not-allclose one; exact equality "
                          "would flag rounding noise")
