"""Where things lie in a condensed dataset folder (the Hub repository layout of :mod:`d2c_pack.publish.package`),
and the format of its two ``d2c/`` files.

A module of its own, below everything else, so that the writer, the card, ``verify`` and the
trainer's readers share these names without importing one another.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CARD_FILE = "README.md"
RECIPE_FILE = Path("d2c") / "recipe.yaml"
MANIFEST_FILE = Path("d2c") / "manifest.json"
DATA_DIR = "data"
SCORES_DIR = "scores"
EXPLORE_PAGE = "assets/explore.html"  # where ``build --explore`` writes the page, linked from the card
# How the files are laid out; part of a build's identity, so that a folder an older version wrote is
# rebuilt rather than taken for done. 2: shards written directly, arrays as nested fixed-size lists.
# 3: the manifest names no local path and records what the card is rendered from (source name, licence).
LAYOUT_VERSION = 3
# Recipe keys that only change the card: `d2c-pack card` may change them without a rebuild.
CARD_SETTINGS = ("license", "description", "pretty_name")


def recipe_text(recipe: dict) -> str:
    """``d2c/recipe.yaml``: the settings in their declared order (usable as ``--recipe``)."""
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def manifest_text(manifest: dict) -> str:
    """``d2c/manifest.json``: keys in the order written, so a manifest read and written back keeps its bytes."""
    return json.dumps(manifest, indent=2) + "\n"
