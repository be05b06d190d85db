"""One process or many under ``torchrun``: rank, world size and the device each process uses.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the default process group is
started with NCCL when the processes use CUDA and gloo otherwise; each rank then takes a
disjoint share of the work and rank 0 merges. Without ``torchrun`` everything is rank 0 of 1.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from d2c_pack.errors import UserError


@dataclasses.dataclass(frozen=True)
class Context:
    """This process's place in the job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Waits for every rank (a no-op for a single process)."""
        if self.world_size > 1:
            dist.barrier()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this rank's GPU if there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init(device: str = "auto") -> Context:
    """The context of this process, starting the process group when launched by ``torchrun``.

    Safe to call more than once: an existing process group is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        # Ranks can wait on each other for a whole stage (rank 0 merging a large table).
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", timeout=timedelta(hours=2))
        atexit.register(dist.destroy_process_group)
    return Context(rank=rank, world_size=world_size, device=chosen)
