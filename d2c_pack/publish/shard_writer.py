"""Parquet shards of one split written straight from a stream of rows: one copy on disk, hashed while written.

``datasets`` would first write every row to an Arrow cache and then copy it into parquet (twice
the output on disk, one core) and the manifest would read every shard again to hash it. Here
rows are converted to Arrow in a thread pool (in order), cut into row groups of at most
``ROW_GROUP_BYTES`` (2 MiB; ``datasets`` aims at 100 MB) and ``datasets``' row cap for images,
and the row groups go to shards of at most ``max_shard_size`` (uncompressed Arrow bytes), each
shard written by a thread of its own while the next one fills. Bytes are hashed as they are
written. Every boundary depends on the rows alone, never on timing or the number of threads,
so the same rows give the same bytes.

The files carry ``datasets``' schema metadata (``Features.arrow_schema``) and its parquet
column options, so ``load_dataset`` reads back exactly the declared features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.arrow_writer import OptimizedTypedSequence, get_parquet_column_options, get_writer_batch_size_from_features
from datasets.utils.py_utils import convert_file_size_to_int

from d2c_pack.core.progress import progress_bar

SPLIT = "train"
CONVERT_ROWS = 16  # rows converted to Arrow per task: fixed, so the Arrow chunks (and the parquet bytes) never vary
# Row groups of at most 2 MiB (datasets aims at 100 MB): training in place reads a random row by decoding its
# whole row group (~340 MB/s a core for float16 arrays), so the group size is the price of a row: 3 ImageNet
# rows with every column here, 27 at 16 MiB (benchmarks/train_in_place.py). Footers stay small (a 500 MB
# shard has ~250 groups) and load_dataset converts 100k such rows in minutes.
ROW_GROUP_BYTES = min(2 * 1024**2, convert_file_size_to_int(datasets.config.MAX_ROW_GROUP_SIZE))
T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class WrittenFile:
    sha256: str
    size: int


@dataclasses.dataclass
class WrittenSplit:
    """A split's shards as written: its ``datasets`` info and each file's digest (path relative to the root)."""

    info: datasets.DatasetInfo
    files: dict[str, WrittenFile]


class HashingFile(io.RawIOBase):
    """A file opened for writing that computes the sha256 and size of what goes through it."""

    def __init__(self, path: Path):
        super().__init__()
        self.file = open(path, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.file.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            self.file.close()
        super().close()

    def written(self) -> WrittenFile:
        return WrittenFile(self.digest.hexdigest(), self.size)


def cpu_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_map(function: Callable[[T], R], items: Iterable[T], pool: ThreadPoolExecutor, ahead: int) -> Iterator[R]:
    """``map(function, items)`` run in ``pool``, at most ``ahead`` items in flight, results in the order of ``items``."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def arrow_tables(rows: Iterable[dict], features: datasets.Features, workers: int) -> Iterator[pa.Table]:
    """``rows`` (dicts of Python/NumPy values) as Arrow tables of ``CONVERT_ROWS`` rows typed by ``features``,
    converted by ``workers`` threads, in order."""
    schema = features.arrow_schema
    iterator = iter(rows)
    batches = iter(lambda: list(islice(iterator, CONVERT_ROWS)), [])

    def convert(batch: list[dict]) -> pa.Table:
        # The conversion ``datasets``' own writer applies to examples: encode, then typed Arrow arrays.
        encoded = [features.encode_example(row) for row in batch]
        arrays = [pa.array(OptimizedTypedSequence([row[name] for row in encoded], type=feature, col=name)) for name, feature in features.items()]
        return pa.Table.from_arrays(arrays, schema=schema)

    with ThreadPoolExecutor(workers, thread_name_prefix="convert") as pool:
        yield from ordered_map(convert, batches, pool, 2 * workers)


def table_slices(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    """``table`` in consecutive slices of ``rows`` rows (zero-copy)."""
    return (table.slice(start, rows) for start in range(0, table.num_rows, rows))


def row_groups(tables: Iterable[pa.Table], features: datasets.Features, max_bytes: int) -> Iterator[pa.Table]:
    """Consecutive rows regrouped into tables of at most ``max_bytes`` (a larger row goes alone) and at most
    the rows ``datasets`` caps row groups at for the features' kind (images, audio...)."""
    max_rows = get_writer_batch_size_from_features(features) or float("inf")
    group: list[pa.Table] = []
    rows = size = 0
    for table in tables:
        if size + table.nbytes <= max_bytes and rows + table.num_rows <= max_rows:  # fits whole: no row-by-row sizes
            group.append(table)
            rows, size = rows + table.num_rows, size + table.nbytes
            continue
        start = 0
        for row in range(table.num_rows):
            row_bytes = table.slice(row, 1).nbytes
            if rows and (size + row_bytes > max_bytes or rows >= max_rows):
                group.append(table.slice(start, row - start))
                yield pa.concat_tables([part for part in group if part.num_rows])
                group, rows, size, start = [], 0, 0, row
            rows, size = rows + 1, size + row_bytes
        group.append(table.slice(start))
    if rows:
        yield pa.concat_tables([part for part in group if part.num_rows])


def parquet_options(features: datasets.Features) -> dict:
    """``pq.ParquetWriter`` options: those of ``datasets.Dataset.to_parquet`` (per-column compression and encodings,
    content-defined chunking so that new versions deduplicate on the Hub, page index), except that array
    columns get neither dictionaries nor min/max statistics: both are useless on embeddings and cost
    about a third of the writing time."""
    schema = features.arrow_schema
    options = get_parquet_column_options(features, schema)
    arrays = {field.name for field in schema if _is_array(field.type)}

    def scalar(leaf: str) -> bool:  # leaves are dotted paths below their column: "latent.list.element..."
        return leaf.split(".", 1)[0] not in arrays

    return options | {
        "use_dictionary": [leaf for leaf in options["use_dictionary"] if scalar(leaf)],
        "write_statistics": [leaf for leaf in options["compression"] if scalar(leaf)],
        "use_content_defined_chunking": datasets.config.DEFAULT_CDC_OPTIONS,
        "write_page_index": True,
    }


def _is_array(arrow_type: pa.DataType) -> bool:
    storage = arrow_type.storage_type if isinstance(arrow_type, pa.ExtensionType) else arrow_type
    return pa.types.is_list(storage) or pa.types.is_large_list(storage) or pa.types.is_fixed_size_list(storage)


def _write_shard(path: Path, features: datasets.Features, groups: queue.Queue, in_flight: threading.Semaphore) -> WrittenFile:
    """Writes the row groups arriving on ``groups`` (until None) as one parquet file, releasing ``in_flight``
    after each; returns the file's digest."""
    options = parquet_options(features)
    with HashingFile(path) as sink:
        writer = pq.ParquetWriter(sink, features.arrow_schema, **options)
        while (group := groups.get()) is not None:
            writer.write_table(group, row_group_size=group.num_rows)
            in_flight.release()
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(options["use_content_defined_chunking"])})
        writer.close()
        return sink.written()


class _Shards:
    """The shards of one split being written, each by a thread of its own; at most ``budget`` row groups are held
    for the writers at a time (flat memory), so a shard fills while the previous ones are still being written."""

    def __init__(self, root: Path, folder: str, features: datasets.Features, writers: ThreadPoolExecutor, budget: int):
        self.root, self.folder, self.features, self.writers = root, folder, features, writers
        self.in_flight = threading.Semaphore(budget)
        self.parts: list[tuple[Path, Future, queue.Queue]] = []

    def open(self) -> None:
        """Starts the next shard (named once the number of shards is known), closing the current one."""
        self.close()
        path = self.root / self.folder / f".{SPLIT}-{len(self.parts):05d}.parquet.partial"
        groups: queue.Queue = queue.Queue()
        self.parts.append((path, self.writers.submit(_write_shard, path, self.features, groups, self.in_flight), groups))

    def add(self, group: pa.Table) -> None:
        """Hands a row group to the current shard's writer once the budget allows; a writer's error is raised here."""
        while not self.in_flight.acquire(timeout=0.5):
            for _, shard, _ in self.parts:
                if shard.done():
                    shard.result()  # raises the writer's error; a writer that finished early is a bug
        self.parts[-1][2].put(group)

    def close(self) -> None:
        if self.parts:
            self.parts[-1][2].put(None)

    def finish(self) -> dict[str, WrittenFile]:
        """Waits for every shard and names it ``train-XXXXX-of-NNNNN.parquet``; their digests by path below the root."""
        files = {}
        for index, (partial, shard, _) in enumerate(self.parts):
            final = partial.with_name(f"{SPLIT}-{index:05d}-of-{len(self.parts):05d}.parquet")
            digest = shard.result()
            partial.rename(final)
            files[final.relative_to(self.root).as_posix()] = digest
        return files


def write_split(
    tables: Iterable[pa.Table], features: datasets.Features, root: Path, folder: str, max_shard_size: str | int, *, total: int, workers: int | None = None
) -> WrittenSplit:
    """Writes ``root/folder/train-XXXXX-of-NNNNN.parquet`` from ``tables`` (typed by ``features``; ``total`` rows
    expected, for the progress bar). A shard holds at most ``max_shard_size`` of Arrow data, or one row group."""
    max_bytes = convert_file_size_to_int(max_shard_size)
    workers = workers or cpu_workers()
    (root / folder).mkdir()
    num_rows = num_bytes = shard_bytes = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="shard") as writers, progress_bar(f"package {folder}", total=total) as advance:
        shards = _Shards(root, folder, features, writers, budget=2 * workers)
        try:
            for group in row_groups(tables, features, min(ROW_GROUP_BYTES, max_bytes)):
                if not shards.parts or shard_bytes + group.nbytes > max_bytes:
                    shards.open()
                    shard_bytes = 0
                shards.add(group)
                shard_bytes += group.nbytes
                num_bytes += group.nbytes
                num_rows += group.num_rows
                advance(group.num_rows)
            if not shards.parts:  # no rows: one empty shard, as ``datasets`` writes
                shards.open()
        finally:
            shards.close()  # on an error too: the writers end, and the partial folder is replaced by the next run
        files = shards.finish()
    written = list(files.values())
    split = datasets.SplitInfo(name=SPLIT, num_bytes=num_bytes, num_examples=num_rows)
    info = datasets.DatasetInfo(features=features, splits=datasets.SplitDict({SPLIT: split}), download_size=sum(f.size for f in written), dataset_size=num_bytes)
    return WrittenSplit(info, files)
