"""Benchmarks: ``python -m doge_from_scratch.bench NAME [args]`` runs ``doge_from_scratch.bench.NAME.main(args)``.

Each prints a table and a final machine-readable JSON line.
"""
