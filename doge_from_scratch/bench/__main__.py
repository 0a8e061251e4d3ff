"""``python -m doge_from_scratch.bench NAME [args...]``: dispatch to ``doge_from_scratch.bench.NAME.main``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from . import __path__ as _bench_path


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(_bench_path) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in available():
        print(f"usage: python -m doge_from_scratch.bench NAME [args]; NAME is one of {available()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"doge_from_scratch.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
