"""Training speed and peak memory of the demo SiT on the demo subset, with each D2C component on or off.

Each variant runs `d2c-pack train --recipe demo` in its own process (so its peak RSS is its own),
for `--steps` steps; steps/s is taken from the metrics of the second half of the run (after
warm-up). Builds the demo subset first if `--data` does not exist. With `--imagenet-rows N`, the
D2C variant also trains on N synthetic ImageNet-shaped rows (benchmarks/train_in_place.py's build:
latent moments 8×32×32, text 16×2048, DINOv2-B tokens 256×768), where the same SiT-T/4 sees the
same 64 tokens: the ratio of the two step times is what ImageNet's wider columns cost, in wall time
and in CPU time per step (runs of `--steps` and a quarter of them, differenced: robust to the other
jobs of a shared machine). Prints a table, writes JSON.

    python benchmarks/train_cpu.py [--steps 40] [--data runs/bench-demo-data] [--imagenet-rows 512] [--d2c-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import write_report
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_in_place import synthetic_build  # noqa: E402

VARIANTS = {
    "D2C (text + align + class)": [],
    "no text": ["--no-text"],
    "no align": ["--no-align"],
    "no class": ["--no-class-cond"],
    "plain SiT (class only)": ["--no-text", "--no-align"],
}
IMAGENET = "D2C on ImageNet-shaped rows"


def run_variant(data: Path, flags: list[str], steps: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "d2c_pack", "train", "--recipe", "demo", "--data", str(data), "--out", out,
            "--steps", str(steps), "--batch-size", str(batch_size), "--log-every", "1", "--ckpt-every", str(10 * steps), *flags,
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()}")
        lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steady = lines[len(lines) // 2 :]
    images_per_second = sum(line["images_per_second"] for line in steady) / len(steady)
    cpu_seconds = usage.ru_utime + usage.ru_stime
    return {"steps_per_second": images_per_second / batch_size, "images_per_second": images_per_second, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_seconds": cpu_seconds}


def cpu_seconds_per_step(data: Path, flags: list[str], steps: int, batch_size: int) -> float:
    """CPU seconds (user + system) per training step: a run of ``steps`` less one of a quarter of them, so that start-up
    and loading cancel out. Unlike wall time, it hardly changes with the other jobs of a shared machine."""
    short, full = (run_variant(data, flags, n, batch_size)["cpu_seconds"] for n in (steps // 4, steps))
    return (full - short) / (steps - steps // 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default="runs/bench-demo-data")
    parser.add_argument("--imagenet-rows", type=int, default=0, help="also train the D2C variant on this many synthetic ImageNet-shaped rows")
    parser.add_argument("--d2c-only", action="store_true", help="leave out the variants with a component off")
    parser.add_argument("--json", default="benchmarks/results/train_cpu.json")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.exists():
        subprocess.run([sys.executable, "-m", "d2c_pack", "build", "--recipe", "demo", "--out", str(data)], check=True)
    variants = dict(list(VARIANTS.items())[:1]) if args.d2c_only else VARIANTS
    results = {name: run_variant(data, flags, args.steps, args.batch_size) for name, flags in variants.items()}
    if args.imagenet_rows:
        with tempfile.TemporaryDirectory() as scratch:
            imagenet = synthetic_build(Path(scratch) / "imagenet", args.imagenet_rows, 256)
            results[IMAGENET] = run_variant(imagenet, ["--resolution", "256"], args.steps, args.batch_size)
            per_step = {"demo": cpu_seconds_per_step(data, [], args.steps, args.batch_size)}
            per_step["imagenet"] = cpu_seconds_per_step(imagenet, ["--resolution", "256"], args.steps, args.batch_size)
        results[IMAGENET]["step_time_vs_demo"] = results["D2C (text + align + class)"]["steps_per_second"] / results[IMAGENET]["steps_per_second"]
        results[IMAGENET] |= {"cpu_seconds_per_step": per_step, "cpu_step_time_vs_demo": per_step["imagenet"] / per_step["demo"]}

    table = Table(title=f"demo SiT-T/4 training on the demo subset, batch {args.batch_size}, {os.cpu_count()} CPU cores")
    for column in ("variant", "steps/s", "images/s", "peak RSS", "step time vs demo (wall / CPU)"):
        table.add_column(column, justify="right")
    for name, row in results.items():
        ratio = f"{row['step_time_vs_demo']:.2f}× / {row['cpu_step_time_vs_demo']:.2f}×" if "step_time_vs_demo" in row else ""
        table.add_row(name, f"{row['steps_per_second']:.2f}", f"{row['images_per_second']:.0f}", f"{row['peak_rss_mb']:.0f} MB", ratio)
    Console().print(table)
    write_report(args.json, results, steps=args.steps, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
