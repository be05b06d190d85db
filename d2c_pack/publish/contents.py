"""What one condensed dataset folder is made of, and how its published files name local things.

:class:`Package` is what ``build`` hands to the writer (:mod:`d2c_pack.publish.package`), to the card's
figures (:mod:`d2c_pack.publish.card`) and to the explore page (:mod:`d2c_pack.publish.explore`); it lives below
all three, so that none of them imports another for it.

The rule for names: a published file (card, manifest, ``d2c/recipe.yaml``, explore page) never
holds a local path. A source or model is named as given where another machine can resolve the
name (a Hub id, ``hf:ORG/NAME``, a ``demo:`` name); a local file or folder is shown by its last
component alone, and ``d2c/recipe.yaml`` records it as null, so that a rebuild is given it again
(``--source``, ``--scorer`` …). The content hashes in the manifest still identify it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the naming rules below are read without loading torch (d2c_pack.pipeline.finished)
    from d2c_pack.attach.columns import Attached
    from d2c_pack.selection.score import Scores
    from d2c_pack.selection.subset import Selection
    from d2c_pack.sources.image_source import ImageSource

# Recipe keys that name a source or a model, and so may name a local path.
NAMED_INPUTS = ("source", "scorer", "vae", "text_encoder", "captioner", "visual_encoder")


@dataclasses.dataclass
class Package:
    """Everything that goes into one condensed dataset folder."""

    source: ImageSource
    scores: Scores
    selection: Selection
    recipe: dict  # the build's settings, every automatic choice resolved, local paths left out (:func:`published_name`)
    inputs: dict  # what identifies the inputs: source fingerprint, scorer and attach models' sha256
    attached: Attached
    models: dict  # role → {"name", "files": {weight file: sha256}}, for the manifest
    with_scores: bool = True
    max_shard_size: str = "500MB"


def local_path(name: str) -> Path | None:
    """The local file or folder a source or model name points at; None for a Hub id or a ``demo:`` name.

    A name is local when it is absolute, starts with ``.`` or ``~``, or exists here (the loaders too try the file system first).
    """
    if name.startswith("demo:"):
        return None
    target = name.removeprefix("hf:")
    path = Path(target).expanduser()
    return path if path.is_absolute() or target.startswith((".", "~")) or path.exists() else None


def published_name(name: str | None) -> str | None:
    """``name`` where another machine can resolve it, else None (a local path)."""
    return None if name is None or local_path(name) is not None else name


def shown_name(name: str | None) -> str | None:
    """``name`` as a published file shows it: as given where another machine can resolve it, else the local path's last component."""
    path = None if name is None else local_path(name)
    return name if path is None else path.resolve().name


def hub_dataset_id(spec: str | None) -> str | None:
    """The Hub dataset a source spec reads (``hf:ORG/NAME`` → ``ORG/NAME``), None for any other source."""
    if spec is None or not spec.startswith("hf:") or local_path(spec) is not None:
        return None
    return spec.removeprefix("hf:")
