"""Budget sharing in the DAG: each budget continues the next smaller one of its group."""

import re

import yaml
from conftest import e2e_config, run_snakemake


def test_budgets_chain_within_each_group(tmp_path):
    cfg = e2e_config()
    cfg["grid"]["token_budget"] = ["20k", "40k", "80k"]
    cfg["red_team"]["share_budget_prefix"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = run_snakemake(tmp_path, "-n", "--configfile", "c.yaml").stdout
    jobs = out.split("rule backdoor_sft:")[1:]
    assert len(jobs) == 3 * 4  # budgets x (optimizer x cot)
    chained = {}
    for job in jobs:
        output = re.search(r"output: results/red/(\S+)", job)[1]
        inputs = re.search(r"input: (.*)", job)[1].split(", ")
        previous = [i.removeprefix("results/red/") for i in inputs if "/red/" in i]
        chained[output] = previous[0] if previous else None
    for group in ("tiny/adamw/plain", "tiny/soap/distilled"):
        assert chained[f"{group}/20k/seed0"] is None
        assert chained[f"{group}/40k/seed0"] == f"{group}/20k/seed0"
        assert chained[f"{group}/80k/seed0"] == f"{group}/40k/seed0"


def test_sharing_refuses_a_schedule_without_the_prefix_property(tmp_path):
    cfg = e2e_config()
    cfg["red_team"].update(share_budget_prefix=True, lr_schedule="cosine")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "-n", "--configfile", "c.yaml", check=False)
    assert proc.returncode != 0
    assert "red_team.share_budget_prefix: needs lr_schedule 'constant'" in proc.stdout + proc.stderr
