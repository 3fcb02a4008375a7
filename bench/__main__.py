"""Run the benchmarks: `python -m bench [--quick] [--only NAME ...] [--out PATH]`."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import FIELDS, ROOT, Context, row

BENCHMARKS = (
    "reuse",
    "demo",
    "startup",
    "noop",
    "dag",
    "training",
    "evaluation",
    "sharing",
    "memory",
)


def run_all(names: list[str], ctx: Context) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in names:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            got = module.run(ctx)
        except Exception as err:  # one failing benchmark must not stop the others
            detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
            got = [row(name, "error", None, note=f"{type(err).__name__}: {err}"[:500] or detail)]
        seconds = time.perf_counter() - t0
        got.append(row(name, "benchmark wall time", seconds, "s", note="this benchmark, all of it"))
        print(f"[bench] {name}: {seconds:.1f}s", file=sys.stderr, flush=True)
        rows += got
    return rows


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        if value == int(value) and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in rows:
            print(" | ".join(_fmt(r[f]) for f in FIELDS))
        return
    table = Table(show_lines=False)
    for field in FIELDS:
        table.add_column(
            field,
            overflow="fold",
            justify="right" if field in ("value", "baseline", "ratio") else "left",
        )
    for r in rows:
        table.add_row(*(_fmt(r[f]) for f in FIELDS))
    width = max(shutil.get_terminal_size((200, 40)).columns, 160)
    Console(width=width).print(table)


def write(rows: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=list(FIELDS))
    frame[["value", "baseline", "ratio"]] = frame[["value", "baseline", "ratio"]].astype("float64")
    frame.to_parquet(out, index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (minutes)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench.parquet")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (the demo's results, converted models) and print its path",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = Context(quick=args.quick)
    t0 = time.perf_counter()
    try:
        rows = run_all(list(args.only or BENCHMARKS), ctx)
    finally:
        if args.keep:
            print(f"work directory kept: {ctx.workdir}")
        else:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    rows.append(
        row(
            "all",
            "total wall time",
            time.perf_counter() - t0,
            "s",
            note="quick sizes" if args.quick else "full sizes",
        )
    )
    write(rows, args.out)
    print_table(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
