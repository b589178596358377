"""Process group and data parallelism, applied from outside the model.

One process per device: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; CUDA ranks use NCCL and
GPU LOCAL_RANK, CPU ranks use gloo. Started without torchrun the trainer runs as a group of
one, so the loop has a single code path.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from tokenweight.service.blocks import decoder_layers


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available on this machine")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def parallelize(
    model: nn.Module, mode: str, d: Dist, param_dtype: torch.dtype | None = None
) -> nn.Module:
    """DDP: replicate and all-reduce gradients. FSDP2: shard every decoder layer and the root.

    Per-layer units let FSDP gather one layer's weights at a time; the root unit holds what is
    left (embeddings, final norm, LM head) and, as the root, keeps it gathered from forward
    through backward, which the chunked loss needs since it uses the LM head outside forward.
    `param_dtype` (FSDP only): the dtype parameters are gathered and computed in, so the
    matmuls read half the bytes without autocast's per-call casts; the sharded master weights
    and the optimizer stay fp32, and gradients are reduced in fp32.
    """
    if mode == "ddp":
        model.to(d.device)
        return DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    mesh = init_device_mesh(d.device.type, (d.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model.lm):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def unshard_root(model: nn.Module) -> None:
    """Gather the root unit's parameters for calls that bypass the root forward.

    The self-scoring pass calls the base model and the LM head directly; under FSDP the
    decoder layers gather themselves through their own forward hooks, but the embeddings,
    final norm and head belong to the root unit. After a training forward they are already
    gathered (the root keeps them until backward), so this is then a no-op.
    """
    if isinstance(model, FSDPModule):
        model.unshard()


def all_reduce(values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    values = values.clone()
    dist.all_reduce(values, op=op)
    return values
