"""Size, time and peak memory of ``d2c-pack explore`` on an ImageNet-shaped subset: 1,000 classes, 1,281,167 scores.

Synthesises a built folder as ``build`` lays it out, without running a model: the ``scores``
config (ImageNet's class sizes, 732–1,300, from ``scale.py``; random difficulties; 8 losses per
row, as a real one carries them), the default config with the selected rows' images (``--per-class``
images of each class, spread over its ranking as interval sampling spreads them), and a manifest.
The images are JPEG crops of scikit-learn's two sample photographs, so that thumbnails compress as
photographs do (flat colours would flatter the page size). The rejected images come from a
synthetic source of the same photographs, as ``--source`` would give them. The page is written
in a child process (forked after the imports) that reports its seconds and its peak RSS (VmHWM).

    python benchmarks/explore_scale.py [--per-class 10] [--tiny] [--out benchmarks/results/explore_scale.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from rich.console import Console
from rich.table import Table
from scale import IMAGENET_ROWS, Layout, SyntheticSource

from d2c_pack.publish.explore import from_location, source_reader, write_page
from d2c_pack.publish.verify import LocalFolder

TIMESTEPS = 8
PHOTO_POOL = 512  # distinct JPEGs; image i is photo i mod PHOTO_POOL
TINY_PHOTO_POOL = 64  # --tiny: more than the 39 thumbnails of its page
PHOTO_SIZE = 192


def photographs(count: int = PHOTO_POOL) -> list[bytes]:
    """``count`` JPEG crops (various places and scales) of scikit-learn's sample photographs."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos, pool = [Image.fromarray(image) for image in load_sample_images().images], []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(96, min(photo.size)))
        left, top = (int(rng.integers(0, limit - side + 1)) for limit in photo.size)
        buffer = io.BytesIO()
        photo.crop((left, top, left + side, top + side)).resize((PHOTO_SIZE, PHOTO_SIZE), Image.BICUBIC).save(buffer, format="JPEG", quality=85)
        pool.append(buffer.getvalue())
    return pool


class PhotoSource(SyntheticSource):
    """``scale.py``'s synthetic source, whose image i is photograph i mod the pool's size."""

    spec = "synthetic:explore"

    def __init__(self, layout: Layout, pool: list[bytes]):
        super().__init__(layout)
        self.pool = pool

    def image(self, index: int) -> bytes:
        return self.pool[index % len(self.pool)]


@dataclasses.dataclass(frozen=True)
class Setup:
    folder: str
    rows: int
    per_class: int
    photos: int = PHOTO_POOL  # distinct JPEGs


def synthesize(setup: Setup, pool: list[bytes]) -> Layout:
    """Writes the folder's scores config, default config and manifest; returns the source layout."""
    layout, folder = Layout(setup.rows, 0), Path(setup.folder)
    rng = np.random.default_rng(1)
    difficulty = rng.gamma(4.0, 0.05, setup.rows).astype(np.float32)
    # Rank within the class, 0 = easiest (ties cannot occur with continuous draws).
    order = np.lexsort((difficulty, layout.labels))
    starts = np.concatenate([[0], np.cumsum(layout.class_sizes)])
    ranks = np.empty(setup.rows, np.int32)
    ranks[order] = np.arange(setup.rows) - np.repeat(starts[:-1], layout.class_sizes)
    sizes = layout.class_sizes[layout.labels]
    # m picks spread over each class's ranking, ranks rint(j · s) with s = (n − 1) / (m − 1) ≥ 1: a rank r is one iff rint(rint(r / s) · s) = r.
    stride = (sizes - 1) / (setup.per_class - 1)
    selected = np.rint(np.rint(ranks / stride) * stride) == ranks
    ids = pa.array([layout.source_id(i) for i in range(setup.rows)], pa.string())
    names = layout.wnids
    scores = datasets.Features(
        {
            "source_id": datasets.Value("string"), "label": datasets.ClassLabel(names=names), "difficulty": datasets.Value("float32"),
            "difficulty_rank": datasets.Value("int32"), "losses": datasets.List(datasets.Value("float32"), length=TIMESTEPS),
            "selected": datasets.Value("bool"),
        }
    )  # fmt: skip
    losses = pa.FixedSizeListArray.from_arrays(rng.random(setup.rows * TIMESTEPS, dtype=np.float32), TIMESTEPS)
    (folder / "scores").mkdir(parents=True)
    pq.write_table(
        pa.table([ids, layout.labels, difficulty, ranks, losses, selected], schema=scores.arrow_schema), folder / "scores/train-00000-of-00001.parquet"
    )
    chosen = np.flatnonzero(selected)
    rows = datasets.Features(
        {
            "image": datasets.Image(), "label": datasets.ClassLabel(names=names), "source_id": datasets.Value("string"),
            "difficulty": datasets.Value("float32"), "difficulty_rank": datasets.Value("int32"),
        }
    )  # fmt: skip
    images = pa.array([{"bytes": pool[i % len(pool)], "path": None} for i in chosen.tolist()], rows.arrow_schema.field("image").type)
    data = pa.table([images, layout.labels[chosen], ids.take(chosen), difficulty[chosen], ranks[chosen]], schema=rows.arrow_schema)
    (folder / "data").mkdir()
    pq.write_table(data, folder / "data/train-00000-of-00001.parquet", row_group_size=100)  # datasets' row groups for images
    per_class = np.minimum(setup.per_class, layout.class_sizes).tolist()
    manifest = {
        "version": "benchmark",
        "recipe": {
            "source": "synthetic:explore", "split": "train", "scorer": "DiT-XL-2-256x256.pt", "selector": "interval", "budget": f"{setup.per_class}/class",
            "image_column": "image", "label_column": "label", "id_column": None, "revision": None, "repo_id": "benchmark/imagenet-explore",
        },
        "source": {"spec": "synthetic:explore", "name": "synthetic:explore", "split": "train"},
        "models": {"scorer": {"name": "DiT-XL-2-256x256.pt"}},
        "selection": {"rows": len(chosen), "interval": None, "interval_strides": None, "per_class_budget": per_class},
        "unreadable": [],
        "files": {},
    }  # fmt: skip
    (folder / "d2c").mkdir()
    (folder / "d2c/manifest.json").write_text(json.dumps(manifest))
    return layout


def write(setup: Setup, page: str) -> dict:
    """In a child process: the page with rejected thumbnails from the synthetic source; seconds and peak RSS."""
    pool = photographs(setup.photos)
    layout = Layout(setup.rows, 0)
    baseline = _status("VmRSS")  # the imported tool (datasets, torch through the sources) before any work
    tic = time.perf_counter()
    explorable = from_location(LocalFolder(Path(setup.folder)), None)
    explorable = dataclasses.replace(explorable, rejected_images=source_reader(PhotoSource(layout, pool), explorable.scores.ids, unreadable=0))
    write_page(explorable, Path(page))
    seconds = time.perf_counter() - tic
    return {"seconds": seconds, "peak_rss_bytes": _status("VmHWM"), "baseline_rss_bytes": baseline}


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=IMAGENET_ROWS, help="Scored images (1,000 classes at full size).")
    parser.add_argument("--per-class", type=int, default=10, help="Selected images per class (ImageNet 10k: 10).")
    parser.add_argument("--tiny", action="store_true", help="3,000 rows in 3 classes, 64 distinct photographs: a check that the benchmark runs.")
    parser.add_argument("--work", default=None, help="Where the synthetic folder goes (removed at the end).")
    parser.add_argument("--out", default="benchmarks/results/explore_scale.json")
    args = parser.parse_args()
    rows = 3000 if args.tiny else args.rows
    with tempfile.TemporaryDirectory(dir=args.work) as work, ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
        pool.submit(int).result()  # forks now, before the synthetic data exists: the child holds the imported tool alone
        setup = Setup(str(Path(work) / "subset"), rows, args.per_class, TINY_PHOTO_POOL if args.tiny else PHOTO_POOL)
        tic = time.perf_counter()
        layout = synthesize(setup, photographs(setup.photos))
        synthesized = time.perf_counter() - tic
        page = Path(work) / "explore.html"
        figures = pool.submit(write, setup, str(page)).result()
        text = page.read_text(encoding="utf-8")
        result = {
            "rows": rows, "classes": len(layout.class_sizes), "per_class": args.per_class, "page_bytes": page.stat().st_size, "thumbnails": text.count("data:image/webp;base64,"),
            "synthesis_seconds": synthesized, **figures,
        }  # fmt: skip
    table = Table(title=f"d2c-pack explore: {rows:,} scores in {result['classes']:,} classes, {args.per_class} selected per class")
    for column in ("page", "thumbnails", "seconds", "peak RSS", "of which imports"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['page_bytes'] / 1e6:.1f} MB", f"{result['thumbnails']:,}", f"{result['seconds']:.0f}", f"{result['peak_rss_bytes'] / 2**30:.2f} GiB", f"{result['baseline_rss_bytes'] / 2**30:.2f} GiB")
    Console().print(table)
    machine = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": len(os.sched_getaffinity(0))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": [result]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
