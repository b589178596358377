"""The model being trained: a local Hugging Face causal LM, its context extension, and the
training forward (hidden states only; the chunked loss applies the LM head).
"""

from pathlib import Path

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from tokenweight.service.blocks import decoder_layers
from tokenweight.service.loading import ModelLoadError, check_checkpoint_dir
from tokenweight.service.logprobs import base_hidden_states


def extend_context(config, seq_len: int | None, rope_theta: float | None) -> None:
    """Grow the config's max positions to `seq_len` and set a new RoPE base, in place.

    The RoPE base lives in `config.rope_parameters` (transformers 5); models with one RoPE
    per attention type keep a dict of such dicts, and each gets the new base.
    """
    if seq_len is not None and seq_len > (getattr(config, "max_position_embeddings", None) or 0):
        config.max_position_embeddings = seq_len
    if rope_theta is None:
        return
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict):
        raise ModelLoadError(
            f"{type(config).__name__} has no rope_parameters: --rope-theta needs a RoPE model"
        )
    nested = [v for v in params.values() if isinstance(v, dict)]
    for entry in nested or [params]:
        entry["rope_theta"] = rope_theta


def load_model(path: str | Path, seq_len: int | None, rope_theta: float | None) -> nn.Module:
    """fp32 master weights on CPU, in train mode; the parallel wrapper moves them to the device.

    Same safety rules as the service (service/loading.py): local directory, safetensors only,
    no remote code.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    check_checkpoint_dir(path, pickle_flag=None)  # the trainer never loads pickle weights
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    extend_context(config, seq_len, rope_theta)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        config=config,
        dtype=torch.float32,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        attn_implementation="sdpa",
    )
    return model.train()


def apply_activation_checkpointing(lm: nn.Module, every: int = 1) -> None:
    """Wrap every `every`-th decoder layer so only its input is kept and its inside is
    recomputed; the others keep their activations (less recompute for more memory).

    Applied before FSDP, as torchtitan does, so each sharded unit is a checkpointed layer.
    """
    layers = decoder_layers(lm)
    for i, layer in enumerate(layers):
        if i % every == 0:
            layers[i] = checkpoint_wrapper(layer)


class HiddenStates(nn.Module):
    """The training forward: last hidden states [B, T, d], no logits.

    Full fp32 logits of a long sequence would not fit, so the LM head runs inside the chunked
    loss instead. Being the module that DDP/FSDP wrap at the root, its forward is what
    unshards the root-level parameters (embeddings, final norm, LM head) under FSDP.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return base_hidden_states(self.lm, input_ids)
