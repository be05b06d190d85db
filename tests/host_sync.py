"""Counts the calls by which d2c-pack's own code makes the host wait for the device.

A CPU run has no device to wait for, so the calls are counted whatever the tensors' device: on a
GPU each would block the host (reading a value back: ``item``, ``tolist``, ``bool``/``float``/``int``
of a tensor, ``cpu``, ``numpy``) or copy host memory to the device (``to``/``cuda`` naming a device;
a pageable host-to-device copy waits for the stream, and on the CPU a copy cannot be told from a no-op).
"""

from __future__ import annotations

import collections
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import d2c_pack

PROJECT = Path(d2c_pack.__file__).resolve().parent
TORCH = Path(torch.__file__).resolve().parent
READ_BACKS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
    torch.Tensor.cpu, torch.Tensor.numpy,
}  # fmt: skip
COPIES = {torch.Tensor.to, torch.Tensor.cuda}


def _names_a_device(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to``'s arguments move data between devices (not a bare dtype)."""
    values = [*args[1:], *kwargs.values()]
    return "device" in kwargs or any(isinstance(value, str | torch.device | torch.Tensor) for value in values)


class _Counter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READ_BACKS or (func in COPIES and (func is torch.Tensor.cuda or _names_a_device(args, kwargs))):
            if (where := _caller()) is not None:
                self.calls[where] += 1
        return func(*args, **kwargs)


def _caller() -> str | None:
    """``file:line`` of the innermost frame outside torch and this file, when it is d2c-pack's (None otherwise)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if not (path.is_relative_to(TORCH) or path == Path(__file__).resolve()):
            return f"{path.relative_to(PROJECT.parent)}:{frame.f_lineno}" if path.is_relative_to(PROJECT) else None
        frame = frame.f_back
    return None


@contextlib.contextmanager
def count_host_syncs() -> Iterator[collections.Counter[str]]:
    """Counts, by ``file:line`` of d2c-pack's code, its host-sync calls made inside the block (third-party code is not counted)."""
    counter = _Counter()
    with counter:
        yield counter.calls
