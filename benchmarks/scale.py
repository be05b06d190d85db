"""Time and peak memory of the select path at ImageNet scale: score merge → read → every selector → packaging.

Synthesises an ImageNet-shaped score cache through the tool's own ``ChunkCache`` and
``CACHE_SCHEMA`` (1,281,167 rows in 1,000 classes of 732–1,300 at full size, classes of the same
sizes at smaller sizes), with random scores, losses and float16 features and ImageNet-like ids
(``n01440764/n01440764_10026.JPEG``). The classes are shuffled over the source indices: the worst
case for reading one class's features. Then every stage runs in a child process of its own that
reports its seconds and its peak RSS (VmHWM). The children are forked from a server that has
imported the tool once (``--tiny``: from the script's process, which has too, so that no server
starts), so each figure is the imported tool (resident, ≈ 0.45 GiB) plus the stage's own peak;
``baseline`` is a freshly started interpreter importing the tool, whose transient peak is higher
than what stays resident.

- ``merge``: the chunks into ``scores.parquet``, as ``score_source`` does after scoring;
- ``read``: ``read_scores``;
- ``features``: the scorer features copied out once for kcenter/herding (``score_features``);
- one stage per selector: ``select_subset`` as ``build`` runs it with a budget of ``--subset``
  images (seconds: the selection alone; RSS: reading the scores too);
- ``package``: the interval selection and ``write_package`` of it with the "scores" config of every
  row, the subset's images rendered on the fly as small JPEGs (the Attach columns are measured by
  ``row_size.py``).

    python benchmarks/scale.py [--sizes 128116,1281167] [--tiny] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import json
import math
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from rich.console import Console
from rich.table import Table

from d2c_pack.attach.columns import Attached
from d2c_pack.core.fingerprint import sha256_json
from d2c_pack.core.progress import progress_bar
from d2c_pack.pipeline.finished import resolved_recipe
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.contents import Package
from d2c_pack.publish.package import write_package
from d2c_pack.selection.chunks import ChunkCache, error_rows, list_array
from d2c_pack.selection.score import CACHE_SCHEMA, Scores, read_scores, score_features
from d2c_pack.selection.selectors import SELECTORS, Features
from d2c_pack.selection.subset import FEATURE_SELECTORS, Selection, select_subset
from d2c_pack.sources.image_source import Entry, ImageSource

IMAGENET_ROWS, IMAGENET_CLASSES = 1_281_167, 1000
SMALLEST_CLASS, LARGEST_CLASS = 732, 1300
CHUNK_SIZE = 4096  # ScoreConfig's default
TIMESTEPS = 8
UNREADABLE = 3  # rows with an error, as a real source has a few
PRELOAD = ["d2c_pack.pipeline.build", "d2c_pack.publish.package", "d2c_pack.selection.score"]  # imported once by the server the stage processes fork from
STAGES = ("baseline", "merge", "read", "features", *SELECTORS, "package")


@dataclasses.dataclass(frozen=True)
class Setup:
    """One synthetic source: what every stage process needs to find or rebuild it."""

    work: str
    rows: int
    feature_dim: int
    subset: int
    seed: int = 0

    @property
    def scores_file(self) -> Path:
        return Path(self.work) / "scores.parquet"


class Layout:
    """Labels and ids of the synthetic source, a function of (rows, seed) alone."""

    def __init__(self, rows: int, seed: int):
        rng = np.random.default_rng([seed, rows])
        self.class_sizes = class_sizes(rows, rng)
        self.labels = rng.permutation(np.repeat(np.arange(len(self.class_sizes)), self.class_sizes))
        self.wnids = [f"n{1440764 + 9973 * c:08d}" for c in range(len(self.class_sizes))]  # n01440764 is ImageNet's first
        self.unreadable = np.sort(rng.choice(rows, min(UNREADABLE, rows), replace=False))

    def source_id(self, index: int) -> str:
        wnid = self.wnids[self.labels[index]]
        return f"{wnid}/{wnid}_{index + 10_000}.JPEG"


def class_sizes(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Class sizes in 732..1,300 summing to ``rows``, ImageNet's mean class size where the range allows.

    Uniform draws, then the gap to ``rows`` is closed class by class in random order, each filled up
    to 1,300 (or drained down to 732): like ImageNet, most classes end at 1,300 and a few stay smaller.
    """
    classes = max(math.ceil(rows / LARGEST_CLASS), round(rows * IMAGENET_CLASSES / IMAGENET_ROWS))
    if rows < classes * SMALLEST_CLASS:
        raise ValueError(f"{rows} rows cannot form classes of {SMALLEST_CLASS}..{LARGEST_CLASS} images")
    sizes = rng.integers(SMALLEST_CLASS, LARGEST_CLASS + 1, classes)
    gap = rows - int(sizes.sum())
    order = rng.permutation(classes)
    room = (LARGEST_CLASS - sizes if gap > 0 else sizes - SMALLEST_CLASS)[order]
    sizes[order] += np.sign(gap) * np.minimum(room, np.maximum(0, abs(gap) - (np.cumsum(room) - room)))
    return sizes


class SyntheticSource(ImageSource):
    """The synthetic source's images: a small JPEG of one flat colour per index, rendered when read."""

    spec = "synthetic:scale"

    def __init__(self, layout: Layout):
        super().__init__(self.spec, layout.wnids, layout.class_sizes.tolist())
        self.layout = layout

    def image(self, index: int) -> bytes:
        return _jpeg(index)

    def __len__(self) -> int:
        return len(self.layout.labels)

    def fingerprint(self) -> str:
        return sha256_json({"spec": self.spec, "rows": len(self)})

    def _entries(self, indices: list[int] | None) -> Iterator[Entry]:
        for index in range(len(self)) if indices is None else indices:
            yield Entry(index, self.layout.source_id(index), int(self.layout.labels[index]), self.image(index), None)


def _jpeg(index: int) -> bytes:
    colour = tuple(int(v) for v in np.random.default_rng(index).integers(0, 256, 3))
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _cache(setup: Setup) -> ChunkCache:
    key = {"benchmark": "scale", "rows": setup.rows, "feature_dim": setup.feature_dim, "seed": setup.seed}
    return ChunkCache(Path(setup.work) / "cache", key, CACHE_SCHEMA, CHUNK_SIZE)


def synthesise(setup: Setup) -> ChunkCache:
    """Writes the score cache chunk by chunk, as scoring would, and returns it."""
    layout = Layout(setup.rows, setup.seed)
    cache = _cache(setup)
    with progress_bar("synthesise", total=setup.rows) as advance:
        for number, start in enumerate(range(0, setup.rows, CHUNK_SIZE)):
            indices = np.arange(start, min(start + CHUNK_SIZE, setup.rows))
            bad = np.isin(indices, layout.unreadable)
            table = _scored_rows(layout, indices[~bad], setup.feature_dim, np.random.default_rng([setup.seed, number]))
            if bad.any():
                table = pa.concat_tables([table, error_rows(CACHE_SCHEMA, [(int(i), layout.source_id(i), "cannot decode: synthetic") for i in indices[bad]])])
            cache.add(number, table)
            advance(len(indices))
    return cache


def _scored_rows(layout: Layout, indices: np.ndarray, dim: int, rng: np.random.Generator) -> pa.Table:
    losses = rng.gamma(2.0, 0.05, (len(indices), TIMESTEPS)).astype(np.float32)
    columns = {
        "source_index": indices,
        "source_id": [layout.source_id(i) for i in indices],
        "error": pa.nulls(len(indices), pa.string()),
        "label": layout.labels[indices],
        "score": losses.mean(axis=1),
        "losses": list_array(losses),
        "feature": list_array(rng.standard_normal((len(indices), dim), dtype=np.float32).astype(np.float16)),
    }
    return pa.table(columns, schema=CACHE_SCHEMA)


def build_config(setup: Setup, selector: str) -> BuildConfig:
    """The build settings of a selection from the synthetic source: a budget of ``setup.subset`` images."""
    return BuildConfig(
        source="synthetic:scale", out=str(Path(setup.work) / "out"), work=setup.work, budget=str(setup.subset), selector=selector,
        chunk_size=CHUNK_SIZE, timesteps=TIMESTEPS, text_encoder="none", visual_encoder="none", vae="none",
    )  # fmt: skip


def _timed(run: Callable[[], object]) -> float:
    tic = time.perf_counter()
    run()
    return time.perf_counter() - tic


def run_merge(setup: Setup) -> float:
    cache = _cache(setup)
    return _timed(lambda: cache.merge(range(setup.rows), setup.scores_file))


def select(setup: Setup, scores: Scores, num_classes: int, selector: str, features: Features | None = None) -> Selection:
    """``select_subset`` as ``build`` calls it, with a budget of ``setup.subset`` images."""
    return select_subset(scores, num_classes, budget=str(setup.subset), selector=selector, interval="auto", seed=0, features=features)


def run_select(setup: Setup, selector: str) -> float:
    scores = read_scores(setup.scores_file)
    features = score_features(setup.scores_file) if selector in FEATURE_SELECTORS else None
    num_classes = int(scores.labels.max()) + 1
    return _timed(lambda: select(setup, scores, num_classes, selector, features))


def run_package(setup: Setup) -> float:
    source = SyntheticSource(Layout(setup.rows, setup.seed))
    scores = read_scores(setup.scores_file)
    config = build_config(setup, "interval")
    tic = time.perf_counter()
    selection = select(setup, scores, source.num_classes, "interval")
    inputs = {"source_fingerprint": source.fingerprint(), "scorer_sha256": "0" * 64, "scorer_prediction": "epsilon", "scorer_vae_sha256": None, "selection_features": None}
    package = Package(source, scores, selection, resolved_recipe(config, selection.interval), inputs, Attached([]), {}, True)
    write_package(package, Path(config.out))
    return time.perf_counter() - tic


def run_stage(stage: str, setup: Setup) -> dict:
    """Runs one stage in this (child) process: its seconds and the process's peak RSS."""
    if stage == "baseline":
        seconds = 0.0
    elif stage == "merge":
        seconds = run_merge(setup)
    elif stage == "read":
        seconds = _timed(lambda: read_scores(setup.scores_file))
    elif stage == "features":
        seconds = _timed(lambda: score_features(setup.scores_file))
    elif stage == "package":
        seconds = run_package(setup)
    else:
        seconds = run_select(setup, stage)
    return {"seconds": seconds, "peak_rss_bytes": peak_rss()}


def peak_rss() -> int:
    """This process's resident high-water mark in bytes: Linux's VmHWM, which (unlike ``ru_maxrss``) is not
    inherited from the parent across fork + exec."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def in_child(function: Callable, *args: object, fresh: bool = False, forked: str = "forkserver") -> object:
    """``function(*args)`` in a process of its own: forked (``forked``: "forkserver" from the server that has imported
    the tool, "fork" from this process, which has too), or (``fresh``) a new interpreter that imports it itself."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn" if fresh else forked)) as pool:
        return pool.submit(function, *args).result()


def measure(rows: int, feature_dim: int, subset: int, root: str | None, forked: str = "forkserver") -> dict:
    """Synthesises a source of ``rows`` and runs every stage on it, each in its own process (``forked``: see ``in_child``)."""
    with tempfile.TemporaryDirectory(dir=root, prefix="d2c-scale-") as work:
        setup = Setup(work, rows, feature_dim, subset)
        synthesis = _timed(lambda: in_child(synthesise, setup, forked=forked))
        stages = {}
        for stage in STAGES:
            stages[stage] = in_child(run_stage, stage, setup, fresh=stage == "baseline", forked=forked)
            Console(stderr=True).print(f"{rows:,} rows, {stage}: {stages[stage]['seconds']:.1f} s, {stages[stage]['peak_rss_bytes'] / 2**30:.2f} GiB")
        layout = Layout(rows, setup.seed)
    return {
        "rows": rows,
        "classes": len(layout.class_sizes),
        "class_sizes": [int(layout.class_sizes.min()), int(layout.class_sizes.max())],
        "feature_dim": feature_dim,
        "subset": subset,
        "synthesis_seconds": synthesis,
        "stages": stages,
    }


def print_table(results: list[dict]) -> None:
    table = Table(title="select path at scale: seconds / peak RSS of each stage's process")
    table.add_column("stage")
    for result in results:
        table.add_column(f"{result['rows']:,} rows ({result['classes']} classes)", justify="right")
    for stage in STAGES:
        cells = [f"{r['stages'][stage]['seconds']:.1f} s / {r['stages'][stage]['peak_rss_bytes'] / 2**30:.2f} GiB" for r in results]
        table.add_row(stage, *cells)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=f"128116,{IMAGENET_ROWS}", help="comma-separated source sizes (rows)")
    parser.add_argument("--feature-dim", type=int, default=768, help="width of the pooled features kcenter/herding use")
    parser.add_argument("--subset", type=int, default=10_000, help="images selected")
    parser.add_argument("--tiny", action="store_true", help="one source of 3,000 rows, a 300-image subset, stages forked from this process (for CI)")
    parser.add_argument("--work", default=None, help="folder for the synthetic caches (default: the system's temporary folder)")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    args = parser.parse_args()
    forked = "forkserver"
    if args.tiny:  # the stages fork from this process, with the server's imports: no server to start (an interpreter importing the tool)
        args.sizes, args.subset, forked = "3000", 300, "fork"
        for module in PRELOAD:
            importlib.import_module(module)
    else:
        get_context("forkserver").set_forkserver_preload(["__main__", *PRELOAD])
    results = [measure(int(rows), args.feature_dim, args.subset, args.work, forked) for rows in args.sizes.split(",")]
    print_table(results)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
