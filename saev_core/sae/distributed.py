"""Data-parallel SAE training on torch.distributed: ``torchrun`` or ``accelerate launch``.

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; ``saev train`` then
runs one process per device. Each process reads its own shards (``ShuffledBatches`` with rank and
world size), takes batch_size / world_size tokens per step, and torch's DistributedDataParallel
averages the gradients, so a step sees batch_size tokens as a single process would. Process 0
alone writes logs, checkpoints (holding every process's stream position) and the final SAE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def launched_world() -> World:
    """The process group a launcher started this process in (joining it once), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SAEV_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return World(rank, size, local)


def is_main_process() -> bool:
    """True outside a launcher and on rank 0 inside one: the process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def all_gather(world: World, obj):
    """Every process's ``obj``, in rank order."""
    if not world.active:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(world: World, obj):
    """Rank 0's ``obj`` on every process."""
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_true(world: World, flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (a divergence stops all of them together)."""
    if not world.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def sync_latent_stats(world: World, sae, local_tokens: int, global_tokens: int) -> None:
    """Make the dead-latent counters and the BatchTopK threshold the same on every process.

    Each process counted ``local_tokens`` and reset the latents it saw fire. From equal counters,
    the minimum over processes is 0 where any process saw a latent fire and prev + local_tokens
    elsewhere, which then needs the other processes' tokens added. The threshold estimates
    (an EMA of each batch's smallest kept activation) are averaged.
    """
    if not world.active:
        return
    t = sae.tokens_since_fired
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    t[t > 0] += global_tokens - local_tokens
    if hasattr(sae, "running_threshold"):
        dist.all_reduce(sae.running_threshold, op=dist.ReduceOp.SUM)
        sae.running_threshold /= world.size
