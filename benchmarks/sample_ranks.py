"""Sampling across `torchrun` ranks: wall time of `d2c-pack sample --out X.npz` in 1 process and in N ranks, and whether the files are equal.

Each command runs as its own process tree from a fresh interpreter, so both times include imports
and model loading. The single process uses every core (torch's default threads) unless
`--threads` says otherwise; each rank one thread, torchrun's default. The two alternate `--repeats` times (so that a change of load on a
shared machine hits both) and the medians are compared. The `.npz` files must be byte-identical:
the ranks draw the batches one process draws, and rank 0 writes them in index order.

    python benchmarks/sample_ranks.py [--model demo:digits] [--num-samples 256] [--sampling-steps 25] [--ranks 2] [--repeats 3]
    python benchmarks/sample_ranks.py --tiny      # 6 samples, 2 steps, once, as the test runs it
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _report import print_table, write_report


def timed_sample(command: list[str], env: dict[str, str]) -> float:
    """Seconds the command takes; raises with its output if it fails."""
    tic = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def sample_ranks_benchmark(
    model: str, num_samples: int, sampling_steps: int, *, ranks: int, batch_size: int, sampler: str, repeats: int, work: Path, threads: int | None = None
) -> dict:
    """Times one process and ``ranks`` torchrun ranks writing the same ``.npz`` on the CPU, alternately; every file is compared byte for byte."""
    settings = [
        "sample", model, "--num-samples", str(num_samples), "--sampling-steps", str(sampling_steps), "--batch-size", str(batch_size),
        "--sampler", sampler, "--cfg-scale", "1.5", "--device", "cpu",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    one, many = work / "one.npz", work / "ranks.npz"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(ranks), "-m", "d2c_pack"]
    one_seconds, ranks_seconds, identical = [], [], True
    for _ in range(repeats):
        single = env if threads is None else env | {"OMP_NUM_THREADS": str(threads)}
        one_seconds.append(timed_sample([sys.executable, "-m", "d2c_pack", *settings, "--out", str(one)], single))
        ranks_seconds.append(timed_sample([*torchrun, *settings, "--out", str(many)], env | {"OMP_NUM_THREADS": "1"}))
        identical &= one.read_bytes() == many.read_bytes()
    one_median, ranks_median = statistics.median(one_seconds), statistics.median(ranks_seconds)
    return {
        "model": model, "num_samples": num_samples, "sampling_steps": sampling_steps, "sampler": sampler, "batch_size": batch_size,
        "ranks": ranks, "repeats": repeats, "one_process_threads": threads or "default", "one_process_seconds": one_seconds, "ranks_seconds": ranks_seconds,
        "ratio": ranks_median / one_median, "identical": identical,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo:digits")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads of the single process (default: torch's, every core)")
    parser.add_argument("--tiny", action="store_true", help="6 samples in batches of 2, 2 steps, once")
    parser.add_argument("--out", default="benchmarks/results/sample_ranks.json")
    parser.add_argument("--work", default=None, help="folder for the scratch .npz files (removed afterwards; default: a temporary one)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_samples, args.sampling_steps, args.batch_size, args.repeats = 6, 2, 2, 1
    work = Path(tempfile.mkdtemp(prefix="sample-ranks-", dir=args.work))
    try:
        result = sample_ranks_benchmark(
            args.model, args.num_samples, args.sampling_steps, ranks=args.ranks, batch_size=args.batch_size, sampler=args.sampler,
            repeats=args.repeats, work=work, threads=args.threads,
        )  # fmt: skip
    finally:
        shutil.rmtree(work)

    seconds = lambda runs: " / ".join(f"{s:.1f}" for s in runs)  # noqa: E731
    print_table(
        f"sample {args.model}: {args.num_samples} samples, {args.sampling_steps} {args.sampler} steps, batch {args.batch_size}",
        ("1 process (s)", f"{args.ranks} ranks (s)", "ratio of medians", "identical .npz"),
        [(seconds(result["one_process_seconds"]), seconds(result["ranks_seconds"]), f"{result['ratio']:.2f}", str(result["identical"]))],
    )
    write_report(args.out, [result])

if __name__ == "__main__":
    main()
