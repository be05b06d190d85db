"""`d2c-pack export` speed: rows/s and output size of the repa and imagefolder layouts, and of a re-run that finds everything done.

Writes a synthetic latent build first (ImageNet-like 375×500 JPEG noise images, latent 8 × R/8 × R/8
f16 noise, 10 classes; the manifest a build writes, naming the SD VAE), then times ``export`` of it
in each format in this process, then the same command again (the resume path: every file exists).

    python benchmarks/export_speed.py [--rows 1000] [--resolution 256] [--json benchmarks/results/export_speed.json]
    python benchmarks/export_speed.py --tiny      # 24 rows at R = 32, as the test runs it
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from _report import write_report
from PIL import Image
from rich.console import Console
from rich.table import Table

from d2c_pack.core.arrays import array_feature
from d2c_pack.core.fingerprint import sha256_file
from d2c_pack.publish.export import export
from d2c_pack.publish.settings import EXPORT_FORMATS, ExportConfig
from d2c_pack.publish.shard_writer import parquet_options
from d2c_pack.publish.verify import MANIFEST

sys.path.insert(0, str(Path(__file__).parent))
from train_in_place import SYNTHETIC_LATENT_INPUTS, folder_bytes  # noqa: E402  (the manifest a latent build records)

JPEG_SHAPE = (375, 500)  # a typical ImageNet photograph
POOL = 16  # distinct images and latents, cycled over the rows: synthesis costs little next to export


def synthetic_build(folder: Path, rows: int, resolution: int) -> Path:
    """A folder shaped like a build with image and latent columns (data/ shard + d2c/manifest.json)."""
    side = resolution // 8
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10), "source_id": datasets.Value("string"),
        "latent": array_feature((8, side, side), "float16"),
    })  # fmt: skip
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(POOL):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*JPEG_SHAPE, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=75)
        jpegs.append(buffer.getvalue())
    latents = rng.standard_normal((POOL, 8, side, side)).astype(np.float16)
    table = datasets.Dataset.from_dict({
        "image": [{"bytes": jpegs[i % POOL], "path": None} for i in range(rows)], "label": [i % 10 for i in range(rows)],
        "source_id": [f"class{i % 10}/{i:08d}.JPEG" for i in range(rows)], "latent": latents[np.arange(rows) % POOL],
    }, features=features)  # fmt: skip
    (folder / "data").mkdir(parents=True)
    pq.write_table(table.data.table, folder / "data" / "train-00000-of-00001.parquet", row_group_size=64, **parquet_options(features))
    files = {path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size} for path in sorted(folder.glob("data/*.parquet"))}
    (folder / MANIFEST).parent.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"recipe": {"resolution": resolution}, "inputs": SYNTHETIC_LATENT_INPUTS, "files": files}) + "\n")
    return folder


def measure(build: Path, out: Path, layout: str, rows: int) -> dict:
    """Seconds of a fresh export and of the re-run that finds it done; rows/s and bytes written."""
    config = ExportConfig(name=str(build), format=layout, out=str(out))
    tic = time.perf_counter()
    export(config)
    seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    export(config)
    rerun = time.perf_counter() - tic
    return {"format": layout, "rows": rows, "seconds": seconds, "rows_per_second": rows / seconds, "rerun_seconds": rerun, "bytes": folder_bytes(out)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="24 rows at R = 32")
    parser.add_argument("--json", default="benchmarks/results/export_speed.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.resolution = 24, 32
    with tempfile.TemporaryDirectory() as scratch:
        build = synthetic_build(Path(scratch) / "build", args.rows, args.resolution)
        results = [measure(build, Path(scratch) / layout, layout, args.rows) for layout in EXPORT_FORMATS]
    table = Table(title=f"export of a synthetic {args.rows}-row build at R = {args.resolution}")
    for column in ("format", "rows/s", "seconds", "re-run seconds", "size"):
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(result["format"], f"{result['rows_per_second']:.1f}", f"{result['seconds']:.1f}", f"{result['rerun_seconds']:.2f}", f"{result['bytes'] / 2**20:.1f} MiB")
    Console().print(table)
    write_report(args.json, results, resolution=args.resolution)


if __name__ == "__main__":
    main()
