"""Per-token target log-probabilities without a `[tokens x vocab]` logits tensor.

The base model gives hidden states; only the positions whose predictions are kept go
through the LM head, a bounded slice at a time, in fp32 log-softmax. This is what lets a
32k-token sequence with a 128k vocabulary be scored in a few hundred MiB instead of 16 GiB.
"""

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .chunking import Segment
from .collate import collate

# Elements of fp32 logits alive at once (256 MiB): the slice of positions projected per step.
DEFAULT_LOGITS_BUDGET = 1 << 26


def lm_head_of(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (not a causal LM)")
    return head


@dataclass(frozen=True)
class ForwardOptions:
    """How forward passes run; every choice gives the same results up to rounding.

    `sdpa_backends`: SDPA kernels to try first, in order (names of torch's SDPBackend,
    e.g. ("CUDNN_ATTENTION", "FLASH_ATTENTION")); None keeps torch's own choice.
    `compile_logprobs`: fuse the fp32 upcast, gather and logsumexp of each LM-head slice
    with torch.compile, so the low-precision logits are read once instead of three times.
    `compile_blocks`: compile each decoder layer's elementwise work (norms, RoPE, SiLU-gated
    MLP, residual adds) around eager SDPA attention (service/blocks.py); the engine compiles
    once, with symbolic batch and length, when it is built.
    `compile_blocks_eager_rounding`: with `compile_blocks`, keep every bf16 rounding eager
    mode makes between the fused operations (inductor's emulate_precision_casts), for the
    plain path's numbers; without it the fused kernels keep those intermediates in fp32.
    `batch_invariant`: run every pass in a forward call of its own, so a sequence's scores
    are bit-identical whatever it is batched with (kernels pick tilings by shape, which moves
    rounding); costs the batching speed-up on short sequences, little on long ones.
    """

    token_budget: int = 16384
    logits_budget: int = DEFAULT_LOGITS_BUDGET
    sdpa_backends: tuple[str, ...] | None = None
    compile_logprobs: bool = False
    compile_blocks: bool = False
    compile_blocks_eager_rounding: bool = False
    batch_invariant: bool = False


def _slice_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


_compiled_slice_logprobs = None


def _slice_fn(compiled: bool):
    global _compiled_slice_logprobs
    if not compiled:
        return _slice_logprobs
    if _compiled_slice_logprobs is None:
        _compiled_slice_logprobs = torch.compile(_slice_logprobs, dynamic=True)
    return _compiled_slice_logprobs


def target_logprobs(
    hidden: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor,
    logits_budget: int,
    compiled: bool = False,
) -> torch.Tensor:
    """log softmax(head(hidden))[label] for hidden [N, d], labels [N] -> fp32 [N]."""
    vocab = head.weight.shape[0]
    step = max(1, logits_budget // vocab)
    slice_logprobs = _slice_fn(compiled)
    out = torch.empty(labels.numel(), dtype=torch.float32, device=hidden.device)
    for lo in range(0, labels.numel(), step):
        out[lo : lo + step] = slice_logprobs(head(hidden[lo : lo + step]), labels[lo : lo + step])
    return out


_settled_devices: set[torch.device] = set()


def attention_context(backends: tuple[str, ...] | None, device: torch.device):
    """SDPA with `backends` tried first, the others after.

    torch settles its own choice of backend for a device at the process's first attention
    call there (cuDNN first on recent GPUs). Were that first call made inside this context,
    every later call outside it (a trainer's forward, other code in the process) would get
    the order this context restores on exit, flash first, measured on an H200 with torch
    2.11. One tiny call outside it, once per device, settles torch's own choice first.
    """
    if not backends:
        return contextlib.nullcontext()
    if device.type == "cuda" and device not in _settled_devices:
        probe = torch.zeros(1, 1, 1, 64, device=device, dtype=torch.bfloat16)
        torch.nn.functional.scaled_dot_product_attention(probe, probe, probe)
        _settled_devices.add(device)
    chosen = [getattr(SDPBackend, name) for name in backends]
    rest = [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b not in chosen]
    return sdpa_kernel(chosen + rest, set_priority=True)


# An attention implementation with no mask function of its own: transformers then builds no
# mask at all (its path for TGI/vLLM backends). It is transformers' own SDPA function, which
# with no mask runs causal attention exactly as the "sdpa" implementation does here (fp32
# grouped heads repeated first; see below).
MASKLESS_SDPA = "tokenweight_maskless_sdpa"


@functools.cache
def _register_maskless_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    def sdpa_with_heads_repeated_in_fp32(module, query, key, value, attention_mask, **kwargs):
        # With no mask, transformers hands grouped key/value heads to SDPA as they are
        # (`enable_gqa`). Only flash and cuDNN attention take them, and both run in half
        # precision only, so an fp32 model fell to torch's math kernel, which holds the whole
        # T x T score matrix: 128 GiB per layer for 32 heads at 32k tokens (out of memory on
        # an H200). With the heads repeated the memory-efficient kernel takes fp32 in O(T)
        # memory; the numbers are the same. Scoring only: activation checkpointing recomputes
        # a training forward outside this implementation (as plain "sdpa") and needs the
        # tensors it saved to match, so a forward that builds a graph keeps the grouped heads.
        if (
            query.dtype == torch.float32
            and key.shape[1] != query.shape[1]
            and not torch.is_grad_enabled()
        ):
            groups = query.shape[1] // key.shape[1]
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(MASKLESS_SDPA, sdpa_with_heads_repeated_in_fp32)


@contextlib.contextmanager
def maskless_causal_sdpa(config):
    """Run a forward of an "sdpa" model without transformers' mask preparation.

    Without a mask, transformers checks `position_ids` for packed sequences at every forward:
    an `.all()` on a GPU tensor, so the host waits there for all queued GPU work and cannot
    launch the next batch while the GPU runs this one. Rows here are never packed. Other
    implementations (eager, flash) and models whose mask is more than causal (a sliding
    window, attention chunks, per-layer attention types) keep transformers' masks.
    """
    if config._attn_implementation != "sdpa" or not _plain_causal(config):
        yield
        return
    _register_maskless_sdpa()
    config._attn_implementation = MASKLESS_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def _plain_causal(config) -> bool:
    layer_types = getattr(config, "layer_types", None) or ()
    return (
        not getattr(config, "sliding_window", None)
        and not getattr(config, "attention_chunk_size", None)
        and all(t == "full_attention" for t in layer_types)
    )


def base_hidden_states(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states [B, T, d] of right-padded rows, every row starting at position 0.

    No attention mask is passed on purpose: with right padding and causal attention a real
    position never sees a pad token (pads come after it), so the mask would change nothing
    for kept positions while forcing a slower masked attention kernel.
    """
    batch, length = input_ids.shape
    position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
    with maskless_causal_sdpa(model.base_model.config):
        out = model.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


# A row joins a padded batch only if at most this fraction of it would be padding.
MAX_PADDING_FRACTION = 0.25


def batches_by_budget(
    segments: Sequence[Segment], token_budget: int, batch_invariant: bool = False
) -> list[list[Segment]]:
    """Group segments into padded batches of at most `token_budget` tokens (rows x length).

    Longest first, so each batch pads to its first row; a much shorter segment starts a new
    batch rather than being padded to a long one (a 32k long pass must not pad its 8k
    chunks to 32k). A segment longer than the budget runs alone.
    """
    ordered = sorted(segments, key=len, reverse=True)
    if batch_invariant:
        return [[seg] for seg in ordered]
    batches, current = [], []
    for seg in ordered:
        if current:
            width = len(current[0])
            over_budget = (len(current) + 1) * width > token_budget
            if over_budget or len(seg) < (1 - MAX_PADDING_FRACTION) * width:
                batches.append(current)
                current = []
        current.append(seg)
    if current:
        batches.append(current)
    return batches


@dataclass
class _InFlight:
    """A forward batch whose log-probs are on their way to the host."""

    batch: list[Segment]
    kept: list[int]
    logp: torch.Tensor  # fp32 [sum(kept)] on the host, valid once `done` has completed
    done: torch.cuda.Event | None  # None on CPU, where the results are ready at once


def _launch(
    model: nn.Module,
    head: nn.Module,
    batch: list[Segment],
    options: ForwardOptions,
    device: torch.device,
) -> _InFlight:
    """Queue one padded forward batch and the copy of its results to the host; on a GPU this
    returns as soon as the work is queued (CUDA calls are asynchronous)."""
    inputs = collate(batch, device)
    with attention_context(options.sdpa_backends, device):
        hidden = base_hidden_states(model, inputs.rows)
    kept = hidden.reshape(-1, hidden.shape[-1])[inputs.positions]
    logp = target_logprobs(
        kept, head, inputs.labels, options.logits_budget, options.compile_logprobs
    )
    if device.type != "cuda":
        return _InFlight(batch, inputs.kept, logp.cpu(), None)
    host = torch.empty(logp.shape, dtype=logp.dtype, pin_memory=True)
    host.copy_(logp, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return _InFlight(batch, inputs.kept, host, done)


def run_segments(
    model: nn.Module,
    segments: Sequence[Segment],
    options: ForwardOptions,
    skip: Callable[[Segment], bool] | None = None,
) -> list[torch.Tensor]:
    """Kept-position log-probs (fp32, on CPU) for each segment, in the order given.

    `skip` is asked before every forward call: segments it names are left out (their result
    stays empty), so work nobody waits for any more stops between calls.

    On a GPU, batch k+1 is collated, copied and launched while batch k runs, and batch k's
    results are sliced while batch k+1 runs: the GPU does not wait for that host work, and
    at most two batches are queued, so `skip` still stops work promptly. (For models whose
    mask is more than causal, transformers' mask creation syncs with the GPU at the start of
    each forward, which bounds the run-ahead; see `maskless_causal_sdpa`.)
    """
    device = model.get_input_embeddings().weight.device
    head = lm_head_of(model)
    index = {id(seg): i for i, seg in enumerate(segments)}
    results: list[torch.Tensor] = [torch.empty(0)] * len(segments)

    def collect(flight: _InFlight) -> None:
        if flight.done is not None:
            flight.done.synchronize()
        for seg, part in zip(flight.batch, flight.logp.split(flight.kept)):
            results[index[id(seg)]] = part

    previous = None
    for batch in batches_by_budget(segments, options.token_budget, options.batch_invariant):
        if skip is not None:
            batch = [seg for seg in batch if not skip(seg)]
            if not batch:
                continue
        current = _launch(model, head, batch, options, device)
        if previous is not None:
            collect(previous)
        previous = current
    if previous is not None:
        collect(previous)
    return results
