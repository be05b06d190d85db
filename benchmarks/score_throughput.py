"""Scoring throughput of ``DifficultyScorer`` over a batch-size sweep: images/s, backbone only; or of ``score_source`` end to end.

A randomly initialised backbone of the named size stands in for a checkpoint (speed does not
depend on the weights). Prints a table and writes JSON.

    python benchmarks/score_throughput.py --model SiT-T/4 --resolution 32 --batch-sizes 16,64,256 --device cpu
    python benchmarks/score_throughput.py --model DiT-XL/2 --resolution 256 --latent --batch-sizes 16,32,64 --device cuda

``--end-to-end N`` times ``score_source`` itself (what ``d2c-pack score`` runs) on N synthetic
500×375 JPEG files on disk with ``--workers`` decoding processes, a pixel-space scorer saved as a
model folder, at each batch size: the wall time of the call, after a warm-up call on 2 batches of
other files (so imports and first-call costs are left out; loading the small model and starting the
workers are in). It uses only ``score_source`` and ``ScoreConfig``, so the same command times an
older checkout of the library for a before/after comparison.

    python benchmarks/score_throughput.py --end-to-end 512 --model SiT-S/4 --resolution 64 --batch-sizes 32 --workers 1 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable (benchmarks.gpu)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.gpu.scoring import jpeg_folder
from d2c_pack.models.checkpoint import BackboneConfig, backbone_config, save_backbone
from d2c_pack.models.latents import PixelSpace
from d2c_pack.selection.score import DifficultyScorer, score_source
from d2c_pack.selection.settings import ScoreConfig


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


def end_to_end(config: BackboneConfig, images: int, batch_size: int, timesteps: int, *, workers: int, device: str) -> float:
    """Images per second of ``score_source`` over ``images`` JPEG files, after a warm-up call on 2 batches of other files."""
    with tempfile.TemporaryDirectory(prefix="d2c-score-e2e-") as scratch:
        root = Path(scratch)
        scorer = save_backbone(config.build(), config, root / "scorer")
        jpeg_folder(root / "warm-up", 2 * batch_size)
        jpeg_folder(root / "images", images)

        def score(folder: str) -> None:
            score_source(ScoreConfig(
                source=str(root / folder), scorer=str(scorer), resolution=config.image_size, timesteps=timesteps, batch_size=batch_size,
                workers=workers, device=device, work=str(root / "work"),
            ))  # fmt: skip

        score("warm-up")
        tic = time.perf_counter()
        score("images")
        return images / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SiT-T/4")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--latent", action="store_true", help="Latent-space backbone (4 channels, R/8), as the official DiT/SiT.")
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--end-to-end", type=int, metavar="N", default=None, help="time score_source on N JPEG files instead of the backbone alone")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes of --end-to-end")
    parser.add_argument("--json", default="benchmarks/results/score_throughput.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    vae = "stabilityai/sd-vae-ft-ema" if args.latent else None
    config = backbone_config(args.model, image_size=args.resolution, num_classes=1000, vae=vae, in_channels=4 if args.latent else 3)
    rows = []
    if args.end_to_end:
        if args.latent:
            parser.error("--end-to-end scores with a pixel-space scorer (no VAE can be loaded offline): leave out --latent")
        for batch_size in map(int, args.batch_sizes.split(",")):
            rate = end_to_end(config, args.end_to_end, batch_size, args.timesteps, workers=args.workers, device=args.device)
            rows.append({"batch_size": batch_size, "images_per_second": rate, "forwards_per_second": rate * args.timesteps})
    else:
        # The latents are given directly, so the codec is the identity whatever the backbone's space.
        scorer = DifficultyScorer(config.build(), config, PixelSpace(), args.timesteps, device)
        for batch_size in map(int, args.batch_sizes.split(",")):
            rate = measure(scorer, batch_size, args.timesteps, repeats=args.repeats, device=device)
            rows.append({"batch_size": batch_size, "images_per_second": rate, "forwards_per_second": rate * args.timesteps})

    what = f"score_source on {args.end_to_end} JPEG files, {args.workers} workers" if args.end_to_end else "backbone only"
    table = Table(title=f"scoring {args.model} at {args.resolution}, |T| = {args.timesteps}, {device}: {what}")
    for column in ("batch", "images/s", "backbone forwards/s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["batch_size"]), f"{row['images_per_second']:.1f}", f"{row['forwards_per_second']:.1f}")
    Console().print(table)
    result = {
        "model": args.model, "resolution": args.resolution, "latent": args.latent, "timesteps": args.timesteps,
        "device": str(device), "machine": platform.platform(), "threads": torch.get_num_threads(), "rows": rows,
        "end_to_end_images": args.end_to_end, "workers": args.workers if args.end_to_end else None,
    }  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
