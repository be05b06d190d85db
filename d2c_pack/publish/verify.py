"""``d2c-pack verify`` and ``d2c-pack inspect``: check and describe a condensed dataset, local or on the Hub.

A dataset is named by a folder path or by ``ORG/NAME[@REVISION]`` on the Hub. On the Hub,
large (LFS) files are checked against the sha256 the Hub reports, so only the small regular
files (card, manifest, recipe) and the parquet footers are downloaded.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, HfApi, HfFileSystem
from rich.console import Console
from rich.table import Table

from d2c_pack.core.arrays import feature_dtype, feature_shape
from d2c_pack.core.errors import UserError, first_line
from d2c_pack.core.fingerprint import sha256_file
from d2c_pack.core.hub_retry import hub_errors, with_retries
from d2c_pack.core.paths import local_folder
from d2c_pack.publish.layout import CARD_FILE, MANIFEST_FILE
from d2c_pack.publish.shard_writer import cpu_workers

MANIFEST = MANIFEST_FILE.as_posix()
READ_BLOCK = 1 << 18
CARD_HINT = "; change the card's licence, description or title with `d2c-pack card DIR`, not by hand"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    size: int
    sha256: str | None  # known without download for LFS files only


class Location(abc.ABC):
    """Where a dataset lies: the files it holds, their size and sha256, and how to read them."""

    name: str
    hash_workers: int = 1  # files whose sha256 is computed at once

    @abc.abstractmethod
    def files(self) -> dict[str, RemoteFile]:
        """Every file, by its path relative to the dataset root."""

    @abc.abstractmethod
    def open(self, path: str) -> IO[bytes]:
        """A binary file object (seekable: parquet footers are read without the rest)."""

    @abc.abstractmethod
    def sha256(self, path: str) -> str:
        """The file's sha256, from metadata where the location has it."""

    def read(self, path: str, reader: Callable[[IO[bytes]], T]) -> T:
        """``reader(file)`` on the opened file: what is read from a file goes through here (the Hub retries it)."""
        with self.open(path) as file:
            return reader(file)

    def read_text(self, path: str) -> str:
        return self.read(path, lambda file: file.read().decode("utf-8"))


class LocalFolder(Location):
    def __init__(self, folder: Path):
        self.folder, self.name = folder, str(folder)
        # One file per core: hashlib and file reads release the GIL, so shards hash in parallel up to the disk's speed.
        self.hash_workers = max(2, cpu_workers())

    def files(self) -> dict[str, RemoteFile]:
        paths = sorted(p for p in self.folder.rglob("*") if p.is_file())
        return {p.relative_to(self.folder).as_posix(): RemoteFile(p.stat().st_size, None) for p in paths}

    def open(self, path: str) -> IO[bytes]:
        return open(self.folder / path, "rb")

    def sha256(self, path: str) -> str:
        return sha256_file(self.folder / path)


class HubRepo(Location):
    """A dataset repository at one revision, read through ``huggingface_hub`` (token from HF_TOKEN or the login).

    Every read is retried on transient failures (:func:`d2c_pack.core.hub_retry.with_retries`); what still fails
    is a one-line :class:`UserError`."""

    def __init__(self, repo_id: str, revision: str | None):
        self.repo_id, self.revision = repo_id, revision or "main"
        self.name = f"{repo_id}@{self.revision}"
        self.api, self.fs = HfApi(), HfFileSystem()
        self._files: dict[str, RemoteFile] | None = None

    def files(self) -> dict[str, RemoteFile]:
        if self._files is None:
            with hub_errors(f"no folder `{self.repo_id}` here; reading {self.name} from the Hub"):
                entries = with_retries(lambda: list(self.api.list_repo_tree(
                    self.repo_id, repo_type="dataset", revision=self.revision, recursive=True, expand=True,
                )), f"list {self.name}")  # fmt: skip
            self._files = {e.path: RemoteFile(e.size, e.lfs.sha256 if e.lfs else None) for e in entries if hasattr(e, "size")}
        return self._files

    def open(self, path: str) -> IO[bytes]:
        # Small blocks: reading a parquet footer then fetches little more than the footer.
        return self.fs.open(f"datasets/{self.repo_id}@{self.revision.replace('/', '%2F')}/{path}", "rb", block_size=READ_BLOCK)

    def read(self, path: str, reader: Callable[[IO[bytes]], T]) -> T:
        with hub_errors(f"reading {path} of {self.name}"):
            return with_retries(lambda: Location.read(self, path, reader), f"read {self.name}/{path}")

    def sha256(self, path: str) -> str:
        known = self.files()[path].sha256
        return known if known is not None else self.read(path, lambda file: hashlib.sha256(file.read()).hexdigest())


def locate(name: str) -> Location:
    """A local folder if ``name`` is one, else a Hub dataset ``ORG/NAME[@REVISION]``.

    A name that reads as a path (it starts with ``.``, ``/`` or ``~``, names a file, or its first component is
    a folder here) is never sent to the Hub: a mistyped folder fails at once, naming the closest folder there is.
    """
    if (folder := local_folder(name)) is not None:
        return LocalFolder(folder)
    repo_id, _, revision = name.partition("@")
    if repo_id.count("/") != 1:
        raise UserError(f"{name!r} is neither a dataset folder nor a Hub dataset ORG/NAME[@REVISION]")
    return HubRepo(repo_id, revision or None)


def read_manifest(location: Location) -> dict:
    if MANIFEST not in location.files():
        raise UserError(f"{location.name} has no {MANIFEST}: not a dataset built by d2c-pack")
    return json.loads(location.read_text(MANIFEST))


def verify(location: Location) -> list[str]:
    """Every problem found: missing, extra or altered files, and parquet schemas or row counts that differ from the card."""
    manifest, present = read_manifest(location), location.files()
    problems = [f"{path}: listed in the manifest but missing" for path in manifest["files"] if path not in present]
    problems += [f"{path}: not listed in the manifest" for path in present if path not in manifest["files"] and path != MANIFEST and not path.startswith(".")]
    listed = {path: expected for path, expected in manifest["files"].items() if path in present}
    same_size = [path for path, expected in listed.items() if present[path].size == expected["size"]]
    with ThreadPoolExecutor(location.hash_workers, thread_name_prefix="sha256") as pool:
        digests = dict(zip(same_size, pool.map(location.sha256, same_size)))
    for path, expected in listed.items():
        hint = CARD_HINT if path == CARD_FILE else ""
        if path not in digests:
            problems.append(f"{path}: size {present[path].size} differs from the manifest's {expected['size']}{hint}")
        elif digests[path] != expected["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (altered or corrupted){hint}")
    if "README.md" in present:
        problems += _schema_problems(location, present)
    return problems


def _card_infos(location: Location) -> DatasetInfosDict:
    return DatasetInfosDict.from_dataset_card_data(DatasetCard(location.read_text("README.md")).data)


def _schema_problems(location: Location, present: dict[str, RemoteFile]) -> list[str]:
    problems = []
    for config, info in _card_infos(location).items():
        folder = "data" if config == "default" else config
        shards = sorted(path for path in present if path.startswith(f"{folder}/") and path.endswith(".parquet"))
        rows = 0
        for shard in shards:
            try:
                num_rows, schema = location.read(shard, _footer)
            except (pa.ArrowInvalid, OSError) as err:
                problems.append(f"{shard}: not a readable parquet file ({first_line(err)})")
                continue
            rows += num_rows
            if datasets.Features.from_arrow_schema(schema) != info.features:
                problems.append(f"{shard}: columns differ from the card's dataset_info for config {config!r}")
        expected = info.splits["train"].num_examples if info.splits else None
        if expected is not None and rows != expected:
            problems.append(f"config {config!r}: {rows} rows in {len(shards)} shard(s), the card declares {expected}")
    return problems


def _footer(file: IO[bytes]) -> tuple[int, pa.Schema]:
    """A parquet file's row count and schema, from its footer alone."""
    parquet = pq.ParquetFile(file)
    return parquet.metadata.num_rows, parquet.schema_arrow


def _interval_text(selection: dict) -> str:
    """", k = 96", with the strides actually used where short classes made them smaller."""
    if not selection["interval"]:
        return ""
    low, high = selection.get("interval_strides") or (selection["interval"],) * 2
    return f", k = {selection['interval']}" + (f" (strides used {low}–{high}: short classes)" if low < selection["interval"] else "")


def describe(location: Location) -> list[Table]:
    """Rich tables: overview (rows, classes, size, how it was selected) and columns with their shapes."""
    manifest, present = read_manifest(location), location.files()
    infos = _card_infos(location)
    default = infos["default"]
    recipe, selection = manifest["recipe"], manifest["selection"]
    per_class = np.array(selection["per_class_rows"])
    difficulty = np.concatenate(list(_column(location, present, "data", "difficulty")))
    overview = Table(title=f"{location.name}", show_header=False)
    for key, value in (
        ("rows", f"{selection['rows']:,}"),
        ("classes", f"{len(per_class)} ({per_class.min()}–{per_class.max()} rows per class)"),
        ("source", f"{manifest['source']['name']} ({manifest['source']['images']:,} images)"),
        ("selector", recipe["selector"] + _interval_text(selection)),
        ("budget", recipe["budget"]),
        ("scorer", manifest["models"].get("scorer", {}).get("name", recipe["scorer"])),
        ("difficulty", f"{difficulty.min():.4g} … {difficulty.max():.4g} (selected rows)"),
        ("size", f"{sum(f.size for f in present.values()) / 1e6:.1f} MB in {len(present)} files"),
        ("built by", f"d2c-pack {manifest['version']}"),
    ):
        overview.add_row(key, str(value))
    columns = Table(title="columns (default config)")
    for heading in ("column", "feature", "shape", "dtype"):
        columns.add_column(heading)
    for name, feature in default.features.items():
        shape = feature_shape(feature) or ()
        dtype = "original bytes" if isinstance(feature, datasets.Image) else feature_dtype(feature) or feature.dtype
        columns.add_row(name, type(feature).__name__, " × ".join(map(str, shape)) or "—", str(dtype))
    return [overview, columns]


def _column(location: Location, present: dict[str, RemoteFile], folder: str, name: str) -> Iterator[np.ndarray]:
    for shard in sorted(path for path in present if path.startswith(f"{folder}/") and path.endswith(".parquet")):
        yield location.read(shard, lambda file: pq.ParquetFile(file).read(columns=[name])[name].to_numpy())


def print_tables(tables: list[Table]) -> None:
    console = Console()
    for table in tables:
        console.print(table)
