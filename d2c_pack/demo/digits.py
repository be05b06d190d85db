"""The source ``demo:digits``: scikit-learn's handwritten digits, with no download."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from d2c_pack.core.errors import require
from d2c_pack.core.fingerprint import sha256_json
from d2c_pack.sources.image_source import Entry, ImageSource


class DigitsSource(ImageSource):
    """scikit-learn's 1,797 handwritten digits as 32×32 RGB PNG images, classes "0".."9".

    Each 8×8 image (values 0..16) is scaled to 0..255, upscaled with BICUBIC and converted
    to RGB; the PNG encoding of that image is the record's ``data``.
    """

    _VERSION = 1  # bump when the rendering below changes

    def __init__(self, spec: str = "demo:digits") -> None:
        digits = require("sklearn.datasets", "demo", "demo:digits").load_digits()
        self._images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
        self._labels = digits.target.astype(int)
        sizes = np.bincount(self._labels, minlength=10).tolist()
        super().__init__(spec, [str(d) for d in range(10)], sizes)

    def __len__(self) -> int:
        return len(self._labels)

    def fingerprint(self) -> str:
        return sha256_json(["demo:digits", self._VERSION, require("sklearn", "demo", "demo:digits").__version__])

    def _entries(self, indices: list[int] | None) -> Iterator[Entry]:
        for index in range(len(self)) if indices is None else indices:
            label = int(self._labels[index])
            yield Entry(index, f"digits/{index:04d}", label, self._png(index), None)

    def _png(self, index: int) -> bytes:
        image = Image.fromarray(self._images[index]).resize((32, 32), Image.BICUBIC).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
