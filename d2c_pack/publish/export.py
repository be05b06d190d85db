"""``d2c-pack export``: a condensed dataset written in the layouts other trainers read, unchanged.

``repa`` is the layout REPA's ``train.py --data-dir`` reads (its ``dataset.CustomDataset``), as
REPA's ``preprocessing/dataset_tools.py`` writes it (``convert``, then ``encode``)::

    OUT/images/00000/img00000000.png            the ADM centre crop at the subset's R, uncompressed PNG
    OUT/images/dataset.json                     {"labels": [["00000/img00000000.png", 6], ...]}
    OUT/vae-sd/00000/img-mean-std-00000000.npy  float32 (2C, R/8, R/8): the VAE posterior's mean ‖ std, unscaled
    OUT/vae-sd/dataset.json                     {"labels": [["00000/img-mean-std-00000000.npy", 6], ...]}

Row i of the subset is image i and feature i (one folder per 1,000 rows). The features are the
subset's ``latent`` column, which holds exactly that (stored as float16, written as float32).

``imagefolder`` is ``OUT/train/<class>/<id>.png`` (the ADM crops) for torchvision's
``ImageFolder``, which DiT's, SiT's and fast-DiT's ``train.py --data-path`` read. ImageFolder
numbers classes by their sorted folder names, so the names sort in label order: ImageNet's
WordNet ids (whose sorted order is the official index), else ``<zero-padded index>_<name>``.

Both write ``OUT/README.md`` (what the folder is, where it came from, how to train on it). Every
file is written under a temporary name and renamed; a re-run into the same folder skips the
files already there and gives the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from d2c_pack.core.arrays import array_values, feature_shape
from d2c_pack.core.errors import UserError
from d2c_pack.core.hub_retry import with_retries
from d2c_pack.core.progress import progress_bar
from d2c_pack.publish.settings import ExportConfig
from d2c_pack.publish.shards import ParquetShards, built_shards, hub_snapshot
from d2c_pack.publish.verify import MANIFEST, LocalFolder, locate, read_manifest
from d2c_pack.sources import imagenet
from d2c_pack.sources.preprocess import center_crop_adm
from d2c_pack.version import __version__

IDENTITY_FILE = ".d2c-export.json"  # what the folder is an export of: a re-run resumes only the same export
README = "README.md"
PARTIAL_SUFFIX = ".partial"
READ_ROWS = 64  # rows decoded at a time
LABELS_FILE = "dataset.json"


@dataclasses.dataclass
class BuiltSubset:
    """A d2c-pack build, local or a Hub revision's snapshot, read in place."""

    name: str  # as the user gave it
    revision: str | None  # the Hub commit; None for a local folder
    manifest: dict
    manifest_sha256: str
    shards: ParquetShards

    @property
    def resolution(self) -> int:
        return int(self.manifest["recipe"]["resolution"])

    @property
    def class_names(self) -> list[str]:
        return list(self.shards.features["label"].names)

    def origin(self) -> str:
        """Where it came from, in words."""
        if self.revision is None:
            return f"the local folder `{self.name}`"
        return f"the Hub dataset `{self.name}` (commit {self.revision})"


def open_build(name: str) -> BuiltSubset:
    """A condensed dataset built by d2c-pack: a folder, or a Hub ``ORG/NAME[@REVISION]`` (downloaded once into the HF hub cache)."""
    location = locate(name)
    read_manifest(location)  # one clear line for a dataset d2c-pack did not build
    if isinstance(location, LocalFolder):
        folder, revision = location.folder, None
    else:
        repo_id, _, rev = name.partition("@")
        folder = with_retries(lambda: hub_snapshot(repo_id, rev or None), f"download {name}")
        revision = folder.name  # the hub cache names a snapshot folder by its commit
    shards = built_shards(folder)
    if not shards:
        raise UserError(f"the manifest of {name} lists no data shards")
    manifest_bytes = (folder / MANIFEST).read_bytes()
    return BuiltSubset(name, revision, json.loads(manifest_bytes), hashlib.sha256(manifest_bytes).hexdigest(), ParquetShards(shards))


def export(config: ExportConfig) -> Path:
    """Writes the subset ``config.name`` into ``config.out`` in ``config.format`` (module docstring); returns the folder."""
    subset = open_build(config.name)
    if config.format == "repa":
        _check_latent_column(subset)
    identity = {"format": config.format, "manifest_sha256": subset.manifest_sha256}
    out = _prepare_out(Path(config.out), identity, f"an export of {config.name} as {config.format}", config.overwrite)
    labels = subset.shards.column("label").astype(np.int64)
    if config.format == "repa":
        _export_repa(subset, out, labels)
    else:
        _export_imagefolder(subset, out, labels)
    _write_atomic(out / README, export_readme(subset, config.format, out, labels).encode())
    return out


def _check_latent_column(subset: BuiltSubset) -> None:
    if "latent" not in subset.shards.features:
        raise UserError(f"{subset.name} has no latent column, which --format repa needs (REPA trains on VAE features); --format imagefolder works without it")
    inputs = subset.manifest["inputs"]
    if missing := [key for key in ("vae", "latent_scaling_factor", "latent_shift_factor") if key not in inputs]:
        raise UserError(f"the manifest of {subset.name} does not record {', '.join(missing)} of its latent column: rebuild it with this d2c-pack")


def _prepare_out(out: Path, identity: dict, what: str, overwrite: bool) -> Path:
    """``out``, empty or holding this same export (``identity``, ``what`` in words; resumed); anything else is refused
    unless ``overwrite`` clears it."""
    marker = out / IDENTITY_FILE
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        same = marker.is_file() and json.loads(marker.read_text()) == identity
        if not same and not overwrite:
            raise UserError(f"{out} is not empty and is not {what}; pass --overwrite to replace it or choose another --out")
        if not same:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        _write_atomic(marker, (json.dumps(identity, indent=2) + "\n").encode())
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes ``path`` whole or not at all: a temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_bytes(data)
    os.replace(partial, path)


def png_bytes(image: Image.Image, *, compress_level: int = 6) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=compress_level, optimize=False)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _pending_rows(subset: BuiltSubset, columns: list[str], done: Callable[[int], bool], description: str) -> Iterator[tuple[int, dict]]:
    """(index, row) of every row not yet exported, in order, with a progress bar: ``image`` decoded and ADM-cropped
    to the subset's R, array columns as NumPy arrays, other columns as Python values."""
    features, total = subset.shards.features, len(subset.shards)
    with progress_bar(description, total=total) as advance:
        for start in range(0, total, READ_ROWS):
            indices = range(start, min(start + READ_ROWS, total))
            if todo := [index for index in indices if not done(index)]:
                table = subset.shards.take(todo, columns)
                values = {}
                for name in columns:
                    if name == "image":
                        images = (features[name].decode_example(value) for value in table[name].to_pylist())
                        values[name] = [center_crop_adm(image, subset.resolution) for image in images]
                    elif shape := feature_shape(features[name]):
                        values[name] = array_values(table[name], shape)
                    else:
                        values[name] = table[name].to_pylist()
                for position, index in enumerate(todo):
                    yield index, {name: column[position] for name, column in values.items()}
            advance(len(indices))


def repa_names(index: int) -> tuple[str, str]:
    """Row ``index``'s image and feature file under images/ and vae-sd/, named as REPA's dataset_tools.py names them."""
    idx_str = f"{index:08d}"
    return f"{idx_str[:5]}/img{idx_str}.png", f"{idx_str[:5]}/img-mean-std-{idx_str}.npy"


def _export_repa(subset: BuiltSubset, out: Path, labels: np.ndarray) -> None:
    images, features = out / "images", out / "vae-sd"

    def done(index: int) -> bool:
        image, feature = repa_names(index)
        return (images / image).is_file() and (features / feature).is_file()

    for index, row in _pending_rows(subset, ["image", "latent"], done, "export repa"):
        image, feature = repa_names(index)
        _write_atomic(images / image, png_bytes(row["image"], compress_level=0))  # uncompressed, as REPA writes its PNGs
        _write_atomic(features / feature, npy_bytes(row["latent"].astype(np.float32)))
    names = [repa_names(index) for index in range(len(labels))]
    for folder, column in ((images, 0), (features, 1)):
        # json.dumps with its default separators: the bytes REPA's tool writes.
        listing = {"labels": [[pair[column], int(label)] for pair, label in zip(names, labels)]}
        _write_atomic(folder / LABELS_FILE, json.dumps(listing).encode())


def class_folders(names: list[str]) -> list[str]:
    """ImageFolder class folder of each label, sorting in label order: ImageNet-1k's WordNet ids, else ``<index>_<name>``."""
    if imagenet.is_label_space(names):
        return list(imagenet.synsets())
    width = len(str(len(names) - 1))
    return [f"{index:0{width}d}_{_file_name(name)}" for index, name in enumerate(names)]


def _file_name(text: str) -> str:
    """``text`` as one file or folder name: path separators and characters file systems or shells treat specially become ``_``."""
    return re.sub(r"[^\w .,()+=-]", "_", text).strip() or "_"


def image_stems(source_ids: list[str], labels: np.ndarray) -> list[str]:
    """A unique file stem per row within its class folder: the source id, its image extension dropped, made a file name."""
    extensions = Image.registered_extensions()
    used: set[tuple[int, str]] = set()
    stems = []
    for row, (source_id, label) in enumerate(zip(source_ids, labels.tolist())):
        path = PurePosixPath(source_id)
        stem = _file_name(str(path.with_suffix("")) if path.suffix.lower() in extensions else source_id)
        if (label, stem) in used:  # two ids that differ only in what a file name cannot hold
            stem = f"{stem}-row{row}"
        used.add((label, stem))
        stems.append(stem)
    return stems


def _export_imagefolder(subset: BuiltSubset, out: Path, labels: np.ndarray) -> None:
    folders = [out / "train" / name for name in class_folders(subset.class_names)]
    for folder in folders:  # every class, also one without rows: ImageFolder's indices stay the labels
        folder.mkdir(parents=True, exist_ok=True)
    stems = image_stems(subset.shards.column("source_id").tolist(), labels)
    paths = [folders[label] / f"{stem}.png" for label, stem in zip(labels, stems)]
    for index, row in _pending_rows(subset, ["image"], lambda index: paths[index].is_file(), "export imagefolder"):
        _write_atomic(paths[index], png_bytes(row["image"]))


def export_readme(subset: BuiltSubset, layout: str, out: Path, labels: np.ndarray) -> str:
    """The export's README.md: what it is, where it came from, and the command that trains on it."""
    rows, classes, resolution = len(labels), len(subset.class_names), subset.resolution
    empty = [name for name, count in zip(subset.class_names, np.bincount(labels, minlength=classes)) if count == 0]
    lines = [
        f"# {PurePosixPath(subset.name).name}: {layout} export",
        "",
        f"{rows:,} images of {classes:,} classes at {resolution}×{resolution} (ADM centre crops), exported by d2c-pack {__version__} "
        f"from {subset.origin()}, manifest sha256 `{subset.manifest_sha256}`.",
        "",
        f"Exported with `d2c-pack export {subset.name} --format {layout} --out {out.name}`.",
        "",
    ]
    if layout == "repa":
        inputs = subset.manifest["inputs"]
        latent = feature_shape(subset.shards.features["latent"])
        lines += [
            "REPA's preprocessed layout, as its `preprocessing/dataset_tools.py` writes it and its `dataset.CustomDataset` reads it:",
            "",
            "- `images/00000/img00000000.png`, … and `images/dataset.json`: the crops (uncompressed PNG) and their labels;",
            f"- `vae-sd/00000/img-mean-std-00000000.npy`, … and `vae-sd/dataset.json`: float32 {' × '.join(map(str, latent))}, "
            f"the posterior mean ‖ std of the VAE `{inputs['vae']}`, unscaled (its scaling factor {inputs['latent_scaling_factor']}, "
            f"shift {inputs['latent_shift_factor']}).",
            "",
            "Image i and feature i are row i of the subset. Train with REPA (github.com/sihyun-yu/REPA):",
            "",
            "```",
            f"accelerate launch train.py --data-dir /path/to/{out.name} --resolution {resolution} --num-classes {classes} "
            "--model SiT-XL/2 --enc-type dinov2-vit-b --proj-coeff 0.5 --encoder-depth 8 --exp-name NAME",
            "```",
            "",
            "REPA's `train.py` takes `--resolution` 256 or 512 and scales latents by 0.18215 (the SD VAEs'): other VAEs or "
            "resolutions need its code changed.",
        ]
    else:
        lines += [
            f"`train/<class>/<id>.png` for torchvision's `ImageFolder`: the class folders sort in label order "
            f"({'ImageNet WordNet ids' if imagenet.is_label_space(subset.class_names) else 'index prefix, then the class name'}), "
            "so ImageFolder's class indices are the subset's labels. Train with DiT (github.com/facebookresearch/DiT) or SiT:",
            "",
            "```",
            f"torchrun --nnodes=1 --nproc_per_node=N train.py --model DiT-XL/2 --data-path /path/to/{out.name}/train "
            f"--image-size {resolution} --num-classes {classes}",
            "```",
        ]
        if empty:
            lines += ["", f"{len(empty)} classes have no image (their folders are empty; torchvision's ImageFolder then needs `allow_empty=True`): {', '.join(empty)}."]
    return "\n".join(lines) + "\n"
