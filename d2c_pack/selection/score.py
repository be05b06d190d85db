"""The diffusion difficulty score of every source image, cached and resumable.

For an image x of class c, with z its latent (SD-VAE posterior mean × 0.18215, or the pixels)
and T a set of stratified timesteps, the score is the frozen backbone's mean denoising error

    s(x, c) = (1/|T|) Σ_{t∈T} mean((target_t − f(z_t, t, c))²)

on the DDPM ε path for ε-prediction backbones (DiT) and on the linear velocity path for SiT.
The noise of (image, t_i) comes from a generator seeded by (seed, source id, i), so a score
depends on neither batch, order nor number of processes.

Results go to a :class:`~d2c_pack.selection.chunks.ChunkCache` under ``WORK/scores/`` keyed by
everything that changes them (source fingerprint, scorer sha256, timesteps, seed, resolution,
chunk size), which makes scoring resumable and splits it across ``torchrun`` ranks; rank 0
then merges the chunks into ``WORK/scores/<key>/scores.parquet``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from d2c_pack.core import distributed
from d2c_pack.core.errors import UserError
from d2c_pack.core.fingerprint import sha256_file
from d2c_pack.core.progress import progress_bar
from d2c_pack.models.checkpoint import BackboneConfig, backbone_weights_file, load_backbone
from d2c_pack.models.dit import DiT
from d2c_pack.models.latents import LatentSpace, VaeSpace, load_latent_space
from d2c_pack.selection.chunks import INDEX_FIELDS, ChunkCache, Rows, compute_chunks, list_array, list_values, start_host_copy
from d2c_pack.selection.rowfile import RowFile, write_rows
from d2c_pack.selection.settings import ScoreConfig
from d2c_pack.sources.image_source import ImageSource, SourceRecord

CACHE_VERSION = 1  # bump when anything below changes the numbers a cache holds
DDPM_STEPS = 1000
VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # --vae-precision

# One row per source image; a row whose image could not be decoded has an error and no score.
CACHE_SCHEMA = pa.schema(
    [
        *INDEX_FIELDS,
        pa.field("label", pa.int64()),
        pa.field("score", pa.float32()),
        pa.field("losses", pa.list_(pa.float32())),  # per timestep, in the order of the key's timesteps
        pa.field("feature", pa.list_(pa.float16())),  # backbone tokens mean-pooled, for kcenter/herding
    ]
)


def stratified_timesteps(prediction: str, count: int) -> torch.Tensor:
    """|T| = ``count`` timesteps at the centres of equal strata: DDPM steps for ε, t ∈ (0, 1) for velocity."""
    centres = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    if prediction == "epsilon":
        return torch.floor(centres * DDPM_STEPS).long()
    return centres.float()


def ddpm_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of DiT's 1000-step linear β schedule (1e-4 … 0.02), in float64 as DiT computes it."""
    betas = torch.linspace(1e-4, 0.02, DDPM_STEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def image_noise(seed: int, source_id: str, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(count, *shape) standard normal noise; row i is drawn from a generator seeded by (seed, source_id, i)."""
    id_words = np.frombuffer(hashlib.sha256(source_id.encode()).digest()[:16], dtype=np.uint32).tolist()
    noise = torch.empty(count, *shape)
    for i in range(count):
        state = np.random.SeedSequence([seed, *id_words, i]).generate_state(1, np.uint64)[0]
        noise[i] = torch.randn(shape, generator=torch.Generator().manual_seed(int(state)))
    return noise


class DifficultyScorer:
    """Per-timestep denoising losses of a frozen class-conditional backbone."""

    def __init__(self, model: DiT, config: BackboneConfig, space: LatentSpace, timesteps: int, device: torch.device):
        self.model = model.to(device).eval().requires_grad_(False)
        self.config = config
        self.space = space
        self.device = device
        self.times = stratified_timesteps(config.prediction, timesteps).to(device)  # (T,)
        if config.prediction == "epsilon":
            alphas = ddpm_alphas_cumprod()[self.times.cpu()]
            self.signal, self.noise_level = (alphas.sqrt().float().to(device), (1 - alphas).sqrt().float().to(device))
        self._pooled: list[torch.Tensor] = []
        # The tokens entering the final layer, mean-pooled: a free by-product of the score.
        model.final_layer.register_forward_pre_hook(lambda _, args: self._pooled.append(args[0].float().mean(1)))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.in_channels, self.config.input_size, self.config.input_size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, R, R) in [-1, 1], labels (B,), noise (B, T, C, h, w) → losses (B, T), pooled features (B, D), on the device.

        Nothing here waits for the device: the caller decides when the results come back (:meth:`launch`).
        """
        images, labels, noise = (x.to(self.device, non_blocking=True) for x in (images, labels, noise))
        batch, steps = noise.shape[:2]
        z = self.space.encode(images)[:, None]  # (B, 1, C, h, w)
        if self.config.prediction == "epsilon":
            view = (1, steps, 1, 1, 1)
            z_t = self.signal.view(view) * z + self.noise_level.view(view) * noise  # (B, T, C, h, w)
            target = noise
        else:
            t = self.times.view(1, steps, 1, 1, 1)
            z_t = t * z + (1 - t) * noise  # (B, T, C, h, w)
            target = z - noise
        self._pooled.clear()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.model(z_t.flatten(0, 1), self.times.repeat(batch), labels.repeat_interleave(steps))
        prediction = out[:, : z.shape[2]].float().view_as(z_t)  # first C channels when σ is learned
        losses = ((prediction - target) ** 2).mean(dim=(2, 3, 4))  # (B, T)
        features = self._pooled.pop().view(batch, steps, -1).mean(1)  # (B, D)
        return losses, features

    def launch(self, crops: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor) -> Callable[[], list[np.ndarray]]:
        """Scores uint8 crops (B, 3, R, R) as the loader gives them; returns a function that waits for losses (B, T) float32 and features (B, D) float16.

        The crops cross to the device as uint8 (a quarter of the bytes of float32, from pinned
        memory without blocking) and become [-1, 1] floats there, as ``image_to_tensor`` makes them.
        """
        images = crops.to(self.device, non_blocking=True).float() / 127.5 - 1  # inline: test_score traces the conversion in this frame
        losses, features = self(images, labels, noise)
        return start_host_copy(losses, features.half())


def load_scorer(config: ScoreConfig, device: torch.device) -> tuple[DifficultyScorer, str]:
    """The scorer the config names and the sha256 of its weights file."""
    weights = backbone_weights_file(config.scorer)
    model, backbone = load_backbone(config.scorer, prediction=config.prediction, num_heads=config.num_heads)
    if backbone.image_size != config.resolution:
        raise UserError(
            f"the scorer {config.scorer} works at {backbone.image_size}×{backbone.image_size}; "
            f"set --resolution {backbone.image_size} (got {config.resolution})"
        )
    # A scorer this tool trained records its VAE's hash: another VAE is refused, as when sampling.
    space = load_latent_space(
        (config.vae or backbone.vae) if backbone.vae else None, device, expected_sha256=backbone.vae_sha256, dtype=VAE_DTYPES[config.vae_precision]
    )
    if (space.channels, space.downsample * backbone.input_size) != (backbone.in_channels, backbone.image_size):
        raise UserError(
            f"the VAE {config.vae or backbone.vae!r} gives {space.channels}-channel latents at 1/{space.downsample} of the image, "
            f"but the scorer {config.scorer} takes {backbone.in_channels} channels at {backbone.input_size}×{backbone.input_size} for {backbone.image_size}-px images"
        )
    return DifficultyScorer(model, backbone, space, config.timesteps, device), sha256_file(weights)


def score_cache(config: ScoreConfig, source: ImageSource, scorer: DifficultyScorer, scorer_sha256: str) -> ChunkCache:
    """WORK/scores/<key>: keyed by everything that changes a score."""
    key = {
        "version": CACHE_VERSION,
        "source": source.fingerprint(),
        "scorer_sha256": scorer_sha256,
        "prediction": scorer.config.prediction,
        "vae_sha256": getattr(scorer.space, "sha256", None),  # the weights, not the name: a local copy is the same VAE
        "timesteps": scorer.times.tolist(),
        "seed": config.seed,
        "resolution": config.resolution,
    }
    if isinstance(scorer.space, VaeSpace) and scorer.space.vae.dtype != torch.float32:  # keys of fp32 caches stay as they were
        key["vae_dtype"] = str(scorer.space.vae.dtype).removeprefix("torch.")
    if config.num_heads is not None:  # a scorer of no DiT/SiT size; absent otherwise, so that existing caches stay valid
        key["num_heads"] = config.num_heads
    return ChunkCache(Path(config.work) / "scores", key, CACHE_SCHEMA, config.chunk_size)


def read_cache_key(scores_file: Path) -> dict:
    """The key of the cache a merged ``scores.parquet`` belongs to (scorer sha256, timesteps, …)."""
    return json.loads((scores_file.parent / "key.json").read_text())


def score_source(config: ScoreConfig, context: distributed.Context | None = None, source: ImageSource | None = None) -> Path:
    """Scores every image of the source (resuming from the cache) and returns the merged ``scores.parquet``.

    Every rank scores its share; every rank gets the merged file's path once rank 0 has written it.
    ``source`` is the config's source if the caller has already opened it.
    """
    context = context or distributed.init(config.device)
    source = source or config.open_source(streaming=config.streaming)
    scorer, scorer_sha256 = load_scorer(config, context.device)
    if source.num_classes > scorer.config.num_classes:
        raise UserError(
            f"{config.source} has {source.num_classes} classes but the scorer {config.scorer} knows {scorer.config.num_classes}: "
            "score with a model trained on the source's classes"
        )
    cache = score_cache(config, source, scorer, scorer_sha256)
    merged = cache.folder / "scores.parquet"
    if not merged.exists():
        steps, shape = len(scorer.times), scorer.latent_shape
        compute_chunks(
            [(cache, lambda batch: _scored_rows(scorer, batch))], source, range(len(source)), context,
            resolution=config.resolution, batch_size=config.batch_size, workers=config.workers, description="score",
            extra=functools.partial(_record_noise, config.seed, steps, shape),
        )  # fmt: skip
        if context.is_main:
            cache.merge(range(len(source)), merged)
        context.barrier()
    return merged


def _record_noise(seed: int, steps: int, shape: tuple[int, ...], record: SourceRecord) -> dict[str, torch.Tensor]:
    """The image's own noise, drawn in the loader worker; a module-level function so that spawned workers can unpickle it."""
    return {"noise": image_noise(seed, record.source_id, steps, shape)}


def _scored_rows(scorer: DifficultyScorer, batch: dict) -> Rows:
    """Launches the batch; its rows are made when asked for, once its results are on the host."""
    results = scorer.launch(batch["crops"], batch["labels"], batch["noise"])

    def rows() -> pa.Table:
        losses, features = (np.array(array) for array in results())  # copies: a pinned buffer goes back to the allocator
        columns = {
            "source_index": batch["indices"],
            "source_id": batch["source_ids"],
            "error": pa.nulls(len(losses), pa.string()),
            "label": batch["labels"].numpy(),
            "score": losses.mean(axis=1),
            "losses": list_array(losses),
            "feature": list_array(features),
        }
        return pa.table(columns, schema=CACHE_SCHEMA)

    return rows


@dataclasses.dataclass
class Scores:
    """The scored images of a source (unreadable ones are listed in ``errors``); their features: :func:`score_features`."""

    indices: np.ndarray  # (N,) int64 source indices
    source_ids: list[str]
    labels: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float32
    losses: np.ndarray  # (N, T) float32
    errors: list[tuple[int, str, str]]  # (source index, source id, reason)

    def __len__(self) -> int:
        return len(self.indices)


def read_scores(path: Path) -> Scores:
    """Reads a merged score table into arrays (through Arrow, without Python objects per number), all but the features."""
    table = pq.read_table(path, columns=[name for name in CACHE_SCHEMA.names if name != "feature"])
    failed = table.filter(pc.is_valid(table["error"]))
    table = table.filter(pc.is_null(table["error"]))
    return Scores(
        indices=table["source_index"].to_numpy(),
        source_ids=table["source_id"].to_pylist(),
        labels=table["label"].to_numpy(),
        scores=table["score"].to_numpy(),
        losses=list_values(table["losses"], np.float32),
        errors=list(zip(*(failed[c].to_pylist() for c in ("source_index", "source_id", "error")))),
    )


def score_features(path: Path) -> RowFile:
    """The scorer's pooled features of the scored images of a merged score table, one row per :class:`Scores` position.

    They are copied once, row group by row group, into ``features.npy`` beside the table (float16),
    from which selectors read a class at a time.
    """
    rows = path.with_name("features.npy")
    if not rows.exists():
        scored = pq.read_table(path, columns=["error"])["error"].null_count
        # Without pre-buffering: it would read ahead whole row groups and grow with the file.
        write_rows(rows, scored, _feature_blocks(pq.ParquetFile(path, pre_buffer=False)))
    return RowFile(rows)


def _feature_blocks(table: pq.ParquetFile) -> Iterator[np.ndarray]:
    with progress_bar("features", total=table.metadata.num_rows) as advance:
        for batch in table.iter_batches(batch_size=8192, columns=["error", "feature"]):
            advance(batch.num_rows)
            yield list_values(batch.filter(pc.is_null(batch["error"]))["feature"], np.float16)


def summarize(scores: Scores, seconds: float | None = None) -> str:
    """One line on what a scoring pass produced."""
    parts = [f"{len(scores):,} images scored"]
    if scores.errors:
        parts.append(f"{len(scores.errors)} unreadable skipped (first: {scores.errors[0][1]})")
    if len(scores):
        parts.append(f"score range {scores.scores.min():.4g}…{scores.scores.max():.4g}")
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return ", ".join(parts)

