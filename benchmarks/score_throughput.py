"""Scoring throughput of ``DifficultyScorer`` over a batch-size sweep: images/s, backbone only.

A randomly initialised backbone of the named size stands in for a checkpoint (speed does not
depend on the weights). Prints a table and writes JSON.

    python benchmarks/score_throughput.py --model SiT-T/4 --resolution 32 --batch-sizes 16,64,256 --device cpu
    python benchmarks/score_throughput.py --model DiT-XL/2 --resolution 256 --latent --batch-sizes 16,32,64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from d2c_pack.latents import PixelSpace
from d2c_pack.models import backbone_config
from d2c_pack.score import DifficultyScorer


def measure(scorer: DifficultyScorer, batch_size: int, timesteps: int, *, repeats: int, device: torch.device) -> float:
    """Images per second of ``scorer`` on random inputs of one batch size (after one warm-up batch)."""
    channels, size = scorer.config.in_channels, scorer.config.input_size
    images = torch.randn(batch_size, channels, size, size)  # already latents: the backbone is what is timed
    labels = torch.randint(0, scorer.config.num_classes, (batch_size,))
    noise = torch.randn(batch_size, timesteps, channels, size, size)
    scorer(images, labels, noise)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(repeats):
        scorer(images, labels, noise)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * batch_size / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SiT-T/4")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--latent", action="store_true", help="Latent-space backbone (4 channels, R/8), as the official DiT/SiT.")
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="benchmarks/results/score_throughput.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    vae = "stabilityai/sd-vae-ft-ema" if args.latent else None
    config = backbone_config(args.model, image_size=args.resolution, num_classes=1000, vae=vae, in_channels=4 if args.latent else 3)
    # The latents are given directly, so the codec is the identity whatever the backbone's space.
    scorer = DifficultyScorer(config.build(), config, PixelSpace(), args.timesteps, device)
    rows = []
    for batch_size in map(int, args.batch_sizes.split(",")):
        rate = measure(scorer, batch_size, args.timesteps, repeats=args.repeats, device=device)
        rows.append({"batch_size": batch_size, "images_per_second": rate, "forwards_per_second": rate * args.timesteps})

    table = Table(title=f"scoring {args.model} at {args.resolution}, |T| = {args.timesteps}, {device}")
    for column in ("batch", "images/s", "backbone forwards/s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["batch_size"]), f"{row['images_per_second']:.1f}", f"{row['forwards_per_second']:.1f}")
    Console().print(table)
    result = {
        "model": args.model, "resolution": args.resolution, "latent": args.latent, "timesteps": args.timesteps,
        "device": str(device), "machine": platform.platform(), "threads": torch.get_num_threads(), "rows": rows,
    }  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
