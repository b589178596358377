"""Token-weighted cross-entropy from hidden states, without ever holding full logits.

A 32k-token sequence with a 128k vocabulary has 4·10^9 logits (16 GB in fp32), so the LM head
and the cross-entropy run over chunks of tokens, and each chunk sits under activation
checkpointing: its logits are freed right after the forward and recomputed in the backward.
Peak memory is a few ``chunk_size x vocab`` fp32 buffers of a single chunk, whatever the
sequence length.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# About 2048 * vocab * 4 bytes per fp32 logits buffer (1 GB at a 128k vocabulary), large enough
# for the head's matmul to run at full speed.
DEFAULT_CHUNK_SIZE = 2048


@dataclass(frozen=True)
class WeightedCE:
    """Result of :func:`weighted_cross_entropy`; all means are over the real targets only."""

    loss: torch.Tensor  # scalar, differentiable: sum(w * CE) / num_targets
    ce_mean: torch.Tensor  # scalar, detached: unweighted mean CE, for metrics
    # [batch, T], detached, 0 at masked targets; fp32 (fp64 for fp64 inputs); loss_long in `hybrid`
    token_ce: torch.Tensor
    num_targets: torch.Tensor  # scalar int64; for re-weighting means across ranks or micro-batches


def weighted_cross_entropy(
    hidden: torch.Tensor,
    lm_head: nn.Linear | torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> WeightedCE:
    """``mean(w * CE)`` over the real targets of the batch, computed chunk by chunk.

    ``hidden`` is the base model's output ``[batch, T, d]``, already aligned with ``targets``
    ``[batch, T]`` (position ``i`` predicts ``targets[:, i]``: pass ``hidden[:, :-1]`` and
    ``input_ids[:, 1:]``). ``lm_head`` is an ``nn.Linear`` or its weight ``[vocab, d]`` (then
    ``bias`` optionally); under FSDP its parameters must be unsharded when this runs.
    ``weights`` ``[batch, T]`` are detached (no gradient reaches the scorer); None means all 1.

    A target is real when ``mask`` (bool, True = real) allows it and it is not ``ignore_index``.
    Padded targets contribute neither to the sum nor to the count, so the mean does not depend
    on padding.

    When the weights depend on the model's own losses (``hybrid``: ``loss_long`` is this CE),
    call :func:`token_cross_entropy`, compute the weights from its detached output, then
    :func:`weighted_mean`; that is what this function does, with the weights known up front.
    """
    token_ce, real = token_cross_entropy(
        hidden, lm_head, targets, bias=bias, mask=mask, ignore_index=ignore_index, chunk_size=chunk_size
    )
    return weighted_mean(token_ce, real, weights)


def token_cross_entropy(
    hidden: torch.Tensor,
    lm_head: nn.Linear | torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compiled: bool = False,
    recompute: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-token CE ``[batch, T]`` (0 at non-real targets) and the real-target mask.

    Arguments as for :func:`weighted_cross_entropy`. Only per-token values are kept for the
    backward; each chunk's logits are recomputed there. Logits are upcast to fp32 before the
    softmax, as Hugging Face models do. With a pure-bf16 head the weight's gradient is summed
    over chunks in bf16 (within about an ulp of the unchunked one); under autocast with fp32
    parameters autograd sums it in fp32. ``compiled`` runs each chunk through
    :func:`torch.compile` (the upcast, log-softmax and gather fused into a few kernels); the
    arithmetic is the same up to fp32 rounding. ``recompute=False`` keeps each chunk's logits
    for the backward instead of recomputing them: faster where ``T x vocab`` logits fit (small
    vocabularies), the same numbers.
    """
    weight, bias = _head_parameters(lm_head, bias)
    if hidden.dim() != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [batch, T, d] and targets [batch, T]; got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    if mask is not None and (mask.shape != targets.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be bool of shape {tuple(targets.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    real = targets != ignore_index
    if mask is not None:
        real &= mask
    h = hidden.reshape(-1, hidden.shape[-1])
    # Masked targets are scored against class 0 (any valid index) and zeroed below.
    t = torch.where(real, targets, 0).reshape(-1)

    # max(..., 1): a batch without targets still runs one (empty) chunk, so the loss stays
    # connected to the graph and every rank takes part in the backward.
    chunk_ce = _compiled_chunk_ce() if compiled else _chunk_ce
    if recompute:
        chunk_ce = functools.partial(checkpoint, chunk_ce, use_reentrant=False)
    ce = torch.cat([
        chunk_ce(h[i:i + chunk_size], weight, bias, t[i:i + chunk_size])
        for i in range(0, max(h.shape[0], 1), chunk_size)
    ])
    return torch.where(real, ce.view(targets.shape), 0.0), real


def weighted_mean(
    token_ce: torch.Tensor,
    real: torch.Tensor,
    weights: torch.Tensor | None = None,
    num_items: torch.Tensor | int | None = None,
) -> WeightedCE:
    """Reduce per-token CE to ``sum(w * CE) / num_real`` with detached weights (None = all 1).

    ``num_items`` replaces ``num_real`` as the loss's divisor: the real targets of a whole
    optimizer step (all micro-batches and ranks), as Hugging Face's Trainer counts them.
    """
    if weights is not None and weights.shape != token_ce.shape:
        raise ValueError(f"weights must have the targets' shape {tuple(token_ce.shape)}, got {tuple(weights.shape)}")
    num_targets = real.sum()
    denominator = num_targets.clamp(min=1)
    if weights is None:
        weighted = token_ce
    else:
        # where, not a product: weights at padded targets may be anything, NaN included.
        w = weights.detach().to(token_ce.device, torch.float32)
        weighted = token_ce * torch.where(real, w, 0.0)
    detached = token_ce.detach()
    return WeightedCE(
        loss=weighted.sum() / (denominator if num_items is None else num_items),
        ce_mean=detached.sum() / denominator,
        token_ce=detached,
        num_targets=num_targets,
    )


def _head_parameters(
    lm_head: nn.Linear | torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(lm_head, nn.Linear):
        if bias is not None:
            raise ValueError("pass bias only with a bare weight tensor; an nn.Linear brings its own")
        return lm_head.weight, lm_head.bias
    if isinstance(lm_head, torch.Tensor) and lm_head.dim() == 2:
        return lm_head, bias
    raise TypeError(f"lm_head must be an nn.Linear or a [vocab, d] weight tensor, got {type(lm_head).__name__}")


def _chunk_ce(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight, bias)
    # promote_types: fp16/bf16 go up to fp32, fp64 stays fp64.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, t, reduction="none")


@functools.cache
def _compiled_chunk_ce():
    # Built once per process: every caller shares the compiled kernels of each chunk shape.
    return torch.compile(_chunk_ce)
