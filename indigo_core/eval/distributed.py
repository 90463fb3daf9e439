"""Sharding an evaluation over ranks started by torchrun (torch.distributed, gloo).

Under `torchrun --nproc_per_node N python -m indigo_core.eval ...` (env RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT set) each rank evaluates every N-th image; rows and FID features are
gathered to rank 0, which alone writes. gloo carries the gathered Python objects, so it is used on
GPUs too (the metric networks still run on each rank's own GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["DistContext", "init_distributed"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        return items[self.rank::self.world_size]

    def gather(self, obj) -> list | None:
        """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> DistContext:
    """A context from torchrun's environment; a single-process one without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistContext()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        owns = True
    return DistContext(rank=rank, world_size=world, local_rank=local, owns_group=owns)
