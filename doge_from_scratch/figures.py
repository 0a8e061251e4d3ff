"""Export every figure of the executed notebooks as PNG files (used by ``make lessons``).

    python -m doge_from_scratch.figures notebooks artifacts/figures
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path


def export_figures(notebook_dir: Path, out_dir: Path) -> int:
    """Write each image output of notebooks/NN_*.ipynb to out_dir/NN_name-cellK-J.png; return the count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for nb_path in sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        for k, cell in enumerate(cells):
            images = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            for j, image in enumerate(images):
                (out_dir / f"{nb_path.stem}-cell{k}-{j}.png").write_bytes(base64.b64decode(image))
                count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m doge_from_scratch.figures NOTEBOOK_DIR OUT_DIR")
    count = export_figures(Path(args[0]), Path(args[1]))
    print(f"wrote {count} figures to {args[1]}")


if __name__ == "__main__":
    main()
