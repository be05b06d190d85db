"""Writing a condensed dataset in the Hugging Face Hub layout, atomically.

::

    OUT/README.md                            dataset card: YAML metadata (configs, dataset_info) + body
    OUT/data/train-00000-of-0000N.parquet    the selected rows (``row_features``)
    OUT/scores/train-00000-of-00001.parquet  optional config "scores": every scored source image
    OUT/d2c/recipe.yaml                      the fully resolved recipe (usable as ``--recipe``; local paths left out)
    OUT/d2c/manifest.json                    provenance, and sha256 + size of every other file

No file names a local path (:mod:`d2c_pack.publish.contents`). The card is rendered from the manifest
(:mod:`d2c_pack.publish.card`), so ``d2c-pack card`` can render it again without the build's inputs.

Everything is written into ``.OUT.partial`` beside OUT and renamed into place at the end, so a
folder named OUT is always complete (a killed run leaves the partial folder, which the next run
replaces). The rows stream from the source and the Attach caches straight into the parquet shards
(:mod:`d2c_pack.publish.shard_writer`): one copy on disk, hashed as it is written, flat memory. Nothing written
depends on the time, the machine or its number of cores: the same inputs give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.info import DatasetInfosDict

from d2c_pack.core.errors import UserError
from d2c_pack.core.fingerprint import sha256_file
from d2c_pack.publish.card import render_card, sample_positions, write_assets
from d2c_pack.publish.contents import Package, shown_name
from d2c_pack.publish.explore import write_explore_page
from d2c_pack.publish.layout import CARD_FILE, DATA_DIR, LAYOUT_VERSION, MANIFEST_FILE, RECIPE_FILE, SCORES_DIR, manifest_text, recipe_text
from d2c_pack.publish.shard_writer import WrittenFile, arrow_tables, cpu_workers, table_slices, write_split
from d2c_pack.sources.image_source import is_imagenet
from d2c_pack.version import __version__

SCORE_ROWS = 8192  # "scores" rows handed to the shard writer at a time


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


def write_package(package: Package, out: Path, *, workers: int | None = None) -> Path:
    """Writes the dataset folder ``out`` through a temporary sibling folder; returns ``out``.

    ``workers``: threads converting rows and writing shards (default: the cores available).
    """
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    workers = workers or cpu_workers()
    names = package.source.class_names
    features = datasets.Features(row_features(names) | package.attached.features)
    shown = sample_positions(package)  # the card's sample grid: their bytes are kept as the rows stream by
    images: dict[int, bytes] = {}
    rows = arrow_tables(_selected_rows(package, shown, images), features, workers)
    data = write_split(rows, features, partial, DATA_DIR, package.max_shard_size, total=len(package.selection.positions), workers=workers)
    infos, written = DatasetInfosDict(default=data.info), dict(data.files)
    write_assets(package, images, partial)
    if package.recipe.get("explore"):  # before the manifest, which lists the page with its sha256
        write_explore_page(package, partial)
    if package.with_scores:
        scores = score_features(names, package.scores.losses.shape[1])
        tables = table_slices(_score_rows(package, scores), SCORE_ROWS)
        split = write_split(tables, scores, partial, SCORES_DIR, package.max_shard_size, total=len(package.scores), workers=workers)
        infos[SCORES_DIR], written = split.info, written | split.files
    provenance = _provenance(package)
    (partial / CARD_FILE).write_text(render_card(provenance, infos))
    (partial / RECIPE_FILE).parent.mkdir()
    (partial / RECIPE_FILE).write_text(recipe_text(package.recipe))
    (partial / MANIFEST_FILE).write_text(manifest_text(provenance | {"files": _file_list(partial, written)}))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def build_identity(package: Package) -> dict:
    """What makes two builds the same build: equal identities give equal bytes."""
    return {"recipe": package.recipe, "inputs": package.inputs, "layout": LAYOUT_VERSION}


def read_build_identity(out: Path) -> dict | None:
    """The identity recorded in a complete dataset folder, or None if ``out`` is not one."""
    path = out / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return {"recipe": manifest["recipe"], "inputs": manifest["inputs"], "layout": manifest.get("layout")}


def _provenance(package: Package) -> dict:
    """The manifest but its file list: what was built from what, and what the card is rendered from."""
    selection, scores = package.selection, package.scores
    chosen_labels = scores.labels[selection.positions]
    source = package.source
    scored_per_class = np.bincount(scores.labels, minlength=len(selection.per_class)).tolist()
    return {
        "tool": "d2c-pack",
        "version": __version__,
        **build_identity(package),
        "source": {
            "spec": package.recipe["source"], "name": shown_name(source.spec), "split": package.recipe["split"],
            "revision": package.recipe["revision"], "fingerprint": package.inputs["source_fingerprint"], "images": len(source),
            "classes": source.num_classes, "imagenet": is_imagenet(source),
            "class_images": source.class_sizes,  # images listed per class, unreadable ones included
        },  # fmt: skip
        "models": package.models,
        "seeds": {"noise_and_random_selection": package.recipe["seed"]},
        "selection": {
            "rows": len(selection.positions),
            "interval": selection.interval,
            "interval_strides": list(selection.stride_range() or ()) or None,  # [min, max] used; below k where a class is short
            "reach": list(selection.reach(scored_per_class) or ()) or None,  # [min, max] share of a class's ranking interval picks can reach
            "per_class_budget": selection.per_class,
            "per_class_rows": np.bincount(chosen_labels, minlength=len(selection.per_class)).tolist(),
        },
        "unreadable": [{"source_id": source_id, "reason": reason} for _, source_id, reason in scores.errors],
    }


def _file_list(folder: Path, written: dict[str, WrittenFile]) -> dict:
    """Every file's sha256 and size: the shards' as they were written, the small files' read back."""
    return {
        name: dataclasses.asdict(written.get(name) or WrittenFile(sha256_file(path), path.stat().st_size))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (name := path.relative_to(folder).as_posix()) != MANIFEST_FILE.as_posix()
    }


def _selected_rows(package: Package, keep: set[int], images: dict[int, bytes]) -> Iterator[dict]:
    """The rows of the default config in selection order; the image bytes of the rows numbered in ``keep`` go to ``images``."""
    scores, selection = package.scores, package.selection
    indices = scores.indices[selection.positions]
    attached = package.attached.rows(indices, scores.labels[selection.positions])
    records = package.source.iter_records(indices)
    for row, position in enumerate(selection.positions):
        record = next(records, None)
        if record is None or record.index != scores.indices[position]:
            raise UserError(f"the selected image {scores.source_ids[position]} could no longer be read from the source")
        if row in keep:
            images[row] = record.data
        yield {
            "image": {"bytes": record.data, "path": None},
            "label": record.label,
            "source_id": record.source_id,
            "difficulty": float(scores.scores[position]),
            "difficulty_rank": int(selection.ranks[position]),
            **next(attached),
        }


def _score_rows(package: Package, features: datasets.Features) -> pa.Table:
    """The "scores" config: every scored image, in memory (a few numbers a row)."""
    scores, selection = package.scores, package.selection
    selected = np.zeros(len(scores), dtype=bool)
    selected[selection.positions] = True
    timesteps = scores.losses.shape[1]
    return pa.table(
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
