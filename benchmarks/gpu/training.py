"""Training speed (DESIGN §3.5): one SiT-XL/2 step with DC-Embedding and the alignment loss, through the trainer's own step.

The model, EMA and fused AdamW come from the trainer's ``_new_run`` and every step is its
``_train_step`` (bf16 autocast, TF32, the CPU-drawn randomness of the global batch, gradient
clipping, EMA update, the per-step metrics), fed two ways:

- **precomputed**: a condensed dataset's columns (SD-VAE latent moments, DINOv2 patch tokens,
  T5 caption embeddings), as the DataLoader collates them;
- **online**: uint8 crops; DINOv2 runs on each batch and the SD-VAE through the trainer's own
  image path (``TrainingData.space``), which is what training without those columns costs.

On a GPU the batch is the largest that fits (doubling until memory runs out); MFU counts the
step's model FLOPs (forward and backward, and the encoders' forwards when online).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from transformers import Dinov2Model

from benchmarks.gpu.measure import Row, count_flops, largest_batch, measure
from benchmarks.gpu.specs import NUM_CLASSES, Spec, build_dinov2, build_vae
from d2c_pack.attach.text import TEXT_LENGTH
from d2c_pack.attach.visual import dinov2_inputs, encoder_input_size
from d2c_pack.core.distributed import Context
from d2c_pack.models.checkpoint import OFFICIAL_VAE
from d2c_pack.models.latents import VaeSpace
from d2c_pack.training.loop import Run, TrainingData, _new_run, _train_step
from d2c_pack.training.settings import TrainConfig

Batch = dict[str, torch.Tensor]
TEXT_TOKENS = 8  # real tokens of each caption; the rest of the L = 16 is padding


@dataclasses.dataclass
class TrainingSetup:
    """The trainer's run (model, EMA, optimizer) and the encoders the online step runs."""

    spec: Spec
    device: torch.device
    run: Run  # fed the latent column
    online_run: Run  # the same model, EMA and optimizer, fed images that the SD-VAE encodes
    vae: VaeSpace
    dinov2: Dinov2Model

    @property
    def visual_tokens(self) -> int:
        return (encoder_input_size(self.spec.resolution) // self.spec.dinov2["patch_size"]) ** 2


SD_VAE_SCALE = 0.18215  # the latent scale of the SD VAEs (OFFICIAL_VAE's)


def training_setup(spec: Spec, device: torch.device) -> TrainingSetup:
    """SiT with DC-Embedding (text_dim of the T5) and projector (visual_dim of DINOv2), built by the trainer."""
    resolution = spec.resolution
    data = TrainingData(
        None, [f"class {c}" for c in range(NUM_CLASSES)], in_channels=4, input_size=resolution // 8, image_size=resolution,
        vae=OFFICIAL_VAE, vae_sha256=None, from_latent_column=True, latent_scale=SD_VAE_SCALE, text_dim=spec.text_dim, visual_dim=spec.visual_dim,
    )  # fmt: skip
    config = TrainConfig(data="synthetic", out="unused", model=spec.trainee, resolution=resolution, workers=0, device=str(device))
    run = _new_run(config, data, Context(rank=0, world_size=1, device=device))
    vae = VaeSpace(build_vae(spec, device))
    online_run = dataclasses.replace(run, data=dataclasses.replace(data, from_latent_column=False, space=vae))
    return TrainingSetup(spec, device, run, online_run, vae, build_dinov2(spec).to(device).requires_grad_(False))


def host_batch(setup: TrainingSetup, batch: int, *, online: bool, pinned: bool) -> Batch:
    """One collated batch on the CPU, as the trainer's DataLoader hands it over: the columns' dtypes, pinned or not."""
    spec, generator = setup.spec, torch.Generator().manual_seed(0)
    side = spec.resolution // 8
    tensors = {
        "positions": torch.arange(batch),
        "label": torch.randint(0, NUM_CLASSES, (batch,), generator=generator),
        "text_embedding": torch.randn(batch, TEXT_LENGTH, spec.text_dim, generator=generator).half(),
        "text_mask": (torch.arange(TEXT_LENGTH) < TEXT_TOKENS).to(torch.int8).expand(batch, -1).contiguous(),
    }
    if online:
        tensors["crops"] = torch.randint(0, 256, (batch, 3, spec.resolution, spec.resolution), dtype=torch.uint8, generator=generator)
    else:
        mean, std = torch.randn(batch, 4, side, side, generator=generator), torch.rand(batch, 4, side, side, generator=generator) * 0.1
        tensors["latent"] = torch.cat([mean, std], dim=1).half()  # posterior mean ‖ std
        tensors["visual_tokens"] = torch.randn(batch, setup.visual_tokens, spec.visual_dim, generator=generator).half()
    return {k: v.pin_memory() for k, v in tensors.items()} if pinned else tensors


def online_visual_tokens(dinov2: Dinov2Model, crops: torch.Tensor, resolution: int) -> torch.Tensor:
    """DINOv2 patch tokens of uint8 crops on the GPU, as ``VisualEncoder`` computes them but left on the device."""
    with torch.no_grad(), torch.autocast(crops.device.type, dtype=torch.float16, enabled=crops.device.type == "cuda"):
        return dinov2(pixel_values=dinov2_inputs(crops, resolution)).last_hidden_state[:, 1:]  # (B, N_tok, D)


def precomputed_step(setup: TrainingSetup, host: Batch) -> None:
    _train_step(setup.run, setup.run.model, dict(host), offset=0)


def online_step(setup: TrainingSetup, host: Batch) -> None:
    """DINOv2 on the batch, then the trainer's step with the SD-VAE encoding its images."""
    crops = host["crops"].to(setup.device, non_blocking=True)
    tokens = online_visual_tokens(setup.dinov2, crops, setup.spec.resolution)
    batch = {k: v for k, v in host.items() if k != "crops"} | {"image": crops.float() / 127.5 - 1, "visual_tokens": tokens}
    _train_step(setup.online_run, setup.online_run.model, batch, offset=0)


def measure_training(setup: TrainingSetup, peak: float) -> dict:
    """Precomputed and online rows at their largest batches, and how much faster precomputed is."""
    torch.backends.cuda.matmul.allow_tf32 = True  # as train() sets them
    torch.backends.cudnn.allow_tf32 = True
    spec = setup.spec
    precomputed = _train_row(setup, peak, f"{spec.trainee} step, precomputed latents + DINOv2 tokens", precomputed_step, online=False)
    online = _train_row(setup, peak, f"{spec.trainee} step, SD-VAE + DINOv2 online", online_step, online=True)
    ratio = precomputed.rate / online.rate if precomputed.status == online.status == "ok" else None
    return {"precomputed": precomputed, "online": online, "precomputed_over_online": ratio}


def _train_row(setup: TrainingSetup, peak: float, name: str, step: Callable[[TrainingSetup, Batch], None], *, online: bool) -> Row:
    spec, device = setup.spec, setup.device

    def at(batch: int) -> Callable[[], None]:
        setup.run.config.batch_size = batch  # the trainer draws each step's randomness for this many samples
        host = host_batch(setup, batch, online=online, pinned=device.type == "cuda")
        return lambda: step(setup, host)

    flops = count_flops(at(2)) / 2

    def two_steps(batch: int) -> None:  # the second step runs with the optimizer state allocated
        run_step = at(batch)
        run_step()
        run_step()

    batch = spec.train_batch or largest_batch(two_steps, device, start=8, limit=spec.train_batch_limit)
    how = "fixed (tiny)" if spec.train_batch else f"largest that fits, doubling from 8 up to {spec.train_batch_limit}"
    return measure("training", name, at(batch), device, batch=batch, flops_per_item=flops, peak=peak, warmup=spec.warmup, iters=spec.iters, batch_choice=how)
