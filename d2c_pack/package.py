"""Writing a condensed dataset in the Hugging Face Hub layout (DESIGN §4), atomically.

::

    OUT/README.md                            dataset card: YAML metadata (configs, dataset_info) + body
    OUT/data/train-00000-of-0000N.parquet    the selected rows (``row_features``)
    OUT/scores/train-00000-of-00001.parquet  optional config "scores": every scored source image
    OUT/d2c/recipe.yaml                      the fully resolved recipe (usable as ``--recipe``)
    OUT/d2c/manifest.json                    provenance, and sha256 + size of every other file

Everything is written by ``datasets`` into ``.OUT.partial`` beside OUT and renamed into place
at the end, so a folder named OUT is always complete. Nothing written depends on the time or
the machine: the same inputs give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import yaml
from datasets.info import DatasetInfosDict
from datasets.utils.py_utils import convert_file_size_to_int

from d2c_pack import __version__
from d2c_pack.arrays import array_values, feature_shape
from d2c_pack.attach import Attached
from d2c_pack.card import render_card, write_assets
from d2c_pack.errors import UserError
from d2c_pack.fingerprint import sha256_file
from d2c_pack.score import Scores
from d2c_pack.sources import ImageSource

RECIPE_FILE = Path("d2c") / "recipe.yaml"
MANIFEST_FILE = Path("d2c") / "manifest.json"
DATA_DIR = "data"
SCORES_DIR = "scores"
SPLIT = "train"


def row_features(class_names: list[str]) -> datasets.Features:
    """Features of the default config: one row per selected image."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=class_names),
            "source_id": datasets.Value("string"),
            "difficulty": datasets.Value("float32"),
            "difficulty_rank": datasets.Value("int32"),
        }
    )


def score_features(class_names: list[str], timesteps: int) -> datasets.Features:
    """Features of the "scores" config: one row per scored source image."""
    return datasets.Features(
        {
            "source_id": datasets.Value("string"),
            "label": datasets.ClassLabel(names=class_names),
            "difficulty": datasets.Value("float32"),
            "difficulty_rank": datasets.Value("int32"),
            "losses": datasets.List(datasets.Value("float32"), length=timesteps),
            "selected": datasets.Value("bool"),
        }
    )


@dataclasses.dataclass
class Selection:
    """What the Select phase chose, as positions into a :class:`~d2c_pack.score.Scores`."""

    positions: np.ndarray  # (M,) ascending
    ranks: np.ndarray  # (N,) difficulty rank of every scored image within its class, 0 = easiest
    per_class: list[int]  # the budget m_c of each class
    interval: int | None  # the stride k of interval sampling
    strides: list[int] | None = None  # the stride interval sampling used in each class (< k where a class is short; 0: taken whole)

    def stride_range(self) -> tuple[int, int] | None:
        """(min, max) of the strides used in the classes that were sampled, not taken whole; None without interval sampling."""
        used = [stride for stride in self.strides or () if stride > 0]
        return (min(used), max(used)) if used else None


@dataclasses.dataclass
class Package:
    """Everything that goes into one condensed dataset folder."""

    source: ImageSource
    scores: Scores
    selection: Selection
    recipe: dict  # the build's settings, every automatic choice resolved
    inputs: dict  # what identifies the inputs: source fingerprint, scorer and attach models' sha256
    attached: Attached
    models: dict  # role → {"name", "files": {weight file: sha256}}, for the manifest
    with_scores: bool = True
    max_shard_size: str = "500MB"


def write_package(package: Package, out: Path) -> Path:
    """Writes the dataset folder ``out`` through a temporary sibling folder; returns ``out``."""
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = package.source.class_names
    infos = DatasetInfosDict()
    data = datasets.Dataset.from_generator(
        _selected_rows,
        features=datasets.Features(row_features(names) | package.attached.features),
        gen_kwargs={"package": package},
        cache_dir=str(partial / ".cache"),
        fingerprint=datasets.fingerprint.Hasher.hash(build_identity(package)),
    )
    infos["default"] = _write_split(data, partial, DATA_DIR, package.max_shard_size)
    write_assets(package, data, partial)
    if package.with_scores:
        infos[SCORES_DIR] = _write_split(_score_rows(package), partial, SCORES_DIR, package.max_shard_size)
    del data  # releases the memory-mapped cache before it is removed
    shutil.rmtree(partial / ".cache")
    (partial / "README.md").write_text(render_card(package, infos))
    (partial / RECIPE_FILE).parent.mkdir()
    (partial / RECIPE_FILE).write_text(yaml.safe_dump(package.recipe, sort_keys=False, allow_unicode=True))
    (partial / MANIFEST_FILE).write_text(json.dumps(_manifest(package, partial), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def build_identity(package: Package) -> dict:
    """What makes two builds the same build: equal identities give equal bytes."""
    return {"recipe": package.recipe, "inputs": package.inputs}


def read_build_identity(out: Path) -> dict | None:
    """The identity recorded in a complete dataset folder, or None if ``out`` is not one."""
    path = out / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return {"recipe": manifest["recipe"], "inputs": manifest["inputs"]}


def _manifest(package: Package, folder: Path) -> dict:
    selection, scores = package.selection, package.scores
    chosen_labels = scores.labels[selection.positions]
    source = package.source
    return {
        "tool": "d2c-pack",
        "version": __version__,
        **build_identity(package),
        "source": {
            "spec": source.spec, "split": package.recipe["split"], "revision": package.recipe["revision"],
            "fingerprint": package.inputs["source_fingerprint"], "images": len(source), "classes": source.num_classes,
            "class_images": source.class_sizes,  # images listed per class, unreadable ones included
        },  # fmt: skip
        "models": package.models,
        "seeds": {"noise_and_random_selection": package.recipe["seed"]},
        "selection": {
            "rows": len(selection.positions),
            "interval": selection.interval,
            "interval_strides": list(selection.stride_range() or ()) or None,  # [min, max] used; below k where a class is short
            "per_class_budget": selection.per_class,
            "per_class_rows": np.bincount(chosen_labels, minlength=len(selection.per_class)).tolist(),
        },
        "unreadable": [{"source_id": source_id, "reason": reason} for _, source_id, reason in scores.errors],
        "files": {
            path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.relative_to(folder) != MANIFEST_FILE
        },
    }


def _selected_rows(package: Package) -> Iterator[dict]:
    scores, selection = package.scores, package.selection
    indices = scores.indices[selection.positions]
    attached = package.attached.rows(indices, scores.labels[selection.positions])
    records = package.source.iter_records(indices)
    for position in selection.positions:
        record = next(records, None)
        if record is None or record.index != scores.indices[position]:
            raise UserError(f"the selected image {scores.source_ids[position]} could no longer be read from the source")
        yield {
            "image": {"bytes": record.data, "path": None},
            "label": record.label,
            "source_id": record.source_id,
            "difficulty": float(scores.scores[position]),
            "difficulty_rank": int(selection.ranks[position]),
            **next(attached),
        }


def _score_rows(package: Package) -> datasets.Dataset:
    scores, selection = package.scores, package.selection
    selected = np.zeros(len(scores), dtype=bool)
    selected[selection.positions] = True
    timesteps = scores.losses.shape[1]
    features = score_features(package.source.class_names, timesteps)
    table = pa.table(
        {
            "source_id": scores.source_ids,
            "label": scores.labels,
            "difficulty": scores.scores,
            "difficulty_rank": selection.ranks.astype(np.int32),
            "losses": pa.FixedSizeListArray.from_arrays(scores.losses.ravel(), timesteps),
            "selected": selected,
        },
        schema=features.arrow_schema,
    )
    return datasets.Dataset(table)


def _write_split(dataset: datasets.Dataset, root: Path, folder: str, max_shard_size: str) -> datasets.DatasetInfo:
    """Writes ``folder/train-XXXXX-of-NNNNN.parquet`` shards of at most ``max_shard_size`` (uncompressed)."""
    num_shards = max(1, math.ceil(dataset.data.nbytes / convert_file_size_to_int(max_shard_size)))
    num_shards = min(num_shards, max(1, len(dataset)))
    (root / folder).mkdir()
    download_size = 0
    for index in range(num_shards):
        path = root / folder / f"{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"
        dataset.shard(num_shards, index, contiguous=True).to_parquet(str(path))
        download_size += path.stat().st_size
    split = datasets.SplitInfo(name=SPLIT, num_bytes=dataset.data.nbytes, num_examples=len(dataset))
    return datasets.DatasetInfo(
        features=dataset.features,
        splits=datasets.SplitDict({SPLIT: split}),
        download_size=download_size,
        dataset_size=dataset.data.nbytes,
    )


def column_array(dataset: datasets.Dataset, name: str) -> np.ndarray:
    """An array column (nested fixed-length lists, or a legacy Array2D/Array3D) as one NumPy array ``(rows, *shape)`` of its stored dtype.

    ``datasets``' NumPy and torch formats upcast float16 to float32 and int8 to int64; this reads
    the Arrow buffers as they are, without a Python object per number.
    """
    shape = feature_shape(dataset.features[name])
    if shape is None:
        raise UserError(f"column {name!r} is not an array column: {dataset.features[name]}")
    return array_values(dataset.with_format("arrow")[name], shape)
