"""The ``.npz`` files of openai/guided-diffusion's evaluator (the "ADM suite" DiT, SiT and REPA report with).

A sample batch holds ``arr_0``, uint8 images (N, H, W, 3), and optionally ``arr_1``, their labels
(N,). A reference batch such as ``VIRTUAL_imagenet256_labeled.npz`` holds ``arr_0`` (10,000
ImageNet images) and the Inception statistics of the whole training set: ``mu``/``sigma``
(pool features, FID) and ``mu_s``/``sigma_s`` (spatial features, sFID).

Image arrays are streamed out of the archive batch by batch (50,000 samples at 256 px are
9.8 GB), as the ADM evaluator itself reads them: memory stays one batch.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from d2c_pack.core.errors import UserError, first_line

IMAGES, LABELS = "arr_0", "arr_1"


def write_samples(path: str | Path, batches: Iterable[np.ndarray], labels: np.ndarray, image_shape: tuple[int, int, int]) -> Path:
    """Streams uint8 image batches (B, H, W, 3) into ``arr_0`` and writes ``labels`` as ``arr_1``.

    Written to ``PATH.partial`` and renamed when complete, so a killed run leaves no truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(labels), *image_shape)}
    written = 0
    with zipfile.ZipFile(partial, "w", allowZip64=True) as archive:
        with archive.open(f"{IMAGES}.npy", "w", force_zip64=True) as file:
            np.lib.format.write_array_header_1_0(file, header)
            for batch in batches:
                file.write(np.ascontiguousarray(batch, dtype=np.uint8).tobytes())
                written += len(batch)
        with archive.open(f"{LABELS}.npy", "w") as file:
            np.lib.format.write_array(file, np.asarray(labels, dtype=np.int64))
    if written != len(labels):
        partial.unlink()
        raise ValueError(f"wrote {written} images for {len(labels)} labels")
    partial.replace(path)
    return path


def array_names(path: str | Path) -> set[str]:
    """The arrays an ``.npz`` holds (``arr_0``, ``mu``, …), from its directory alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read {path} as an .npz file: {first_line(err)}") from None


def read_arrays(path: str | Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The small arrays ``names`` (statistics, labels) of an ``.npz``, those it holds."""
    with np.load(path) as data:
        return {name: data[name] for name in names if name in data}


class ImageBatches:
    """The uint8 images (N, H, W, 3) of an ``.npz`` array, read in batches without loading the whole array."""

    def __init__(self, path: str | Path, name: str = IMAGES):
        self.path, self.name = Path(path), name
        with self._member() as (_, shape, dtype):
            self.shape = shape
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
            raise UserError(f"{self.path}: {name} must be uint8 images (N, H, W, 3), found {dtype} {shape}")

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive batches (B, H, W, 3), the last one shorter."""
        return self.read(range(start, min(start + batch_size, len(self))) for start in range(0, len(self), batch_size))

    def read(self, parts: Iterable[range]) -> Iterator[np.ndarray]:
        """The images of each range (B, H, W, 3), ranges in ascending order; skipped images are seeked past."""
        image_bytes = int(np.prod(self.shape[1:]))
        with self._member() as (file, _, _):
            first = file.tell()
            for part in parts:
                batch = np.empty((len(part), *self.shape[1:]), np.uint8)
                if not part:
                    yield batch
                    continue
                if file.tell() != first + part.start * image_bytes:
                    file.seek(first + part.start * image_bytes)
                if (read := file.readinto(memoryview(batch).cast("B"))) != batch.nbytes:
                    raise UserError(f"{self.path}: {self.name} ends after {part.start + read // image_bytes} of {len(self)} images")
                yield batch

    @contextlib.contextmanager
    def _member(self) -> Iterator[tuple[IO[bytes], tuple[int, ...], np.dtype]]:
        """The open ``.npy`` member positioned after its header, with its shape and dtype."""
        if self.name not in (names := array_names(self.path)):
            raise UserError(f"{self.path} holds no {self.name} (found: {', '.join(sorted(names))})")
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.name}.npy") as file:
                yield file, *_read_header(file, self.path, self.name)
        except (OSError, zipfile.BadZipFile) as err:
            raise UserError(f"cannot read {self.path} as an .npz file: {first_line(err)}") from None


def _read_header(file: IO[bytes], path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(file)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran_order, dtype = read(file)
    except ValueError as err:
        raise UserError(f"{path}: cannot read {name}: {first_line(err)}") from None
    if fortran_order:
        raise UserError(f"{path}: {name} is stored in Fortran order; save it C-ordered (np.ascontiguousarray)")
    return shape, dtype
