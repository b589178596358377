"""A causal LM's decoder layers and their compilation, shared by the scoring engine and the
trainer: the elementwise work around attention fused, attention itself left to SDPA."""

import torch
import torch.nn.functional as F
from torch import nn

from .loading import ModelLoadError


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The repeated blocks: the unit of compilation, activation checkpointing and sharding."""
    layers = getattr(lm.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(
            f"{type(lm).__name__} keeps no decoder layers at base_model.layers; compiled blocks "
            "and the trainer support Llama-style models (Llama, Mistral, Qwen2, ...)"
        )
    return layers


def compile_blocks(
    lm: nn.Module,
    backend: str = "inductor",
    dynamic: bool | None = None,
    emulate_precision_casts: bool = False,
) -> None:
    """Compile each decoder layer's forward in place, scaled-dot-product attention excluded.

    The norms, RoPE, SiLU-gated MLP and residual adds are elementwise work that eager mode
    runs as many small kernels; compiled, they fuse around the matmuls. Compiling the whole
    model was measured to move attention off cuDNN, so attention is a graph break: each layer
    becomes two compiled regions with SDPA (torch's own backend choice) between them. The
    forward, not the module, is compiled so parameter names, activation checkpointing and
    FSDP's hooks (which run around `forward`) are unchanged; all layers share one compiled
    graph. `dynamic`: torch.compile's; True compiles symbolic batch and length once, where
    the default compiles the first shape statically and recompiles symbolically on the next.
    `emulate_precision_casts`: inductor's option of that name. A fused kernel otherwise keeps
    the intermediates of consecutive bf16 operations in fp32, skipping the rounding to bf16
    that eager mode makes after each of them (closer to exact, but not eager's numbers); with
    it, every one of those roundings is kept, so the layers round as eager ones do.
    Call before activation checkpointing and parallelisation.
    """
    options = {"emulate_precision_casts": True} if emulate_precision_casts else None
    torch._dynamo.disallow_in_graph(F.scaled_dot_product_attention)
    for layer in decoder_layers(lm):
        layer.forward = torch.compile(
            layer.forward, backend=backend, dynamic=dynamic, options=options
        )
