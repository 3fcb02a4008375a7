"""The demo grid: its workflow wall time and where the time goes, rule by rule.

Full mode runs the demo as `make demo` does (`snakemake --cores 2 --configfile
config/tiny.yaml`, the tiny model built too) in a fresh working directory and times the whole
workflow, environment excluded; the baseline is the 6-minute target. Quick mode reads the
`benchmark:` files of a finished run under results/ instead. Per rule: the sum of each job's
wall and CPU time from Snakemake's `benchmark:` files (rules without one, the cheap
aggregation and reports, are in the wall time only).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, Context, row, timed_run

NAME = "demo"
TARGET_SECONDS = 360.0
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _run_demo(ctx: Context) -> tuple[float, Path]:
    workdir = ctx.workdir / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        SNAKEMAKE,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        str(ROOT / "config" / "tiny.yaml"),
    ]
    seconds, proc = timed_run(cmd, cwd=workdir, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the demo failed:\n{proc.stderr[-3000:]}")
    return seconds, workdir / "results"


def timeline(log: str) -> list[tuple[str, int, float, float]]:
    """(rule, threads, start, end) of every job in a Snakemake log, seconds from the first
    job's start (the log's timestamps have one-second resolution)."""
    stamp, pending, started, jobs = None, None, {}, []
    for line in log.splitlines():
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]$", line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
        elif m := re.match(r"(?:local)?rule (\w+):$", line):
            pending = [m.group(1), 1, stamp]
        elif pending and (m := re.match(r"\s+jobid: (\d+)$", line)):
            started[m.group(1)] = pending
        elif pending and (m := re.match(r"\s+threads: (\d+)$", line)):
            pending[1] = int(m.group(1))
        elif m := re.match(r"Finished jobid: (\d+)", line):
            rule, threads, start = started.pop(m.group(1))
            jobs.append((rule, threads, start, stamp))
    first = min((start for _, _, start, _ in jobs), default=0.0)
    return [(r, t, start - first, end - first) for r, t, start, end in jobs]


def idle_rows(log: str, cores: int = 2) -> list[dict[str, Any]]:
    """How much of the cores' time no job used, and where: the demo can only be as short as
    its jobs packed onto the cores."""
    jobs = [j for j in timeline(log) if j[0] != "all"]
    if not jobs:
        return []
    wall = max(end for *_, end in jobs)
    busy = sum(min(threads, cores) * (end - start) for _, threads, start, end in jobs)
    first_training = min(
        (start for rule, _, start, _ in jobs if rule in ("backdoor_sft", "blue_train")),
        default=wall,
    )
    return [
        row(
            NAME,
            "idle core time",
            cores * wall - busy,
            "s",
            baseline=cores * wall,
            note=f"{cores} cores x {wall:.0f}s of jobs, from the Snakemake log (1 s stamps); "
            f"ratio = idle share; the first training job starts at {first_training:.0f}s",
        )
    ]


def run(ctx: Context) -> list[dict[str, Any]]:
    import pandas as pd

    rows = []
    results = ctx.results_dir
    if not ctx.quick:
        seconds, results = _run_demo(ctx)
        logs = sorted((results.parent / ".snakemake" / "log").glob("*.snakemake.log"))
        rows.append(
            row(
                NAME,
                "demo workflow wall time",
                seconds,
                "s",
                baseline=TARGET_SECONDS,
                note="snakemake --cores 2 --configfile config/tiny.yaml in a fresh directory, "
                "tiny model built too, environment excluded; baseline = the 6-minute target"
                + ("" if seconds <= TARGET_SECONDS else "; MISSES target"),
            )
        )
        rows += idle_rows(logs[-1].read_text()) if logs else []
    root = results / "benchmarks"
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    if not files:
        skipped = f"no benchmark files under {root}: run `make demo`"
        return [*rows, row(NAME, "skipped", None, note=skipped)]
    frames = []
    for path in files:
        frame = pd.read_csv(path, sep="\t")
        frame["rule"] = path.relative_to(root).parts[0]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    total = float(table["s"].sum())
    for rule, group in sorted(table.groupby("rule"), key=lambda kv: -kv[1]["s"].sum()):
        s = group["s"]
        rss = f", peak RSS {group['max_rss'].max():.0f} MB" if "max_rss" in group else ""
        cpu = f", CPU {group['cpu_time'].sum():.0f}s" if "cpu_time" in group else ""
        rows.append(
            row(
                NAME,
                f"{rule}: sum",
                s.sum(),
                "s",
                note=f"n={len(s)}, mean {s.mean():.1f}s{cpu}{rss}; ratio = share of all "
                "benchmarked rule time",
            )
        )
        rows[-1]["ratio"] = float(s.sum()) / total if total else None
    cpu_total = f", CPU {table['cpu_time'].sum():.0f}s" if "cpu_time" in table else ""
    rows.append(
        row(
            NAME,
            "all benchmarked rules: sum",
            total,
            "s",
            note=f"{len(table)} jobs with a benchmark file{cpu_total}; serial sum, not the wall "
            "time of the parallel run",
        )
    )
    return rows
