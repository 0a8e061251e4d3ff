"""Shared test set-up: offline Hub, two CPU threads, fixed seeds, and a table of measured differences.

Parity tests call ``record_diff(name, value)``; the values are printed as a table at the end of the
run (``pytest -s`` is not needed), so the closing note can quote what was measured, not assumed.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: nothing may download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

MEASURED: list[tuple[str, float, float]] = []


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


def pytest_terminal_summary(terminalreporter):
    if not MEASURED:
        return
    terminalreporter.section("measured differences (max abs logits vs installed transformers unless the row says otherwise)")
    width = max(len(name) for name, _, _ in MEASURED)
    terminalreporter.write_line(f"{'check'.ljust(width)}  {'max |diff|':>11}  {'bound':>9}")
    for name, value, tol in MEASURED:
        terminalreporter.write_line(f"{name.ljust(width)}  {value:11.3e}  {tol:9.0e}")


@pytest.fixture(scope="module")
def tokenizer():
    """The project's lesson tokenizer (data/tokenizer), shared by the training-stage tests."""
    from doge_from_scratch.tokenizer import load_tokenizer

    return load_tokenizer()
