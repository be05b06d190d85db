"""``d2c-pack demo``: the whole D2C flow on the embedded digits, on a laptop, in minutes.

build (score → select 10% → attach) → publish (verify; push when a Hub repository is given) →
``load_dataset`` it back → train a small SiT with DC-Embedding + alignment → sample a grid (each
row labelled with its class) → FID against all 1,797 digits and the demo classifier's accuracy on the samples. Every stage
keeps its output under OUT, and re-running continues where it stopped (build and training
resume; sampling and evaluation are redone).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import datasets
from PIL import Image, ImageDraw, ImageFont

from d2c_pack.core.errors import UserError
from d2c_pack.core.hub_retry import with_retries
from d2c_pack.core.recipe import read_recipe
from d2c_pack.evaluation.evaluator import evaluate
from d2c_pack.evaluation.sample import sample_grid
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig, DemoConfig
from d2c_pack.publish.hub import push
from d2c_pack.publish.settings import PushConfig
from d2c_pack.publish.verify import LocalFolder, verify
from d2c_pack.training.loop import train
from d2c_pack.training.settings import TrainConfig

DEMO_TAG = "v1.0"
CHECKPOINT_SECONDS = 60  # a demo stopped at any point loses at most about a minute of training


@dataclasses.dataclass
class DemoReport:
    """What the demo produced, row by row for the final table: (what, where or value, seconds)."""

    rows: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)

    def timed(self, what: str, stage: Callable[[], object], describe: Callable[[object], str] = str) -> object:
        tic = time.perf_counter()
        result = stage()
        self.rows.append((what, describe(result), time.perf_counter() - tic))
        return result


def run_demo(config: DemoConfig) -> DemoReport:
    """Runs every stage; returns the report of outputs and figures."""
    out = Path(config.out)
    recipe = read_recipe("demo")
    training = read_recipe("demo", "train")
    report = DemoReport()
    data = report.timed(
        "subset (build)",
        # The default cache (the Quickstart's `build --recipe demo` writes it), so the digits are scored once.
        lambda: build(BuildConfig(**recipe | {"out": str(out / "data"), "device": config.device})),
    )
    _, where, revision = report.timed("publish", lambda: _publish(data, config.push_to), lambda published: published[0])
    loaded = report.timed("load_dataset", lambda: _load(where, revision), lambda d: f"{d.num_rows} rows, columns {', '.join(d.column_names)}")
    settings = training | {"data": str(data), "out": str(out / "run"), "steps": config.steps, "device": config.device}
    settings["ckpt_every"] = min(settings["ckpt_every"], config.steps)
    settings["ckpt_every_seconds"] = CHECKPOINT_SECONDS
    run = report.timed("model (train)", lambda: train(TrainConfig(**settings)))
    sampling = config.sampling()
    names = loaded.features["label"].names
    report.timed("sample grid", lambda: label_rows(sample_grid(run, out / "samples.png", sampling=sampling, device=config.device), names))
    metrics = report.timed(
        "evaluation",
        lambda: evaluate(
            run, reference="demo:digits", features="demo:digits-encoder", num_samples=config.num_samples, sampling=sampling, device=config.device
        ),
        lambda m: f"FID {m['fid']:.3f}, accuracy {m['accuracy']:.1%} ({m['num_samples']} samples vs all {m['reference_images']} digits)",
    )
    (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report.rows.append(("metrics", str(out / "eval.json"), 0.0))
    return report


def label_rows(grid: Path, names: list[str]) -> Path:
    """Writes each class's name left of its row of a sample grid (one row per class, 1 px padding), in place."""
    image = Image.open(grid).convert("RGB")
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    boxes = [draw.textbbox((0, 0), name, font=font) for name in names]
    margin = max(right for _, _, right, _ in boxes) + 6
    labelled = Image.new("RGB", (image.width + margin, image.height), "white")
    labelled.paste(image, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    row_height = (image.height - 1) / len(names)
    for row, (name, (_, top, _, bottom)) in enumerate(zip(names, boxes)):
        draw.text((3, 1 + row * row_height + (row_height - bottom - top) / 2), name, fill="black", font=font)
    labelled.save(grid)
    return grid


def _publish(data: Path, repo_id: str | None) -> tuple[str, str, str | None]:
    """Verifies the local folder (a Hub dataset repository's layout) and pushes it when asked.

    Returns (what was done, where to load it from, revision)."""
    if problems := verify(LocalFolder(data)):
        raise UserError(f"the demo subset fails verification: {problems[0]}")
    if repo_id is None:
        return f"{data}: Hub layout, verified (add --push-to ORG/NAME to publish)", str(data), None
    result = push(PushConfig(repo_id=repo_id, source_dir=str(data), tag=DEMO_TAG, force=True))
    return f"pushed: {result.load_line()}", repo_id, DEMO_TAG


def _load(where: str, revision: str | None) -> datasets.Dataset:
    """The published subset read back as users will (``load_dataset``), retried on Hub failures that pass."""
    return with_retries(lambda: datasets.load_dataset(where, revision=revision, split="train"), f"load {where}")
