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
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, HfApi, HfFileSystem
from huggingface_hub.errors import HfHubHTTPError
from rich.console import Console
from rich.table import Table

from d2c_pack.arrays import feature_dtype, feature_shape
from d2c_pack.errors import UserError, first_line
from d2c_pack.fingerprint import sha256_file
from d2c_pack.package import MANIFEST_FILE

MANIFEST = MANIFEST_FILE.as_posix()
READ_BLOCK = 1 << 18


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    size: int
    sha256: str | None  # known without download for LFS files only


class Location(abc.ABC):
    """Where a dataset lies: the files it holds, their size and sha256, and how to read them."""

    name: str

    @abc.abstractmethod
    def files(self) -> dict[str, RemoteFile]:
        """Every file, by its path relative to the dataset root."""

    @abc.abstractmethod
    def open(self, path: str) -> IO[bytes]:
        """A binary file object (seekable: parquet footers are read without the rest)."""

    @abc.abstractmethod
    def sha256(self, path: str) -> str:
        """The file's sha256, from metadata where the location has it."""

    def read_text(self, path: str) -> str:
        with self.open(path) as file:
            return file.read().decode("utf-8")


class LocalFolder(Location):
    def __init__(self, folder: Path):
        self.folder, self.name = folder, str(folder)

    def files(self) -> dict[str, RemoteFile]:
        paths = sorted(p for p in self.folder.rglob("*") if p.is_file())
        return {p.relative_to(self.folder).as_posix(): RemoteFile(p.stat().st_size, None) for p in paths}

    def open(self, path: str) -> IO[bytes]:
        return open(self.folder / path, "rb")

    def sha256(self, path: str) -> str:
        return sha256_file(self.folder / path)


class HubRepo(Location):
    """A dataset repository at one revision, read through ``huggingface_hub`` (token from HF_TOKEN or the login)."""

    def __init__(self, repo_id: str, revision: str | None):
        self.repo_id, self.revision = repo_id, revision or "main"
        self.name = f"{repo_id}@{self.revision}"
        self.api, self.fs = HfApi(), HfFileSystem()
        self._files: dict[str, RemoteFile] | None = None

    def files(self) -> dict[str, RemoteFile]:
        if self._files is None:
            try:
                entries = self.api.list_repo_tree(self.repo_id, repo_type="dataset", revision=self.revision, recursive=True, expand=True)
                self._files = {
                    e.path: RemoteFile(e.size, e.lfs.sha256 if e.lfs else None) for e in entries if hasattr(e, "size")
                }
            except HfHubHTTPError as err:
                raise UserError(f"cannot list {self.name} on the Hub: {first_line(err)}") from None
        return self._files

    def open(self, path: str) -> IO[bytes]:
        # Small blocks: reading a parquet footer then fetches little more than the footer.
        return self.fs.open(f"datasets/{self.repo_id}@{self.revision.replace('/', '%2F')}/{path}", "rb", block_size=READ_BLOCK)

    def sha256(self, path: str) -> str:
        known = self.files()[path].sha256
        if known is not None:
            return known
        with self.open(path) as file:
            return hashlib.sha256(file.read()).hexdigest()


def locate(name: str) -> Location:
    """A local folder if ``name`` is one, else a Hub dataset ``ORG/NAME[@REVISION]``."""
    if Path(name).is_dir():
        return LocalFolder(Path(name))
    repo_id, _, revision = name.partition("@")
    if repo_id.count("/") != 1 or Path(name).exists():
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
    for path, expected in manifest["files"].items():
        if path not in present:
            continue
        if present[path].size != expected["size"]:
            problems.append(f"{path}: size {present[path].size} differs from the manifest's {expected['size']}")
        elif location.sha256(path) != expected["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (altered or corrupted)")
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
                with location.open(shard) as file:
                    parquet = pq.ParquetFile(file)
                    rows += parquet.metadata.num_rows
                    features = datasets.Features.from_arrow_schema(parquet.schema_arrow)
            except (pa.ArrowInvalid, OSError) as err:
                problems.append(f"{shard}: not a readable parquet file ({first_line(err)})")
                continue
            if features != info.features:
                problems.append(f"{shard}: columns differ from the card's dataset_info for config {config!r}")
        expected = info.splits["train"].num_examples if info.splits else None
        if expected is not None and rows != expected:
            problems.append(f"config {config!r}: {rows} rows in {len(shards)} shard(s), the card declares {expected}")
    return problems


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
        ("source", f"{manifest['source']['spec']} ({manifest['source']['images']:,} images)"),
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
        with location.open(shard) as file:
            yield pq.ParquetFile(file).read(columns=[name])[name].to_numpy()


def print_tables(tables: list[Table]) -> None:
    console = Console()
    for table in tables:
        console.print(table)
