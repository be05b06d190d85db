"""Reading an array column: nested fixed-size lists (now) against datasets' Array2D extension type (before).

Writes ``--rows`` rows of a ``visual_tokens``-like column (N_tok × D float16 Gaussian noise) in
each layout to parquet through ``datasets``, opens it memory-mapped as ``load_dataset`` does,
and times (CPU seconds of this process, best of ``--repeats``: the machine may be shared):

- ``trainer row``: the trainer's ``SubsetRows``, one row at a time (Arrow → float32 tensor);
- ``torch row``: datasets' torch format, one row at a time (what the trainer read before);
- ``torch column``: every row at once in datasets' torch format (float32);
- ``column_array``: every row as one float16 NumPy array (``d2c_pack.core.arrays.column_array``);
- ``polars``: ``pl.read_parquet(shard)[column].to_numpy()``, with the dtype it gives.

    python benchmarks/array_columns.py [--rows 512] [--shape 256,768] [--tiny] [--json benchmarks/results/array_columns.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from d2c_pack.core.arrays import array_feature, column_array
from d2c_pack.training.data import SubsetRows

LAYOUTS = {"fixed-size lists": array_feature, "Array2D (legacy)": datasets.Array2D}


def best_seconds(task: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The shortest of ``repeats`` timings of ``task``, and its last result."""
    timings = []
    for _ in range(repeats):
        tic = time.process_time()
        result = task()
        timings.append(time.process_time() - tic)
    return min(timings), result


def measure(values: np.ndarray, layout: str, folder: Path, repeats: int) -> dict:
    """The timings of one layout on ``values`` (rows, *shape)."""
    features = datasets.Features({"label": datasets.ClassLabel(names=["a"]), "x": LAYOUTS[layout](values.shape[1:], "float16")})
    shard = folder / "train.parquet"
    datasets.Dataset.from_dict({"label": [0] * len(values), "x": values}, features=features).to_parquet(str(shard))
    subset = datasets.Dataset.from_parquet(str(shard), cache_dir=str(folder / "cache"))
    trainer, rows = SubsetRows(subset, ["x"], resolution=0), subset.with_format("torch")
    trainer_row, _ = best_seconds(lambda: [trainer[i]["x"] for i in range(len(values))], repeats)
    per_row, _ = best_seconds(lambda: [rows[i]["x"] for i in range(len(values))], repeats)
    column, _ = best_seconds(lambda: rows[:]["x"], repeats)
    direct, array = best_seconds(lambda: column_array(subset, "x"), repeats)
    assert np.array_equal(array, values)
    polars, frame = best_seconds(lambda: pl.read_parquet(shard)["x"].to_numpy(), repeats)
    return {
        "trainer_row_ms": 1e3 * trainer_row / len(values),
        "torch_row_ms": 1e3 * per_row / len(values),
        "torch_column_s": column,
        "column_array_s": direct,
        "polars_s": polars,
        "polars_numpy": f"{frame.dtype} {frame.shape}",
    }


def main(argv: list[str] | None = None) -> None:
    """The command line ``argv`` (default ``sys.argv[1:]``); datasets' progress bars are off while it runs."""
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        _run(argv)
    finally:
        if bars:
            datasets.enable_progress_bars()


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--shape", default="256,768", help="one row's shape: N_tok,D (DINOv2-B at R = 256: 256,768)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="16 rows of 4 × 8, one repeat: a smoke test")
    parser.add_argument("--json", default="benchmarks/results/array_columns.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.shape, args.repeats = 16, "4,8", 1
    shape = tuple(int(size) for size in args.shape.split(","))
    values = np.random.default_rng(0).standard_normal((args.rows, *shape)).astype(np.float16)
    results = {}
    for layout in LAYOUTS:
        with tempfile.TemporaryDirectory() as folder:
            results[layout] = measure(values, layout, Path(folder), args.repeats)

    table = Table(title=f"reading {args.rows} rows of {' × '.join(map(str, shape))} float16 (CPU time, best of {args.repeats})")
    for heading in ("layout", "trainer row", "torch row", "torch column", "column_array", "polars", "polars numpy"):
        table.add_column(heading, justify="right")
    for layout, r in results.items():
        table.add_row(
            layout, f"{r['trainer_row_ms']:.3f} ms", f"{r['torch_row_ms']:.3f} ms", f"{r['torch_column_s']:.3f} s", f"{r['column_array_s']:.3f} s", f"{r['polars_s']:.3f} s", r["polars_numpy"]
        )
    Console().print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
