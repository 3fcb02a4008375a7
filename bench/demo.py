"""The demo grid: wall time per rule, from Snakemake's `benchmark:` files of a finished run."""

from __future__ import annotations

from typing import Any

from bench.common import Context, row

NAME = "demo"


def run(ctx: Context) -> list[dict[str, Any]]:
    import pandas as pd

    root = ctx.results_dir / "benchmarks"
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    if not files:
        return [
            row(NAME, "skipped", None, note=f"no benchmark files under {root}: run `make demo`")
        ]
    frames = []
    for path in files:
        frame = pd.read_csv(path, sep="\t")
        frame["rule"] = path.relative_to(root).parts[0]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    rows = []
    total = 0.0
    for rule, group in sorted(table.groupby("rule"), key=lambda kv: -kv[1]["s"].sum()):
        s = group["s"]
        total += float(s.sum())
        rss = f", peak RSS {group['max_rss'].max():.0f} MB" if "max_rss" in group else ""
        rows.append(
            row(NAME, f"{rule}: sum", s.sum(), "s", note=f"n={len(s)}, mean {s.mean():.1f}s{rss}")
        )
    for r in rows:
        r["ratio"] = r["value"] / total if total else None
        r["note"] += "; ratio = share of all benchmarked rule time"
    rows.append(
        row(
            NAME,
            "all benchmarked rules: sum",
            total,
            "s",
            note=f"{len(table)} jobs with a benchmark file (rules without `benchmark:` not counted); "
            "serial sum, not wall time of the parallel run",
        )
    )
    return rows
