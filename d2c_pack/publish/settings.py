"""The settings of the publishing commands: ``push``, ``verify``, ``inspect``, ``card``, ``export`` and ``explore``,
and the constants of what they write. Light: the standard library and d2c_pack's core only."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from d2c_pack.core.errors import UserError
from d2c_pack.core.options import CARD, OUTPUT, flag
from d2c_pack.core.paths import local_folder

if TYPE_CHECKING:
    from d2c_pack.core.hub_retry import RetryPolicy

COMMIT_BYTES = 5 * 1024**3  # a push commit records at most this much: what a re-run may have to upload again if the Hub lost uncommitted objects

DATASET_HELP = "A dataset folder, or a Hub dataset ORG/NAME[@REVISION] (e.g. ORG/NAME@v1.0: a tag, branch or commit)."


@dataclasses.dataclass(kw_only=True)
class PushConfig:
    """Settings of ``d2c-pack push``; None for ``private``/``gated`` means: decided by the data's licence."""

    repo_id: str = flag(help="Hub dataset repository ORG/NAME.", argument=True)
    source_dir: str = flag(".", help="The built dataset folder to publish.", names=("--from",))
    tag: str | None = flag(None, help="Version tag for the pushed commit, e.g. v1.0.")
    private: bool | None = flag(None, help="Visibility (default: private for ImageNet-derived data, else public).", names=("--private/--public",))
    gated: bool | None = flag(None, help="Gate access behind the card's terms (default: gated for ImageNet-derived data).", names=("--gated/--not-gated",))
    create_pr: bool = flag(False, help="Open a pull request (all files in one commit) instead of committing to the branch (in commits of at most 5 GiB).")
    branch: str | None = flag(None, help="Branch of the Hub repository to commit to (default: main); sources' --revision is what they read.")
    message: str | None = flag(None, help="Commit message.")
    force: bool = flag(False, help="Move the tag if it already exists.")
    commit_bytes: int = COMMIT_BYTES
    retry: RetryPolicy | None = None  # None: hub_retry.DEFAULT_POLICY


@dataclasses.dataclass(kw_only=True)
class DatasetArg:
    """The dataset ``verify``, ``inspect`` and ``explore`` read."""

    name: str = flag(help=DATASET_HELP, argument=True)

    def __post_init__(self) -> None:
        local_folder(self.name)  # a mistyped folder fails now, before the command imports anything heavy or asks the Hub


@dataclasses.dataclass(kw_only=True)
class VerifyConfig(DatasetArg):
    """Settings of ``d2c-pack verify``."""


@dataclasses.dataclass(kw_only=True)
class InspectConfig(DatasetArg):
    """Settings of ``d2c-pack inspect``."""


@dataclasses.dataclass(kw_only=True)
class CardConfig:
    """Settings of ``d2c-pack card``: the card settings to change (None: unchanged, '': back to automatic)."""

    folder: str = flag(help="A dataset folder built by `d2c-pack build`.", argument=True)
    license: str | None = flag(None, help="New licence: a Hub licence id (cc-by-4.0, mit, other, …) or 'imagenet'; '' = automatic.", panel=CARD)
    description: str | None = flag(None, help="New Markdown description under the card's title; '' = none.", panel=CARD)
    pretty_name: str | None = flag(None, help="New title of the card; '' = automatic.", panel=CARD)


EXPORT_FORMATS = {
    "repa": "REPA's preprocessed layout (images/ + vae-sd/ with dataset.json) for its train.py --data-dir; needs the latent column",
    "imagefolder": "OUT/train/<class>/<id>.png for torchvision's ImageFolder (DiT, SiT, fast-DiT train.py --data-path)",
}


@dataclasses.dataclass(kw_only=True)
class ExportConfig(DatasetArg):
    """Settings of ``d2c-pack export``: a condensed dataset written in a layout another trainer reads."""

    format: str = flag(help="; ".join(f"'{name}': {what}" for name, what in EXPORT_FORMATS.items()) + ".", panel=OUTPUT)
    out: str = flag(help="Folder to write (re-running the same export into it resumes it).", panel=OUTPUT)
    overwrite: bool = flag(False, help="Replace a non-empty --out that holds anything but this same export.", panel=OUTPUT)

    def __post_init__(self) -> None:
        DatasetArg.__post_init__(self)
        if self.format not in EXPORT_FORMATS:
            raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")


# What an explore page holds (explore.py draws it; stated here for explore's --help).
THUMBNAIL_SIZE = 64  # px, centre-cropped square (the crop the scorer and the trainer see)
SELECTED_THUMBNAILS = 12  # per class, evenly spread along the ranking of the selected images
REJECTED_GROUPS = ("easiest", "median", "hardest")  # one rejected image each, per class
PAGE_CONTENTS = (
    f"The page holds at most {SELECTED_THUMBNAILS} selected and {len(REJECTED_GROUPS)} rejected {THUMBNAIL_SIZE}px WebP thumbnails per class "
    "and every selected image's id, rank and score."
)


@dataclasses.dataclass(kw_only=True)
class ExploreConfig(DatasetArg):
    """Settings of ``d2c-pack explore``."""

    out: str = flag("explore.html", help="The page to write.")
    source: str | None = flag(None, help="The source the subset was built from (as build's --source), for thumbnails of rejected images; without it they are shown by score only.")
