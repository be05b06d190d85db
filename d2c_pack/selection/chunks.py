"""Per-image work cached chunk by chunk: resumable, shared out to ranks under ``torchrun``.

Scoring and every Attach column use this: a :class:`ChunkCache` is a folder keyed by
everything that changes its numbers, holding one parquet file per chunk of source indices
(chunk n covers indices n·size … (n+1)·size − 1)::

    ROOT/<key digest>/key.json               the key, readable
    ROOT/<key digest>/chunks/NNNNNNN.parquet  the rows computed so far for chunk n

A chunk file is replaced atomically once all the rows asked of it are computed, so a killed
run resumes at the first unfinished chunk, and a later run that asks for other images of the
same chunk (another selection) computes only those. Under ``torchrun`` rank r computes the
chunks c with c mod world_size = r; a chunk's batches are the same whatever the world size.
A streamed source cannot be read at chosen places, so there each rank reads only its node's
share of the stream (:meth:`~d2c_pack.sources.image_source.ImageSource.node_share`) and computes the
images in it; a chunk that straddles two shares gets its rows from both ranks.

A batch's rows may come back later than its launch (:data:`ComputeRows`): the loop launches
the next batch before it reads the previous one's results, so a GPU is never left waiting on a
device-to-host copy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from d2c_pack.core.distributed import Context
from d2c_pack.core.fingerprint import sha256_json
from d2c_pack.core.progress import progress_bar
from d2c_pack.sources.image_source import ImageSource, SourceRecord
from d2c_pack.sources.preprocess import center_crop_adm

# Columns every cache table starts with; a row whose image could not be read has only these.
INDEX_FIELDS = [pa.field("source_index", pa.int64()), pa.field("source_id", pa.string()), pa.field("error", pa.string())]


@dataclasses.dataclass(frozen=True)
class Chunk:
    """The wanted source indices (ascending) that fall into chunk ``number``."""

    number: int
    indices: tuple[int, ...]


def chunks_of(indices: Iterable[int], size: int) -> list[Chunk]:
    """Groups ascending source indices by the chunk of ``size`` consecutive indices they fall into."""
    groups = itertools.groupby(sorted({int(index) for index in indices}), key=lambda index: index // size)
    return [Chunk(number, tuple(members)) for number, members in groups]


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Writes through ``write(partial)`` next to ``path``, then renames: readers see all of it or nothing."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)


def write_table(table: pa.Table, path: Path) -> None:
    replace_atomically(path, lambda partial: pq.write_table(table, partial))


class ChunkCache:
    """Rows of ``schema`` (which starts with ``INDEX_FIELDS``), one per source index, stored by chunk."""

    def __init__(self, root: Path, key: dict, schema: pa.Schema, chunk_size: int):
        if schema.names[: len(INDEX_FIELDS)] != [f.name for f in INDEX_FIELDS]:
            raise ValueError(f"a cache schema starts with {[f.name for f in INDEX_FIELDS]}")
        self.schema = schema
        self.chunk_size = chunk_size
        self.key = {**key, "chunk_size": chunk_size}
        self.folder = Path(root) / sha256_json(self.key)[:16]
        (self.folder / "chunks").mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "key.json"
        if not key_file.exists():
            text = json.dumps(self.key, sort_keys=True, indent=2) + "\n"
            replace_atomically(key_file, lambda partial: partial.write_text(text))

    def chunk_file(self, number: int) -> Path:
        return self.folder / "chunks" / f"{number:07d}.parquet"

    def missing(self, chunk: Chunk) -> Chunk:
        """The part of ``chunk`` not computed yet."""
        path = self.chunk_file(chunk.number)
        if not path.exists():
            return chunk
        have = set(pq.read_table(path, columns=["source_index"])["source_index"].to_pylist())
        return Chunk(chunk.number, tuple(i for i in chunk.indices if i not in have))

    def add(self, number: int, table: pa.Table) -> None:
        """Adds rows to chunk ``number`` (rows already there win), atomically.

        Under the cache's lock: two ranks reading a stream's shares may both hold rows of a chunk that straddles them.
        """
        path = self.chunk_file(number)
        with FileLock(self.folder / ".add.lock"):  # one file for the whole cache, not one per chunk
            if path.exists():
                old = pq.read_table(path)
                table = pa.concat_tables([old, table.filter(pc.invert(pc.is_in(table["source_index"], old["source_index"])))])
            write_table(table.sort_by("source_index"), path)

    def merge(self, indices: Iterable[int], path: Path) -> None:
        """Writes the rows of ``indices`` (all computed) to one parquet file, atomically, one chunk in memory at a time."""

        def write(partial: Path) -> None:
            with pq.ParquetWriter(partial, self.schema) as writer:
                for table in self.read(indices):
                    writer.write_table(table)

        replace_atomically(path, write)

    def read(self, indices: Iterable[int]) -> Iterator[pa.Table]:
        """The rows of ``indices`` (all computed), chunk by chunk in ascending index order."""
        for chunk in chunks_of(indices, self.chunk_size):
            table = pq.read_table(self.chunk_file(chunk.number))
            yield table.filter(pc.is_in(table["source_index"], pa.array(chunk.indices, pa.int64())))


def error_rows(schema: pa.Schema, skipped: list[tuple[int, str, str]]) -> pa.Table:
    """Rows for unreadable images: index, id and reason; every other column null."""
    index, source_id, error = (list(column) for column in zip(*skipped))
    columns = {name: [None] * len(skipped) for name in schema.names} | {"source_index": index, "source_id": source_id, "error": error}
    return pa.Table.from_pydict(columns, schema=schema)


def list_array(array: np.ndarray) -> pa.ListArray:
    """(n, ...) array → Arrow list column of n rows, each the flattened rest, without a Python object per number."""
    width = int(np.prod(array.shape[1:]))
    offsets = np.arange(0, len(array) * width + 1, max(width, 1), dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, array.reshape(-1))


def list_values(column: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    """Arrow list column of n equal-length rows → (n, width) array of ``dtype``, the inverse of :func:`list_array`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    return values.reshape(len(column), -1) if len(column) else values.reshape(0, 0)


class ChunkBatches(IterableDataset):
    """Batches of ADM crops (uint8) of whole chunks; each DataLoader worker takes every n-th chunk.

    A worker reads its images in one ascending pass (so a streamed source is read once). Each
    chunk ends with a batch whose ``last`` is True and that lists the chunk's unreadable images.
    ``extra(record)`` adds per-image tensors computed in the worker (the scorer's noise).
    """

    def __init__(
        self,
        source: ImageSource,
        chunks: list[Chunk],
        *,
        resolution: int,
        batch_size: int,
        extra: Callable[[SourceRecord], dict[str, torch.Tensor]] | None = None,
    ):
        self.source, self.chunks, self.resolution, self.batch_size, self.extra = source, chunks, resolution, batch_size, extra

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        mine = self.chunks[worker.id :: worker.num_workers] if worker else self.chunks
        records = self.source.iter_records(i for chunk in mine for i in chunk.indices)
        reported = len(self.source.skipped)  # before the first decode, which may already skip an image
        upcoming = next(records, None)
        for chunk in mine:
            batch = []
            while upcoming is not None and upcoming.index <= chunk.indices[-1]:
                batch.append(upcoming)
                upcoming = next(records, None)
                if len(batch) == self.batch_size:
                    yield self._batch(chunk, batch)
                    batch = []
            # Decoding runs one image ahead, so the skipped list may already hold the next chunk's first image.
            skipped = [s for s in self.source.skipped[reported:] if s.index <= chunk.indices[-1]]
            reported += len(skipped)
            yield self._batch(chunk, batch) | {"last": True, "skipped": [(s.index, s.source_id, s.reason) for s in skipped]}

    def _batch(self, chunk: Chunk, records: list[SourceRecord]) -> dict:
        crops = [torch.from_numpy(np.array(center_crop_adm(r.image, self.resolution))).permute(2, 0, 1) for r in records]
        extras = [self.extra(r) for r in records] if self.extra else []
        batch = {
            "chunk": chunk.number,
            "indices": [r.index for r in records],
            "source_ids": [r.source_id for r in records],
            "labels": torch.tensor([r.label for r in records], dtype=torch.long),
            "crops": torch.stack(crops) if crops else torch.empty(0, dtype=torch.uint8),  # (B, 3, R, R) uint8
            "last": False,
            "skipped": [],
        }
        for name in extras[0] if extras else ():
            batch[name] = torch.stack([e[name] for e in extras])
        return batch


def start_host_copy(*tensors: torch.Tensor) -> Callable[[], list[np.ndarray]]:
    """Starts copying device tensors to the host without waiting; the returned function waits and gives them as arrays.

    On a GPU the copies go into pinned buffers (from PyTorch's caching host allocator, which
    does not hand a buffer out again before its copy is done) behind a CUDA event, so the
    caller can launch more work before it waits. On a CPU the tensors are already there.
    """
    if not any(t.is_cuda for t in tensors):
        return lambda: [t.numpy() for t in tensors]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
    done = torch.cuda.Event()
    done.record()

    def wait() -> list[np.ndarray]:
        done.synchronize()
        return [t.numpy() for t in host]

    return wait


Rows = pa.Table | Callable[[], pa.Table]
ComputeRows = Callable[[dict], Rows]
"""Computes the cache rows (schema with ``INDEX_FIELDS`` first) of a batch's readable images: the table, or a
function that returns it once the batch's results are back on the host (called after the next batch is launched)."""


def compute_chunks(
    work: Sequence[tuple[ChunkCache, ComputeRows]],
    source: ImageSource,
    indices: Iterable[int],
    context: Context,
    *,
    resolution: int,
    batch_size: int,
    workers: int,
    description: str,
    extra: Callable[[SourceRecord], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Fills every cache of ``work`` with the rows of ``indices``: this rank's chunks (or its part of a stream), then waits for all ranks.

    All caches must share one chunk size. A chunk is read once for all caches that miss any of its images.
    """
    caches = [cache for cache, _ in work]
    share = source.node_share(context.rank, context.world_size) if context.world_size > 1 else None
    if share is None:
        wanted = chunks_of(indices, caches[0].chunk_size)[context.rank :: context.world_size]
    else:  # a stream: this rank's node reads its own part of it, whichever chunks that part touches
        source, mine = share
        wanted = chunks_of((i for i in indices if i in mine), caches[0].chunk_size)
    pending = [_union(cache.missing(chunk) for cache in caches) for chunk in wanted]
    pending = [chunk for chunk in pending if chunk.indices]
    batches = ChunkBatches(source, pending, resolution=resolution, batch_size=batch_size, extra=extra)
    # A streamed source can only be read front to back, which worker processes cannot share.
    loader = DataLoader(batches, batch_size=None, num_workers=workers if source.random_access else 0, pin_memory=context.device.type == "cuda")
    parts: dict[tuple[int, int], list[pa.Table]] = {}

    def collect(batch: dict, launched: list[Rows | None]) -> None:
        """Files a batch's rows (waiting for them if they are still on their way) and writes the chunks it completes."""
        for slot, ((cache, _), rows) in enumerate(zip(work, launched)):
            tables = parts.setdefault((batch["chunk"], slot), [])
            if rows is not None:
                tables.append((rows() if callable(rows) else rows).cast(cache.schema))
            if batch["skipped"]:
                tables.append(error_rows(cache.schema, batch["skipped"]))
            if batch["last"]:
                cache.add(batch["chunk"], pa.concat_tables(parts.pop((batch["chunk"], slot))))
        advance(len(batch["indices"]) + len(batch["skipped"]))

    with progress_bar(description, total=sum(len(c.indices) for c in pending)) as advance:
        previous = None
        for batch in loader:
            launched = [compute(batch) if batch["indices"] else None for _, compute in work]
            if previous is not None:  # read one batch behind: its copies have had this batch's launch to finish
                collect(*previous)
            previous = (batch, launched)
        if previous is not None:
            collect(*previous)
    context.barrier()


def _union(chunks: Iterable[Chunk]) -> Chunk:
    chunks = list(chunks)
    return Chunk(chunks[0].number, tuple(sorted(set().union(*(c.indices for c in chunks)))))
