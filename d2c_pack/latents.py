"""The space a backbone works in: pixels, or the latents of a diffusers ``AutoencoderKL``.

Images enter as float tensors in [-1, 1] of shape (N, 3, R, R). ``PixelSpace`` passes them
through; ``VaeSpace`` maps them to scaled latents (N, C, R/8, R/8) with the VAE's
``scaling_factor`` (0.18215 for the SD VAEs the official DiT and SiT use) and back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from d2c_pack.errors import UserError, first_line

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


class PixelSpace:
    """Identity codec: the backbone sees the image itself."""

    channels = 3
    downsample = 1

    def encode(self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class VaeSpace:
    """Scaled latents of a diffusers ``AutoencoderKL`` (frozen, eval mode)."""

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior sample (training, as SiT does) or posterior mean (scoring), times the scaling factor."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mean
        return latents.float() * self.scaling_factor

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> torch.Tensor:
        """Unscaled posterior mean and std concatenated, (N, 2C, H/8, W/8): what the ``latent`` column stores."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((latents / self.scaling_factor).to(self.vae.dtype)).sample.float()


LatentSpace = PixelSpace | VaeSpace


def load_latent_space(vae: str | None, device: torch.device | str = "cpu") -> LatentSpace:
    """``None`` → pixel space; otherwise an ``AutoencoderKL`` by Hub name or local path.

    A diffusers pipeline folder (with a ``vae/`` sub-folder) works as well as a bare VAE folder.
    """
    if vae is None:
        return PixelSpace()
    from diffusers import AutoencoderKL  # a heavy import, only paid where a VAE is used

    subfolder = "vae" if (Path(vae) / "vae").is_dir() else None
    try:
        model = AutoencoderKL.from_pretrained(vae, subfolder=subfolder)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the VAE {vae!r}: {first_line(err)}") from None
    return VaeSpace(model.to(device))
