"""Timing, FLOP counting, the peaks and the batch search that every measurement shares.

MFU is *model* FLOPs utilisation: achieved FLOP/s of the useful work (matmuls, convolutions
and attention counted by ``FlopCounterMode``) divided by the datasheet's dense bf16 peak of
the GPU (:func:`datasheet_peak`, recognised from ``torch.cuda.get_device_name``). The peak
this machine measures on one large square matmul is reported beside it; it is only the
denominator where no datasheet figure is known (a CPU, an unlisted GPU), and the results say so.
"""

from __future__ import annotations

import dataclasses
import gc
import re
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
    mfu: float | None = None  # achieved model FLOP/s over the peak (Peak.flops_per_s)
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


# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; the first pattern that matches the device name wins.
DATASHEET_BF16_TFLOPS = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200", "H200", 989.0),
    (r"A100", "A100", 312.0),
)


@dataclasses.dataclass(frozen=True)
class Peak:
    """The denominator of every MFU, and where it comes from."""

    flops_per_s: float  # what MFU divides by
    source: str  # "datasheet" or "measured matmul"
    card: str | None  # the datasheet entry the device matched
    datasheet_flops_per_s: float | None
    measured_flops_per_s: float


def datasheet_peak(device_name: str) -> tuple[str, float] | None:
    """(card, dense bf16 FLOP/s) of the datasheet entry ``device_name`` (as ``torch.cuda.get_device_name`` gives it) matches, or None."""
    for pattern, card, tflops in DATASHEET_BF16_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return card, tflops * 1e12
    return None


def mfu_peak(device_name: str, measured: float) -> Peak:
    """The datasheet peak of the device where known, else the measured matmul peak (a CPU, an unlisted GPU)."""
    known = datasheet_peak(device_name)
    if known is None:
        return Peak(measured, "measured matmul", None, None, measured)
    card, flops = known
    return Peak(flops, "datasheet", card, flops, measured)


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
    """FLOP/s of a ``size``³ matmul in ``dtype``: the best of ``repeats`` timings, printed beside the datasheet peak."""
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
    """Hands the GPU's cached memory back, after collecting the garbage that may still hold tensors on it.

    Nothing to do on a CPU: a full collection there (~0.3 s with the libraries imported) would only slow the tiny run.
    """
    if device.type == "cuda":
        gc.collect()
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
