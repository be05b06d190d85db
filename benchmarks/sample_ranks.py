"""Sampling across `torchrun` ranks: wall time of `d2c-pack sample --out X.npz` in 1 process and in N ranks, and whether the files are equal.

Each command runs as its own process tree from a fresh interpreter, so both times include imports
and model loading. The single process uses every core (torch's default threads); each rank one
thread, torchrun's default. The `.npz` files must be byte-identical: the ranks draw the batches one
process draws, and rank 0 writes them in index order.

    python benchmarks/sample_ranks.py [--model demo:digits] [--num-samples 512] [--sampling-steps 50] [--ranks 2]
    python benchmarks/sample_ranks.py --tiny      # 6 samples, 2 steps, as the test runs it
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table


def timed_sample(command: list[str], env: dict[str, str]) -> float:
    """Seconds the command takes; raises with its output if it fails."""
    tic = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def sample_ranks_benchmark(model: str, num_samples: int, sampling_steps: int, *, ranks: int, batch_size: int, sampler: str, work: Path) -> dict:
    """Times one process and ``ranks`` torchrun ranks writing the same ``.npz`` on the CPU; their files are compared byte for byte."""
    settings = [
        "sample", model, "--num-samples", str(num_samples), "--sampling-steps", str(sampling_steps), "--batch-size", str(batch_size),
        "--sampler", sampler, "--cfg-scale", "1.5", "--device", "cpu",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    one, many = work / "one.npz", work / "ranks.npz"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(ranks), "-m", "d2c_pack"]
    one_seconds = timed_sample([sys.executable, "-m", "d2c_pack", *settings, "--out", str(one)], env)
    ranks_seconds = timed_sample([*torchrun, *settings, "--out", str(many)], env | {"OMP_NUM_THREADS": "1"})
    identical = one.read_bytes() == many.read_bytes()
    return {
        "model": model, "num_samples": num_samples, "sampling_steps": sampling_steps, "sampler": sampler, "batch_size": batch_size,
        "ranks": ranks, "one_process_seconds": one_seconds, "ranks_seconds": ranks_seconds, "ratio": ranks_seconds / one_seconds,
        "identical": identical,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo:digits")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="6 samples in batches of 2, 2 steps")
    parser.add_argument("--out", default="benchmarks/results/sample_ranks.json")
    parser.add_argument("--work", default=None, help="folder for the scratch .npz files (removed afterwards; default: a temporary one)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_samples, args.sampling_steps, args.batch_size = 6, 2, 2
    work = Path(tempfile.mkdtemp(prefix="sample-ranks-", dir=args.work))
    try:
        result = sample_ranks_benchmark(
            args.model, args.num_samples, args.sampling_steps, ranks=args.ranks, batch_size=args.batch_size, sampler=args.sampler, work=work
        )  # fmt: skip
    finally:
        shutil.rmtree(work)

    table = Table(title=f"sample {args.model}: {args.num_samples} samples, {args.sampling_steps} {args.sampler} steps, batch {args.batch_size}")
    for column in ("1 process (s)", f"{args.ranks} ranks (s)", "ratio", "identical .npz"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['one_process_seconds']:.1f}", f"{result['ranks_seconds']:.1f}", f"{result['ratio']:.2f}", str(result["identical"]))
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": platform.platform(), "cpus": os.cpu_count(), "results": [result]}
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
