"""``d2c-pack build``: score (cached) → select → package, one condensed dataset folder per run.

Re-running the same command continues where it stopped: scoring resumes from its cache, and a
finished folder whose recipe matches is left as it is. That is decided from the folder's manifest
before any model is loaded (:func:`d2c_pack.pipeline.finished.existing_build`): the recipe, the source's fingerprint and the
sha256 of every model's weight files. So a finished build re-run returns in seconds, and a build
into a folder made with other settings is refused at once. Under ``torchrun`` every rank scores its
share; rank 0 selects and writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq

from d2c_pack.attach.columns import attach_columns, visual_cls_features
from d2c_pack.core import distributed
from d2c_pack.core.errors import UserError
from d2c_pack.core.fingerprint import weight_files_sha256
from d2c_pack.models.latents import vae_reference
from d2c_pack.pipeline.finished import OTHER_BUILD, card_free, existing_build, model_roles, resolved_recipe
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.card import update_card
from d2c_pack.publish.contents import NAMED_INPUTS, Package, shown_name
from d2c_pack.publish.layout import CARD_SETTINGS, DATA_DIR, MANIFEST_FILE
from d2c_pack.publish.package import build_identity, read_build_identity, write_package
from d2c_pack.selection.budget import parse_budget
from d2c_pack.selection.rowfile import RowFile
from d2c_pack.selection.score import Scores, read_cache_key, read_scores, score_features, score_source
from d2c_pack.selection.subset import FEATURE_SELECTORS, select_subset
from d2c_pack.sources.image_source import ImageSource, quoted_names


def selection_features(
    config: BuildConfig, source: ImageSource, scores_file: Path, scores: Scores, context: distributed.Context
) -> tuple[RowFile | None, str | None]:
    """The image features kcenter/herding work on (on disk, read a class at a time), and their name: the visual
    encoder's CLS, else the scorer's pooled tokens; none for the other selectors."""
    if config.selector not in FEATURE_SELECTORS:
        return None, None
    if not config.visual_encoder:
        return score_features(scores_file), "scorer"
    features = visual_cls_features(
        config.visual_encoder, source, scores.indices, context, resolution=config.resolution, batch_size=config.attach_batch_size,
        work=Path(config.work), chunk_size=config.chunk_size, workers=config.workers,
    )  # fmt: skip
    return features, "visual_cls"


def used_models(config: BuildConfig, scorer_vae_sha256: str | None) -> dict:
    """Every model the build ran, with the sha256 of its weight files (and of the VAEs' weights, found wherever they were loaded from)."""
    models = {role: {"name": shown_name(name), "files": weight_files_sha256(name)} for role, name in model_roles(config).items()}
    if config.vae:
        models["vae"]["name"] = vae_reference(config.vae)
    if scorer_vae_sha256:
        models["scorer"]["vae"] = {"name": vae_reference(config.vae) if config.vae else "the scorer's own", "weights_sha256": scorer_vae_sha256}
    return models


@dataclasses.dataclass(frozen=True)
class Built:
    """What :func:`build_folder` did."""

    out: Path | None  # the folder; None on ranks other than 0 under torchrun
    up_to_date: bool = False  # found built from these settings and inputs: nothing was done


def build(config: BuildConfig) -> Path | None:
    """Builds the condensed dataset folder ``config.out``; returns it on rank 0 (None on other ranks)."""
    return build_folder(config).out


def build_folder(config: BuildConfig) -> Built:
    """:func:`build`, telling also whether the folder was found up to date (no model loaded, nothing written)."""
    context = distributed.init(config.device)
    out = Path(config.out)
    if out.exists() and not config.overwrite and read_build_identity(out) is None:
        raise UserError(f"{out} exists and is not a d2c-pack dataset folder; choose another --out")
    source = config.open_source(streaming=config.streaming)
    parse_budget(config.budget, source.class_sizes)  # a bad budget fails now, not after hours of scoring
    existing = existing_build(config, source, out)
    if existing == "same":
        return Built(out if context.is_main else None, up_to_date=True)
    if existing == "card":  # only the card's settings changed: render it again, no model needed
        if context.is_main:
            update_card(out, **{key: getattr(config, key) or "" for key in CARD_SETTINGS})
        return Built(out if context.is_main else None)
    if existing == "other" and not config.overwrite:
        raise UserError(OTHER_BUILD.format(out=out))
    scores_file = score_source(config, context, source)
    scores = read_scores(scores_file)
    if len(scores) == 0:
        raise UserError(f"no image of {config.source} could be read; nothing to select")
    features, feature_name = selection_features(config, source, scores_file, scores, context)
    selection = select_subset(
        scores, source.num_classes, budget=config.budget, selector=config.selector, interval=config.interval, seed=config.seed, features=features
    )
    chosen = scores.indices[selection.positions]
    attached = attach_columns(
        config, source, chosen, scores.labels[selection.positions], context,
        resolution=config.resolution, work=Path(config.work), chunk_size=config.chunk_size, workers=config.workers,
    )  # fmt: skip
    if not context.is_main:
        return Built(None)
    key = read_cache_key(scores_file)
    inputs = {
        "source_fingerprint": source.fingerprint(), "scorer_sha256": key["scorer_sha256"], "scorer_prediction": key["prediction"],
        "scorer_vae_sha256": key["vae_sha256"], **attached.identity, "selection_features": feature_name,
    }  # fmt: skip
    inputs |= {name: shown_name(inputs[name]) for name in NAMED_INPUTS if name in inputs}  # the encoders, as published
    recipe = resolved_recipe(config, selection.interval)
    package = Package(source, scores, selection, recipe, inputs, attached, used_models(config, key["vae_sha256"]), config.with_scores, config.max_shard_size)
    existing = read_build_identity(out)
    if existing == build_identity(package):
        return Built(out, up_to_date=True)  # built by another d2c-pack version from exactly these settings and inputs
    if existing is not None and _without_card_settings(existing) == _without_card_settings(build_identity(package)):
        update_card(out, **{key: package.recipe[key] or "" for key in CARD_SETTINGS})  # only the card changes
        return Built(out)
    if existing is not None and not config.overwrite:
        raise UserError(OTHER_BUILD.format(out=out))
    return Built(write_package(package, out))


def describe_build(out: Path) -> str:
    """A short summary of a built folder: rows, classes, files and size; then what the source lacked."""
    shards = sorted((out / DATA_DIR).glob("*.parquet"))
    # ParquetFile, not read_table: the dataset scanner behind read_table can outlive the call on Arrow's
    # thread pool and then abort the interpreter at exit while freeing datasets' extension types.
    labels = np.concatenate([pq.ParquetFile(shard).read(columns=["label"])["label"].to_numpy() for shard in shards])
    counts = np.bincount(labels)
    present = counts[counts > 0]
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    lines = [
        f"built {out}: {len(labels):,} rows over {len(present)} classes "
        f"({present.min()}–{present.max()} per class), {len(shards)} data shard(s), {size / 1e6:.1f} MB"
    ]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    if unreadable := manifest["unreadable"]:
        lines.append(f"skipped {len(unreadable)} unreadable image(s), listed with the reasons in {out / MANIFEST_FILE}")
    names = datasets.Features.from_arrow_schema(pq.read_schema(shards[0]))["label"].names
    listed = manifest["source"]["class_images"]
    if empty := [name for name, rows, images in zip(names, manifest["selection"]["per_class_rows"], listed) if rows == 0 and images > 0]:
        lines.append(f"{len(empty)} class(es) without any row (no readable image): {quoted_names(empty)}")
    if absent := [name for name, images in zip(names, listed) if images == 0]:
        lines.append(f"{len(absent)} of the {len(names)} classes have no image in the source: {quoted_names(absent)}")
    return "\n".join(lines)


def _without_card_settings(identity: dict) -> dict:
    return identity | {"recipe": card_free(identity["recipe"])}
