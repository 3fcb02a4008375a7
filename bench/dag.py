"""DAG: dry-run of the paper grid vs Snakemake's own start-up, and growth with the grid.

Every timing is the wall time of a fresh `snakemake` process (interpreter start-up included in
both numerator and baseline), in an empty temporary working directory so no earlier run's
metadata is consulted. Baseline: `snakemake -n` of a one-rule Snakefile in a temp dir. A
`--list-rules` run of the real workflow splits parsing (config load/validation, imports, rule
definitions) from DAG building.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, Context, median, row, timed_run

NAME = "dag"
TARGET = 1.5  # issue 16: the paper-grid dry run at most 1.5x Snakemake's start-up
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
ONE_RULE = 'rule all:\n    output:\n        "done.txt",\n    shell:\n        "touch {output}"\n'


def _jobs(stdout: str) -> int | None:
    match = re.search(r"^total\s+(\d+)\s*$", stdout, re.M)
    if match:
        return int(match.group(1))
    return 0 if "Nothing to be done" in stdout else None


def _time(cmd: list[str], repeats: int) -> tuple[float, int | None]:
    times, jobs = [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
            seconds, proc = timed_run([*cmd, "--directory", tmp], cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout)[-1500:]}")
        times.append(seconds)
        jobs = _jobs(proc.stdout + proc.stderr)
    return median(times), jobs


def scaled_config(factor: int, out: Path) -> Path:
    """The paper config with factor x the blue-team learning rates and seeds.

    2x: twice the learning rates; 4x: and twice the seeds; 8x: four times the learning rates
    and twice the seeds. Extra seeds get the paper's 70B exclusion, like seed 1.
    """
    cfg = yaml.safe_load((ROOT / "config" / "ablations.yaml").read_text())
    lr_mult = {1: 1, 2: 2, 4: 2, 8: 4}[factor]
    seed_mult = {1: 1, 2: 1, 4: 2, 8: 2}[factor]
    lrs = list(cfg["grid"]["blue_lr"])
    extra = [lr * (1 + k / 10) for k in range(1, lr_mult) for lr in lrs]
    cfg["grid"]["blue_lr"] = lrs + [float(f"{x:.2e}") for x in extra]
    seeds = list(cfg["grid"]["seed"])
    new_seeds = list(range(max(seeds) + 1, max(seeds) + 1 + len(seeds) * (seed_mult - 1)))
    cfg["grid"]["seed"] = seeds + new_seeds
    cfg["exclude"] = list(cfg.get("exclude", [])) + [
        {"model": "llama70b", "seed": s} for s in new_seeds
    ]
    path = out / f"ablations_x{factor}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(ctx: Context) -> list[dict[str, Any]]:
    repeats = 1 if ctx.quick else 3
    factors = [2] if ctx.quick else [2, 4, 8]
    snakefile = str(ROOT / "Snakefile")
    paper = str(ROOT / "config" / "ablations.yaml")
    base_dir = Path(tempfile.mkdtemp(prefix="bench-onerule-", dir=ctx.workdir))
    (base_dir / "Snakefile").write_text(ONE_RULE)

    startup, _ = _time([SNAKEMAKE, "-n", "-s", str(base_dir / "Snakefile")], repeats)
    parse, _ = _time([SNAKEMAKE, "--list-rules", "-s", snakefile, "--configfile", paper], repeats)
    dry, jobs = _time([SNAKEMAKE, "-n", "-s", snakefile, "--configfile", paper], repeats)
    how = f"median of {repeats} fresh processes"
    rows = [
        row(NAME, "snakemake start-up (one-rule Snakefile, -n)", startup, "s", note=how),
        row(
            NAME,
            "parse paper workflow (--list-rules)",
            parse,
            "s",
            baseline=startup,
            note="config load + schema/cross checks + imports + rule definitions, no DAG",
        ),
        row(
            NAME,
            "dry-run paper grid",
            dry,
            "s",
            baseline=startup,
            note=f"{jobs} jobs; DAG building = {dry - parse:.2f}s of it; target <= {TARGET}x start-up",
        ),
    ]
    if rows[-1]["ratio"] is not None and rows[-1]["ratio"] > TARGET:
        rows[-1]["note"] += (
            f"; MISSES target: {parse - startup:.2f}s parsing/config beyond bare start-up, "
            f"{dry - parse:.2f}s DAG ({jobs} jobs, {1000 * (dry - parse) / max(jobs or 1, 1):.1f} ms/job)"
        )
    rows.append(row(NAME, "jobs, paper grid", jobs, "jobs"))
    for factor in factors:
        cfg = scaled_config(factor, ctx.workdir)
        try:
            # Growth is superlinear: the 4x and 8x grids are timed once (minutes each).
            reps = repeats if factor <= 2 else 1
            seconds, n = _time([SNAKEMAKE, "-n", "-s", snakefile, "--configfile", str(cfg)], reps)
            rows.append(
                row(
                    NAME,
                    f"dry-run {factor}x grid",
                    seconds,
                    "s",
                    baseline=dry,
                    note=f"{n} jobs ({n / jobs if jobs and n else float('nan'):.2f}x the paper grid's); "
                    f"ratio vs paper-grid dry-run; {reps} run(s)",
                )
            )
            rows.append(row(NAME, f"jobs, {factor}x grid", n, "jobs", baseline=jobs))
        except Exception as err:  # e.g. the 8x grid past the 600 s limit: keep the other rows
            rows.append(row(NAME, f"dry-run {factor}x grid", None, "s", note=f"error: {err}"[:300]))
    return rows
