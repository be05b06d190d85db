"""Per-image feature rows on disk, written once in blocks and read a class at a time.

kcenter and herding need the features of one class at a time, but ImageNet's 1.28M rows of
768–1152 numbers (2–3 GB in float16, twice that in float32) do not belong in memory. A
:class:`RowFile` is a plain ``.npy`` file of shape (N, D) that is read with positioned reads,
never memory-mapped: mapped pages would count towards the process's resident set as the
classes go by, reads leave them in the page cache only. Rows come back as float32.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from d2c_pack.selection.chunks import replace_atomically


class RowFile:
    """An (N, D) array in a ``.npy`` file whose rows are read on demand: ``rows[positions]`` → (n, D) float32."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, _, self.dtype = read_header(file)
            self.offset = file.tell()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (any order, repeats allowed); one read per run of consecutive rows."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"row positions must lie in 0..{len(self) - 1}")
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        rows = np.empty((len(positions), *self.shape[1:]), dtype=self.dtype)
        starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)  # where a run of consecutive rows begins
        ends = np.append(starts[1:], len(ordered))
        with open(self.path, "rb", buffering=0) as file:
            for start, end in zip(starts.tolist(), ends.tolist()):
                file.seek(self.offset + int(ordered[start]) * self.row_bytes)
                if file.readinto(memoryview(rows[start:end]).cast("B")) != (end - start) * self.row_bytes:
                    raise OSError(f"{self.path} is shorter than its header says")
        out = np.empty((len(positions), *self.shape[1:]), dtype=np.float32)
        out[order] = rows
        return out


def write_rows(path: Path, count: int, blocks: Iterable[np.ndarray]) -> RowFile:
    """Writes ``count`` rows arriving as (n, D) blocks of one dtype to the ``.npy`` file ``path``, atomically.

    Only one block is held at a time; the header is written with the first non-empty block,
    whose width and dtype fix the file's.
    """

    def write(partial: Path) -> None:
        written = 0
        with open(partial, "wb") as file:
            for block in blocks:
                if not len(block):
                    continue
                if written == 0:
                    header = {"descr": np.lib.format.dtype_to_descr(block.dtype), "fortran_order": False, "shape": (count, *block.shape[1:])}
                    np.lib.format.write_array_header_1_0(file, header)
                file.write(memoryview(np.ascontiguousarray(block)).cast("B"))
                written += len(block)
            if written == 0:
                np.lib.format.write_array_header_1_0(file, {"descr": "<f2", "fortran_order": False, "shape": (count, 0)})
        if written != count:
            raise ValueError(f"{path.name}: expected {count} rows, got {written}")

    replace_atomically(path, write)
    return RowFile(path)
