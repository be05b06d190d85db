"""The diffusion difficulty score of every source image (DESIGN §3.2), cached and resumable.

For an image x of class c, with z its latent (SD-VAE posterior mean × 0.18215, or the pixels)
and T a set of stratified timesteps, the score is the frozen backbone's mean denoising error

    s(x, c) = (1/|T|) Σ_{t∈T} mean((target_t − f(z_t, t, c))²)

on the DDPM ε path for ε-prediction backbones (DiT) and on the linear velocity path for SiT.
The noise of (image, t_i) comes from a generator seeded by (seed, source id, i), so a score
depends on neither batch, order nor number of processes.

Results go to a cache folder keyed by everything that changes them (source fingerprint, scorer
sha256, timesteps, seed, resolution, chunk size)::

    WORK/scores/<key>/key.json                 the key, readable
    WORK/scores/<key>/chunks/NNNNNNN.parquet   one per chunk of consecutive source indices
    WORK/scores/<key>/scores.parquet           all chunks merged (written last)

A chunk file appears atomically when the chunk is done, so a killed run resumes at the first
missing chunk. Under ``torchrun`` rank r scores the chunks c with c mod world_size = r and rank
0 merges; the chunks' batches are the same whatever the world size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from d2c_pack import distributed
from d2c_pack.errors import UserError
from d2c_pack.latents import LatentSpace, load_latent_space
from d2c_pack.models import BackboneConfig, DiT, backbone_weights_file, load_backbone
from d2c_pack.preprocess import center_crop_adm, image_to_tensor
from d2c_pack.progress import progress_bar
from d2c_pack.recipe import flag
from d2c_pack.sources import ImageSource, SourceArgs

CACHE_VERSION = 1  # bump when anything below changes the numbers a cache holds
DDPM_STEPS = 1000

# One row per source image; a row whose image could not be decoded has an error and no score.
CACHE_FEATURES = datasets.Features(
    {
        "source_index": datasets.Value("int64"),
        "source_id": datasets.Value("string"),
        "label": datasets.Value("int64"),
        "score": datasets.Value("float32"),
        "losses": datasets.List(datasets.Value("float32")),  # per timestep, in the order of ``timesteps``
        "feature": datasets.List(datasets.Value("float16")),  # backbone tokens pooled (for kcenter/herding)
        "error": datasets.Value("string"),
    }
)


def default_work_dir() -> str:
    """``$D2C_PACK_CACHE``, else ``$XDG_CACHE_HOME/d2c-pack``, else ``~/.cache/d2c-pack``."""
    if "D2C_PACK_CACHE" in os.environ:
        return os.environ["D2C_PACK_CACHE"]
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d2c-pack")


@dataclasses.dataclass(kw_only=True)
class ScoreConfig(SourceArgs):
    """Settings of a scoring pass; the flags and recipe keys of ``d2c-pack score``."""

    scorer: str = flag(
        "DiT-XL-2-256x256.pt",
        help="Frozen class-conditional backbone: an official DiT/SiT .pt file, a d2c-pack model folder, or demo:digits.",
    )
    prediction: str | None = flag(None, help="What the scorer predicts, 'epsilon' (DiT) or 'velocity' (SiT); default: from its file name or config.")
    timesteps: int = flag(8, help="Number |T| of stratified timesteps the loss is averaged over.")
    seed: int = flag(0, help="Seed of the per-(image, timestep) noise.")
    resolution: int = flag(256, help="Resolution R of the ADM centre crop; must match the scorer.")
    batch_size: int = flag(32, help="Images per forward pass (each goes through with all |T| noisy copies).")
    chunk_size: int = flag(4096, help="Images per cache chunk: the unit of resumption and of work per rank.")
    workers: int = flag(4, help="DataLoader processes decoding and cropping images (0 = in the main process).")
    streaming: bool = flag(False, help="Stream a Hub source instead of downloading it first (read front to back, no workers).")
    device: str = flag("auto", help="'auto' (this rank's GPU if any, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    work: str = flag(help="Cache folder for scores (default $D2C_PACK_CACHE or ~/.cache/d2c-pack).", factory=default_work_dir)

    def __post_init__(self) -> None:
        for name in ("timesteps", "resolution", "batch_size", "chunk_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if self.prediction not in (None, "epsilon", "velocity"):
            raise UserError(f"--prediction must be 'epsilon' or 'velocity', got {self.prediction!r}")


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
        """images (B, 3, R, R) in [-1, 1], labels (B,), noise (B, T, C, h, w) → losses (B, T), pooled features (B, D)."""
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
        return losses.cpu(), features.cpu()


def load_scorer(config: ScoreConfig, device: torch.device) -> tuple[DifficultyScorer, str]:
    """The scorer the config names and the sha256 of its weights file."""
    weights = backbone_weights_file(config.scorer)
    model, backbone = load_backbone(config.scorer, prediction=config.prediction)
    if backbone.image_size != config.resolution:
        raise UserError(
            f"the scorer {config.scorer} works at {backbone.image_size}×{backbone.image_size}; "
            f"set --resolution {backbone.image_size} (got {config.resolution})"
        )
    space = load_latent_space(backbone.vae, device)
    return DifficultyScorer(model, backbone, space, config.timesteps, device), sha256_file(weights)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def cache_folder(config: ScoreConfig, source: ImageSource, scorer: DifficultyScorer, scorer_sha256: str) -> Path:
    """WORK/scores/<first 16 hex digits of the key's sha256>, with the key written beside the chunks."""
    key = {
        "version": CACHE_VERSION,
        "source": source.fingerprint(),
        "scorer_sha256": scorer_sha256,
        "prediction": scorer.config.prediction,
        "vae": scorer.config.vae,
        "timesteps": scorer.times.tolist(),
        "seed": config.seed,
        "resolution": config.resolution,
        "chunk_size": config.chunk_size,
    }
    text = json.dumps(key, sort_keys=True, indent=2) + "\n"
    folder = Path(config.work) / "scores" / hashlib.sha256(text.encode()).hexdigest()[:16]
    (folder / "chunks").mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        _replace_atomically(folder / "key.json", lambda partial: partial.write_text(text))
    return folder


def read_cache_key(scores_file: Path) -> dict:
    """The key of the cache a merged ``scores.parquet`` belongs to (scorer sha256, timesteps, …)."""
    return json.loads((scores_file.parent / "key.json").read_text())


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Consecutive source indices scored and stored together."""

    number: int
    indices: range


def chunk_file(folder: Path, number: int) -> Path:
    return folder / "chunks" / f"{number:07d}.parquet"


def chunks_of(num_images: int, chunk_size: int) -> list[Chunk]:
    return [Chunk(n, range(start, min(start + chunk_size, num_images))) for n, start in enumerate(range(0, num_images, chunk_size))]


class ChunkBatches(IterableDataset):
    """Preprocessed batches of whole chunks, with the noise of every image; each DataLoader worker takes every n-th chunk.

    A worker reads its images in one ascending pass (so a streamed source is read once). Each
    chunk ends with a batch whose ``last`` is True and that lists the chunk's unreadable images.
    """

    def __init__(self, source: ImageSource, chunks: list[Chunk], *, resolution: int, batch_size: int, seed: int, noise_shape: tuple[int, ...]):
        self.source, self.chunks = source, chunks
        self.resolution, self.batch_size, self.seed, self.noise_shape = resolution, batch_size, seed, noise_shape

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        mine = self.chunks[worker.id :: worker.num_workers] if worker else self.chunks
        records = self.source.iter_records(i for chunk in mine for i in chunk.indices)
        upcoming = next(records, None)
        reported = len(self.source.skipped)
        for chunk in mine:
            batch = []
            while upcoming is not None and upcoming.index < chunk.indices.stop:
                batch.append(upcoming)
                upcoming = next(records, None)
                if len(batch) == self.batch_size:
                    yield self._batch(chunk, batch)
                    batch = []
            # Decoding runs one image ahead, so the skipped list may already hold the next chunk's first image.
            skipped = [s for s in self.source.skipped[reported:] if s.index < chunk.indices.stop]
            reported += len(skipped)
            yield self._batch(chunk, batch) | {"last": True, "skipped": [(s.index, s.source_id, s.reason) for s in skipped]}

    def _batch(self, chunk: Chunk, records: list) -> dict:
        count, shape = self.noise_shape[0], self.noise_shape[1:]
        images = [image_to_tensor(center_crop_adm(r.image, self.resolution)) for r in records]
        return {
            "chunk": chunk.number,
            "indices": [r.index for r in records],
            "source_ids": [r.source_id for r in records],
            "labels": torch.tensor([r.label for r in records], dtype=torch.long),
            "images": torch.stack(images) if images else torch.empty(0),
            "noise": torch.stack([image_noise(self.seed, r.source_id, count, shape) for r in records]) if records else torch.empty(0),
            "last": False,
            "skipped": [],
        }


def score_source(config: ScoreConfig, context: distributed.Context | None = None, source: ImageSource | None = None) -> Path:
    """Scores every image of the source (resuming from the cache) and returns the merged ``scores.parquet``.

    Every rank scores its share; every rank gets the merged file's path once rank 0 has written it.
    ``source`` is the config's source if the caller has already opened it.
    """
    context = context or distributed.init(config.device)
    source = source or config.open_source(streaming=config.streaming)
    scorer, scorer_sha256 = load_scorer(config, context.device)
    folder = cache_folder(config, source, scorer, scorer_sha256)
    merged = folder / "scores.parquet"
    if not merged.exists():
        chunks = chunks_of(len(source), config.chunk_size)
        _score_chunks(config, source, scorer, folder, chunks[context.rank :: context.world_size])
        context.barrier()
        if context.is_main:
            _merge_chunks(folder, chunks, merged)
        context.barrier()
    return merged


def _score_chunks(config: ScoreConfig, source: ImageSource, scorer: DifficultyScorer, folder: Path, chunks: list[Chunk]) -> None:
    pending = [c for c in chunks if not chunk_file(folder, c.number).exists()]
    total = sum(len(c.indices) for c in chunks)
    done = total - sum(len(c.indices) for c in pending)
    batches = ChunkBatches(
        source, pending, resolution=config.resolution, batch_size=config.batch_size, seed=config.seed,
        noise_shape=(len(scorer.times), *scorer.latent_shape),
    )  # fmt: skip
    # A streamed source can only be read front to back, which worker processes cannot share.
    workers = config.workers if source.random_access else 0
    loader = DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=scorer.device.type == "cuda")
    parts: dict[int, list[pa.Table]] = {}
    with progress_bar("score", total=total, completed=done) as advance:
        for batch in loader:
            tables = parts.setdefault(batch["chunk"], [])
            if batch["indices"]:
                losses, features = scorer(batch["images"], batch["labels"], batch["noise"])
                tables.append(_scored_table(batch, losses.numpy(), features.half().numpy()))
            if batch["skipped"]:
                tables.append(_skipped_table(batch["skipped"]))
            advance(len(batch["indices"]) + len(batch["skipped"]))
            if batch["last"]:
                chunk = pa.concat_tables(parts.pop(batch["chunk"])).sort_by("source_index")
                _write_table(chunk, chunk_file(folder, batch["chunk"]))


def _scored_table(batch: dict, losses: np.ndarray, features: np.ndarray) -> pa.Table:
    columns = {
        "source_index": batch["indices"],
        "source_id": batch["source_ids"],
        "label": batch["labels"].numpy(),
        "score": losses.mean(axis=1),
        "losses": _list_array(losses),
        "feature": _list_array(features),
        "error": pa.nulls(len(losses), pa.string()),
    }
    return pa.table(columns, schema=CACHE_FEATURES.arrow_schema)


def _skipped_table(skipped: list[tuple[int, str, str]]) -> pa.Table:
    index, source_id, error = map(list, zip(*skipped))
    columns = {name: [None] * len(skipped) for name in CACHE_FEATURES} | {"source_index": index, "source_id": source_id, "error": error}
    return pa.Table.from_pydict(columns, schema=CACHE_FEATURES.arrow_schema)


def _list_array(matrix: np.ndarray) -> pa.ListArray:
    """(n, d) array → Arrow list column of n rows of length d, without a Python object per number."""
    offsets = np.arange(0, matrix.size + 1, max(matrix.shape[1], 1), dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, matrix.ravel())


def _merge_chunks(folder: Path, chunks: list[Chunk], merged: Path) -> None:
    tables = [pq.read_table(chunk_file(folder, c.number)) for c in chunks]
    table = pa.concat_tables(tables) if tables else CACHE_FEATURES.arrow_schema.empty_table()
    _write_table(table, merged)


def _write_table(table: pa.Table, path: Path) -> None:
    _replace_atomically(path, lambda partial: pq.write_table(table, partial))


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Writes through ``write(partial)`` next to ``path``, then renames: readers see all of it or nothing."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)


@dataclasses.dataclass
class Scores:
    """The scored images of a source (unreadable ones are listed in ``errors``)."""

    indices: np.ndarray  # (N,) int64 source indices
    source_ids: list[str]
    labels: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float32
    losses: np.ndarray  # (N, T) float32
    features: np.ndarray  # (N, D) float16
    errors: list[tuple[int, str, str]]  # (source index, source id, reason)

    def __len__(self) -> int:
        return len(self.indices)


def read_scores(path: Path) -> Scores:
    """Reads a merged score table into arrays (through Arrow, without Python objects per number)."""
    table = pq.read_table(path)
    failed = table.filter(pa.compute.is_valid(table["error"]))
    table = table.filter(pa.compute.is_null(table["error"]))
    return Scores(
        indices=table["source_index"].to_numpy(),
        source_ids=table["source_id"].to_pylist(),
        labels=table["label"].to_numpy(),
        scores=table["score"].to_numpy(),
        losses=_list_column(table, "losses", np.float32),
        features=_list_column(table, "feature", np.float16),
        errors=list(zip(*(failed[c].to_pylist() for c in ("source_index", "source_id", "error")))),
    )


def _list_column(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    column = table[name].combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    return values.reshape(len(table), -1) if len(table) else values.reshape(0, 0)


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

