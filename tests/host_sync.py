"""Counting the project's host syncs on a CPU: the calls that would make the host wait for a GPU.

On a GPU, reading a tensor's value (``item``, ``tolist``, ``bool``/``float``/``int``), bringing it to
the host (``cpu``, ``numpy``) or a blocking copy between host and device stops the host until the
device has caught up. On a CPU nothing waits, but the calls are the same, so counting them under a
``TorchFunctionMode`` measures the syncs a GPU run would pay. Only calls made by the project's own
code count (the caller's frame is a file under ``d2c_pack/``): library internals, such as the
step counters of CPU AdamW, are the library's business.

    with HostSyncs() as syncs:
        train(config)
    assert syncs.count <= 10, syncs.calls
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import d2c_pack

PROJECT = str(Path(d2c_pack.__file__).resolve().parent)
TORCH = Path(torch.__file__).resolve().parent
DISPATCH = {str(TORCH / name) for name in ("overrides.py", "_tensor.py", "utils/_python_dispatch.py", "utils/_device.py")}
# Calls that read a value or bring a tensor to the host; ``Tensor.to`` counts only as a blocking copy (below).
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy}


class HostSyncs(TorchFunctionMode):
    """Counts host-sync calls made from files under ``d2c_pack/``; ``calls`` says which, ``file:line name``.

    ``Tensor.to`` counts when it copies to or from the CPU without ``non_blocking=True`` (a dtype-only
    ``to`` does not): on a GPU such a copy waits, and on the CPU test machine the trainer's device *is*
    the CPU, so every blocking ``to(device)`` counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.calls.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS or (func is torch.Tensor.to and _blocking_host_copy(args, kwargs)):
            caller = _caller()
            if caller is not None:
                self.calls[f"{caller} {func.__name__}"] += 1
        return func(*args, **kwargs)


def _blocking_host_copy(args: tuple, kwargs: dict) -> bool:
    tensor = args[0]
    device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
    return device is not None and not non_blocking and "cpu" in (torch.device(device).type, tensor.device.type)


def _caller() -> str | None:
    """``file:line`` of the code that called the tensor method, if it is the project's.

    Frames of torch's dispatch to this mode are skipped, and those of ``torch/_tensor.py``, whose
    Python methods (``__format__``, ``__iter__``, ...) read values on their caller's behalf.
    """
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename in DISPATCH or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.startswith(PROJECT):
        return None
    return f"{Path(frame.f_code.co_filename).relative_to(Path(PROJECT).parent)}:{frame.f_lineno}"


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Counter[str]]:
    """The project's host-sync calls made inside the block, counted by ``file:line name`` (see :class:`HostSyncs`)."""
    with HostSyncs() as syncs:
        yield syncs.calls
