"""Each committed lesson notebook holds exactly the cells its generator in notebooks/_src/ writes.

A lesson's text and code live in ``notebooks/_src/nbNN_*.py``; ``python notebooks/_src/nbNN_x.py`` rewrites
``notebooks/NN_x.ipynb`` from it (then the notebook is executed). An edit made only in the .ipynb (in JupyterLab,
say) would be lost at the next rebuild, and an edit made only in the source would never reach a reader: this
test fails on either, naming the notebook and the first cell that differs. Outputs and metadata are not
compared (executing fills them).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import nbformat
import pytest

from doge_from_scratch.paths import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"
SOURCES = sorted((NOTEBOOKS / "_src").glob("nb[0-9][0-9]_*.py"))


def generated_cells(source: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list]:
    """Run a generator as a script with ``nbbuild.write_notebook`` capturing instead of writing -> (name, cells)."""
    monkeypatch.syspath_prepend(str(source.parent))
    import nbbuild

    written: list[tuple[str, list]] = []
    monkeypatch.setattr(nbbuild, "write_notebook", lambda name, cells: written.append((name, cells)))
    runpy.run_path(str(source), run_name="__main__")
    if len(written) != 1:
        raise AssertionError(f"{source.name} wrote {len(written)} notebooks, expected exactly one")
    return written[0]


def cell_differences(name: str, generated: list, committed: list) -> list[str]:
    """Human-readable differences between two cell lists (type and source only), the first few."""
    problems = []
    if len(generated) != len(committed):
        problems.append(f"{name}: the generator writes {len(generated)} cells, the notebook holds {len(committed)}")
    for i, (new, old) in enumerate(zip(generated, committed)):
        if new.cell_type != old.cell_type or new.source != old.source:
            first_line = next((line for line in new.source.splitlines() if line.strip()), "")
            problems.append(f"{name}: cell {i} ({new.cell_type}, {first_line[:60]!r}) differs from the notebook's "
                            f"({old.cell_type})")
    return problems[:5]


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_committed_notebook_equals_its_source(source, monkeypatch):
    name, cells = generated_cells(source, monkeypatch)
    path, rebuild = NOTEBOOKS / name, f"python {source.relative_to(PROJECT_ROOT)}"
    assert path.is_file(), f"{source.name} writes {name}, which is not committed; run `{rebuild}`"
    problems = cell_differences(name, cells, nbformat.read(path, as_version=4).cells)
    assert not problems, "\n".join(problems) + f"\nrebuild with `{rebuild}`, then execute the notebook"


def test_an_edited_notebook_is_caught(monkeypatch):
    source = SOURCES[0]
    name, cells = generated_cells(source, monkeypatch)
    edited = [nbformat.from_dict(dict(c)) for c in cells]
    edited[1] = nbformat.v4.new_code_cell(edited[1].source + "\nprint('edited in JupyterLab')")
    assert cell_differences(name, cells, cells) == []
    assert cell_differences(name, cells, edited) and "cell 1" in cell_differences(name, cells, edited)[0]
    assert cell_differences(name, cells, edited[:-1])[0].endswith(f"holds {len(cells) - 1}")

