"""Scoring speed (DESIGN §3.2): the project's ``DifficultyScorer`` with DiT-XL/2 and the SD-VAE encoder.

Every image is noised at |T| = 8 timesteps and the 8 copies go through the backbone in one
batch, so one scored image costs 8 backbone forwards plus one VAE encoding. Three workloads:

- **backbone only**: latents already on the GPU (the scorer's latent space is the identity);
- **VAE + backbone**: images already on the GPU, encoded by the SD-VAE first;
- **end to end**: ``score_source`` itself, what ``d2c-pack score`` runs, on a folder of synthetic
  500×375 JPEG files on disk with the real worker count: decoding, ADM crops and noise in the
  DataLoader workers, uint8 batches in pinned memory, the scorer and its VAE loaded from disk,
  results read one batch behind and written to the score cache. Timed from the launch of the
  first batch after the warm-up to the launch of the last, so loading the models and starting
  the workers are left out.

The end-to-end rate over the backbone-only rate says how much of the GPU the whole pipeline
keeps busy; it also projects the hours to score ImageNet-1k's training set.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.gpu.measure import Row, count_flops, measure, rate_row
from benchmarks.gpu.specs import IMAGENET_TRAIN_IMAGES, NUM_CLASSES, Spec, build_vae, scorer_config
from d2c_pack.models.checkpoint import save_backbone
from d2c_pack.models.latents import PixelSpace, VaeSpace
from d2c_pack.selection.score import DifficultyScorer, score_source
from d2c_pack.selection.settings import ScoreConfig

JPEG_SIZE = (500, 375)  # ImageNet's most common image size
DISTINCT_JPEGS = 32
CLASSES_ON_DISK = 100  # class folders of the JPEG tree (the scorer knows all 1,000 classes)
# DiT-XL/2 forward at 256 as the DiT paper gives it (118.6 G multiply-adds), to check the counted FLOPs against
DIT_XL_2_256_FLOPS = 2 * 118.6e9


def measure_scoring(spec: Spec, device: torch.device, peak: float, workers: int) -> dict:
    """The batch sweep (backbone only, VAE + backbone), the end-to-end row and their summary."""
    config = scorer_config(spec)
    with device:
        model = config.build()
    scorer = DifficultyScorer(model, config, PixelSpace(), spec.timesteps, device)
    vae = VaeSpace(build_vae(spec, device))
    backbone_flops = count_flops(lambda: scorer(*_inputs(scorer, 1, device, latents=True)))
    vae_flops = count_flops(lambda: vae.encode(_inputs(scorer, 1, device, latents=False)[0]))

    sweep: list[Row] = []
    for batch in spec.score_batches:
        for name, space, flops in (("backbone only", PixelSpace(), backbone_flops), ("VAE + backbone", vae, backbone_flops + vae_flops)):
            scorer.space = space
            inputs = _inputs(scorer, batch, device, latents=space is not vae)
            row = measure(
                "scoring", f"{spec.scorer} |T|={spec.timesteps}, {name}", lambda: scorer(*inputs), device,
                batch=batch, flops_per_item=flops, peak=peak, warmup=spec.warmup, iters=spec.iters,
            )  # fmt: skip
            if row.status == "ok":
                row.extra["backbone_mfu"] = row.rate * backbone_flops / peak
            sweep.append(row)

    backbone = _best(sweep, "backbone only")
    batch = _best(sweep, "VAE + backbone").batch
    scorer.space = vae
    end_to_end = _end_to_end(scorer, spec, device, peak, batch, workers, backbone_flops + vae_flops)
    same_batch = {name: next(r for r in sweep if r.batch == batch and r.name.endswith(name)) for name in ("backbone only", "VAE + backbone")}
    summary = {
        "backbone_flops_per_image": backbone_flops,
        "backbone_flops_per_image_dit_paper": spec.timesteps * DIT_XL_2_256_FLOPS if spec.scorer == "DiT-XL/2" else None,
        "vae_encoder_flops_per_image": vae_flops,
        "best_backbone_batch": backbone.batch,
        "best_backbone_images_per_s": backbone.rate,
        "best_backbone_mfu": backbone.mfu,
        "end_to_end_batch": batch,
        "end_to_end_share_of_backbone": end_to_end.rate / same_batch["backbone only"].rate,
        "end_to_end_share_of_vae_backbone": end_to_end.rate / same_batch["VAE + backbone"].rate,
        "imagenet_hours": IMAGENET_TRAIN_IMAGES / end_to_end.rate / 3600,
    }
    return {"sweep": sweep, "end_to_end": end_to_end, "summary": summary}


def _inputs(scorer: DifficultyScorer, batch: int, device: torch.device, *, latents: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (images or latents, labels, noise) on the device, as ``DifficultyScorer.__call__`` takes them."""
    channels, size = scorer.latent_shape[0], scorer.latent_shape[1]
    resolution = scorer.config.image_size
    images = torch.randn(batch, channels, size, size, device=device) if latents else torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    noise = torch.randn(batch, len(scorer.times), *scorer.latent_shape, device=device)
    return images, labels, noise


def _best(rows: list[Row], name: str) -> Row:
    return max((r for r in rows if r.status == "ok" and r.name.endswith(name)), key=lambda r: r.rate)


def _end_to_end(scorer: DifficultyScorer, spec: Spec, device: torch.device, peak: float, batch: int, workers: int, flops: float) -> Row:
    """``score_source`` over JPEG files written to a temporary folder, with this scorer's weights and VAE saved beside them.

    The first ``workers + 2`` batches are left out: each worker's first batch carries its start-up.
    """
    warm = workers + 2
    timed = max(2, -(-spec.e2e_images // batch))
    count = (warm + timed + 1) * batch
    with tempfile.TemporaryDirectory(prefix="d2c-gpu-score-") as folder:
        work = Path(folder)
        mean_bytes = jpeg_folder(work / "images", count)
        save_backbone(scorer.model, scorer.config, work / "scorer")
        scorer.space.vae.save_pretrained(work / "vae")
        config = ScoreConfig(
            source=str(work / "images"), scorer=str(work / "scorer"), vae=str(work / "vae"), resolution=spec.resolution, timesteps=spec.timesteps,
            batch_size=batch, chunk_size=2 * batch, workers=workers, device=str(device), work=str(work / "cache"),
        )  # fmt: skip
        launches = _launch_times(lambda: score_source(config))
    # Launch k + 1 comes after batch k - 1's results are read: the time between launches is the time per batch.
    images = (len(launches) - 1 - warm) * batch
    return rate_row(
        "scoring", f"{spec.scorer} |T|={spec.timesteps}, end to end from JPEG files (score_source)", batch=batch, items=images,
        seconds=launches[-1] - launches[warm], flops_per_item=flops, peak=peak, workers=workers, jpeg_kib=mean_bytes / 1024, images_timed=images,
    )  # fmt: skip


def _launch_times(run: Callable[[], object]) -> list[float]:
    """The wall-clock time of every batch ``DifficultyScorer.launch`` starts while ``run()`` runs."""
    times, launch = [], DifficultyScorer.launch

    def timed(self: DifficultyScorer, *args: torch.Tensor) -> Callable[[], list[np.ndarray]]:
        times.append(time.perf_counter())
        return launch(self, *args)

    DifficultyScorer.launch = timed
    try:
        run()
    finally:
        DifficultyScorer.launch = launch
    return times


def jpeg_folder(root: Path, count: int) -> float:
    """``count`` JPEG files in ImageFolder layout (one folder per class), cycling over a few distinct synthetic pictures; their mean size."""
    jpegs = [_synthetic_jpeg(seed) for seed in range(DISTINCT_JPEGS)]
    for i in range(count):
        folder = root / f"class{i % CLASSES_ON_DISK:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:08d}.jpg").write_bytes(jpegs[i % len(jpegs)])
    return float(np.mean([len(j) for j in jpegs]))


def _synthetic_jpeg(seed: int) -> bytes:
    """A smooth random picture with fine noise, saved at quality 90: about the size of an ImageNet JPEG, so decoding costs what it costs on the real data."""
    rng = np.random.default_rng(seed)
    width, height = JPEG_SIZE
    smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(JPEG_SIZE, Image.BICUBIC)
    pixels = np.clip(np.asarray(smooth, np.float32) + rng.normal(0, 18, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
