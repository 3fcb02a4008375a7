"""No-op: `snakemake -n` on a finished tiny grid must schedule nothing.

Uses the existing results of the default config (config/tiny.yaml) in the repository root. If
that grid is not complete and up to date, the benchmark is reported as skipped with the reason
(Snakemake's own), and the time of the dry-run is still recorded for reference.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, Context, median, row, timed_run

NAME = "noop"


def _jobs(out: str) -> int | None:
    match = re.search(r"^total\s+(\d+)\s*$", out, re.M)
    if match:
        return int(match.group(1))
    return 0 if "Nothing to be done" in out else None


def _reasons(out: str) -> str:
    block = out.split("Reasons:", 1)[-1].split("Some jobs were", 1)[0] if "Reasons:" in out else ""
    lines = [
        ln.strip() for ln in block.splitlines()[1:] if ln.strip() and "check individual" not in ln
    ]
    pairs = [f"{a} {b}" for a, b in zip(lines[::2], lines[1::2], strict=False)]
    return "; ".join(pairs)[:300]


def run(ctx: Context) -> list[dict[str, Any]]:
    if not (ctx.results_dir / "results.parquet").exists():
        return [row(NAME, "skipped", None, note=f"no finished tiny grid in {ctx.results_dir}")]
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    repeats = 1 if ctx.quick else 3
    times, out = [], ""
    for _ in range(repeats):
        seconds, proc = timed_run([snakemake, "-n"], cwd=ROOT)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake -n failed: {out[-1500:]}")
        times.append(seconds)
    jobs = _jobs(out)
    rows = [row(NAME, "jobs scheduled", jobs, "jobs", note="must be 0")]
    dry = median(times)
    if jobs:
        rows[0]["note"] = f"SKIPPED: the tiny grid in results/ is not up to date ({_reasons(out)})"
        rows.append(
            row(
                NAME,
                "dry-run time (grid not up to date)",
                dry,
                "s",
                note=f"median of {repeats}; not a no-op measurement",
            )
        )
        # The same grid judged by modification times only: what remains once provenance
        # (params/code) changes since the run are ignored.
        seconds, proc = timed_run([snakemake, "-n", "--rerun-triggers", "mtime"], cwd=ROOT)
        mjobs = _jobs(proc.stdout + proc.stderr)
        rows.append(
            row(
                NAME,
                "jobs, --rerun-triggers mtime",
                mjobs,
                "jobs",
                note=f"dry-run {seconds:.2f}s; provenance triggers ignored",
            )
        )
    else:
        rows.append(
            row(
                NAME,
                "dry-run time, finished grid",
                dry,
                "s",
                note=f"median of {repeats} fresh processes, start-up included",
            )
        )
    return rows
