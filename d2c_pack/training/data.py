"""Training data: rows of a condensed dataset or images of any source, in a batch order that resumes exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.exceptions import DatasetsError
from torch.utils.data import Dataset, Sampler

from d2c_pack.core.errors import UserError, first_line
from d2c_pack.core.hub_retry import with_retries
from d2c_pack.publish.shards import ParquetShards, ShardRows, built_shards, hub_snapshot, training_rows
from d2c_pack.sources.image_source import ImageSource, is_saved_dataset
from d2c_pack.sources.preprocess import center_crop_adm, image_to_tensor


class SourceRows(Dataset):
    """``{"image": (3, R, R) in [-1, 1], "label"}`` for each image of a random-access source; None for a corrupt one."""

    def __init__(self, source: ImageSource, resolution: int):
        if not source.random_access:
            raise UserError(f"training needs random access to {source.spec}: use a non-streaming source")
        self.source = source
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict | None:
        record = self.source.get(index)
        if record is None:
            return None
        return {"image": image_to_tensor(center_crop_adm(record.image, self.resolution)), "label": record.label}


class SubsetRows(Dataset):
    """The rows of a condensed dataset as tensors: label, ``latent`` or the ADM-cropped ``image``, and the
    text / visual columns asked for. Rows are read from the memory-mapped Arrow files one at a time.

    Array columns go from the Arrow buffers to tensors directly, in the dtypes datasets' torch format
    gives (float32, int64): that format builds a NumPy object per innermost list of a nested
    fixed-size list, several times slower for a (256, 768) column.
    """

    def __init__(self, dataset: datasets.Dataset, columns: list[str], resolution: int):
        self.rows = dataset.select_columns(["label", *columns]).with_format("arrow")
        self.features = dataset.features
        self.resolution = resolution

    def labels(self) -> np.ndarray:
        return self.rows["label"].to_numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return training_rows(self.rows[index], self.features, self.resolution)[0]  # one row, still Arrow


def collate_rows(items: list[dict | None]) -> dict[str, torch.Tensor]:
    """Stacks the readable rows; ``positions`` says where each sits in the batch the sampler asked for."""
    kept = [(position, item) for position, item in enumerate(items) if item is not None]
    batch = {key: torch.stack([torch.as_tensor(item[key]) for _, item in kept]) for key in kept[0][1]}
    batch["positions"] = torch.tensor([position for position, _ in kept])
    return batch


def open_subset(data: str) -> tuple[datasets.Dataset | ParquetShards, dict | None]:
    """A condensed dataset and its manifest (None for a dataset d2c-pack did not build).

    A d2c-pack build — a folder, or a Hub ``ORG/NAME[@REV]`` (its snapshot in the HF hub cache) —
    is read in place as :class:`ParquetShards`; anything else (a ``save_to_disk`` folder, another
    Hub dataset) as a memory-mapped ``datasets.Dataset``, which ``datasets`` first converts to Arrow.
    """
    from d2c_pack.publish.verify import LocalFolder, locate, read_manifest

    location = locate(data)
    try:
        manifest = read_manifest(location)
    except UserError:  # a dataset not built by d2c-pack trains as well
        manifest = None
    repo_id, _, revision = data.partition("@")
    try:
        if manifest is not None:
            folder = location.folder if isinstance(location, LocalFolder) else with_retries(lambda: hub_snapshot(repo_id, revision or None), f"download {data}")
            if shards := built_shards(folder):
                return ParquetShards(shards), read_manifest(LocalFolder(folder))
        if Path(data).is_dir() and is_saved_dataset(Path(data)):
            saved = datasets.load_from_disk(data)
            subset = saved["train"] if isinstance(saved, datasets.DatasetDict) else saved
        elif Path(data).is_dir():
            subset = datasets.load_dataset(data, split="train")
        else:
            subset = with_retries(lambda: datasets.load_dataset(repo_id, revision=revision or None, split="train"), f"load {data}")
    except (OSError, ValueError, DatasetsError) as err:
        raise UserError(f"cannot load the dataset {data}: {first_line(err)}") from None
    return subset, manifest


def subset_rows(subset: datasets.Dataset | ParquetShards, columns: list[str], resolution: int) -> SubsetRows | ShardRows:
    """The training rows of ``subset`` with ``columns`` (besides the label), read in place when it is a build."""
    if isinstance(subset, ParquetShards):
        return ShardRows(subset, columns, resolution)
    return SubsetRows(subset, columns, resolution)


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
