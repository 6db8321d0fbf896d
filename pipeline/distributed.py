"""Several processes, one store: rank/world from torchrun's environment, and a barrier.

`torchrun --nproc_per_node N -m stages.extract` (or across nodes with --nnodes/--rdzv-*)
sets RANK/WORLD_SIZE; each process then owns the shards j with j % WORLD_SIZE == RANK, so no
shard ever has two writers. Without torchrun everything is one process and the barrier is a
no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    barrier: Callable[[], None]
    # Each process's device when several GPUs share a node (cuda:LOCAL_RANK), else None.
    local_device: str | None = None


def _noop() -> None:
    pass


def world_size() -> int:
    """Processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_world() -> World:
    size = world_size()
    if size <= 1:
        return World(0, 1, _noop)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if torch.cuda.is_available() else None
    if device:
        torch.cuda.set_device(local)
    return World(dist.get_rank(), dist.get_world_size(), dist.barrier, device)


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
