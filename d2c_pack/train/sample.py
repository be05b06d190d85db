"""Sampling from a trained backbone: class-conditional Euler ODE with CFG, saved as a PNG grid."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from d2c_pack.errors import UserError
from d2c_pack.latents import load_latent_space
from d2c_pack.models import BackboneConfig, DiT, load_backbone
from d2c_pack.train.transport import euler_ode_sample


def generate(
    model: DiT,
    config: BackboneConfig,
    labels: torch.Tensor,
    *,
    num_steps: int = 50,
    cfg_scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Images in [-1, 1], (N, 3, R, R), one per label; the same seed gives the same images."""
    if config.prediction != "velocity":
        raise UserError(f"{config.name} predicts noise; the sampler integrates SiT velocity models")
    device = next(model.parameters()).device
    space = load_latent_space(config.vae, device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (len(labels), config.in_channels, config.input_size, config.input_size)
    noise = torch.randn(shape, generator=generator).to(device)  # (N, C, H, W)
    latents = euler_ode_sample(model, noise, labels.to(device), num_steps=num_steps, cfg_scale=cfg_scale)
    return space.decode(latents).clamp(-1, 1)  # (N, 3, R, R)


def sample_grid(
    checkpoint: str | Path,
    out: str | Path,
    *,
    per_class: int = 8,
    classes: list[int] | None = None,
    num_steps: int = 50,
    cfg_scale: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Writes a PNG grid with one row per class and ``per_class`` samples per row."""
    model, config = load_backbone(checkpoint, map_location=device)
    classes = list(range(config.num_classes)) if classes is None else classes
    if bad := [c for c in classes if not 0 <= c < config.num_classes]:
        raise UserError(f"class {bad[0]} is out of range: the model has {config.num_classes} classes")
    labels = torch.tensor(classes).repeat_interleave(per_class)
    images = generate(model, config, labels, num_steps=num_steps, cfg_scale=cfg_scale, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image((images + 1) / 2, out, nrow=per_class, padding=1)
    return out
