"""Data parallel over processes started by ``torchrun``: the world from its environment, one
device per rank, sharding by items, and the few collectives a suite needs (``torch.distributed``:
gloo for objects on the CPU, NCCL beside it on CUDA).

Ranks never wait for each other while generating: each writes its own outputs and index shard;
the process group carries only the run directory and work list at the start (rank 0 to all)
and each rank's totals at the end (all to rank 0).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .config import ConfigError

TIMEOUT = timedelta(hours=12)  # the end gather waits for the slowest rank's last item


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` ranks (``local_rank`` among ``local_size`` on its
    node). ``World()`` is one process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, work: list) -> list:
        """This rank's part of ``work``: every ``size``-th entry from ``rank`` on."""
        return work[self.rank::self.size]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        import torch
        import torch.distributed as dist

        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out


def world_from_env(env: dict | None = None) -> World:
    """The world torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``); one process when they are absent."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", 1))
        rank = int(env.get("RANK", 0))
        local = int(env.get("LOCAL_RANK", rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError as err:
        raise ConfigError([f"torchrun environment: {err}"]) from None
    if not (0 <= rank < size and 0 <= local < local_size):
        raise ConfigError([f"torchrun environment: RANK {rank} of WORLD_SIZE {size}, "
                           f"LOCAL_RANK {local} of LOCAL_WORLD_SIZE {local_size}"])
    return World(rank, size, local, local_size)


def rank_device(world: World, device: str) -> str:
    """The config's device for this rank: with several ranks ``auto`` and ``cuda`` become
    ``cuda:LOCAL_RANK`` (``cpu`` when there is no GPU); a fixed ``cuda:N`` is refused, and so
    is a node with more ranks than visible GPUs."""
    if world.size == 1:
        return device
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ConfigError([f"device: {device} names one GPU, but torchrun started {world.size} "
                           f"processes; use device: auto or cuda (rank r takes cuda:LOCAL_RANK)"])
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world.local_size > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError([f"torchrun started {world.local_size} processes on this node but "
                           f"{visible} GPU(s) are visible"
                           + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "")
                           + f"; start at most {visible} (--nproc-per-node) or use device: cpu"])
    return f"cuda:{world.local_rank}"


@contextlib.contextmanager
def session(world: World, device: str):
    """The process group of a multi-process run (none for one process): gloo on the CPU, and
    with GPUs ``cpu:gloo,cuda:nccl`` (objects travel over gloo), this rank's GPU made current.
    The entry point opens it; library code only uses the ``World``."""
    if world.size == 1:
        yield world
        return
    import torch
    import torch.distributed as dist

    device = rank_device(world, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    try:
        yield world
    finally:
        dist.destroy_process_group()
