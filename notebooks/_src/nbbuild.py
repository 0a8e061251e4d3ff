"""Tiny helper for the lesson generators: a list of markdown/code strings -> an .ipynb (unexecuted).

Each generator (``nb01_building_blocks.py`` ...) calls ``write_notebook(path, cells)`` with cells made by
``md("...")`` and ``code("...")``; execute afterwards with
``jupyter nbconvert --to notebook --execute --inplace notebooks/NN_x.ipynb``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip("\n"))


def write_notebook(name: str, cells: list) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = NOTEBOOKS / name
    nbformat.write(nb, path)
    return path
