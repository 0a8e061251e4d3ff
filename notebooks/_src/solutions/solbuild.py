"""Shared builder for the solution notebooks (notebooks/solutions/NN_*.ipynb).

Each ``snNN_*.py`` lists its exercises as ``Exercise`` rows; ``build`` writes one notebook: the imports, then per
exercise a heading and one cell holding the solution and its check (``.require()`` makes a failed check an error,
so nbval catches it). tests/test_exercises.py executes the same sources, so the notebooks and the tests cannot
drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nbbuild import NOTEBOOKS, code, md, write_notebook  # noqa: E402


class Exercise(NamedTuple):
    heading: str
    check: str  # the check's name in doge_from_scratch.exercises
    function: str  # the name the solution defines
    source: str


IMPORTS = [("math.", "import math"), ("torch.", "import torch"), ("F.", "import torch.nn.functional as F")]


def setup(exercises: list[Exercise]) -> str:
    """The imports the solutions use (an unused one would fail ruff on the executed notebook)."""
    text = "".join(e.source for e in exercises)
    lines = [line for marker, line in IMPORTS if marker in text]
    return ("import math\n\n" if "import math" in lines else "") + "".join(
        line + "\n" for line in lines if line != "import math")


def build(name: str, title: str, exercises: list[Exercise]) -> Path:
    (NOTEBOOKS / "solutions").mkdir(exist_ok=True)
    checks = ", ".join(sorted({e.check for e in exercises}))
    cells = [md(f"# Solutions - {title}\n\nOne way to solve each exercise of the lesson, run through its check."),
             code(setup(exercises) + f"\nfrom doge_from_scratch.exercises import {checks}")]
    for e in exercises:
        cells += [md(f"## {e.heading}"), code(f"{e.source.strip()}\n\n\n{e.check}({e.function}).require()")]
    return write_notebook(f"solutions/{name}", cells)
