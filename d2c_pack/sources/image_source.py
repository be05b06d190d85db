"""Labelled image sources behind one interface: image folders, Hugging Face datasets, plugin sources.

``open_source(spec)`` picks the implementation from the spec string:

- a source a plugin registered (:mod:`d2c_pack.core.registry`): ``demo:digits``, the handwritten
  digits scikit-learn ships (no network).
- ``hf:NAME``: a Hub dataset repository, or a local folder laid out like one.
- a folder written by ``Dataset.save_to_disk``, a ``.parquet`` file, or a folder of parquet files.
- any other folder: one sub-folder per class (torchvision ``ImageFolder`` layout).

Every source yields the original encoded bytes next to the decoded image, knows its class
sizes right after opening, and skips (and records) images that cannot be read or decoded.
Class names are unique (``datasets.ClassLabel`` needs them so): a name that several classes
share gets the class's folder name or WordNet id appended, ``"crane (n02012849)"``. Sources of
ImageNet images, in any layout, use the ImageNet-1k label space (:mod:`d2c_pack.sources.imagenet`).
"""

from __future__ import annotations

import abc
import copy
import hashlib
import io
import itertools
import json
import logging
import os
import re
import struct
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.distributed import split_dataset_by_node
from datasets.exceptions import DatasetsError
from datasets.utils.file_utils import xopen
from PIL import Image, UnidentifiedImageError

from d2c_pack.core import registry
from d2c_pack.core.errors import SourceError, UserError
from d2c_pack.core.fingerprint import file_ends_sha256, parquet_footer_sha256, sha256_json
from d2c_pack.core.hub_retry import with_retries
from d2c_pack.sources import imagenet

logger = logging.getLogger("d2c_pack.sources.image_source")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File name endings (compared lower-case) that an image folder source picks up."""

_DECODE_ERRORS = (
    OSError,  # includes UnidentifiedImageError and truncated files
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,  # some plugins fail this way on malformed headers
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised, not warned: see ImageSource._decode
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")
_BATCH_SIZE = 256
_FINGERPRINT_THREADS = 16


@dataclass(frozen=True)
class SourceRecord:
    """One decoded image of a source with its label and original bytes."""

    index: int
    source_id: str
    label: int
    image: Image.Image
    data: bytes


@dataclass
class SkippedImage:
    """An image that was left out because it could not be read or decoded."""

    index: int
    source_id: str
    reason: str


class Entry(NamedTuple):
    """A not yet decoded image: its bytes, or where to read them (what ``ImageSource._entries`` yields)."""

    index: int
    source_id: str
    label: int
    data: bytes | None
    path: str | None


class ImageSource(abc.ABC):
    """A labelled image collection addressed by a stable index ``0..len-1``.

    ``class_sizes`` counts the images listed when the source was opened; corrupt images are
    only found while decoding and then show up in ``skipped``.
    """

    spec: str
    class_names: list[str]
    class_sizes: list[int]
    skipped: list[SkippedImage]

    def __init__(
        self, spec: str, class_names: list[str], class_sizes: list[int], *, imagenet_labels: bool = False, class_ids: list[str] | None = None
    ) -> None:
        _check_class_names(spec, class_names)
        self.spec = spec
        self.class_names = class_names
        self.class_sizes = class_sizes
        self.imagenet_labels = imagenet_labels  # labels are ImageNet-1k's official index
        # Classes named by WordNet ids (n01440764), ImageNet's naming (also ImageNet-21k's): folder names, else the class names.
        self.wordnet_classes = any(imagenet.WORDNET_ID.fullmatch(name) for name in (class_names if class_ids is None else class_ids))
        self.skipped: list[SkippedImage] = []
        self._skipped_indices: set[int] = set()

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images listed, including any that later turn out to be corrupt."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """SHA-256 hex digest that changes when the listed content changes; decodes nothing."""

    @abc.abstractmethod
    def _entries(self, indices: list[int] | None) -> Iterator[Entry]:
        """Yield the entries at ``indices`` (sorted, in range), or all of them, in index order."""

    @property
    def num_classes(self) -> int:
        """Number of classes, including any without images."""
        return len(self.class_names)

    @property
    def random_access(self) -> bool:
        """Whether ``get`` works; False for streamed datasets."""
        return True

    def node_share(self, rank: int, world_size: int) -> tuple[ImageSource, frozenset[int]] | None:
        """For a source read front to back: the source that reads only node ``rank``'s part and the indices in it.

        None where any process can reach any image (the work is then shared out by index), or
        where the source cannot be cut into ``world_size`` parts.
        """
        return None

    def iter_records(self, indices: Iterable[int] | None = None) -> Iterator[SourceRecord]:
        """Yield the decodable records at ``indices`` (all if None) in ascending index order."""
        wanted = None if indices is None else self._checked(indices)
        for entry in self._entries(wanted):
            record = self._decode(entry)
            if record is not None:
                yield record

    def get(self, index: int) -> SourceRecord | None:
        """The record at ``index``, or None if that image is corrupt (it is then in ``skipped``)."""
        if not self.random_access:
            raise UserError(
                f"{self.spec} is streamed and has no random access: "
                "open it without streaming or iterate with iter_records()"
            )
        (entry,) = self._entries(self._checked([index]))
        return self._decode(entry)

    def _checked(self, indices: Iterable[int]) -> list[int]:
        wanted = sorted({int(i) for i in indices})
        if wanted and (wanted[0] < 0 or wanted[-1] >= len(self)):
            raise IndexError(f"index out of range for {self.spec} with {len(self)} images")
        return wanted

    def _decode(self, entry: Entry) -> SourceRecord | None:
        try:
            data = entry.data if entry.data is not None else _read(entry.path)
        except OSError as error:
            return self._skip(entry, f"cannot read: {_one_line(error)}")
        try:
            with warnings.catch_warnings():
                # PIL refuses images over 2× MAX_IMAGE_PIXELS (89 Mpx) before allocating anything, but only
                # warns between 1× and 2×, and then allocates up to 700 MB per decoding process. No training
                # image comes near that size, so such a file is treated as the bomb it most likely is.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                image.load()
        except _DECODE_ERRORS as error:
            return self._skip(entry, f"cannot decode: {_decode_problem(data, error)}")
        return SourceRecord(entry.index, entry.source_id, entry.label, image, data)

    def _skip(self, entry: Entry, reason: str) -> None:
        if entry.index not in self._skipped_indices:
            self._skipped_indices.add(entry.index)
            self.skipped.append(SkippedImage(entry.index, entry.source_id, reason))
            logger.warning("skipping image %s (index %d): %s", entry.source_id, entry.index, reason)


def is_imagenet(source: ImageSource) -> bool:
    """Whether the images come from ImageNet, whose terms restrict redistribution (licence, private, gated on push).

    Decided from the data, never from the source's name: its labels are ImageNet-1k's (the 1,000
    ILSVRC-2012 class names in order, or WordNet ids of those classes, :mod:`d2c_pack.sources.imagenet`),
    or its classes are named by WordNet ids as only ImageNet names them (``n01440764``: a folder
    tree of ImageNet-21k too). ``hf:someone/imagenet-style-cats`` with classes cat and dog is not
    ImageNet; the ILSVRC-2012 images under any name are. ``build --license`` states it outright.
    """
    return source.imagenet_labels or source.wordnet_classes


def _check_class_names(spec: str, names: list[str]) -> None:
    """Refuses what ``datasets.ClassLabel`` would refuse after hours of scoring: empty or repeated class names."""
    if empty := [index for index, name in enumerate(names) if not name.strip()]:
        raise SourceError(f"{spec}: class {empty[0]} has an empty name; give every class a name")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise SourceError(f"{spec}: classes {seen[name]} and {index} are both named {name!r}; class names must be unique")
        seen[name] = index


def quoted_names(names: Iterable[str], limit: int = 10) -> str:
    """Class names for a message, each quoted (ImageNet names hold commas), at most ``limit`` and a count of the rest."""
    names = list(names)
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read(path: str | None) -> bytes:
    """Bytes of a local file or a URL that ``datasets`` can stream (hf://, zip://...)."""
    if not path:
        raise OSError("the image has neither bytes nor a path")
    with xopen(path, "rb") as file:
        return file.read()


def _decode_problem(data: bytes, error: Exception) -> str:
    # PIL's messages for these embed the repr of the BytesIO (a memory address).
    if not data:
        return "empty file"
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class ImageFolderSource(ImageSource):
    """A folder with one sub-folder per class; images are found recursively inside each.

    Classes are the sorted sub-folder names; images are ordered by relative POSIX path,
    which is also their ``source_id``. Hidden files and folders (leading ".") are ignored.
    Bytes of a file or folder name that are not UTF-8 appear escaped (``\\xff``) in ids and
    class names: see ``_printable_name``.

    A tree whose class folders are all ImageNet-1k WordNet ids (``n01440764``), even a few of
    them, is ImageNet: labels are the official ImageNet-1k indices, the classes all 1,000 (those
    without a folder are empty), and an image named as in ImageNet has the original file's stem
    as its id (``n01440764_10026``), as in every other layout of ImageNet.
    """

    def __init__(self, spec: str, root: Path) -> None:
        self.root = root
        folders = sorted(
            entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
        )
        if not folders:
            raise SourceError(_no_class_folders_message(spec, root))
        is_imagenet = all(imagenet.is_synset(folder) for folder in folders)
        labels = [imagenet.synset_index()[folder] for folder in folders] if is_imagenet else list(range(len(folders)))
        self._files = _list_images(root, folders, labels)
        if not self._files:
            raise SourceError(
                f"no images in the {len(folders)} class folders of {spec} "
                f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "for a folder laid out like a Hub dataset use hf:PATH"
            )
        sizes = np.bincount([label for _, label in self._files], minlength=imagenet.NUM_CLASSES if is_imagenet else len(folders))
        for folder, label in zip(folders, labels):
            if sizes[label] == 0:
                logger.warning("class folder %s of %s has no images", folder, spec)
        if is_imagenet:
            names = list(imagenet.class_names())
        else:
            if any(imagenet.WORDNET_ID.fullmatch(folder) for folder in folders):
                logger.warning("%s mixes WordNet-id folders with others: labels follow the folder order, not ImageNet-1k's index", spec)
            names = imagenet.unique_names([_printable_name(name) for name in _class_names(folders)], [_printable_name(f) for f in folders])
        super().__init__(spec, names, sizes.tolist(), imagenet_labels=is_imagenet, class_ids=folders)
        self._fingerprint: str | None = None
        self._shared_ids = _shared_imagenet_ids(self._files) if is_imagenet else set()

    def __len__(self) -> int:
        return len(self._files)

    def fingerprint(self) -> str:
        """The class names and, per image in path order, its path relative to the root, size and first and last 4 KiB.

        Content, not place or time (:func:`~d2c_pack.core.fingerprint.file_ends_sha256`): a copy of the
        folder anywhere has its original's fingerprint; an added, removed, renamed or edited image changes it.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.class_names).encode())
            relatives = [relative for relative, _ in self._files]
            chunks = [relatives[start : start + 256] for start in range(0, len(relatives), 256)]
            with ThreadPoolExecutor(_FINGERPRINT_THREADS) as pool:  # small reads wait on the disk: overlap them
                ends = itertools.chain.from_iterable(pool.map(lambda chunk: [file_ends_sha256(self.root / r) for r in chunk], chunks))
                for relative, file_digest in zip(relatives, ends):
                    digest.update(json.dumps([relative, file_digest]).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _entries(self, indices: list[int] | None) -> Iterator[Entry]:
        for index in range(len(self)) if indices is None else indices:
            relative, label = self._files[index]
            yield Entry(index, self._source_id(relative), label, None, str(self.root / relative))

    def _source_id(self, relative: str) -> str:
        if self.imagenet_labels and (image_id := imagenet.image_id(relative)) and image_id not in self._shared_ids:
            return image_id
        return _printable_name(relative)


def _shared_imagenet_ids(files: list[tuple[str, int]]) -> set[str]:
    """ImageNet file stems that more than one file has (copies of one image): those files keep their paths as ids."""
    counts = Counter(image_id for relative, _ in files if (image_id := imagenet.image_id(relative)))
    return {image_id for image_id, count in counts.items() if count > 1}


def _printable_name(name: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 written as ``\\xff``.

    On Linux a name is any bytes; Python hands the undecodable ones over as lone surrogates,
    which Arrow string columns, JSON cards and UTF-8 hashing all reject. Escaping them keeps
    such an image usable under a readable id (it is still read through its real name). A
    name that literally contains ``\\xff`` could collide with it: no real dataset has both.
    """
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def _no_class_folders_message(spec: str, root: Path) -> str:
    entries = [path for path in root.iterdir() if not path.name.startswith(".")]
    if any(path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS for path in entries):
        return f"{spec} has images but no class sub-folders: put each class's images in a sub-folder of its own"
    problem = "has no class sub-folders" if entries else "is an empty folder"
    return f"{spec} {problem}: expected one sub-folder of images per class"


def _list_images(root: Path, folders: list[str], labels: list[int]) -> list[tuple[str, int]]:
    """(relative POSIX path, label) of every image under the class folders (folder i has label ``labels[i]``), sorted by path."""
    files = []
    for label, folder in zip(labels, folders):
        # Follow links like torchvision's ImageFolder: class folders are often symlinked.
        for directory, subdirectories, names in os.walk(root / folder, followlinks=True):
            subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
            for name in names:
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    files.append((Path(directory, name).relative_to(root).as_posix(), label))
    return sorted(files)


def _class_names(folders: list[str]) -> list[str]:
    """Folder names, with WordNet ids replaced by their ImageNet lemmas (e.g. "tench, Tinca tinca")."""
    if not any(imagenet.WORDNET_ID.fullmatch(folder) for folder in folders):
        return list(folders)
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [_lemmas_or_name(info, folder) for folder in folders]


def _lemmas_or_name(info: Any, folder: str) -> str:
    if not imagenet.WORDNET_ID.fullmatch(folder):
        return folder
    try:
        return info.label_name_to_description(folder)
    except KeyError:  # not a synset timm knows: keep the folder name
        return folder


class DatasetsSource(ImageSource):
    """A split of a ``datasets`` dataset, map-style (random access) or streamed.

    Images are read undecoded (``Image(decode=False)``) so ``data`` holds the stored bytes.
    ``source_id`` is ``id_column`` if given, else the file name stored with embedded image
    bytes (for ImageNet the original file's stem, as in every layout), else
    ``"{split}/{index:08d}"``. A path stored *without* bytes is where the file lies on this
    machine (a cache path or URL), not a stable id, so it is not used as one.

    A ``ClassLabel`` of ImageNet-1k's 1,000 names, or of ImageNet-1k WordNet ids in any order,
    maps the labels onto the official ImageNet-1k index and unique names (:mod:`d2c_pack.sources.imagenet`).
    ``label_dataset``, if given, holds the label (and id) columns without the images: the
    column projection of a streamed parquet source, read instead of ``dataset`` to count labels.
    """

    def __init__(
        self,
        spec: str,
        dataset: datasets.Dataset | datasets.IterableDataset,
        *,
        split: str,
        image_column: str,
        label_column: str,
        id_column: str | None,
        identity: dict[str, Any],
        label_dataset: Any = None,
    ) -> None:
        if isinstance(dataset, datasets.IterableDataset) and dataset.features is None:
            dataset = dataset._resolve_features()
        _check_columns(spec, dataset, [image_column, label_column, id_column])
        self._split = split
        self._image_column = image_column
        self._id_column = id_column
        label_feature = dataset.features[label_column]
        _check_label_feature(spec, label_column, label_feature)
        values, self._shard_lengths = _read_columns(label_dataset or dataset, [label_column] + ([id_column] if id_column else []))
        self._positions: np.ndarray | None = None  # the index of each row of a node's share of a stream (node_share)
        self._identity = identity | {"rows": _rows_sha256(values, label_column, id_column)}
        counts = _label_counts(spec, values[label_column], label_column)
        names = _label_names(spec, label_column, label_feature, len(counts))
        if id_column:
            _check_ids(spec, values[id_column], id_column)
        self._length = int(counts.sum())
        columns = [image_column, label_column] + ([id_column] if id_column else [])
        self._dataset = _undecoded(spec, dataset, image_column).select_columns(columns)
        self._label_column = label_column
        self._imagenet_index = _imagenet_index(label_feature)
        if self._imagenet_index is None:
            super().__init__(spec, names, counts.tolist() + [0] * (len(names) - len(counts)))
        else:
            sizes = np.bincount(self._imagenet_index[: len(counts)], weights=counts, minlength=imagenet.NUM_CLASSES)
            super().__init__(spec, list(imagenet.class_names()), sizes.astype(int).tolist(), imagenet_labels=True)

    def __len__(self) -> int:
        return self._length

    @property
    def random_access(self) -> bool:
        """False when streaming: records can only be reached by iterating."""
        return isinstance(self._dataset, datasets.Dataset)

    def fingerprint(self) -> str:
        """The identity of the split's files (see ``_files_identity``) and of its labels (and ids) in row order."""
        return sha256_json(self._identity)

    def node_share(self, rank: int, world_size: int) -> tuple[DatasetsSource, frozenset[int]] | None:
        """A stream's shards as ``datasets.distributed.split_dataset_by_node`` deals them to nodes, each node reading only its own.

        The rows of each shard were counted when the labels were read, so a node knows the index
        of every row it reads. None for a map-style split, or a stream with fewer shards than nodes
        (each node would have to read all of it).
        """
        lengths = self._shard_lengths
        if self.random_access or lengths is None or len(lengths) < world_size or self._dataset.num_shards != len(lengths):
            return None
        starts = np.cumsum([0, *lengths])
        shards = _node_shards(len(lengths), rank, world_size)
        share = copy.copy(self)
        share._dataset = split_dataset_by_node(self._dataset, rank=rank, world_size=world_size, strategy="shards")
        share._positions = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in shards]).astype(np.int64)
        return share, frozenset(share._positions.tolist())

    def _entries(self, indices: list[int] | None) -> Iterator[Entry]:
        if self.random_access:
            order = range(len(self)) if indices is None else indices
            for start in range(0, len(order), _BATCH_SIZE):
                chunk = list(order[start : start + _BATCH_SIZE])
                batch = self._dataset[chunk]
                rows = (dict(zip(batch, values)) for values in zip(*batch.values()))
                yield from (self._entry(index, row) for index, row in zip(chunk, rows))
            return
        wanted = None if indices is None else set(indices)
        last = None if indices is None else max(indices, default=-1)
        positions = itertools.count() if self._positions is None else iter(self._positions.tolist())
        for index, row in zip(positions, self._dataset):
            if last is not None and index > last:
                return
            if wanted is None or index in wanted:
                yield self._entry(index, row)

    def _entry(self, index: int, row: dict[str, Any]) -> Entry:
        cell = row[self._image_column]
        data, path = (cell, None) if isinstance(cell, bytes) else (cell.get("bytes"), cell.get("path"))
        if self._id_column:
            source_id = str(row[self._id_column])
        elif data is not None and path:
            source_id = (self.imagenet_labels and imagenet.image_id(path)) or path
        else:
            source_id = f"{self._split}/{index:08d}"
        label = int(row[self._label_column])
        if self._imagenet_index is not None:
            label = int(self._imagenet_index[label])
        return Entry(index, source_id, label, data, path)


def _rows_sha256(values: dict[str, pa.Array | pa.ChunkedArray], label_column: str, id_column: str | None) -> str:
    """sha256 of the label column (and the id column) in row order, read anyway to count the classes.

    It shows what a local file's footer cannot: rows of other classes that trade places.
    """
    digest = hashlib.sha256(np.asarray(values[label_column].cast(pa.int64()).fill_null(-1), dtype=np.int64).tobytes())
    if id_column:
        digest.update("\0".join(map(str, values[id_column].to_pylist())).encode())
    return digest.hexdigest()


def _imagenet_index(feature: Any) -> np.ndarray | None:
    """The ImageNet-1k index of each label of a ClassLabel of ImageNet classes (names or WordNet ids), else None."""
    if not isinstance(feature, datasets.ClassLabel):
        return None
    if imagenet.is_label_space(feature.names):
        return np.arange(imagenet.NUM_CLASSES)
    if all(imagenet.is_synset(name) for name in feature.names):
        return np.array([imagenet.synset_index()[name] for name in feature.names])
    return None


def _check_columns(spec: str, dataset: Any, columns: list[str | None]) -> None:
    available = list(dataset.features)
    for column in columns:
        if column is not None and column not in available:
            raise SourceError(
                f"{spec} has no column {column!r}; available columns: {', '.join(available)} "
                "(choose with --image-column / --label-column / --id-column)"
            )


def _check_label_feature(spec: str, column: str, feature: Any) -> None:
    """Refuses a label column that does not hold class indices (before reading any of it)."""
    is_integer = isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    )
    if not is_integer:
        raise SourceError(
            f"{spec}: label column {column!r} must hold class indices (ClassLabel or integers), found {feature}"
        )


def _read_columns(dataset: Any, columns: list[str]) -> tuple[dict[str, pa.Array | pa.ChunkedArray], list[int] | None]:
    """``columns`` (no image column) as Arrow arrays: memory-mapped, or in one pass when streaming; and a stream's rows per shard.

    A streamed dataset's ``select_columns`` drops the other columns only after reading whole
    rows, so a streamed parquet source hands in a dataset opened with just these columns. The
    stream is read shard by shard (in order, so the rows come as one pass gives them) to count
    each shard's rows: where each node's share begins (:meth:`DatasetsSource.node_share`).
    """
    subset = dataset.select_columns(columns)
    if isinstance(dataset, datasets.Dataset):
        return {column: subset.with_format("arrow")[column] for column in columns}, None
    shards = [list(subset.shard(subset.num_shards, k).iter(batch_size=10_000)) for k in range(subset.num_shards)]
    lengths = [sum(len(batch[columns[0]]) for batch in shard) for shard in shards]
    return {column: pa.array([x for shard in shards for batch in shard for x in batch[column]]) for column in columns}, lengths


def _node_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shards ``split_dataset_by_node`` deals to node ``rank``: asked of a stand-in stream whose shard k yields k."""
    stand_in = datasets.IterableDataset.from_generator(_shard_number, gen_kwargs={"shards": list(range(num_shards))})
    return [row["shard"] for row in split_dataset_by_node(stand_in, rank=rank, world_size=world_size, strategy="shards")]


def _shard_number(shards: list[int]) -> Iterator[dict[str, int]]:
    yield from ({"shard": shard} for shard in shards)


def _label_counts(spec: str, labels: pa.Array | pa.ChunkedArray, column: str) -> np.ndarray:
    """Images per label value; nulls and -1 (no label) are refused."""
    labels = np.asarray(labels.cast(pa.int64()).fill_null(-1), dtype=np.int64)
    if labels.size == 0:
        raise SourceError(f"{spec} is empty: the split has no images")
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise SourceError(
            f"{spec}: {unlabelled} images have no label (null or -1) in column {column!r}; use a labelled split"
        )
    return np.bincount(labels)


def _check_ids(spec: str, ids: pa.Array | pa.ChunkedArray, column: str) -> None:
    """Refuses an id column with gaps or repeats: ids join the subset to its scores and name the noise of each image."""
    advice = "choose another --id-column or leave it out (ids then come from file names or positions)"
    if ids.null_count:
        raise SourceError(f"{spec}: {ids.null_count} images have no id in column {column!r}; {advice}")
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0]
        raise SourceError(
            f"{spec}: column {column!r} repeats ids, e.g. {first['values'].as_py()!r} ({first['counts'].as_py()} times, "
            f"{len(repeated)} repeated ids in all); {advice}"
        )


def _label_names(spec: str, column: str, feature: Any, num_labels: int) -> list[str]:
    """ClassLabel names, or "0".."max" for a plain integer label column."""
    if not isinstance(feature, datasets.ClassLabel):
        return [str(i) for i in range(num_labels)]
    if num_labels > feature.num_classes:
        raise SourceError(
            f"{spec}: column {column!r} has label {num_labels - 1} but only {feature.num_classes} class names"
        )
    return list(feature.names)


def _undecoded(spec: str, dataset: Any, column: str) -> Any:
    """The dataset with ``column`` yielding stored bytes/path instead of decoded images."""
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    is_binary = isinstance(feature, datasets.Value) and feature.dtype in {"binary", "large_binary"}
    if is_binary or (isinstance(feature, dict) and "bytes" in feature):
        return dataset
    raise SourceError(
        f"{spec}: column {column!r} does not hold images (found {feature}); choose one with --image-column"
    )


def _open_with_builder(
    spec: str,
    path: str,
    *,
    data_files: dict[str, list[str]] | None,
    split: str,
    revision: str | None,
    streaming: bool,
    columns: dict[str, Any],
) -> DatasetsSource:
    """Open a split the way ``datasets.load_dataset`` does, keeping the builder for the fingerprint."""
    try:
        builder = with_retries(lambda: datasets.load_dataset_builder(path, data_files=data_files, revision=revision), f"open {spec}")
        files = builder.config.data_files or {}
        _check_split(spec, split, list(files))
        label_dataset = None
        if streaming:
            dataset = builder.as_streaming_dataset(split=split)
            if dataset.features is None:
                dataset = dataset._resolve_features()
            label_dataset = _projected(builder, dataset.features, path, data_files, revision, split, columns)
        else:
            with_retries(builder.download_and_prepare, f"download {spec}")
            dataset = builder.as_dataset(split=split)
    except (OSError, ValueError, DatasetsError) as error:
        raise SourceError(f"cannot open {spec}: {_one_line(error)}") from error
    split_files = {name: files[name] for name in _split_names(split) if name in files}
    local = all(Path(file).is_file() for name in split_files for file in split_files[name])
    identity = {
        "path": None if local else path,  # where local files lie does not matter, only what they hold
        "config": builder.config.name,
        "split": split,
        "data_files": {name: _files_identity(listed) for name, listed in split_files.items()},
    }
    return DatasetsSource(spec, dataset, split=split, identity=identity, label_dataset=label_dataset, **columns)


def _files_identity(files: Any) -> list:
    """What identifies a split's data files (a ``datasets`` DataFilesList): content, not place or modification time.

    A Hub file: its URL, pinned to a commit, and its origin (repo, commit). A local file: its path
    relative to the folder holding all of them, and the sha256 of its size and footer if it is
    parquet (:func:`~d2c_pack.core.fingerprint.parquet_footer_sha256`), else of its size and ends
    (:func:`~d2c_pack.core.fingerprint.file_ends_sha256`), so a copy of the files fingerprints as the
    original; ``datasets`` would give its modification time instead.
    """
    local = {file for file in files if Path(file).is_file()}
    root = os.path.commonpath([os.path.dirname(file) for file in local]) if local else ""
    return sorted(
        [os.path.relpath(file, root), _local_file_sha256(Path(file))] if file in local else [file, list(origin)]
        for file, origin in zip(files, files.origin_metadata)
    )


def _local_file_sha256(path: Path) -> str:
    return parquet_footer_sha256(path) if path.suffix.lower() == ".parquet" else file_ends_sha256(path)


def _projected(
    builder: Any, features: Any, path: str, data_files: Any, revision: str | None, split: str, columns: dict[str, Any]
) -> Any:
    """The streamed split with only the label and id columns, read by parquet column projection; None if not parquet."""
    wanted = [name for name in (columns["label_column"], columns["id_column"]) if name]
    # Only the parquet builder reads a subset of columns; a missing column is reported by DatasetsSource.
    if not hasattr(builder.config, "columns") or any(name not in (features or {}) for name in wanted):
        return None
    projected = datasets.load_dataset_builder(path, data_files=data_files, revision=revision, columns=wanted)
    return projected.as_streaming_dataset(split=split)


def _split_names(split: str) -> list[str]:
    """Base split names in a split expression such as ``"train[:10%]+validation"``."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def _check_split(spec: str, split: str, available: list[str]) -> None:
    missing = [name for name in _split_names(split) if name not in available]
    if available and missing:
        raise SourceError(_no_split_message(spec, missing[0], available))


def _no_split_message(spec: str, split: str, available: Iterable[str]) -> str:
    return f"{spec} has no split {split!r}; available splits: {', '.join(available)} (choose with --split)"


def _open_from_disk(spec: str, root: Path, *, split: str, columns: dict[str, Any]) -> DatasetsSource:
    try:
        loaded = datasets.load_from_disk(str(root))
    except (OSError, ValueError, DatasetsError) as error:
        raise SourceError(f"cannot open {spec}: {_one_line(error)}") from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SourceError(_no_split_message(spec, split, loaded))
        loaded = loaded[split]
    identity = {"split": split, "fingerprint": loaded._fingerprint}
    return DatasetsSource(spec, loaded, split=split, identity=identity, **columns)


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    has_state = (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    return has_state or (folder / "dataset_dict.json").is_file()


def _parquet_files(folder: Path) -> list[str]:
    """The folder's parquet files if it is a flat folder of them (no sub-folders), else []."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if any(entry.is_dir() for entry in entries):
        return []
    return sorted(str(entry) for entry in entries if entry.suffix.lower() == ".parquet")


def open_source(
    spec: str,
    *,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    id_column: str | None = None,
    streaming: bool = False,
    revision: str | None = None,
) -> ImageSource:
    """Open the labelled image source that ``spec`` names (see the module docstring).

    ``split``, the column names, ``streaming`` and ``revision`` apply to ``hf:`` and parquet sources; ``split`` and the column names
    to ``save_to_disk`` folders, which are memory-mapped and always random access.
    Raises ``SourceError`` with a one-line explanation when the source cannot be used.
    """
    columns = {"image_column": image_column, "label_column": label_column, "id_column": id_column}
    if opener := registry.source_opener(spec):
        return opener(spec)
    if spec.startswith("hf:"):
        name = spec[len("hf:") :]
        if not name:
            raise SourceError("hf: needs a dataset name, e.g. hf:ILSVRC/imagenet-1k")
        return _open_with_builder(
            spec, name, data_files=None, split=split, revision=revision,
            streaming=streaming, columns=columns,
        )
    path = Path(spec).expanduser()
    if not path.exists():
        if _SCHEME.match(spec):
            raise SourceError(f"unknown source scheme in {spec!r}; use hf:NAME, demo:digits or a local path")
        raise SourceError(
            f"source not found: {spec} (expected a folder, a .parquet file, hf:NAME or demo:digits)"
        )
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise SourceError(
                f"{spec} is a file but not a .parquet file; give a folder of images, a .parquet file or hf:NAME"
            )
        parquet = [str(path)]
    elif is_saved_dataset(path):
        return _open_from_disk(spec, path, split=split, columns=columns)
    else:
        parquet = _parquet_files(path)
    if parquet:
        data_files = {_split_names(split)[0]: parquet}
        return _open_with_builder(
            spec, "parquet", data_files=data_files, split=split, revision=None,
            streaming=streaming, columns=columns,
        )
    return ImageFolderSource(spec, path.absolute())
