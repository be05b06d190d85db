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

from d2c_pack.core.errors import UserError


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

    def batches(self, total: int, batch_size: int) -> list[range]:
        """This rank's batches of items 0 … total − 1, one per round.

        Batch b is items [b·B, (b + 1)·B), the batches a single process takes; round k is batches
        k·W … k·W + W − 1 and rank r takes batch k·W + r. So items are batched alike whatever the
        world size, and a round gathered in rank order is the next W batches. In the last round a
        rank may get an empty range: every rank takes part in every round's :meth:`gather`.
        """
        count = -(-total // batch_size)
        rounds = -(-count // self.world_size)
        starts = ((k * self.world_size + self.rank) * batch_size for k in range(rounds))
        return [range(min(start, total), min(start + batch_size, total)) for start in starts]

    def gather(self, tensor: torch.Tensor | None) -> list[torch.Tensor] | None:
        """Rank 0 gets every rank's ``tensor`` (None: nothing this round) in rank order; the other ranks get None.

        The tensors may differ in length (dim 0) but not otherwise; they are on this rank's device
        (NCCL's, or the CPU for gloo). A collective: every rank calls it, once per round.
        """
        if self.world_size == 1:
            return [] if tensor is None else [tensor]
        shapes: list[tuple | None] = [None] * self.world_size
        dist.all_gather_object(shapes, None if tensor is None else (tuple(tensor.shape), tensor.dtype))
        known = [shape for shape in shapes if shape is not None]
        if not known:
            return [] if self.is_main else None
        (_, *rest), dtype = known[0]
        padded = torch.zeros(max(shape[0] for shape, _ in known), *rest, dtype=dtype, device=self.device)
        if tensor is not None:
            padded[: len(tensor)] = tensor
        received = [torch.empty_like(padded) for _ in range(self.world_size)] if self.is_main else None
        dist.gather(padded, received, dst=0)
        if not self.is_main:
            return None
        return [part[: shape[0][0]] for part, shape in zip(received, shapes) if shape is not None]


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
