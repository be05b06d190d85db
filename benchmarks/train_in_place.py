"""Training from a build read in place: rows/s, peak RSS and peak extra disk of `d2c-pack train --data BUILD`.

`d2c-pack train --data-memory-gb 0` (rows read in place, not decoded into memory; see
benchmarks/data_path.py for that) runs in its own process with HF_DATASETS_CACHE pointed at an
empty folder, whose size is polled while it runs (the Arrow copy the `datasets` path writes there); train rows/s is
the mean of the metrics of the second half of the run (after warm-up). On a CPU the model
dominates, so the reader is also timed alone: the DataLoader over the same batches, no model.
`--data` is a built folder or a Hub ORG/NAME[@REV]; without it a synthetic latent build is written
first (label, latent, text and visual columns of `--resolution`'s shapes, encoded as a build encodes
them, cut into row groups as a build cuts them unless `--rows-per-group` says otherwise).

    python benchmarks/train_in_place.py [--data BUILD] [--steps 50] [--model SiT-S/2] [--batch-size 256]
    python benchmarks/train_in_place.py --tiny      # a 96-row synthetic build and SiT-T/2 on one thread, as the test runs it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq

from d2c_pack.core.arrays import array_feature
from d2c_pack.core.fingerprint import sha256_file
from d2c_pack.publish.shard_writer import ROW_GROUP_BYTES, parquet_options
from d2c_pack.publish.verify import MANIFEST

if __package__:  # imported as benchmarks.train_in_place (benchmarks/gpu/trainer.py)
    from ._report import print_table, write_report
else:  # run as a script, or imported by name with this folder on sys.path
    from _report import print_table, write_report

# What a build's manifest records of the VAE behind its latent column (training reads it from there): the SD VAE's
# name and scale, and a placeholder hash, since the synthetic latents come from no VAE.
SYNTHETIC_LATENT_INPUTS = {"vae": "stabilityai/sd-vae-ft-ema", "vae_sha256": "0" * 64, "latent_scaling_factor": 0.18215, "latent_shift_factor": 0.0}


def synthetic_build(
    folder: Path, rows: int, resolution: int, *, text_shape=(16, 2048), visual_dim=768, visual_tokens: int | None = None, rows_per_group: int | None = None, shards=2
) -> Path:
    """A folder shaped like a latent build (data/ shards + d2c/manifest.json) with random rows; no image column.

    ``visual_tokens``: tokens per row (default: DINOv2-B/14's at 224 px, one per 16 px of R).
    ``rows_per_group``: parquet row group size (default: as many rows as a build puts in ``ROW_GROUP_BYTES``)."""
    side, tokens = resolution // 8, visual_tokens or (resolution // 16) ** 2  # SD-VAE latent side; DINOv2-B/14 tokens
    features = datasets.Features({
        "label": datasets.ClassLabel(num_classes=10),
        "latent": array_feature((8, side, side), "float16"),
        "text_embedding": array_feature(text_shape, "float16"),
        "text_mask": array_feature(text_shape[:1], "int8"),
        "visual_tokens": array_feature((tokens, visual_dim), "float16"),
    })  # fmt: skip
    rng = np.random.default_rng(0)
    noise = lambda *shape: rng.random((rows, *shape), dtype=np.float32).astype(np.float16)  # noqa: E731  (incompressible, like real values)
    table = datasets.Dataset.from_dict({
        "label": rng.integers(0, 10, rows), "latent": noise(8, side, side), "text_embedding": noise(*text_shape),
        "text_mask": np.ones((rows, text_shape[0]), np.int8), "visual_tokens": noise(tokens, visual_dim),
    }, features=features)  # fmt: skip
    (folder / "data").mkdir(parents=True)
    options = parquet_options(features)  # a build's encodings: decoding speed depends on them (dictionaries cost 4×)
    rows_per_group = rows_per_group or max(1, ROW_GROUP_BYTES // (table.data.nbytes // rows))
    for index in range(shards):
        shard = table.shard(shards, index, contiguous=True).data.table
        pq.write_table(shard, folder / "data" / f"train-{index:05d}-of-{shards:05d}.parquet", row_group_size=rows_per_group, **options)
    # The manifest lists the shards, as a build's does: training reads the listed shards in place.
    files = {path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size} for path in sorted(folder.glob("data/*.parquet"))}
    (folder / MANIFEST).parent.mkdir()
    manifest = {"recipe": {"resolution": resolution}, "inputs": SYNTHETIC_LATENT_INPUTS, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest) + "\n")
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def reader_rows_per_second(data: str, steps: int, batch_size: int, workers: int, flags: dict, cache: Path) -> float:
    """Rows/s of the training DataLoader alone, over the batches of ``steps`` steps (``datasets`` caching in ``cache``)."""
    import torch
    from torch.utils.data import DataLoader

    from d2c_pack.training.data import EpochPermutationBatches, collate_rows
    from d2c_pack.training.loop import prepare_data
    from d2c_pack.training.settings import TrainConfig

    config = TrainConfig(data=data, out="unused", batch_size=batch_size, workers=workers, data_memory_gb=0, **flags)
    cached, datasets.config.HF_DATASETS_CACHE = datasets.config.HF_DATASETS_CACHE, str(cache)
    try:
        rows = prepare_data(config, torch.device("cpu")).dataset
    finally:
        datasets.config.HF_DATASETS_CACHE = cached
    batches = EpochPermutationBatches(len(rows), batch_size, seed=0, start_step=0, num_steps=steps)
    tic = time.perf_counter()
    for _ in DataLoader(rows, batch_sampler=batches, num_workers=workers, collate_fn=collate_rows):
        pass
    return steps * batch_size / (time.perf_counter() - tic)


def train_in_place_benchmark(
    data: str, steps: int, *, model: str = "SiT-S/2", batch_size: int = 256, workers: int = 4, device: str = "auto", text: bool = True, align: bool = True,
    threads: int | None = None,
) -> dict:  # fmt: skip
    """Trains ``steps`` steps of ``model`` from ``data`` in its own process; rows/s (training and reader alone),
    peak RSS of its largest process, and the peak bytes it wrote to an empty HF_DATASETS_CACHE.

    ``threads``: the trainer's OMP_NUM_THREADS (default: the environment's)."""
    flags = {"model": model, "device": device, "text": text, "align": align}
    with tempfile.TemporaryDirectory() as scratch:
        cache, out = Path(scratch) / "hf-datasets-cache", Path(scratch) / "run"
        cache.mkdir()
        command = [
            sys.executable, "-m", "d2c_pack", "train", "--data", data, "--out", str(out), "--model", model, "--steps", str(steps),
            "--batch-size", str(batch_size), "--workers", str(workers), "--device", device, "--log-every", "1",
            "--ckpt-every", str(steps), "--text" if text else "--no-text", "--align" if align else "--no-align", "--data-memory-gb", "0",
        ]  # fmt: skip
        log = Path(scratch) / "train.log"  # a file, not a pipe: a full pipe would stall the run
        with log.open("w") as stderr:
            env = os.environ | {"HF_DATASETS_CACHE": str(cache)} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        peak_disk, status, usage = 0, None, None
        while status is None:
            pid, wait_status, wait_usage = os.wait4(process.pid, os.WNOHANG)
            peak_disk = max(peak_disk, folder_bytes(cache))
            if pid:
                status, usage = wait_status, wait_usage
            else:
                time.sleep(0.2)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        reader = reader_rows_per_second(data, steps, batch_size, workers, flags, Path(scratch) / "reader-cache")
    steady = lines[len(lines) // 2 :]
    return {
        "data": data, "model": model, "steps": steps, "batch_size": batch_size, "workers": workers,
        "train_rows_per_second": sum(line["images_per_second"] for line in steady) / len(steady),
        "reader_rows_per_second": reader,
        "peak_rss_bytes": usage.ru_maxrss * 1024, "peak_extra_disk_bytes": peak_disk,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a built folder or Hub ORG/NAME[@REV]; default: a synthetic build")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--model", default="SiT-S/2")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="the trainer's OMP_NUM_THREADS (default: the environment's)")
    parser.add_argument("--rows", type=int, default=2048, help="rows of the synthetic build")
    parser.add_argument("--resolution", type=int, default=256, help="resolution of the synthetic build")
    parser.add_argument("--rows-per-group", type=int, default=None, help="parquet row group size of the synthetic build (default: a build's)")
    parser.add_argument("--tiny", action="store_true", help="96 synthetic rows at R = 32, SiT-T/2, 4 steps of 8 rows, one thread")
    parser.add_argument("--json", default="benchmarks/results/train_in_place.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.resolution, args.rows_per_group, args.model, args.steps, args.batch_size, args.workers = 96, 32, 10, "SiT-T/2", 4, 8, 2
        args.threads = 1  # OpenMP threads waiting on each other dominate tiny ops on a small, shared CPU
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            shapes = {"text_shape": (16, 8), "visual_dim": 8} if args.tiny else {}
            data = str(synthetic_build(Path(scratch) / "build", args.rows, args.resolution, rows_per_group=args.rows_per_group, **shapes))
        result = train_in_place_benchmark(
            data, args.steps, model=args.model, batch_size=args.batch_size, workers=args.workers, device=args.device, threads=args.threads
        )
        if args.data is None:
            rows_per_group = pq.read_metadata(next(Path(data).glob("data/*.parquet"))).row_group(0).num_rows
            result |= {"synthetic": {"rows": args.rows, "resolution": args.resolution, "rows_per_group": rows_per_group}}

    print_table(
        f"train {args.model} {args.steps} steps reading {args.data or 'a synthetic build'} in place, batch {args.batch_size}",
        ("train rows/s", "reader rows/s", "peak RSS", "peak extra disk"),
        [(
            f"{result['train_rows_per_second']:.1f}", f"{result['reader_rows_per_second']:.1f}",
            f"{result['peak_rss_bytes'] / 2**20:.0f} MiB", f"{result['peak_extra_disk_bytes'] / 2**20:.1f} MiB",
        )],
    )  # fmt: skip
    write_report(args.json, [result])

if __name__ == "__main__":
    main()
