"""Chunked weighted cross-entropy against the naive full-logits computation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tokenweight.trainer.loss import token_cross_entropy, weighted_cross_entropy, weighted_mean
from tokenweight.trainer.weighting import WeightingConfig, compute_weights

B, T, D, V = 2, 7, 5, 11


def naive(hidden, weight, bias, targets, weights, real):
    """mean(w * CE) over real targets from the full [B, T, V] logits, upcast to at least fp32."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(logits.transpose(1, 2), torch.where(real, targets, 0), reduction="none")
    return (ce * weights)[real].mean(), ce


def make(dtype=torch.float64, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=gen, dtype=dtype).requires_grad_()
    head = nn.Linear(D, V, bias=bias, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=gen))
        if bias:
            head.bias.copy_(torch.randn(V, generator=gen))
    targets = torch.randint(0, V, (B, T), generator=gen)
    weights = torch.rand(B, T, generator=gen) * 3
    return hidden, head, targets, weights


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 14, 100])
def test_matches_naive_with_mask(chunk_size):
    hidden, head, targets, weights = make()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, 0] = False
    out = weighted_cross_entropy(hidden, head, targets, weights, mask=mask, chunk_size=chunk_size)
    ref, ref_ce = naive(hidden, head.weight, head.bias, targets, weights, mask)

    torch.testing.assert_close(out.loss, ref)
    for got, want in zip(grads(out.loss, hidden, head.weight, head.bias), grads(ref, hidden, head.weight, head.bias)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out.token_ce, torch.where(mask, ref_ce, 0.0).detach())
    torch.testing.assert_close(out.ce_mean, ref_ce[mask].mean().detach())
    assert out.num_targets == mask.sum()
    assert not out.token_ce.requires_grad and not out.ce_mean.requires_grad


def test_weight_tensor_without_bias_and_no_weights():
    hidden, head, targets, _ = make(bias=False)
    real = torch.ones(B, T, dtype=torch.bool)
    out = weighted_cross_entropy(hidden, head.weight, targets, chunk_size=4)
    ref, _ = naive(hidden, head.weight, None, targets, torch.ones(B, T), real)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.loss.detach(), out.ce_mean)
    for got, want in zip(grads(out.loss, hidden, head.weight), grads(ref, hidden, head.weight)):
        torch.testing.assert_close(got, want)


def test_weight_tensor_with_separate_bias():
    hidden, head, targets, weights = make()
    real = torch.ones(B, T, dtype=torch.bool)
    out = weighted_cross_entropy(hidden, head.weight, targets, weights, bias=head.bias, chunk_size=3)
    ref, _ = naive(hidden, head.weight, head.bias, targets, weights, real)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(grads(out.loss, head.bias)[0], grads(ref, head.bias)[0])


def test_ignore_index_counts_as_masked():
    hidden, head, targets, weights = make()
    real = torch.ones(B, T, dtype=torch.bool)
    real[1, 2:4] = False
    labels = targets.masked_fill(~real, -100)
    out = weighted_cross_entropy(hidden, head, labels, weights, chunk_size=4)
    ref, _ = naive(hidden, head.weight, head.bias, targets, weights, real)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(grads(out.loss, hidden)[0], grads(ref, hidden)[0])
    assert out.num_targets == real.sum() and (out.token_ce[~real] == 0).all()


def test_weights_are_detached():
    hidden, head, targets, weights = make()
    weights.requires_grad_()
    out = weighted_cross_entropy(hidden, head, targets, weights, chunk_size=3)
    out.loss.backward()
    assert weights.grad is None and hidden.grad is not None


def test_bfloat16_matches_naive():
    hidden, head, targets, weights = make(dtype=torch.bfloat16)
    real = torch.ones(B, T, dtype=torch.bool)
    out = weighted_cross_entropy(hidden, head, targets, weights, chunk_size=3)
    ref, _ = naive(hidden, head.weight, head.bias, targets, weights, real)
    assert out.loss.dtype == torch.float32 and out.token_ce.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref)
    for got, want in zip(grads(out.loss, hidden, head.weight), grads(ref, hidden, head.weight)):
        # The head's bf16 gradient is summed chunk by chunk in bf16: equal to within ~1 ulp of
        # the largest entry, not bit for bit.
        torch.testing.assert_close(got, want, atol=2 ** -7 * want.abs().max().item(), rtol=2 ** -7)


def test_no_real_targets_gives_zero_loss_and_gradient():
    hidden, head, targets, weights = make()
    out = weighted_cross_entropy(hidden, head, targets, weights, mask=torch.zeros(B, T, dtype=torch.bool))
    assert out.loss.item() == 0 and out.num_targets == 0
    g_hidden, g_weight = grads(out.loss, hidden, head.weight)
    assert (g_hidden == 0).all() and (g_weight == 0).all()
    # zero-length rows (sequences of one token) still give a loss on the graph
    empty = hidden[:, :0]
    out = weighted_cross_entropy(empty, head, targets[:, :0])
    assert out.loss.item() == 0 and out.token_ce.shape == (B, 0)
    assert grads(out.loss, head.weight)[0].shape == head.weight.shape


def test_runs_without_grad():
    hidden, head, targets, weights = make()
    with torch.no_grad():
        out = weighted_cross_entropy(hidden, head, targets, weights, chunk_size=3)
    ref, _ = naive(hidden, head.weight, head.bias, targets, weights, torch.ones(B, T, dtype=torch.bool))
    torch.testing.assert_close(out.loss, ref.detach())


def test_hybrid_weights_from_own_ce_in_one_head_pass():
    # hybrid: loss_long is the trained model's own CE, loss_short comes from the scorer.
    hidden, head, targets, _ = make()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    loss_short = torch.rand(B, T, generator=torch.Generator().manual_seed(5)) * 4
    config = WeightingConfig.from_preset("dense", lam=0.5)

    token_ce, real = token_cross_entropy(hidden, head, targets, mask=mask, chunk_size=4)
    assert token_ce.requires_grad and torch.equal(real, mask)
    w = compute_weights(token_ce.detach(), loss_short, config, real)
    out = weighted_mean(token_ce, real, w)

    ref, ref_ce = naive(hidden, head.weight, head.bias, targets, w, mask)
    torch.testing.assert_close(token_ce, torch.where(mask, ref_ce, 0.0))
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(grads(out.loss, hidden)[0], grads(ref, hidden)[0])


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces, forward and backward alike."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [x.numel() for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        self.numel = max([self.numel, *sizes])
        return out


def test_never_allocates_full_logits():
    # d is small against the vocabulary, so hidden/weight tensors stay below one chunk of logits.
    b, n, d, vocab, chunk = 2, 50, 4, 64, 7
    hidden = torch.randn(b, n, d, requires_grad=True)
    weight = torch.randn(vocab, d, requires_grad=True)
    targets = torch.randint(0, vocab, (b, n))
    weights = torch.rand(b, n)

    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    largest = _LargestTensor()
    with largest, torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = weighted_cross_entropy(hidden, weight, targets, weights, chunk_size=chunk)
        out.loss.backward()
    assert largest.numel <= chunk * vocab < b * n * vocab
    # between forward and backward, only per-token tensors and the inputs are kept
    assert max(saved) <= max(hidden.numel(), weight.numel(), b * n)

    # the probe does see full logits on the naive path
    naive_probe = _LargestTensor()
    with naive_probe:
        naive(hidden, weight, None, targets, weights, torch.ones(b, n, dtype=torch.bool))[0].backward()
    assert naive_probe.numel >= b * n * vocab


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"chunk_size": 0}, ValueError),
    ({"bias": torch.zeros(V)}, ValueError),
    ({"mask": torch.ones(B, T)}, ValueError),
    ({"weights": torch.ones(B, T + 1)}, ValueError),
])
def test_argument_errors(kwargs, error):
    hidden, head, targets, _ = make()
    with pytest.raises(error):
        weighted_cross_entropy(hidden, head, targets, **kwargs)


def test_shape_and_type_errors():
    hidden, head, targets, _ = make()
    with pytest.raises(ValueError, match="batch, T"):
        weighted_cross_entropy(hidden, head, targets[:, :-1])
    with pytest.raises(TypeError, match="nn.Linear"):
        weighted_cross_entropy(hidden, nn.Embedding(V, D), targets)
