"""Training reads the parquet shards of a d2c-pack build in place: no Arrow copy in the ``datasets`` cache.

A built folder, or the Hub snapshot of one (the Hub download is then the only copy), is read
shard by shard through memory-mapped ``pyarrow.parquet.ParquetFile`` handles. A global row index
maps to (shard, row group, offset); a batch decodes each row group it touches once, only the
columns it needs, and a few decoded row groups stay cached per process (so a random row costs
the decoding of its row group: the shards' row group size sets the price). Rows become tensors as
:func:`training_rows` makes them for both paths (so both train alike).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from d2c_pack.core.arrays import array_values, feature_shape
from d2c_pack.publish.verify import MANIFEST
from d2c_pack.sources.preprocess import center_crop_adm, image_to_tensor

SHARDS = "data/*.parquet"
CACHED_ROW_GROUPS = 4  # per process: the row groups of the last few reads, for batches that share one


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The revision's manifest and the data shards it lists in the HF hub cache, downloaded once: the one copy
    training reads (a shard the revision holds but the manifest does not list is not downloaded)."""
    from huggingface_hub import snapshot_download

    def download(patterns: list[str]) -> Path:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns))

    files = json.loads((download([MANIFEST]) / MANIFEST).read_text())["files"]
    return download([MANIFEST, *(path for path in files if fnmatch.fnmatch(path, SHARDS))])


def built_shards(folder: Path) -> list[Path]:
    """The data shards the manifest of ``folder`` lists if it is a d2c-pack build, else [].

    The manifest, not a glob: a Hub revision may still hold shards of an older version under ``data/``.
    """
    if not (folder / MANIFEST).is_file():
        return []
    files = json.loads((folder / MANIFEST).read_text())["files"]
    return [folder / path for path in sorted(files) if fnmatch.fnmatch(path, SHARDS)]


class ParquetShards:
    """The rows of parquet shards by global index, read by row group from memory-mapped files.

    File handles are per process: a DataLoader worker, forked or spawned, opens its own files
    rather than sharing (or pickling) the parent's.
    """

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.features = datasets.Features.from_arrow_schema(pq.read_schema(self.paths[0]))
        footers = [pq.read_metadata(path) for path in self.paths]
        self._groups = [(shard, group) for shard, footer in enumerate(footers) for group in range(footer.num_row_groups)]
        sizes = [footers[shard].row_group(group).num_rows for shard, group in self._groups]
        self._starts = np.cumsum([0, *sizes])  # the global index of each row group's first row, and the row count
        self._owner, self._files = os.getpid(), {}  # the process whose file handles these are
        self._cache: OrderedDict[tuple[int, tuple[str, ...]], pa.Table] = OrderedDict()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_files": {}, "_cache": OrderedDict()}

    def take(self, indices: Sequence[int], columns: Sequence[str]) -> pa.Table:
        """The rows at ``indices``, in that order, of ``columns``; each row group they fall in is decoded once."""
        indices = np.asarray(indices, dtype=np.int64)
        groups = np.searchsorted(self._starts, indices, side="right") - 1
        parts, positions = [], []
        for group in np.unique(groups):
            mine = np.flatnonzero(groups == group)
            parts.append(self._row_group(int(group), tuple(columns)).take(indices[mine] - self._starts[group]))
            positions.append(mine)
        return pa.concat_tables(parts).take(np.argsort(np.concatenate(positions)))

    def row_groups(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """Every row group's ``columns``, in row order, each decoded once (bypassing the cache)."""
        for shard, index in self._groups:
            yield self._file(shard).read_row_group(index, columns=list(columns))

    def column(self, name: str) -> np.ndarray:
        """One scalar column (e.g. the labels) of every row."""
        return pa.chunked_array([self._file(shard).read(columns=[name])[name] for shard in range(len(self.paths))]).to_numpy()

    def _row_group(self, group: int, columns: tuple[str, ...]) -> pa.Table:
        key = (group, columns)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            shard, index = self._groups[group]
            self._cache[key] = self._file(shard).read_row_group(index, columns=list(columns))
            if len(self._cache) > CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
        return self._cache[key]

    def _file(self, shard: int) -> pq.ParquetFile:
        if self._owner != os.getpid():  # a forked worker: the parent's handles are not its own
            self._owner, self._files = os.getpid(), {}
        if shard not in self._files:
            self._files[shard] = pq.ParquetFile(self.paths[shard], memory_map=True)
        return self._files[shard]


def training_rows(table: pa.Table, features: datasets.Features, resolution: int) -> list[dict]:
    """The rows of ``table`` as the trainer takes them: arrays and the label as tensors from their Arrow
    buffers, in the dtypes ``datasets``' torch format gives (float32, int64); the image decoded as
    ``datasets`` decodes it, then ADM-cropped to R."""
    batch: dict[str, torch.Tensor | list] = {}
    for name in table.column_names:
        if name == "image":  # {bytes, path}
            images = (features[name].decode_example(value) for value in table[name].to_pylist())
            batch[name] = [image_to_tensor(center_crop_adm(image, resolution)) for image in images]  # (3, R, R) each
        else:
            values = array_values(table[name], feature_shape(features[name]) or ())  # (rows, *shape)
            batch[name] = torch.from_numpy(values.astype(np.int64 if values.dtype.kind in "iub" else np.float32))
    return [{name: values[row] for name, values in batch.items()} for row in range(table.num_rows)]


class ShardRows(Dataset):
    """The rows of a built subset read in place, as :class:`d2c_pack.training.data.SubsetRows` gives them: label,
    ``latent`` or the ADM-cropped ``image``, and the text / visual columns asked for.

    A DataLoader fetches a whole batch through ``__getitems__``, so the batch reads each row group once.
    """

    def __init__(self, shards: ParquetShards, columns: list[str], resolution: int):
        self.shards = shards
        self.columns = ["label", *columns]
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return training_rows(self.shards.take(indices, self.columns), self.shards.features, self.resolution)

    def labels(self) -> np.ndarray:
        return self.shards.column("label")
