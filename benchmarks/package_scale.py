"""Packaging at ImageNet row size: rows/s, peak RSS and peak extra disk of ``write_package`` (issue 16).

Synthesises a condensed subset of ``--rows`` rows with every Attach column at the ImageNet-256
defaults: ``image`` a ~110 kB JPEG (375×500 noise, decoded when read as a real source decodes it),
``caption``, ``text_embedding`` 16×2048 f16, ``text_mask``, ``visual_tokens`` 256×768 f16,
``visual_cls`` 768 f32 and ``latent`` 8×32×32 f16 (~562 kB a row in parquet), in 1,000 classes.
The array values are Gaussian noise (a worst case for compression), drawn from a pool of rows so
that synthesis costs little next to packaging. Each stage runs in a process of its own, which
reports its seconds and its peak RSS (VmHWM); a thread polls the size of everything under the work
folder meanwhile, so "peak extra disk" is the most the stage held on disk beyond its final output.

Stages are functions ``(Setup) -> dict`` in ``STAGES``: ``package`` writes ``setup.out``, ``verify``
hashes it against its manifest, ``push`` publishes it to the test suite's local Hub server, ``train``
trains SiT-S/2 for ``--train-steps`` steps reading the folder in place (``benchmarks/train_in_place.py``;
from a Hub revision the trainer reads the snapshot the same way, after downloading it once).

``--tiny`` (the test) checks that all of it works at the least cost: 40 rows, 2 steps of 8 rows of SiT-T/2
with one loader worker and one torch thread, and stage processes forked from this one (which has imported the
tool) rather than started afresh.

    python benchmarks/package_scale.py [--rows 1000,5000] [--tiny] [--work DIR] [--out benchmarks/results/package_scale.json]

"Before" figures: run this file with ``PYTHONPATH`` pointing at an older checkout of the tool.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

import d2c_pack
from d2c_pack.attach.columns import Attached, ColumnGroup
from d2c_pack.core.arrays import feature_dtype, feature_shape
from d2c_pack.core.fingerprint import sha256_json
from d2c_pack.publish.contents import Package
from d2c_pack.publish.package import write_package
from d2c_pack.publish.verify import LocalFolder, verify
from d2c_pack.selection.score import Scores
from d2c_pack.selection.subset import Selection
from d2c_pack.sources.image_source import Entry, ImageSource

if __package__:  # imported as benchmarks.package_scale (its test runs main() in the test's process)
    from .row_size import features as attach_features
    from .train_in_place import SYNTHETIC_LATENT_INPUTS, train_in_place_benchmark
else:  # run as a script
    sys.path.insert(0, str(Path(__file__).parent))
    from row_size import features as attach_features  # the declared ImageNet-256 Attach features
    from train_in_place import SYNTHETIC_LATENT_INPUTS, train_in_place_benchmark
TESTS = str(Path(__file__).parents[1] / "tests")  # the local Hub server of the push stage
if TESTS not in sys.path:
    sys.path.append(TESTS)

CLASSES = 1000
POOL = 32  # distinct JPEGs and distinct array rows, reused round-robin
JPEG_SHAPE = (375, 500)  # ImageNet's typical size; noise at quality 75 gives ~110 kB, ImageNet's mean
ATTACH_COLUMNS = ("caption", "text_embedding", "text_mask", "visual_tokens", "visual_cls", "latent")
TIMESTEPS = 8


@dataclasses.dataclass(frozen=True)
class Setup:
    """One synthetic subset: what every stage process needs to rebuild it."""

    work: str
    rows: int
    resolution: int = 256
    seed: int = 0
    train_steps: int = 50
    train_batch_size: int = 8  # on 2 CPU cores SiT-S/2 takes ~1.5 s a step of 8 (~50 s at 256): the reader is what is measured
    train_workers: int = 2
    train_model: str = "SiT-S/2"
    threads: int | None = None  # torch threads of each stage process and of the trainer (None: torch's default)

    @property
    def out(self) -> Path:
        return Path(self.work) / "out"


class SyntheticSource(ImageSource):
    """``rows`` images, labels round-robin over 1,000 classes; the bytes come from a pool of noise JPEGs."""

    def __init__(self, setup: Setup):
        names = [f"n{1440764 + 9973 * c:08d}" for c in range(CLASSES)]
        sizes = np.bincount(np.arange(setup.rows) % CLASSES, minlength=CLASSES)
        super().__init__("synthetic:imagenet-shaped", names, sizes.tolist())
        self.rows = setup.rows
        rng = np.random.default_rng(setup.seed)
        self.jpegs = [_noise_jpeg(rng) for _ in range(POOL)]

    def __len__(self) -> int:
        return self.rows

    def fingerprint(self) -> str:
        return sha256_json({"spec": self.spec, "rows": self.rows})

    def _entries(self, indices: list[int] | None) -> Iterator[Entry]:
        for index in range(self.rows) if indices is None else indices:
            label = index % CLASSES
            yield Entry(index, f"{self.class_names[label]}/{index:08d}.JPEG", label, self.jpegs[index % POOL], None)


def _noise_jpeg(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*JPEG_SHAPE, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


class SyntheticColumns(ColumnGroup):
    """Every Attach column with its declared feature; values drawn once into a pool of rows."""

    def __init__(self, setup: Setup):
        declared = attach_features(setup.resolution, 2048, 768)
        self.features = {name: declared[name] for name in ATTACH_COLUMNS}
        self.identity = {"synthetic": "attach"}
        rng = np.random.default_rng([setup.seed, 1])
        self.pool = [{name: _random_value(feature, rng) for name, feature in self.features.items()} for _ in range(POOL)]

    def rows(self, indices: Sequence[int], labels: Sequence[int]) -> Iterator[dict]:
        for index in indices:
            yield self.pool[int(index) % POOL]


def _random_value(feature: object, rng: np.random.Generator) -> object:
    if isinstance(feature, datasets.Value):
        return "a photo of a synthetic class"
    shape, dtype = feature_shape(feature), feature_dtype(feature)
    if dtype == "int8":
        return np.ones(shape, np.int8)
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def synthetic_package(setup: Setup) -> Package:
    """Every row of the synthetic source selected, with a "scores" config and every Attach column."""
    source = SyntheticSource(setup)
    indices = np.arange(setup.rows)
    labels = indices % CLASSES
    rng = np.random.default_rng([setup.seed, 2])
    losses = rng.gamma(2.0, 0.05, (setup.rows, TIMESTEPS)).astype(np.float32)
    scores = Scores(indices, [f"{source.class_names[c]}/{i:08d}.JPEG" for i, c in zip(indices, labels)], labels, losses.mean(axis=1), losses, [])
    ranks = np.empty(setup.rows, np.int64)
    for label in range(CLASSES):
        members = np.flatnonzero(labels == label)
        ranks[members[np.argsort(scores.scores[members], kind="stable")]] = np.arange(len(members))
    selection = Selection(positions=indices, ranks=ranks, per_class=source.class_sizes, interval=None)
    recipe = {
        "source": source.spec, "split": "train", "revision": None, "scorer": "synthetic", "timesteps": TIMESTEPS,
        "selector": "random", "budget": "all", "resolution": setup.resolution, "seed": setup.seed,
    }  # fmt: skip
    inputs = {"source_fingerprint": source.fingerprint(), "scorer_sha256": "0" * 64, "scorer_prediction": "epsilon", "scorer_vae_sha256": None}
    inputs |= SYNTHETIC_LATENT_INPUTS  # the latent column's VAE, which training reads from the manifest
    return Package(source, scores, selection, recipe, inputs, Attached([SyntheticColumns(setup)]), {}, True)


def run_package(setup: Setup) -> dict:
    """``write_package`` of the synthetic subset into ``setup.out``."""
    package = synthetic_package(setup)
    figures = timed(lambda: write_package(package, setup.out))
    return figures | {"rows_per_second": setup.rows / figures["seconds"]}


def timed(run: Callable[[], object]) -> dict:
    """Wall seconds of ``run()``, and the CPU seconds of all this process's threads and finished children meanwhile:
    what it costs whatever else the machine runs (wall figures taken on a loaded machine are slower)."""
    cpu, tic = _cpu_seconds(), time.perf_counter()
    run()
    return {"seconds": time.perf_counter() - tic, "cpu_seconds": _cpu_seconds() - cpu}


def _cpu_seconds() -> float:
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in used)


def run_verify(setup: Setup) -> dict:
    """``verify`` of the folder ``package`` wrote: every file hashed against the manifest, shards in parallel."""
    problems: list[str] = []
    figures = timed(lambda: problems.extend(verify(LocalFolder(setup.out))))
    if problems:
        raise RuntimeError(f"verify found problems: {problems[:3]}")
    return figures | {"bytes_per_second": folder_bytes(setup.out) / figures["seconds"]}


def run_push(setup: Setup) -> dict:
    """``push`` of the folder to a local Hub server (tests/hub_server.py, objects on disk under the work folder),
    as a first version: every file uploaded, committed in bounded commits, tagged and checked."""
    from hub_server import WRITE_TOKEN, HubServer, use_hub  # the test suite's Hub-protocol server
    from pytest import MonkeyPatch

    from d2c_pack.publish.hub import push
    from d2c_pack.publish.settings import PushConfig

    # The server keeps its objects outside the polled work folder (its copy is not the client's disk);
    # the client's HF caches are inside it, so anything the push cached would count.
    with tempfile.TemporaryDirectory(prefix="d2c-hub-") as hub_root, MonkeyPatch.context() as patch:
        with HubServer(tokens={WRITE_TOKEN: "write"}, root=Path(hub_root)) as server:
            use_hub(server, patch, Path(setup.work) / "home")
            figures = timed(lambda: push(PushConfig(repo_id="bench/imagenet-shaped", source_dir=str(setup.out), tag="v1.0")))
            received = server.received
    return figures | {"bytes_per_second": received / figures["seconds"], "uploaded_bytes": received}


def run_train(setup: Setup) -> dict:
    """``train_steps`` steps of ``train_model`` reading the folder in place (``benchmarks/train_in_place.py``, in a process of
    its own): training and reader-alone rows/s, the trainer's peak RSS and what it wrote to the ``datasets`` cache."""
    result: dict = {}
    figures = timed(lambda: result.update(train_in_place_benchmark(
        str(setup.out), setup.train_steps, model=setup.train_model, batch_size=setup.train_batch_size, workers=setup.train_workers,
        device="cpu", threads=setup.threads,
    )))  # fmt: skip
    return figures | {
        "rows_per_second": result["train_rows_per_second"],
        "reader_rows_per_second": result["reader_rows_per_second"], "steps": setup.train_steps, "batch_size": setup.train_batch_size,
        "trainer_peak_rss_bytes": result["peak_rss_bytes"], "datasets_cache_bytes": result["peak_extra_disk_bytes"],
    }  # fmt: skip


STAGES: dict[str, Callable[[Setup], dict]] = {"package": run_package, "verify": run_verify, "push": run_push, "train": run_train}


def folder_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (files vanishing meanwhile are skipped)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


class DiskPeak:
    """Polls the bytes under a folder in a thread; ``peak`` is the largest figure seen."""

    def __init__(self, root: Path, interval: float = 0.2):
        self.root, self.interval, self.peak = root, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, folder_bytes(self.root))
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, folder_bytes(self.root))


def run_stage(stage: str, setup: Setup) -> dict:
    """Runs one stage in this (child) process: its own figures, peak RSS and peak extra disk."""
    if setup.threads:
        import torch

        torch.set_num_threads(setup.threads)
    before = folder_bytes(Path(setup.work))
    with DiskPeak(Path(setup.work)) as disk:
        figures = STAGES[stage](setup)
    after = folder_bytes(Path(setup.work))
    return figures | {
        "peak_rss_bytes": peak_rss(),
        "output_bytes": after - before,
        "peak_extra_disk_bytes": disk.peak - after,
    }


def peak_rss() -> int:
    """This process's resident high-water mark in bytes (Linux VmHWM, not inherited across spawn)."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def measure(rows: int, root: str | None, stages: Sequence[str], start_method: str = "spawn", **settings: int | str) -> dict:
    """Runs every stage on a synthetic subset of ``rows``, each in a process of its own (``settings``: more fields of :class:`Setup`).

    ``start_method``: "spawn" (a fresh interpreter per stage, which imports the tool itself), or "fork" (a copy of this
    process, its imports done: a stage's peak RSS then starts from this process's resident size)."""
    with tempfile.TemporaryDirectory(dir=root, prefix="d2c-package-scale-") as work:
        setup = Setup(work, rows, **settings)
        results = {}
        for stage in stages:
            load = os.getloadavg()[0]  # other work on the machine: figures taken under load are slower
            with ProcessPoolExecutor(1, mp_context=get_context(start_method)) as pool:
                results[stage] = pool.submit(run_stage, stage, setup).result() | {"load_average": [load, os.getloadavg()[0]]}
            Console(stderr=True).print(f"{rows:,} rows, {stage}: {results[stage]}")
    return {"rows": rows, "stages": results}


def _git_commit() -> str | None:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(d2c_pack.__file__).parent, capture_output=True, text=True)
    return done.stdout.strip() or None


def table(results: list[dict]) -> Table:
    out = Table(title="packaging at ImageNet row size")
    for heading in ("rows", "stage", "seconds", "rate", "CPU s", "output", "peak extra disk", "peak RSS"):
        out.add_column(heading, justify="right")
    for result in results:
        for stage, f in result["stages"].items():
            rate = f"{f['rows_per_second']:.1f} rows/s" if "rows_per_second" in f else f"{f['bytes_per_second'] / 1e6:.0f} MB/s"
            out.add_row(
                f"{result['rows']:,}", stage, f"{f['seconds']:.1f}", rate, f"{f['cpu_seconds']:.1f}", f"{f['output_bytes'] / 1e9:.2f} GB",
                f"{f['peak_extra_disk_bytes'] / 1e9:.2f} GB ({f['peak_extra_disk_bytes'] / max(f['output_bytes'], 1):.2f}×)",
                f"{max(f['peak_rss_bytes'], f.get('trainer_peak_rss_bytes', 0)) / 2**30:.2f} GiB",
            )  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,5000", help="comma-separated subset sizes (20000: ~11 GB of output)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--tiny", action="store_true", help="40 rows and 2 SiT-T/2 steps of 8 in forked stage processes, for the test")
    parser.add_argument("--train-steps", type=int, default=Setup.train_steps, help="SiT-S/2 steps of the train stage")
    parser.add_argument("--train-batch-size", type=int, default=Setup.train_batch_size)
    parser.add_argument("--work", default=None, help="folder for the synthetic outputs (default: the system's temporary folder)")
    parser.add_argument("--out", default="benchmarks/results/package_scale.json")
    parser.add_argument("--label", default="", help="what is measured (e.g. 'before', 'after'), recorded with the results")
    args = parser.parse_args(argv)

    sizes = [40] if args.tiny else [int(n) for n in args.rows.split(",")]
    if args.tiny:
        train = {"train_steps": 2, "train_batch_size": 8, "train_model": "SiT-T/2", "train_workers": 1, "threads": 1, "start_method": "fork"}
    else:
        train = {"train_steps": args.train_steps, "train_batch_size": args.train_batch_size}
    results = [measure(rows, args.work, args.stages.split(","), **train) for rows in sizes]
    Console().print(table(results))
    report = {
        "label": args.label, "commit": _git_commit(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d"), "datasets": datasets.__version__, "results": results,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
