"""Shared test set-up: offline Hub, two CPU threads, fixed seeds, and a table of measured differences.

Parity tests call ``record_diff(name, value)``; the values are printed as a table at the end of the
run (``pytest -s`` is not needed), so the closing note can quote what was measured, not assumed.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: nothing may download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

_CAPABILITY = os.environ.get("ATEN_CPU_CAPABILITY")
if _CAPABILITY in ("default", "avx2"):
    # CI's "other processor" runs force ATen's plain-C or AVX2 kernels, but torch.compile writes its C++ for the
    # machine's own vector ISA (AVX-512 here) and shares one cache of headers and kernels across settings: without
    # the two lines below the plain-C run failed to build and the AVX2 run computed NaN. So its code is written for
    # the forced ISA, and cached apart from the native runs' code.
    import tempfile

    import torch._inductor.config  # noqa: E402

    torch._inductor.config.cpp.simdlen = {"default": 1, "avx2": 256}[_CAPABILITY]
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                          os.path.join(tempfile.gettempdir(), f"torchinductor_{_CAPABILITY}_{os.getuid()}"))

MEASURED: list[tuple[str, float, float]] = []
CHECKS: list[dict] = []


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture
def record_diff():
    """record_diff(name, value, tolerance): keep a measured max abs difference for the summary table."""

    def record(name: str, value: float, tolerance: float) -> None:
        MEASURED.append((name, float(value), float(tolerance)))

    return record


@pytest.fixture
def record_check():
    """record_check(check): keep a ``testing.float32_error_check`` result for the summary table (and for
    ``$DOGE_CHECKS_JSON``, where CI collects the worst ratio over every processor setting it runs)."""

    def record(check: dict) -> dict:
        CHECKS.append(check)
        return check

    return record


def _write_checks_json() -> None:
    path = os.environ.get("DOGE_CHECKS_JSON")
    if path and CHECKS:
        with open(path, "a", encoding="utf-8") as f:
            for check in CHECKS:
                f.write(json.dumps({k: v for k, v in check.items()}) + "\n")


def pytest_terminal_summary(terminalreporter):
    _write_checks_json()
    if CHECKS:
        terminalreporter.section("float32 error against float64: ours vs the reference (ratio <= 4 passes)")
        width = max(len(c["name"]) for c in CHECKS)
        terminalreporter.write_line(f"{'check'.ljust(width)}  {'ours err':>9}  {'ref err':>9}  {'bound':>9}  ratio")
        for c in CHECKS:
            terminalreporter.write_line(f"{c['name'].ljust(width)}  {c['ours_error']:9.2e}  "
                                        f"{c['reference_error']:9.2e}  {c['bound']:9.2e}  {c['ratio']:5.2f}")
        worst = max(CHECKS, key=lambda c: c["ratio"])
        terminalreporter.write_line(f"worst ratio {worst['ratio']:.2f}: {worst['name']}")
    if not MEASURED:
        return
    terminalreporter.section(
        "measured differences (max abs logits vs installed transformers unless the row says otherwise)")
    width = max(len(name) for name, _, _ in MEASURED)
    terminalreporter.write_line(f"{'check'.ljust(width)}  {'max |diff|':>11}  {'bound':>9}")
    for name, value, tol in MEASURED:
        terminalreporter.write_line(f"{name.ljust(width)}  {value:11.3e}  {tol:9.0e}")


@pytest.fixture(scope="module")
def tokenizer():
    """The project's lesson tokenizer (data/tokenizer), shared by the training-stage tests."""
    from doge_from_scratch.tokenizer import load_tokenizer

    return load_tokenizer()
