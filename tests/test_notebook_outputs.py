"""The committed lessons read well without a live kernel (GitHub, nbviewer, a first open in JupyterLab).

A saved page shows each output's static text. A widget (an ipywidgets slider, a tqdm notebook bar) is saved as a
view reference whose text fallback is its repr at display time - ``interactive(children=(IntSlider(...`` or
``pretraining:   0%|          | 0/800`` - and a console bar is saved frame by frame starting at 0%. Trainer's
``disable_tqdm`` printer dumps raw log dicts. This test scans the committed outputs for all of these and names the
notebook and the cell; it also checks the scanner on made-up pages and the package's progress display.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from doge_from_scratch.paths import PROJECT_ROOT
from doge_from_scratch.train_utils import progress_bar

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
COMMITTED = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")) + sorted((NOTEBOOK_DIR / "solutions").glob("*.ipynb"))

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# What a reader must not see in a saved page, with the reason printed on failure.
BAD_TEXT = {
    "raw widget repr": re.compile(r"interactive\(children=|IntSlider\(|FloatSlider\(|HBox\(children="),
    "0% progress line": re.compile(r"\b0%\|"),
    "raw Trainer log dict": re.compile(r"^\{'(?:loss|train_runtime|eval_loss)': ", re.MULTILINE),
}


def output_texts(output: nbformat.NotebookNode) -> list[str]:
    """Every piece of text a static renderer could show for one output (stream text, text/* mime data)."""
    texts = []
    if "text" in output:
        texts.append("".join(output["text"]))
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/"):
            texts.append("".join(value) if isinstance(value, list) else str(value))
    return texts


def live_output_problems(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """One line per offending output: '<name> cell <index>: <what> in <excerpt>'. Index counts all cells from 0."""
    problems = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if WIDGET_MIME in output.get("data", {}):
                problems.append(f"{name} cell {index}: a widget view (renders as its repr without a live kernel)")
            for text in output_texts(output):
                for what, pattern in BAD_TEXT.items():
                    match = pattern.search(text)
                    if match:
                        excerpt = text[max(0, match.start() - 30):match.end() + 40].replace("\n", "\\n")
                        problems.append(f"{name} cell {index}: {what} in {excerpt!r}")
    return problems


@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.relative_to(NOTEBOOK_DIR)) for p in COMMITTED])
def test_committed_outputs_are_static(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    problems = live_output_problems(nb, str(path.relative_to(PROJECT_ROOT)))
    assert not problems, "saved outputs a reader sees as raw reprs:\n" + "\n".join(problems)


def _page(*outputs: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a lesson"), nbformat.v4.new_code_cell("run()", outputs=list(outputs))]
    return nb


def test_scanner_flags_each_kind_with_notebook_and_cell() -> None:
    slider = nbformat.v4.new_output("display_data", data={
        WIDGET_MIME: {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "interactive(children=(IntSlider(value=8, description='keep window', max=17, min=1), Output()))"})
    bar = nbformat.v4.new_output("stream", name="stderr", text="pretraining:   0%|          | 0/800 [00:00<?, ?it/s]")
    log = nbformat.v4.new_output("stream", name="stdout", text="{'loss': '0.4365', 'grad_norm': '1.688'}\n")
    problems = live_output_problems(_page(slider, bar, log), "nb.ipynb")
    assert any(p.startswith("nb.ipynb cell 1: a widget view") for p in problems)
    assert any(p.startswith("nb.ipynb cell 1: raw widget repr") for p in problems)
    assert any(p.startswith("nb.ipynb cell 1: 0% progress line") for p in problems)
    assert any(p.startswith("nb.ipynb cell 1: raw Trainer log dict") for p in problems)


def test_scanner_passes_a_fixed_page() -> None:
    summary = nbformat.v4.new_output("stream", name="stdout",
                                     text="pretraining: 800/800 in 321 s (2.49 it/s), loss=0.612, val=0.527\n")
    table = nbformat.v4.new_output("execute_result", data={"text/plain": "step  loss\n1     0.43\n"})
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    # 10% and 100% are fine: only a bar frozen at its first frame is flagged.
    done = nbformat.v4.new_output("stream", name="stderr", text="generate: 100%|##########| 5/5\n")
    assert live_output_problems(_page(summary, table, figure, done), "nb.ipynb") == []


def test_progress_outside_a_terminal_is_one_static_line(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress_bar(range(5), desc="pretraining")
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(refresh=False, loss=f"{1.0 / (i + 1):.3f}")
    captured = capsys.readouterr()
    assert seen == [0, 1, 2, 3, 4]
    lines = (captured.out + captured.err).splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"pretraining: 5/5 in \d+ s \([0-9.]+ it/s\), loss=0\.200", lines[0]), lines[0]
    # disabled (another rank, progress=False): silent, and an iterator without len() is fine
    assert list(progress_bar(iter([1, 2]), desc="GRPO", disable=True)) == [1, 2]
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""
