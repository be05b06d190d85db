"""A subset's training columns decoded once into memory, and batches gathered from them by index.

Reading rows in place decodes a row's whole row group for every random row (about 100 rows/s per
process at ImageNet row size); decoded once, a batch is one ``index_select`` per column. The
columns keep their stored dtypes (fp16 latents and tokens at half the bytes, int8 masks, images as
uint8 ADM crops) and become the trainer's dtypes after the gather, on the training device: the
same float32 / int64 values the in-place path gives, so both train bit for bit alike.

On CUDA the columns go to the GPU when they take at most a quarter of its free memory, else they
stay in host memory and each batch is gathered into pinned memory and copied without blocking
(as a DataLoader's ``pin_memory``; the columns themselves are not pinned, which would round their
allocation up to a power of two). Subsets larger than the memory budget (``--data-memory-gb``, by
default half the available RAM shared by the node's processes) are read in place instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Iterator, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch

from d2c_pack.core.arrays import array_values, feature_dtype, feature_shape
from d2c_pack.core.errors import UserError
from d2c_pack.core.progress import progress_bar
from d2c_pack.publish.shards import ParquetShards
from d2c_pack.sources.preprocess import center_crop_adm, to_unit_range

TRAINING_COLUMNS = ("latent", "image", "text_embedding", "text_mask", "visual_tokens")
CHUNK_ROWS = 1024  # rows per decoded chunk of a datasets.Dataset (a build is decoded by its row groups)
GPU_SHARE = 4  # the columns go to the GPU when they take at most 1/GPU_SHARE of its free memory


@dataclasses.dataclass
class SubsetArrays:
    """The training columns of a subset as tensors with one row per sample, in their stored dtypes.

    ``columns`` holds ``label`` (int64) and the other columns as stored (``latent``, ``text_embedding``,
    ``visual_tokens`` fp16, ``text_mask`` int8, ``image`` uint8 (N, 3, R, R) ADM crops); they live on
    ``device`` or in host memory. :meth:`gather` returns rows as the trainer takes them.
    """

    columns: dict[str, torch.Tensor]
    class_names: list[str]
    device: torch.device  # where gathered batches go

    def __len__(self) -> int:
        return len(self.columns["label"])

    @property
    def nbytes(self) -> int:
        return sum(column.nbytes for column in self.columns.values())

    def labels(self) -> np.ndarray:
        return self.columns["label"].cpu().numpy()

    def gather(self, indices: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """The rows at ``indices`` on ``device``: float columns as float32, integer ones as int64, images in [-1, 1].

        Without a host sync: host columns are gathered into pinned memory and copied without blocking.
        """
        indices = torch.as_tensor(indices, dtype=torch.int64)
        home = self.columns["label"].device
        pinned = home.type == "cpu" and self.device.type == "cuda"
        if home != indices.device:
            indices = indices.pin_memory().to(home, non_blocking=True) if home.type == "cuda" else indices.to(home)
        batch = {}
        for name, column in self.columns.items():
            rows = torch.empty((len(indices), *column.shape[1:]), dtype=column.dtype, device=home, pin_memory=pinned)
            torch.index_select(column, 0, indices, out=rows)
            batch[name] = training_dtype(name, rows.to(self.device, non_blocking=True))
        return batch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One row as :meth:`gather` gives it."""
        return {name: values[0] for name, values in self.gather([index]).items()}


def training_dtype(name: str, values: torch.Tensor) -> torch.Tensor:
    """Stored values → the trainer's: uint8 images → float32 in [-1, 1] (as ``image_to_tensor``), floats → float32, integers → int64."""
    if name == "image":
        return to_unit_range(values)
    return values.float() if values.is_floating_point() else values.long()


def column_layout(features: datasets.Features, columns: Sequence[str], resolution: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each column's row shape and stored dtype: ``label`` first, images as uint8 (3, R, R)."""
    layout = {"label": ((), torch.int64)}
    for name in columns:
        if name == "image":
            layout[name] = ((3, resolution, resolution), torch.uint8)
        else:
            layout[name] = (feature_shape(features[name]) or (), getattr(torch, feature_dtype(features[name])))
    return layout


def layout_bytes(layout: dict[str, tuple[tuple[int, ...], torch.dtype]], rows: int) -> int:
    return rows * sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())


def memory_budget(gigabytes: float | None) -> int:
    """Bytes of decoded columns a process may hold: ``gigabytes`` GiB, else half the available RAM over the node's processes."""
    if gigabytes is not None:
        return int(gigabytes * 2**30)
    return available_memory() // 2 // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def available_memory() -> int:
    """The RAM available for new allocations (Linux ``MemAvailable``; elsewhere the free pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decode_columns(
    subset: datasets.Dataset | ParquetShards,
    columns: Sequence[str],
    resolution: int,
    *,
    device: torch.device,
    budget: int,
    announce: bool = True,
) -> SubsetArrays | None:
    """``label`` and ``columns`` of every row decoded once into memory, or None when they exceed ``budget`` bytes.

    Decoded chunk by chunk (a build by its row groups) from the Arrow buffers straight into the
    columns' final place: the GPU of ``device`` if they fit in a quarter of its free memory, else
    host memory. ``announce``: say in one line on stderr where the rows go.
    """
    layout = column_layout(subset.features, columns, resolution)
    rows = len(subset)
    size = layout_bytes(layout, rows)
    where = f"{rows:,} rows × {_size(size // max(rows, 1))} = {_size(size)}"
    if size > budget:
        _say(announce, f"training data: {where} exceed the memory budget of {_size(budget)} (--data-memory-gb): read in place")
        return None
    on_gpu = device.type == "cuda" and size <= torch.cuda.mem_get_info(device)[0] // GPU_SHARE
    home = device if on_gpu else torch.device("cpu")
    _say(announce, f"training data: {where} decoded into {'GPU' if on_gpu else 'host'} memory")
    arrays = {name: torch.empty((rows, *shape), dtype=dtype, device=home) for name, (shape, dtype) in layout.items()}
    start = 0
    with progress_bar("decode", total=rows) as advance:
        for table in _chunks(subset, list(layout)):
            for name, (shape, _) in layout.items():
                values = _image_crops(table[name], subset.features[name], resolution) if name == "image" else array_values(table[name], shape)
                arrays[name][start : start + table.num_rows].copy_(torch.from_numpy(values))
            start += table.num_rows
            advance(table.num_rows)
    return SubsetArrays(arrays, subset.features["label"].names, device)


def _chunks(subset: datasets.Dataset | ParquetShards, columns: list[str]) -> Iterator[pa.Table]:
    """The rows of ``columns`` in order, a row group (a build) or ``CHUNK_ROWS`` rows (a ``datasets.Dataset``) at a time."""
    if isinstance(subset, ParquetShards):
        yield from subset.row_groups(columns)
        return
    rows = subset.select_columns(columns).with_format("arrow")
    for start in range(0, len(rows), CHUNK_ROWS):
        yield rows[start : start + CHUNK_ROWS]


def _image_crops(column: pa.ChunkedArray, feature: datasets.Image, resolution: int) -> np.ndarray:
    """Encoded images → (rows, 3, R, R) uint8 ADM crops, decoded as ``datasets`` decodes them."""
    crops = [np.asarray(center_crop_adm(feature.decode_example(value), resolution)) for value in column.to_pylist()]
    return np.stack(crops).transpose(0, 3, 1, 2)


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError


def _say(announce: bool, line: str) -> None:
    if announce:
        print(line, file=sys.stderr)


def load_subset(
    data: str,
    *,
    columns: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
) -> SubsetArrays:
    """The training columns of a condensed dataset in memory, as the trainer holds them (see :class:`SubsetArrays`)."""
    from d2c_pack.training.data import open_subset

    subset, manifest = open_subset(data)
    features = subset.features
    if columns is None:
        columns = [name for name in TRAINING_COLUMNS if name in features and not (name == "image" and "latent" in features)]
    if missing := [name for name in columns if name not in features]:
        raise UserError(f"{data} has no {', '.join(missing)} column (it has: {', '.join(features)})")
    if "label" not in features:
        raise UserError(f"{data} has no 'label' column")
    resolution = resolution or (manifest and manifest["recipe"]["resolution"])
    if "image" in columns and not resolution:
        raise UserError(f"{data} records no resolution to crop its images to: pass resolution=R")
    return decode_columns(subset, [name for name in columns if name != "label"], resolution or 0, device=torch.device(device), budget=sys.maxsize)
