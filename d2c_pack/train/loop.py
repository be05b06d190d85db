"""The reference SiT training loop: velocity objective, AdamW, EMA, exact checkpoint/resume.

Output folder layout::

    OUT/train_config.yaml          the resolved settings (a resumed run must match them)
    OUT/metrics.jsonl              one JSON line per logged step
    OUT/checkpoints/NNNNNNN/       config.json, model.safetensors, ema.safetensors, optimizer.pt, state.json
    OUT/model/                     the final EMA weights: config.json + model.safetensors (load_backbone)

Re-running the same command continues from the newest checkpoint. All randomness of step s
(noise, t, label dropout, batch order) is derived from (seed, s), so the RNG state *is* the
step counter and a resumed run reproduces an uninterrupted one bit for bit on the same machine.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from d2c_pack.distributed import pick_device
from d2c_pack.errors import UserError
from d2c_pack.latents import LatentSpace, load_latent_space
from d2c_pack.models import BACKBONES, BackboneConfig, DiT, backbone_config, save_backbone
from d2c_pack.models.checkpoint import EMA_WEIGHTS_NAME, WEIGHTS_NAME
from d2c_pack.progress import progress_bar
from d2c_pack.recipe import flag
from d2c_pack.sources import SourceArgs
from d2c_pack.train.data import EpochPermutationBatches, SourceImages, collate_skipping_corrupt
from d2c_pack.train.transport import velocity_loss

OPTIMIZER_NAME = "optimizer.pt"
STATE_NAME = "state.json"
# Settings that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "ckpt_every", "workers"})


@dataclasses.dataclass(kw_only=True)
class TrainConfig(SourceArgs):
    """Settings of one training run; the CLI flags and recipe keys of ``d2c-pack train`` are these fields."""

    out: str = flag(help="Run folder; re-running with the same folder resumes from its newest checkpoint.")
    model: str = flag("SiT-XL/2", help="Backbone, e.g. SiT-XL/2, SiT-B/4, SiT-T/4 (tiny, for demos).")
    resolution: int = flag(256, help="Image resolution R of the ADM centre crop.")
    vae: str | None = flag("stabilityai/sd-vae-ft-ema", help="diffusers AutoencoderKL name or path, or 'none' for pixel space.")
    learn_sigma: bool = flag(True, help="Keep the official 2C-channel output layout (extra channels unused).")
    class_dropout: float = flag(0.1, help="Probability of dropping the label for classifier-free guidance.")
    steps: int = flag(400_000, help="Total optimisation steps.")
    batch_size: int = flag(256, help="Global batch size.")
    lr: float = flag(1e-4, help="AdamW learning rate (constant).")
    weight_decay: float = flag(0.0, help="AdamW weight decay.")
    grad_clip: float = flag(1.0, help="Gradient-norm clipping threshold.")
    ema_decay: float = flag(0.9999, help="EMA decay of the exported weights, reached after a warm-up: min(decay, (1 + step) / (10 + step)).")
    seed: int = flag(0, help="Seed of initialisation, batch order, noise and label dropout.")
    workers: int = flag(4, help="DataLoader worker processes (0 = load in the main process).")
    log_every: int = flag(100, help="Steps between metrics.jsonl lines.")
    ckpt_every: int = flag(10_000, help="Steps between checkpoints.")
    device: str = flag("auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    compile: bool = flag(False, help="torch.compile the backbone.")

    def __post_init__(self) -> None:
        if self.vae in ("none", ""):
            self.vae = None
        if self.model not in BACKBONES:
            raise UserError(f"unknown model {self.model!r}; choose one of: {', '.join(BACKBONES)}")
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "resolution"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass
class Run:
    """The live objects of a training run."""

    config: TrainConfig
    backbone: BackboneConfig
    model: DiT
    ema: DiT
    optimizer: torch.optim.Optimizer
    space: LatentSpace
    device: torch.device
    step: int = 0


def train(config: TrainConfig) -> Path:
    """Trains (or resumes training of) a backbone; returns the folder of the final EMA model."""
    out = Path(config.out)
    _check_resumable(out, config)
    device = pick_device(config.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    source = config.open_source()
    run = _new_run(config, source.class_names, device)
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        _restore(run, checkpoint)
    loader = DataLoader(
        SourceImages(source, config.resolution),
        batch_sampler=EpochPermutationBatches(len(source), config.batch_size, seed=config.seed, start_step=run.step, num_steps=config.steps),
        num_workers=config.workers,
        collate_fn=collate_skipping_corrupt,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    forward = torch.compile(run.model) if config.compile else run.model
    metrics = _MetricsLog(out / "metrics.jsonl", after_step=run.step)
    with progress_bar("train", total=config.steps, completed=run.step) as advance:
        tic, seen = time.perf_counter(), 0
        for images, labels in loader:
            loss, grad_norm = _train_step(run, forward, images, labels)
            run.step += 1
            seen += len(labels)
            advance(description=f"train loss {loss:.4f}")
            if run.step % config.log_every == 0 or run.step == config.steps:
                elapsed = time.perf_counter() - tic
                metrics.write(step=run.step, loss=loss, grad_norm=grad_norm, lr=config.lr, images_per_second=seen / elapsed)
                tic, seen = time.perf_counter(), 0
            if run.step % config.ckpt_every == 0 or run.step == config.steps:
                save_checkpoint(run, out)
    if source.skipped:
        print(f"skipped {len(source.skipped)} unreadable images (first: {source.skipped[0].source_id})")
    return save_backbone(run.ema, run.backbone, out / "model")


def _train_step(run: Run, forward: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    # One seed per step makes noise, t and label dropout a function of the step (see module doc).
    torch.manual_seed(int(np.random.SeedSequence([run.config.seed, run.step]).generate_state(1)[0]))
    images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
    latents = run.space.encode(images, sample=True)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
        loss = velocity_loss(forward, latents, labels)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
    run.optimizer.step()
    update_ema(run.ema, run.model, ema_decay_at(run.step, run.config.ema_decay))
    return loss.item(), grad_norm.item()


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after ``step`` updates, warmed up as diffusers' ``EMAModel`` does.

    Without the warm-up the randomly initialised weights keep a share decay**steps of the
    average, which spoils short runs (0.999**2400 ≈ 9%); long official runs are unaffected.
    """
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)


def _new_run(config: TrainConfig, class_names: list[str], device: torch.device) -> Run:
    space = load_latent_space(config.vae, device)
    backbone = backbone_config(
        config.model,
        image_size=config.resolution,
        num_classes=len(class_names),
        vae=config.vae,
        in_channels=space.channels,
        downsample=space.downsample,
        learn_sigma=config.learn_sigma,
        class_dropout_prob=config.class_dropout,
        class_names=class_names,
    )
    if backbone.prediction != "velocity":
        raise UserError(f"the trainer trains SiT (velocity) models; use a SiT-* name instead of {config.model}")
    torch.manual_seed(config.seed)
    model = backbone.build().to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay, fused=device.type == "cuda"
    )
    return Run(config, backbone, model, ema, optimizer, space, device)


def save_checkpoint(run: Run, out: Path) -> Path:
    """Writes the checkpoint of the current step atomically (temporary folder, then rename)."""
    final = out / "checkpoints" / f"{run.step:07d}"
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_backbone(run.model, run.backbone, partial, ema=run.ema)
    torch.save(run.optimizer.state_dict(), partial / OPTIMIZER_NAME)
    (partial / STATE_NAME).write_text(json.dumps({"step": run.step}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    complete = sorted(p for p in (out / "checkpoints").glob("[0-9]" * 7) if (p / STATE_NAME).exists())
    return complete[-1] if complete else None


def _restore(run: Run, checkpoint: Path) -> None:
    device = str(run.device)
    run.model.load_state_dict(load_file(str(checkpoint / WEIGHTS_NAME), device=device))
    run.ema.load_state_dict(load_file(str(checkpoint / EMA_WEIGHTS_NAME), device=device))
    run.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_NAME, map_location=device, weights_only=True))
    run.step = json.loads((checkpoint / STATE_NAME).read_text())["step"]


def _check_resumable(out: Path, config: TrainConfig) -> None:
    """Writes the run's settings, or checks that a run already in ``out`` used the same ones."""
    settings = out / "train_config.yaml"
    current = dataclasses.asdict(config)
    if settings.exists():
        previous = yaml.safe_load(settings.read_text())
        changed = [k for k in current if k not in RESUMABLE_CHANGES and previous.get(k) != current[k]]
        if changed:
            diff = ", ".join(f"{k}: {previous.get(k)!r} → {current[k]!r}" for k in changed)
            raise UserError(f"{out} holds a run with other settings ({diff}); resume with the same ones or use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    settings.write_text(yaml.safe_dump(current, sort_keys=False))


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
