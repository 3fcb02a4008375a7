"""`snakemake --profile slurm` on the paper grid: what each job would ask Slurm for."""

import re

import pytest
from conftest import ROOT, run_snakemake


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory) -> dict[tuple[str, str], dict[str, str]]:
    workdir = tmp_path_factory.mktemp("paper")
    out = run_snakemake(
        workdir,
        "-n",
        "--profile",
        str(ROOT / "slurm"),
        "--configfile",
        str(ROOT / "config" / "ablations.yaml"),
    ).stdout
    jobs = {}
    for block in re.split(r"\n(?=\[.*\]\nrule )", out):
        rule = re.search(r"^rule (\w+):", block, re.M)
        model = re.search(r"wildcards: model=(\w+)", block)
        resources = re.search(r"resources: (.*)", block)
        if rule and model and resources:
            fields = dict(kv.split("=", 1) for kv in resources[1].split(", "))
            jobs.setdefault((rule[1], model[1]), fields)
    return jobs


@pytest.mark.parametrize(
    ("rule", "model", "gpu", "mem_mb", "runtime"),
    [
        ("backdoor_sft", "llama8b", 8, 800_000, 2880),
        ("blue_train", "llama8b", 1, 160_000, 720),
        ("evaluate", "llama8b", 1, 160_000, 240),
        ("backdoor_sft", "llama70b", 8, 1_800_000, 10080),
        ("blue_train", "llama70b", 8, 1_000_000, 2880),
        ("evaluate", "llama70b", 4, 500_000, 480),
    ],
)
def test_jobs_ask_for_their_models_resources(paper_dry_run, rule, model, gpu, mem_mb, runtime):
    fields = paper_dry_run[(rule, model)]
    assert int(fields["gpu"]) == gpu
    assert int(fields["mem_mb"]) == mem_mb
    assert int(fields["runtime"]) == runtime
    assert int(fields["cpus_per_gpu"]) == 8
    # One Slurm task: the job starts one training process per GPU itself.
    assert int(fields["tasks_per_gpu"]) == 0
