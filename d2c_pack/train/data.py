"""Training data: preprocessed images from any source, in a batch order that resumes exactly."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from d2c_pack.errors import UserError
from d2c_pack.preprocess import center_crop_adm, image_to_tensor
from d2c_pack.sources import ImageSource


class SourceImages(Dataset):
    """(image tensor in [-1, 1] of shape (3, R, R), label) for each image of a random-access source.

    A corrupt image gives ``None``; :func:`collate_skipping_corrupt` drops it from its batch.
    """

    def __init__(self, source: ImageSource, resolution: int):
        if not source.random_access:
            raise UserError(f"training needs random access to {source.spec}: use a non-streaming source")
        self.source = source
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        record = self.source.get(index)
        if record is None:
            return None
        return image_to_tensor(center_crop_adm(record.image, self.resolution)), record.label


def collate_skipping_corrupt(items: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    kept = [item for item in items if item is not None]
    images = torch.stack([image for image, _ in kept])  # (B, 3, R, R)
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)  # (B,)
    return images, labels


class EpochPermutationBatches(Sampler[list[int]]):
    """Batches of indices from a fresh permutation per epoch, starting at any step.

    The permutation of epoch e is drawn from a generator seeded with (seed, e), so the batch of
    step s depends on (seed, s) alone: a resumed run reads exactly the batches an uninterrupted
    one would. Batches run across epoch boundaries, so every batch is full. Each of
    ``world_size`` ranks reads its own contiguous slice of the global batch.
    """

    def __init__(self, num_items: int, global_batch: int, *, seed: int, start_step: int, num_steps: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise UserError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.start_step = start_step
        self.num_steps = num_steps
        self.rank_slice = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.num_steps):
            yield self.global_indices(step)[self.rank_slice].tolist()

    def global_indices(self, step: int) -> np.ndarray:
        first = step * self.global_batch
        epochs = range(first // self.num_items, (first + self.global_batch - 1) // self.num_items + 1)
        flat = np.concatenate([self._permutation(e) for e in epochs])
        offset = first - epochs[0] * self.num_items
        return flat[offset : offset + self.global_batch]

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
