"""Reading JSON-lines files (the data sets and the benchmark files): one row loop, errors that name the file,
the row (1-based line) and what is wrong. Writing them is ``atomic.write_jsonl``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .tasks import DataFormatError


def read_rows(path: str | Path, check_row: Callable[[Any, str], None], regenerate: str) -> list[dict[str, Any]]:
    """Every row of ``path``, each passed to ``check_row(row, where)`` (which raises ``DataFormatError`` naming
    ``where``). A missing file says how to make it (``regenerate``, a command); an empty line, bad JSON or a
    file without rows is a ``DataFormatError`` naming the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; regenerate with `{regenerate}`")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path}: row {line_no}"
            if not line.strip():
                raise DataFormatError(f"{where}: empty line")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            check_row(row, where)
            rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows
