"""The reference trainer: SiT + DC-Embedding + visual alignment, AdamW, EMA, DDP, exact resume.

Output folder layout::

    OUT/train_config.yaml          the resolved settings (a resumed run must match them)
    OUT/metrics.jsonl              one JSON line per logged step
    OUT/init_report.json           with --init: which weights were loaded, which are new, which were ignored
    OUT/checkpoints/NNNNNNN/       config.json, model.safetensors, ema.safetensors, optimizer.pt, state.json (+ class_text)
    OUT/model/                     the final EMA weights for load_backbone / sample / eval (+ class_text.safetensors)

Re-running the same command continues from the newest checkpoint. All randomness of step s —
batch order, noise, t, latent sampling, class and text dropout — is drawn for the whole global
batch from a generator seeded by (seed, s), and each rank takes its samples' share, so the
RNG state *is* the step counter, a resumed run reproduces an uninterrupted one bit for bit, and
N processes under ``torchrun`` train like one process with the same global batch.

The hot loop does not wait for the device between log steps: the step's randomness is drawn on
the device, the subset's columns are gathered from memory (see :mod:`d2c_pack.training.memory`),
and the logged values are summed on the device and read once per log step. A time-based
checkpoint (``--ckpt-every-seconds``) is decided at log steps, on rank 0's clock, inside the
same read: it lands on the first log step after the seconds have passed and, since every step's
randomness comes from (seed, step), never changes the trained weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from d2c_pack.core import distributed
from d2c_pack.core.arrays import feature_shape
from d2c_pack.core.errors import UserError
from d2c_pack.core.progress import progress_bar
from d2c_pack.diffusion.transport import interpolate, velocity_loss
from d2c_pack.models.checkpoint import EMA_WEIGHTS_NAME, WEIGHTS_NAME, BackboneConfig, ClassText, backbone_config, read_state_dict, save_backbone
from d2c_pack.models.d2c import D2CSiT
from d2c_pack.models.latents import LatentSpace, PixelSpace, VaeSpace, load_latent_space
from d2c_pack.training.data import (
    EpochPermutationBatches,
    SourceRows,
    collate_rows,
    open_subset,
    subset_rows,
)
from d2c_pack.training.memory import SubsetArrays, decode_columns, memory_budget
from d2c_pack.training.settings import TrainConfig

DEFAULT_RESOLUTION = 256
OPTIMIZER_NAME = "optimizer.pt"
SETTINGS_NAME = "train_config.yaml"
STATE_NAME = "state.json"
# Settings that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "ckpt_every", "ckpt_every_seconds", "workers", "data_memory_gb"})
LOGGED = ("velocity_loss", "align_loss", "loss")  # the losses metrics.jsonl records, besides grad_norm


@dataclasses.dataclass
class TrainingData:
    """What the loader reads and what the model is built for."""

    dataset: Dataset | SubsetArrays  # the columns in memory, or rows read in place / from the source
    class_names: list[str]
    in_channels: int
    input_size: int
    image_size: int
    vae: str | None  # the VAE whose latents the model sees (None: pixels), recorded for sampling by Hub id / folder name
    vae_sha256: str | None  # its weights' hash, which a local copy given at sampling time must match
    from_latent_column: bool  # x₁ comes from the latent column, so no VAE runs while training
    space: LatentSpace = dataclasses.field(default_factory=PixelSpace)  # turns images into model inputs
    latent_scale: float = 1.0  # x₁ = (latent − shift) · scale, the VAE's own factors
    latent_shift: float = 0.0
    text_dim: int | None = None
    visual_dim: int | None = None
    class_text: ClassText | None = None


def _image_data(dataset, class_names: list[str], config: TrainConfig, resolution: int, device: torch.device) -> TrainingData:
    """Images become the model's inputs through ``--vae`` (loaded here) or stay pixels."""
    space = load_latent_space(config.image_vae, device)
    size = resolution // space.downsample
    if not isinstance(space, VaeSpace):
        return TrainingData(dataset, class_names, space.channels, size, resolution, None, None, from_latent_column=False, space=space)
    return TrainingData(
        dataset, class_names, space.channels, size, resolution, space.reference, space.sha256, from_latent_column=False, space=space,
        latent_scale=space.scaling_factor, latent_shift=space.shift_factor,
    )  # fmt: skip


def training_resolution(config: TrainConfig, built: int | None) -> int:
    """R: the subset's (``built``: its manifest's, or its latents' side × the VAE's downsampling), which ``--resolution`` may only repeat; else the flag or 256."""
    if built is not None and config.resolution not in (None, built):
        raise UserError(f"{config.data} was built at resolution {built}; leave out --resolution {config.resolution} (or build the subset at that resolution)")
    return built or config.resolution or DEFAULT_RESOLUTION


def _latent_column_data(config: TrainConfig, manifest: dict | None, names: list[str], moments: tuple[int, ...], device: torch.device) -> TrainingData:
    """The latent column's space — VAE, its weights' hash, scale, shift — and R, from the manifest, else from ``--vae``.

    Nothing is assumed (not the SD VAE's scale, not R = 8 × the latent side): a manifest that does
    not record them, or a dataset without a manifest and without ``--vae``, is refused.
    """
    channels, side = moments[0] // 2, moments[1]  # (2C, h, w): posterior mean ‖ std
    if manifest is not None:
        inputs = manifest["inputs"]
        recorded = ("vae", "vae_sha256", "latent_scaling_factor", "latent_shift_factor")
        if missing := [key for key in recorded if key not in inputs]:
            raise UserError(f"the manifest of {config.data} does not record {', '.join(missing)} of its latent column: rebuild it with this d2c-pack")
        return TrainingData(
            None, names, channels, side, training_resolution(config, manifest["recipe"]["resolution"]), inputs["vae"], inputs["vae_sha256"],
            from_latent_column=True, latent_scale=inputs["latent_scaling_factor"], latent_shift=inputs["latent_shift_factor"],
        )  # fmt: skip
    if config.vae in (None, "auto"):
        raise UserError(f"{config.data} has a latent column but no d2c-pack manifest naming the VAE that made it: pass --vae NAME (and train on the d2c-pack build itself where there is one)")
    space = load_latent_space(config.vae, device)
    if space.channels != channels:
        raise UserError(f"the VAE {config.vae!r} makes {space.channels}-channel latents, the latent column of {config.data} has {channels} channels")
    return TrainingData(
        None, names, channels, side, training_resolution(config, side * space.downsample), space.reference, space.sha256,
        from_latent_column=True, latent_scale=space.scaling_factor, latent_shift=space.shift_factor,
    )  # fmt: skip


def prepare_data(config: TrainConfig, device: torch.device, *, announce: bool = True) -> TrainingData:
    """Opens --source or --data and works out the model's input space from what the data provides.

    A subset's training columns are decoded into memory when they fit ``--data-memory-gb``, else read
    in place; ``announce`` says which in one line on stderr.
    """
    if config.source is not None:
        source = config.open_source()
        resolution = config.resolution or DEFAULT_RESOLUTION
        return _image_data(SourceRows(source, resolution), source.class_names, config, resolution, device)
    subset, manifest = open_subset(config.data)
    features = subset.features
    _require_labelled_images(config.data, features)
    names = features["label"].names
    if "latent" in features:
        data = _latent_column_data(config, manifest, names, feature_shape(features["latent"]), device)
    else:
        data = _image_data(None, names, config, training_resolution(config, manifest and manifest["recipe"]["resolution"]), device)
    columns = ["latent"] if data.from_latent_column else ["image"]
    if config.text:
        _require(features, ("text_embedding", "text_mask"), "--no-text")
        columns += ["text_embedding", "text_mask"]
        data.text_dim = feature_shape(features["text_embedding"])[1]
    if config.align:
        _require(features, ("visual_tokens",), "--no-align")
        columns.append("visual_tokens")
        data.visual_dim = feature_shape(features["visual_tokens"])[1]
    budget = memory_budget(config.data_memory_gb)
    data.dataset = decode_columns(subset, columns, data.image_size, device=device, budget=budget, announce=announce) or subset_rows(subset, columns, data.image_size)
    if config.text:
        captions = data.dataset if isinstance(data.dataset, SubsetArrays) else subset_rows(subset, ["text_embedding", "text_mask"], data.image_size)
        data.class_text = first_caption_per_class(captions, len(names))
    return data


def _require_labelled_images(data: str, features) -> None:
    """A dataset to train on has class labels (a ``label`` ClassLabel column) and images or latents."""
    if not isinstance(features.get("label"), datasets.ClassLabel) or not {"image", "latent"} & set(features):
        found = ", ".join(f"{name} ({type(feature).__name__})" for name, feature in features.items()) or "none"
        raise UserError(
            f"{data} is not a labelled image dataset: training needs a class-label column 'label' and an 'image' or 'latent' column (found: {found})"
        )


def _require(features, columns: tuple[str, ...], switch: str) -> None:
    if missing := [c for c in columns if c not in features]:
        raise UserError(f"the dataset has no {', '.join(missing)} column; build it with that column or pass {switch}")


def first_caption_per_class(rows, num_classes: int) -> ClassText:
    """Each class's first caption embedding: the text a class is sampled with (zeros for an empty class).

    ``rows``: the subset's rows with the text columns (``SubsetArrays``, ``SubsetRows`` or ``ShardRows``).
    """
    classes, first = np.unique(rows.labels(), return_index=True)
    captions = collate_rows([rows[int(i)] for i in first])
    embedding = torch.zeros(num_classes, *captions["text_embedding"].shape[1:], dtype=torch.float16)
    mask = torch.zeros(num_classes, captions["text_mask"].shape[1], dtype=torch.int8)
    embedding[classes] = captions["text_embedding"].half().cpu()
    mask[classes] = captions["text_mask"].to(torch.int8).cpu()
    return ClassText(embedding, mask)


@dataclasses.dataclass
class Run:
    """The live objects of a training run."""

    config: TrainConfig
    data: TrainingData
    backbone: BackboneConfig
    model: D2CSiT
    ema: D2CSiT
    optimizer: torch.optim.Optimizer
    context: distributed.Context
    step: int = 0


def train(config: TrainConfig) -> Path:
    """Trains (or resumes training of) a backbone; returns the folder of the final EMA model."""
    context = distributed.init(config.device)
    out = Path(config.out)
    settings = _resumable_settings(out, config)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    data = prepare_data(config, context.device, announce=context.is_main)
    run = _new_run(config, data, context)
    checkpoint, report = latest_checkpoint(out), None
    if checkpoint is not None:
        _restore(run, checkpoint)
    elif config.init:
        report = initialize_from(run, config.init)
    # Every input has been read and checked: only now does the run folder get written, so a bad one leaves nothing.
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / SETTINGS_NAME).write_text(settings)
        if report is not None:
            (out / "init_report.json").write_text(json.dumps(report, indent=2) + "\n")
    context.barrier()
    network = run.model
    if context.world_size > 1:
        network = DistributedDataParallel(run.model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
    forward = torch.compile(network) if config.compile else network
    batches = EpochPermutationBatches(
        len(data.dataset), config.batch_size, seed=config.seed, start_step=run.step, num_steps=config.steps,
        rank=context.rank, world_size=context.world_size,
    )  # fmt: skip
    metrics = _MetricsLog(out / "metrics.jsonl", after_step=run.step) if context.is_main else None
    means = _RunningMeans(context)
    with progress_bar("train", total=config.steps, completed=run.step, unit="steps", lines_from_log=True) as advance:
        tic, seen, saved_at = time.perf_counter(), 0, time.monotonic()
        for batch in _batches(data.dataset, batches, config, context):
            means.add(_train_step(run, forward, batch, offset=batches.rank_slice.start))
            run.step += 1
            seen += config.batch_size
            advance()
            timed_out = False
            if run.step % config.log_every == 0 or run.step == config.steps:
                late = config.ckpt_every_seconds is not None and time.monotonic() - saved_at >= config.ckpt_every_seconds
                logged, timed_out = means.read(late)
                images_per_second = seen / (time.perf_counter() - tic)
                advance.log(loss=logged["loss"], images_per_second=images_per_second)
                if metrics:
                    metrics.write(step=run.step, **logged, lr=config.lr, images_per_second=images_per_second)
                tic, seen = time.perf_counter(), 0
            if run.step % config.ckpt_every == 0 or run.step == config.steps or timed_out:
                save_checkpoint(run, out)
                saved_at = time.monotonic()
                if context.is_main:
                    _remove_interim_checkpoints(out, before=run.step, every=config.ckpt_every)
    return out / "model"


def _batches(rows: Dataset | SubsetArrays, sampler: EpochPermutationBatches, config: TrainConfig, context: distributed.Context) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batch of each step: gathered from the columns in memory, else loaded by a DataLoader (in place, ``--source``)."""
    if isinstance(rows, SubsetArrays):
        for step in range(sampler.start_step, sampler.num_steps):
            yield rows.gather(torch.from_numpy(sampler.global_indices(step)[sampler.rank_slice]))
        return
    yield from DataLoader(rows, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate_rows, pin_memory=context.device.type == "cuda")


class _RunningMeans:
    """The logged values summed on the device step by step, and read — reduced over ranks, one host sync — at log steps.

    What a log step records is the mean over the steps since the previous log step (and over ranks).
    """

    def __init__(self, context: distributed.Context):
        self.context = context
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        stacked = torch.stack([value.float() for value in values.values()])
        self.names, self.count = list(values), self.count + 1
        self.sums = stacked if self.sums is None else self.sums + stacked

    def read(self, late: bool) -> tuple[dict[str, float], bool]:
        """The means since the last read, and whether rank 0 found a time-based checkpoint due (``late`` on rank 0)."""
        # Rank 0's flag rides along in the same reduction, so every rank takes its decision at no extra sync.
        flag = self.sums.new_full((1,), float(late and self.context.is_main))
        reduced = torch.cat([self.sums, flag])
        if self.context.world_size > 1:
            dist.all_reduce(reduced)
        *sums, due = reduced.tolist()
        means = {name: total / (self.count * self.context.world_size) for name, total in zip(self.names, sums)}
        self.sums, self.count = None, 0
        return means, due > 0


def _remove_interim_checkpoints(out: Path, before: int, every: int) -> None:
    """Deletes the time-based checkpoints (steps off the ``every`` schedule) older than step ``before``: resuming needs only the newest."""
    for folder in (out / "checkpoints").glob("[0-9]" * 7):
        if int(folder.name) < before and int(folder.name) % every:
            shutil.rmtree(folder)


def step_randomness(run: Run, batch_size: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Noise, t, latent-sampling noise and dropout for every sample of the global batch of this step.

    Drawn on ``device`` (no copy from the host) by a generator of that device seeded by (seed, step);
    a CUDA generator draws other numbers than the CPU's, but the same ones on every rank and run.
    """
    seed = int(np.random.SeedSequence([run.config.seed, run.step]).generate_state(1)[0])
    generator = torch.Generator(device).manual_seed(seed)
    shape = (batch_size, run.data.in_channels, run.data.input_size, run.data.input_size)
    randomness = {
        "t": torch.rand(batch_size, generator=generator, device=device),
        "noise": torch.randn(shape, generator=generator, device=device),
        "latent_noise": torch.randn(shape, generator=generator, device=device),
    }
    # Class and text drop together (the fully unconditional input CFG uses, 10% of samples as in SiT/REPA); the text
    # alone may drop besides. Both draws are always made, so the other randomness does not depend on the settings.
    randomness["drop_class"] = torch.rand(batch_size, generator=generator, device=device) < run.config.class_dropout
    randomness["drop_text"] = randomness["drop_class"] | (torch.rand(batch_size, generator=generator, device=device) < run.config.text_dropout)
    return randomness


def model_inputs(run: Run, batch: dict[str, torch.Tensor], latent_noise: torch.Tensor) -> torch.Tensor:
    """x₁: a latent sample (mean + std·ε − shift)·scale from the latent column or the VAE, else the pixels."""
    if run.data.from_latent_column:
        moments = batch["latent"].float()  # (B, 2C, h, w)
    elif run.data.vae is not None:
        moments = run.data.space.posterior(batch["image"])  # (B, 2C, h, w)
    else:
        return batch["image"]  # (B, 3, R, R) in [-1, 1]
    mean, std = moments.chunk(2, dim=1)  # (B, C, h, w) each
    return (mean + std * latent_noise - run.data.latent_shift) * run.data.latent_scale


def alignment_loss(projection: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−mean over samples and tokens of cos(φ(h_i), v_i) (REPA); targets on another token grid are resized to the model's.

    projection: (N, T, D) of the model's T = s² tokens; targets: (N, M, D) visual tokens, M = r².
    """
    if targets.shape[1] != projection.shape[1]:
        targets = resize_token_grid(targets, int(round(projection.shape[1] ** 0.5)))
    return -F.cosine_similarity(projection, targets, dim=-1).mean()


def resize_token_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(N, r², D) tokens of an r×r patch grid → (N, side², D) by bilinear resampling of the grid."""
    n, count, dim = tokens.shape
    grid = int(round(count**0.5))
    image = tokens.transpose(1, 2).reshape(n, dim, grid, grid)  # (N, D, r, r)
    resized = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)  # (N, D, s, s)
    return resized.flatten(2).transpose(1, 2)  # (N, s², D)


def training_losses(run: Run, forward: torch.nn.Module, batch: dict[str, torch.Tensor], randomness: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The objective the trainer minimises on one batch, with the step's ``randomness`` (see :func:`step_randomness`).

    SiT's velocity matching mean ‖v_θ(x_t, t) − (x₁ − x₀)‖² on x_t = t·x₁ + (1 − t)·x₀ (x₀ the noise), plus
    λ (``proj_coeff``) times the alignment loss with ``--align``. Returns ``velocity_loss``, ``align_loss`` (with
    ``--align``) and their sum ``loss``.
    """
    with torch.no_grad():
        x1 = model_inputs(run, batch, randomness["latent_noise"])  # (B, C, h, w)
    xt, ut = interpolate(x1, randomness["noise"], randomness["t"])
    with torch.autocast(run.context.device.type, dtype=torch.bfloat16, enabled=run.context.device.type == "cuda"):
        out, projection = forward(
            xt, randomness["t"], batch["label"], batch.get("text_embedding"), batch.get("text_mask"),
            return_projection=True, drop_class=randomness["drop_class"], drop_text=randomness["drop_text"],
        )  # fmt: skip
    losses = {"velocity_loss": velocity_loss(out, ut)}
    losses["loss"] = losses["velocity_loss"]
    if run.config.align:
        losses["align_loss"] = alignment_loss(projection.float(), batch["visual_tokens"].float())
        losses["loss"] = losses["loss"] + run.config.proj_coeff * losses["align_loss"]
    return losses


def _train_step(run: Run, forward: torch.nn.Module, batch: dict[str, torch.Tensor], offset: int) -> dict[str, torch.Tensor]:
    """One optimisation step on this rank's ``batch``, whose rows sit from ``offset`` on in the global batch.

    ``positions`` (a DataLoader's batch) says which of this rank's rows are there; without it all are.
    Returns the losses and the gradient norm, on the device: nothing here waits for it.
    """
    config, device = run.config, run.context.device
    positions = batch.pop("positions", None)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    chosen = slice(offset, offset + len(batch["label"])) if positions is None else offset + positions.to(device, non_blocking=True)
    randomness = {k: v[chosen] for k, v in step_randomness(run, config.batch_size, device).items()}
    losses = training_losses(run, forward, batch, randomness)
    run.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    update_ema(run.ema, run.model, ema_decay_at(run.step, config.ema_decay, config.ema_warmup))
    return {name: losses[name].detach() for name in LOGGED if name in losses} | {"grad_norm": grad_norm.detach()}


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay after ``step`` updates: ``decay`` throughout as SiT/REPA, or warmed up as diffusers' ``EMAModel``.

    Without the warm-up the initial weights keep a share decay**steps of the average: nothing
    after SiT's 400k steps at 0.9999, but a spoiled short run (0.999**2400 ≈ 9%). The warm-up
    also shortens the average of long runs (at 40k steps ~4,000 steps instead of ~9,800), so
    it is an option for short runs only.
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)


def _new_run(config: TrainConfig, data: TrainingData, context: distributed.Context) -> Run:
    backbone = backbone_config(
        config.model, image_size=data.image_size, num_classes=len(data.class_names), vae=data.vae, in_channels=data.in_channels,
        downsample=data.image_size // data.input_size, learn_sigma=config.learn_sigma, class_dropout_prob=config.class_dropout,
        class_names=data.class_names,
    )  # fmt: skip
    if backbone.prediction != "velocity":
        raise UserError(f"the trainer trains SiT (velocity) models; use a SiT-* name instead of {config.model}")
    backbone.text_dim, backbone.visual_dim, backbone.class_cond = data.text_dim, data.visual_dim, config.class_cond
    backbone.encoder_depth, backbone.projector_dim = config.encoder_depth, config.projector_dim
    backbone.vae_sha256 = data.vae_sha256
    torch.manual_seed(config.seed)
    model = backbone.build().to(context.device).train()
    backbone.encoder_depth = model.encoder_depth  # the resolved default, recorded with the weights
    if not config.class_cond:
        model.y_embedder.requires_grad_(False)  # unused: DDP must not wait for its gradients
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay, fused=context.device.type == "cuda"
    )
    return Run(config, data, backbone, model, ema, optimizer, context)


def initialize_from(run: Run, path: str) -> dict[str, list[str]]:
    """Loads matching weights from an official or d2c-pack checkpoint; reports what was loaded, new and ignored.

    Tensors whose shapes differ are an error (another architecture or class count), never skipped.
    """
    state = read_state_dict(path)
    own = run.model.state_dict()
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        raise UserError(f"cannot initialise {run.config.model} from {path}: {len(mismatched)} tensors differ in shape (first: {mismatched[0]})")
    result = run.model.load_state_dict(state, strict=False)
    run.ema.load_state_dict(run.model.state_dict())
    report = {"loaded": sorted(k for k in state if k in own), "new": sorted(result.missing_keys), "ignored": sorted(result.unexpected_keys)}
    if run.context.is_main:
        _print_init_report(path, report)
    return report


def _print_init_report(path: str, report: dict[str, list[str]]) -> None:
    table = Table(title=f"--init {path}")
    for column in ("weights", "tensors", "names"):
        table.add_column(column)
    for kind, meaning in (("loaded", "loaded"), ("new", "new (initialised as specified)"), ("ignored", "in the file, not in the model")):
        names = report[kind]
        prefixes = sorted({name.split(".")[0] for name in names})
        table.add_row(meaning, str(len(names)), ", ".join(prefixes) or "—")
    Console(stderr=True).print(table)


def save_checkpoint(run: Run, out: Path) -> Path | None:
    """Rank 0 writes the checkpoint of the current step atomically (temporary folder, then rename); the final
    step also becomes OUT/model. Every rank waits for it."""
    final = out / "checkpoints" / f"{run.step:07d}"
    if run.context.is_main:
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_backbone(run.model, run.backbone, partial, ema=run.ema, class_text=run.data.class_text)
        torch.save(run.optimizer.state_dict(), partial / OPTIMIZER_NAME)
        (partial / STATE_NAME).write_text(json.dumps({"step": run.step}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        if run.step == run.config.steps:
            save_backbone(run.ema, run.backbone, out / "model", class_text=run.data.class_text)
    run.context.barrier()
    return final


def latest_checkpoint(out: Path) -> Path | None:
    complete = sorted(p for p in (out / "checkpoints").glob("[0-9]" * 7) if (p / STATE_NAME).exists())
    return complete[-1] if complete else None


def _restore(run: Run, checkpoint: Path) -> None:
    device = str(run.context.device)
    run.model.load_state_dict(load_file(str(checkpoint / WEIGHTS_NAME), device=device))
    run.ema.load_state_dict(load_file(str(checkpoint / EMA_WEIGHTS_NAME), device=device))
    run.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_NAME, map_location=device, weights_only=True))
    run.step = json.loads((checkpoint / STATE_NAME).read_text())["step"]


def _resumable_settings(out: Path, config: TrainConfig) -> str:
    """The run's settings as ``train_config.yaml`` text, after checking that a run already in ``out`` used the same ones."""
    settings = out / SETTINGS_NAME
    current = dataclasses.asdict(config)
    if settings.exists():
        previous = yaml.safe_load(settings.read_text())
        changed = [k for k in current if k not in RESUMABLE_CHANGES and previous.get(k) != current[k]]
        if changed:
            diff = ", ".join(f"{k}: {previous.get(k)!r} → {current[k]!r}" for k in changed)
            raise UserError(f"{out} holds a run with other settings ({diff}); resume with the same ones or use a new --out")
    return yaml.safe_dump(current, sort_keys=False)


class _MetricsLog:
    """Appends JSON lines; on resume, drops lines past the checkpoint so the log matches the weights."""

    def __init__(self, path: Path, after_step: int):
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= after_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, **fields: float) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(fields) + "\n")
