"""Whether ``build``'s output folder is already a finished build of the same settings and inputs: a manifest check.

A finished folder's manifest records the fully resolved recipe, the source's fingerprint and the sha256
of every model's weight files. Comparing them with a build's settings needs no model and no scoring, so
a finished build run again returns in seconds and a build into a folder made otherwise is refused at once.
This module imports no model library (torch, transformers): the command line asks it first, before it
loads the build at all.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from d2c_pack.core.fingerprint import weight_files_sha256
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.contents import NAMED_INPUTS, published_name
from d2c_pack.publish.layout import CARD_SETTINGS, LAYOUT_VERSION, MANIFEST_FILE
from d2c_pack.selection.budget import parse_budget
from d2c_pack.selection.selectors import auto_interval
from d2c_pack.version import __version__

if TYPE_CHECKING:
    from d2c_pack.sources.image_source import ImageSource

# Settings of how a run executes, not of what it produces: left out of d2c/recipe.yaml.
MACHINE_SETTINGS = frozenset({"out", "work", "device", "workers", "batch_size", "attach_batch_size", "overwrite"})


def model_roles(config: BuildConfig) -> dict[str, str]:
    """The models the build runs, by their role in the manifest."""
    roles = {"scorer": config.scorer, "text_encoder": config.text_encoder, "captioner": config.captioner, "visual_encoder": config.visual_encoder, "vae": config.vae}
    return {role: name for role, name in roles.items() if name}


def resolved_recipe(config: BuildConfig, interval: int | None) -> dict:
    """The build's settings with every automatic choice made explicit (``interval``: the stride interval sampling
    used): a recipe that rebuilds the same folder, given again the sources and models it names by a local path
    (left out: published files name no local path)."""
    recipe = {k: v for k, v in dataclasses.asdict(config).items() if k not in MACHINE_SETTINGS}
    if recipe["num_heads"] is None:  # only a scorer of no DiT/SiT size needs it: older builds keep their recipe and identity
        del recipe["num_heads"]
    recipe |= {key: published_name(recipe[key]) for key in NAMED_INPUTS}
    if interval is not None:
        recipe["interval"] = str(interval)
    return recipe


OTHER_BUILD = "{out} holds a dataset built with other settings or inputs (or by an older d2c-pack); pass --overwrite to replace it or choose another --out"


def existing_build(config: BuildConfig, source: ImageSource, out: Path) -> str | None:
    """How the finished folder ``out`` compares with this build, from its manifest alone (no model is loaded):
    ``"same"`` (built from these settings and inputs), ``"card"`` (the same but for the card's settings),
    ``"other"``, or None: no finished folder, or one this check cannot decide (written by another d2c-pack
    version, or an automatic interval over a source with unreadable images), which the full build decides.

    The inputs compared are the source's fingerprint and the sha256 of every model's weight files.
    """
    manifest_file = out / MANIFEST_FILE
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("version") != __version__ or manifest.get("layout") != LAYOUT_VERSION:
        return None
    interval = None
    if config.selector == "interval" and config.interval == "auto":
        if manifest["unreadable"]:
            return None  # the scored images per class, which the interval depends on, are known after scoring only
        interval = auto_interval(source.class_sizes, parse_budget(config.budget, source.class_sizes))
    elif config.selector == "interval":
        interval = int(config.interval)
    recipe = resolved_recipe(config, interval)
    if card_free(recipe) != card_free(manifest["recipe"]):
        return "other"
    built_models = {role: model["files"] for role, model in manifest["models"].items()}
    if manifest["inputs"]["source_fingerprint"] != source.fingerprint() or built_models.keys() != model_roles(config).keys():
        return "other"
    if any(weight_files_sha256(name) != built_models[role] for role, name in model_roles(config).items()):
        return "other"
    return "same" if recipe == manifest["recipe"] else "card"


def card_free(recipe: dict) -> dict:
    return {key: value for key, value in recipe.items() if key not in CARD_SETTINGS}


def finished_build(config: BuildConfig) -> str | None:
    """:func:`existing_build` for ``config.out``, opening the source only where a finished folder is there to compare."""
    out = Path(config.out)
    if not (out / MANIFEST_FILE).is_file():
        return None
    return existing_build(config, config.open_source(streaming=config.streaming), out)
