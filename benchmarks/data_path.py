"""The trainer's data path: rows/s per process of fetching random training batches, in memory vs read in place.

For each row size a synthetic latent build (benchmarks/train_in_place.py's, cut into row groups as
a build cuts them) is written under --work, and batches of --batch-size rows in the trainer's
order (EpochPermutationBatches) are fetched by:

- memory, gather: ``index_select`` of the stored columns (fp16, int8) into batch buffers allocated
  once, what the host of a GPU run does per step when the columns live in host memory (its pinned
  buffers come from torch's caching host allocator); the float32 conversion runs on the GPU;
- memory, to float32: ``SubsetArrays.gather`` as a CPU run calls it (gather, then float32/int64 here,
  into new tensors: on Linux a new 100 MB tensor is fresh pages, and their first touch costs as much as the copy);
- in place: ``ShardRows`` (``--data-memory-gb 0``), a DataLoader batch without workers;
- datasets torch: ``load_dataset(folder, split="train").with_format("torch")[indices]``.

Decoding the columns once (``decode_columns``, as the trainer does) is timed too. Row sizes:
ImageNet (SD-VAE latent moments 8×32×32, DINOv2-B tokens 256×768, text 16×2048, all fp16; mask 16)
and the demo's (text 16×384, 49 tokens × 64, and a 32 px latent standing in for its 3 KiB image).

    python benchmarks/data_path.py [--rows 2048] [--batch-size 256]
    python benchmarks/data_path.py --tiny      # 64 small rows, as the test runs it
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import torch
from _report import write_report
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_in_place import synthetic_build  # noqa: E402

from d2c_pack.publish.shards import ParquetShards, ShardRows, built_shards  # noqa: E402
from d2c_pack.training.data import EpochPermutationBatches, collate_rows  # noqa: E402
from d2c_pack.training.memory import decode_columns  # noqa: E402

COLUMNS = ["latent", "text_embedding", "text_mask", "visual_tokens"]
ROW_SIZES = {
    "demo": {"resolution": 32, "text_shape": (16, 384), "visual_dim": 64, "visual_tokens": 49},
    "imagenet": {"resolution": 256, "text_shape": (16, 2048), "visual_dim": 768},
}
TINY_ROW_SIZES = {
    "demo": {"resolution": 32, "text_shape": (16, 8), "visual_dim": 8, "visual_tokens": 4},
    "imagenet": {"resolution": 64, "text_shape": (16, 16), "visual_dim": 16},
}


def rows_per_second(fetch: Callable[[list[int]], object], order: EpochPermutationBatches, batches: int) -> float:
    """Rows/s of ``fetch`` over ``batches`` batches of the trainer's order, after one warm-up batch."""
    fetch(order.global_indices(0).tolist())
    tic = time.perf_counter()
    for step in range(1, batches + 1):
        fetch(order.global_indices(step).tolist())
    return batches * order.global_batch / (time.perf_counter() - tic)


def measure(folder: Path, batch_size: int, memory_batches: int, slow_batches: int, cache: Path) -> dict:
    """The rows/s of every path over one build."""
    shards = ParquetShards(built_shards(folder))
    order = EpochPermutationBatches(len(shards), batch_size, seed=0, start_step=0, num_steps=memory_batches + 1)
    tic = time.perf_counter()
    arrays = decode_columns(shards, COLUMNS, 0, device=torch.device("cpu"), budget=sys.maxsize, announce=False)
    decode = len(arrays) / (time.perf_counter() - tic)

    buffers = {name: torch.empty((batch_size, *column.shape[1:]), dtype=column.dtype) for name, column in arrays.columns.items()}

    def gather(indices: list[int]) -> None:
        index = torch.tensor(indices)
        for name, column in arrays.columns.items():
            torch.index_select(column, 0, index, out=buffers[name])

    in_place = ShardRows(shards, COLUMNS, 0)
    cached, datasets.config.HF_DATASETS_CACHE = datasets.config.HF_DATASETS_CACHE, str(cache)
    try:
        torch_format = datasets.load_dataset(str(folder), split="train").with_format("torch")
    finally:
        datasets.config.HF_DATASETS_CACHE = cached
    return {
        "rows": len(arrays),
        "bytes_per_row": arrays.nbytes // len(arrays),
        "decode_rows_per_second": decode,
        "memory_gather": rows_per_second(gather, order, memory_batches),
        "memory_to_float32": rows_per_second(arrays.gather, order, memory_batches),
        "in_place": rows_per_second(lambda indices: collate_rows(in_place.__getitems__(indices)), order, slow_batches),
        "datasets_torch": rows_per_second(lambda indices: torch_format[indices], order, slow_batches),
    }


PATHS = {"memory_gather": "memory, gather", "memory_to_float32": "memory, to float32", "in_place": "in place", "datasets_torch": "datasets torch"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="rows of each synthetic build")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--memory-batches", type=int, default=20, help="timed batches of the in-memory paths")
    parser.add_argument("--slow-batches", type=int, default=3, help="timed batches of the in-place and datasets paths")
    parser.add_argument("--tiny", action="store_true", help="64 small rows, batches of 16")
    parser.add_argument("--work", default=None, help="folder for the synthetic builds (removed afterwards; default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results/data_path.json")
    args = parser.parse_args(argv)
    sizes = ROW_SIZES
    if args.tiny:
        args.rows, args.batch_size, args.memory_batches, args.slow_batches, sizes = 64, 16, 2, 1, TINY_ROW_SIZES
    results = {}
    scratch = Path(tempfile.mkdtemp(dir=args.work))
    try:
        for name, shapes in sizes.items():
            build = synthetic_build(scratch / name, args.rows, **shapes)
            results[name] = measure(build, args.batch_size, args.memory_batches, args.slow_batches, scratch / f"{name}-cache")
            shutil.rmtree(build)
    finally:
        shutil.rmtree(scratch)

    table = Table(title=f"training batches of {args.batch_size} random rows, rows/s per process ({os.cpu_count()} CPU cores, torch {torch.get_num_threads()} threads)")
    for column in ("row size", "KiB/row", "decode once", *PATHS.values()):
        table.add_column(column, justify="right")
    for name, row in results.items():
        rates = [f"{row[key]:,.0f}" for key in PATHS]
        table.add_row(name, f"{row['bytes_per_row'] / 1024:.1f}", f"{row['decode_rows_per_second']:,.0f}", *rates)
    Console().print(table)
    write_report(args.out, results, torch_threads=torch.get_num_threads(), batch_size=args.batch_size)


if __name__ == "__main__":
    main()
