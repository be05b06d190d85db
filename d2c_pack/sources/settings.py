"""The settings every command shares to name its image source: ``--source``, ``--split``, ``--*-column``, ``--revision``.

Light: the standard library and d2c_pack's core only, so that the command line lists its options without torch or datasets.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from d2c_pack.core.options import SOURCE, flag

if TYPE_CHECKING:
    from d2c_pack.sources.image_source import ImageSource


@dataclasses.dataclass(kw_only=True)
class SourceArgs:
    """Which source to read and how: the ``--source``, ``--split``, ``--*-column`` … flags of every command."""

    source: str = flag(help="Image source: demo:digits, hf:NAME (Hub dataset), an ImageFolder tree, a .parquet file or folder, or a save_to_disk folder.", panel=SOURCE)
    split: str = flag("train", help="Split of a Hub / datasets source (split expressions such as 'train[:10%]' work).", panel=SOURCE)
    image_column: str = flag("image", help="Image column of a datasets source.", panel=SOURCE)
    label_column: str = flag("label", help="Label column (ClassLabel or integer class index) of a datasets source.", panel=SOURCE)
    id_column: str | None = flag(None, help="Column holding a stable image id (default: the stored file name, else split/index).", panel=SOURCE)
    revision: str | None = flag(None, help="Revision (branch, tag or commit) of a Hub source to read.", panel=SOURCE)

    def open_source(self, *, streaming: bool = False) -> ImageSource:
        from d2c_pack.sources.image_source import open_source

        return open_source(
            self.source, split=self.split, image_column=self.image_column, label_column=self.label_column,
            id_column=self.id_column, revision=self.revision, streaming=streaming,
        )  # fmt: skip
