"""PyTorch distributed helpers for training under ``torchrun`` (gloo on CPU, NCCL on GPU).

Contrastive and matching losses need every process's embeddings: :func:`gather_with_local_grad` all-gathers
a tensor and sends gradients back to the local slice only (each process computes the same global loss, so
its local slice receives the full gradient of its own samples).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits.

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this machine (GPU index).
        device: The device this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes files)."""
        return self.rank == 0


def resolve_device(device: str = "auto", index: int = 0, option: str = "device=") -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` as a device (CUDA device ``index``).

    Raises:
        ValueError: ``"cuda"`` without CUDA; the message names the setting as ``option`` spells it.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}cuda but CUDA is not available; use {option}cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", index) if use_cuda else torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); a single process otherwise.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        log.info("process group: rank %d/%d on %s (%s)", rank, world, dev, dist.get_backend())
    return DistInfo(rank, world, local, dev)


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 (equal sizes on every rank); gradients flow back to the local slice only."""
    if world_size() == 1:
        return x
    return _GatherLocalGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 without gradients."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_indexed(mine: list[tuple[int, Any]], world: int) -> list[Any]:
    """Every process's ``(index, item)`` pairs (any picklable items), merged and sorted by index: each of ``world``
    processes computes a share of a list and all of them end up with the whole list, in the order one process
    makes (``world`` 1: this process's own pairs, sorted)."""
    pairs = mine
    if world > 1:
        parts: list[list] = [[] for _ in range(world)]
        dist.all_gather_object(parts, mine)
        pairs = [x for part in parts for x in part]
    return [item for _, item in sorted(pairs, key=lambda x: x[0])]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over processes (returns a new tensor; no gradients)."""
    x = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(x)
    return x


def barrier() -> None:
    """Wait for every process (no-op without a group)."""
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
