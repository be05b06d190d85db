"""Timing, FLOP counting, the measured peak and the batch search that every measurement shares.

MFU here is *model* FLOPs utilisation against the peak this machine measured on one large
square matmul (bf16 on a GPU), not against a datasheet: achieved FLOP/s of the useful work
(matmuls, convolutions and attention counted by ``FlopCounterMode``) divided by that peak.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@dataclasses.dataclass
class Row:
    """One measured (or skipped) workload: a line of the table and an entry of the JSON."""

    section: str
    name: str
    batch: int | None = None
    rate: float | None = None  # items per second
    unit: str = "images/s"
    flops_per_item: float | None = None
    mfu: float | None = None  # achieved model FLOP/s over the measured peak
    peak_memory_gib: float | None = None
    status: str = "ok"  # ok, skipped (cannot run here) or failed (ran and raised)
    reason: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def rate_row(
    section: str, name: str, *, batch: int, items: int, seconds: float, flops_per_item: float, peak: float, unit: str = "images/s", **extra: Any
) -> Row:
    """The row of ``items`` processed in ``seconds`` (in calls of ``batch``), each worth ``flops_per_item`` model FLOPs."""
    rate = items / seconds
    return Row(section, name, batch=batch, rate=rate, unit=unit, flops_per_item=flops_per_item, mfu=rate * flops_per_item / peak, extra=extra)


def measure(
    section: str,
    name: str,
    fn: Callable[[], object],
    device: torch.device,
    *,
    batch: int,
    flops_per_item: float,
    peak: float,
    warmup: int,
    iters: int,
    items: int | None = None,
    unit: str = "images/s",
    **extra: Any,
) -> Row:
    """Times ``fn`` (one call handles ``items``, default ``batch``, items) with its peak GPU memory.

    Running out of GPU memory gives a failed row rather than an exception, so a sweep goes on.
    """
    reset_peak_memory(device)
    try:
        seconds: float | None = seconds_per_call(fn, device, warmup=warmup, iters=iters)
    except torch.cuda.OutOfMemoryError:
        seconds = None
    memory = peak_memory_gib(device)
    release_memory(device)  # after the except clause, so the failed frames are gone
    if seconds is None:
        return Row(section, name, batch=batch, unit=unit, status="failed", reason="out of GPU memory", extra=extra)
    row = rate_row(section, name, batch=batch, items=items or batch, seconds=seconds, flops_per_item=flops_per_item, peak=peak, unit=unit, **extra)
    row.peak_memory_gib = memory
    return row


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int) -> float:
    """Mean seconds of ``fn()`` over ``iters`` calls after ``warmup`` untimed ones: CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    tic = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - tic) / iters


def matmul_peak(device: torch.device, size: int, dtype: torch.dtype, *, warmup: int = 3, iters: int = 20, repeats: int = 3) -> float:
    """FLOP/s of a ``size``³ matmul in ``dtype``: the best of ``repeats`` timings, the denominator of every MFU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = min(seconds_per_call(lambda: a @ b, device, warmup=warmup, iters=iters) for _ in range(repeats))
    return 2 * size**3 / best


def count_flops(fn: Callable[[], object]) -> int:
    """Model FLOPs of ``fn()`` (matmuls, convolutions, attention; forward and backward if it runs one).

    Attention is forced onto PyTorch's math backend while counting, where it decomposes into
    the matmuls the counter sees; fused kernels are counted inconsistently across devices.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def largest_batch(fits: Callable[[int], object], device: torch.device, *, start: int, limit: int) -> int:
    """The largest of start, 2·start, 4·start … ≤ limit for which ``fits(batch)`` runs without running out of GPU memory."""
    best, batch = 0, start
    while batch <= limit:
        try:
            fits(batch)
            out_of_memory = False
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        release_memory(device)  # after the except clause, so the failed frames are gone
        if out_of_memory:
            break
        best, batch = batch, batch * 2
    if not best:
        raise RuntimeError(f"not even a batch of {start} fits in GPU memory")
    return best


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """GPU memory allocated at most since the last reset (None on a CPU, where it is not tracked)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def failure(error: BaseException) -> str:
    """A one-line reason for a row whose workload raised."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
