"""Every GPU measurement of d2c-pack in one command: peaks, scoring, attach, training, optimisation variants, train() and sampling.

    python benchmarks/gpu/run.py --device cuda                           # real sizes (an H100/H200), ~5 min
    python benchmarks/gpu/run.py --tiny --device cpu --json /tmp/gpu.json  # tiny configs, any CPU, < 1 min

Prints a table and writes JSON (default benchmarks/results/gpu.json) holding the device,
library versions, date, command line, the peaks (datasheet and measured) and every row. Models have random
weights and the real architectures (see specs.py); README.md beside this file says how to
run it on a lent GPU machine and what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable (benchmarks.gpu, d2c_pack)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import diffusers
import timm
import torch
import transformers
from rich.console import Console
from rich.table import Table

from benchmarks.gpu.attach import measure_attach
from benchmarks.gpu.measure import Peak, Row, failure, matmul_peak, mfu_peak, release_memory
from benchmarks.gpu.sampling import measure_sampling
from benchmarks.gpu.scoring import measure_scoring
from benchmarks.gpu.specs import FULL, TINY, Spec
from benchmarks.gpu.trainer import measure_trainer
from benchmarks.gpu.training import measure_training, training_setup
from benchmarks.gpu.variants import attention_paths, measure_variants

DEFAULT_JSON = "benchmarks/results/gpu.json"


def main(argv: list[str] | None = None) -> None:
    """The command line ``argv`` (default ``sys.argv[1:]``); torch's thread count is restored afterwards (--tiny uses one)."""
    args = _parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        _run(args, sys.argv if argv is None else ["benchmarks/gpu/run.py", *argv])
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, command: list[str]) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    spec = TINY if args.tiny else FULL
    workers = args.workers if args.workers is not None else _default_workers(spec)
    torch.manual_seed(0)
    if spec.tiny:  # OpenMP threads waiting on each other dominate tiny ops on a small, shared CPU
        torch.set_num_threads(1)
    transformers.logging.disable_progress_bar()  # saving and loading the DINOv2 folder
    console = Console(width=200)
    result = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "versions": {
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "diffusers": diffusers.__version__,
            "timm": timm.__version__,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *command]),
        "tiny": spec.tiny,
        "spec": {"scorer": spec.scorer, "trainee": spec.trainee, "resolution": spec.resolution, "timesteps": spec.timesteps},
    }
    result |= run_all(spec, device, workers, console)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    _print(result, console)
    console.print(f"JSON: {args.json}")


def run_all(spec: Spec, device: torch.device, workers: int, console: Console) -> dict:
    """The measurements in order (0 peak, 1 scoring, 2 attach, 3 training step, 4 variants, 5 train(), 6 sampling), each releasing its models."""
    seconds: dict[str, float] = {}
    with _stage(console, seconds, "peak", f"matmul peak, {spec.peak_size}³ {str(spec.peak_dtype).removeprefix('torch.')}", device):
        measured = matmul_peak(device, spec.peak_size, spec.peak_dtype)
        peak = mfu_peak(torch.cuda.get_device_name(device) if device.type == "cuda" else "", measured)
    console.print(f"  MFU against {_peak_words(peak)}")
    with _stage(
        console, seconds, "scoring", f"scoring {spec.scorer}, |T| = {spec.timesteps}, batches {spec.score_batches}, end to end with {workers} workers", device
    ):
        scoring = measure_scoring(spec, device, peak.flops_per_s, workers)
    with _stage(console, seconds, "attach", "attach: DINOv2, flan-T5 encoder, SD-VAE", device), tempfile.TemporaryDirectory(prefix="d2c-gpu-bench-") as work:
        attach = measure_attach(spec, device, peak.flops_per_s, Path(work))
    with _stage(console, seconds, "training", f"training {spec.trainee} step, precomputed vs online", device):
        setup = training_setup(spec, device)
        checks = attention_paths(setup, attach["t5"][0].extra.get("attention"))
        training = measure_training(setup, peak.flops_per_s)
    # fp32 with eager attention takes about twice the memory of the trainer's settings: a quarter of its batch fits
    batch = spec.train_batch or max(1, (training["precomputed"].batch or 4) // 4)
    with _stage(console, seconds, "variants", f"optimisation variants at batch {batch}", device):
        flops = {"precomputed": training["precomputed"].flops_per_item, "online": training["online"].flops_per_item}
        variants = measure_variants(setup, peak.flops_per_s, batch, flops)
    # The step's model, EMA and optimizer (and compiled graphs holding them) make room for train()'s own: train() then has the memory the batch search had.
    del setup
    torch.compiler.reset()
    per_gpu = training["precomputed"].batch or 8
    with tempfile.TemporaryDirectory(prefix="d2c-gpu-train-") as work:
        with _stage(console, seconds, "trainer", f"train() {spec.trainee} on a synthetic build, batch {per_gpu} per GPU, {workers} loader workers", device):
            training["trainer"], model = _trainer_row(spec, device, peak.flops_per_s, per_gpu, flops["precomputed"], workers, Path(work))
        with _stage(console, seconds, "sampling", f"sampling {spec.trainee} (the model train() saved): SDE 250 and Euler 50, CFG 1.8", device):
            sampling = measure_sampling(spec, device, peak.flops_per_s, model, Path(work)) if model else [_failed_sampling(spec, training["trainer"])]
    return {
        "peak": {
            "flops_per_s": peak.flops_per_s, "tflops": peak.flops_per_s / 1e12, "source": peak.source, "card": peak.card,
            "datasheet_tflops": peak.datasheet_flops_per_s and peak.datasheet_flops_per_s / 1e12, "measured_tflops": peak.measured_flops_per_s / 1e12,
            "matmul": f"{spec.peak_size}^3", "dtype": str(spec.peak_dtype).removeprefix("torch."),
        },  # fmt: skip
        "attention": checks,
        "scoring": scoring,
        "attach": attach,
        "training": training,
        "variants": variants,
        "sampling": sampling,
        "goals": _goals(scoring["summary"], training),
        "seconds": seconds,
    }


def _trainer_row(spec: Spec, device: torch.device, peak: float, per_gpu: int, flops: float, workers: int, work: Path) -> tuple[Row, Path | None]:
    """The train() row at the step's batch, at half of it if that runs out of memory (the loader's pinned batches take some); a failed row otherwise."""
    name = f"{spec.trainee} train(), precomputed build"
    for attempt, batch in enumerate((per_gpu, max(1, per_gpu // 2))):
        try:
            row, model = measure_trainer(spec, device, peak, batch_per_gpu=batch, flops_per_item=flops, workers=workers, out=work / f"run-{attempt}")
            row.extra["batch_choice"] = "the training step's largest" if attempt == 0 else "half the training step's largest (the full one ran out of memory)"
            return row, model
        except torch.cuda.OutOfMemoryError:
            pass
        except Exception as error:  # a result too: the rest of the benchmark still runs and writes its JSON
            return Row("training", name, batch=batch, status="failed", reason=failure(error)), None
        release_memory(device)  # after the except clause, so the failed frames are gone
    return Row("training", name, batch=batch, status="failed", reason="out of GPU memory at the step's batch and at half of it"), None


def _failed_sampling(spec: Spec, trainer: Row) -> Row:
    return Row("sampling", f"{spec.trainee} sampling", status="failed", reason=f"no model to sample: train() failed ({trainer.reason})")


def _peak_words(peak: Peak) -> str:
    measured = f"measured {peak.measured_flops_per_s / 1e12:.3g} TFLOP/s on one matmul"
    if peak.source == "datasheet":
        return f"the {peak.card} datasheet's dense bf16 {peak.flops_per_s / 1e12:.3g} TFLOP/s ({measured})"
    return f"the {measured} (no datasheet figure for this device)"


@contextlib.contextmanager
def _stage(console: Console, seconds: dict[str, float], key: str, label: str, device: torch.device) -> Iterator[None]:
    """Announces a measurement, then records and prints its wall time; the device's cached memory is released after it."""
    console.print(f"[bold]{len(seconds)}[/] {label}")
    tic = time.perf_counter()
    yield
    release_memory(device)
    seconds[key] = time.perf_counter() - tic
    console.print(f"  {seconds[key]:.1f} s")


def _goals(scoring: dict, training: dict) -> list[dict]:
    """The issue's targets next to what was measured."""
    measured = [
        ("scoring end to end / backbone only", 0.80, scoring["end_to_end_share_of_backbone"]),
        ("scoring backbone MFU", 0.60, scoring["best_backbone_mfu"]),
        ("training precomputed / online", 1.5, training["precomputed_over_online"]),
        ("training precomputed MFU (train())", 0.45, training["trainer"].mfu),
    ]
    return [{"goal": goal, "target": target, "measured": value, "met": value is not None and value >= target} for goal, target, value in measured]


def _rows(result: dict) -> list[Row]:
    scoring, attach, training = result["scoring"], result["attach"], result["training"]
    return [
        *scoring["sweep"],
        scoring["end_to_end"],
        *(r for rows in attach.values() for r in rows),
        training["precomputed"],
        training["online"],
        *result["variants"],
        training["trainer"],
        *result["sampling"],
    ]


def _print(result: dict, console: Console) -> None:
    peak = result["peak"]
    against = f"{peak['card']} datasheet {peak['tflops']:.3g}" if peak["source"] == "datasheet" else f"measured {peak['tflops']:.3g} (no datasheet)"
    title = (
        f"d2c-pack GPU benchmark{' (TINY configs)' if result['tiny'] else ''}: {result['device']}, torch {result['torch']}, "
        f"MFU against {against} TFLOP/s; measured matmul peak {peak['measured_tflops']:.3g} TFLOP/s"
    )
    table = Table(title=title)
    for column, justify in (
        ("section", "left"),
        ("workload", "left"),
        ("batch", "right"),
        ("rate", "right"),
        ("MFU", "right"),
        ("peak GiB", "right"),
        ("note", "left"),
    ):
        table.add_column(column, justify=justify)
    for row in _rows(result):
        rate = f"{row.rate:,.1f} {row.unit}" if row.rate is not None else "—"
        mfu = f"{row.mfu:.1%}" if row.mfu is not None else "—"
        memory = f"{row.peak_memory_gib:.1f}" if row.peak_memory_gib is not None else "—"
        note = row.reason if row.status != "ok" else ", ".join(f"{k} {_short(v)}" for k, v in row.extra.items())
        table.add_row(row.section, row.name, str(row.batch or ""), rate, mfu, memory, f"{row.status.upper()}: {note}" if row.status != "ok" else note)
    console.print(table)
    summary = result["scoring"]["summary"]
    console.print(
        f"scoring: end to end = {summary['end_to_end_share_of_backbone']:.0%} of backbone only, {summary['end_to_end_share_of_vae_backbone']:.0%} of "
        f"VAE + backbone from GPU tensors; ImageNet-1k train ({1_281_167:,} images) in {summary['imagenet_hours']:.1f} h on this device"
    )
    goals = Table(title="goals" + (" (tiny configs on a CPU: the figures say nothing about a GPU)" if result["tiny"] else ""))
    for column in ("goal", "target", "measured", "met"):
        goals.add_column(column)
    for goal in result["goals"]:
        value = goal["measured"]
        goals.add_row(goal["goal"], f"{goal['target']:g}", "—" if value is None else f"{value:.3g}", "yes" if goal["met"] else "no")
    console.print(goals)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _default_workers(spec: Spec) -> int:
    """Decoding workers: every core but two (the main process feeds the GPU) on a GPU machine; 1 in tiny mode."""
    return 1 if spec.tiny else max(1, min(16, os.cpu_count() or 1) - 2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="Tiny configs of the same architectures, tiny batches and iterations (CPU, < 1 min).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:1, cpu, ... (default: cuda if available)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"Where to write the results (default {DEFAULT_JSON}).")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the end-to-end scoring row (default: cores − 2; 1 with --tiny).")
    return parser


if __name__ == "__main__":
    main()
