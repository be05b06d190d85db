"""The space a backbone works in: pixels, or the latents of a diffusers ``AutoencoderKL``.

Images enter as float tensors in [-1, 1] of shape (N, 3, R, R). ``PixelSpace`` passes them
through; ``VaeSpace`` maps them to scaled latents (N, C, R/8, R/8) with the VAE's
``scaling_factor`` (0.18215 for the SD VAEs the official DiT and SiT use), after subtracting
its ``shift_factor`` where it has one (FLUX-style VAEs), and back.

A VAE is named by a local folder or a Hub id with an optional revision
(``stabilityai/sd-vae-ft-ema@<commit>``). What a cache key, a manifest or a saved model records
is its weights' sha256 and :func:`vae_reference`, never a path of this machine: a model moved
to another machine finds its VAE by the Hub id, or by ``--vae FOLDER`` checked against the hash.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from d2c_pack.core.errors import UserError, first_line
from d2c_pack.core.fingerprint import module_sha256

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

    def __init__(self, vae: AutoencoderKL, reference: str | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.reference = reference
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the VAE's weights, wherever they were loaded from."""
        return module_sha256(self.vae)

    def cast(self, dtype: torch.dtype) -> None:
        """Runs the VAE in ``dtype`` from now on; ``sha256`` still names the weights as they were given (it is taken first)."""
        _ = self.sha256
        self.vae.to(dtype)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior sample (training, as SiT does) or posterior mean (scoring), shifted and scaled."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mean
        return (latents.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> torch.Tensor:
        """Unscaled posterior mean and std concatenated, (N, 2C, H/8, W/8): what the ``latent`` column stores."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((latents / self.scaling_factor + self.shift_factor).to(self.vae.dtype)).sample.float()


LatentSpace = PixelSpace | VaeSpace


def load_latent_space(
    vae: str | None, device: torch.device | str = "cpu", *, expected_sha256: str | None = None, dtype: torch.dtype = torch.float32
) -> LatentSpace:
    """``None`` → pixel space; otherwise an ``AutoencoderKL`` from a local folder or ``HUB_ID[@REVISION]``.

    A diffusers pipeline folder (with a ``vae/`` sub-folder) works as well as a bare VAE folder.
    ``expected_sha256`` (what a model recorded) refuses a VAE with other weights. ``dtype`` is
    what the VAE then runs in; its ``sha256`` stays that of the weights as stored.
    """
    if vae is None:
        return PixelSpace()
    from diffusers import AutoencoderKL  # a heavy import, only paid where a VAE is used

    name, revision = (vae, None) if Path(vae).exists() else _split_revision(vae)
    subfolder = "vae" if (Path(name) / "vae").is_dir() else None
    try:
        model = AutoencoderKL.from_pretrained(name, subfolder=subfolder, revision=revision)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the VAE {vae!r} (give a local copy with --vae FOLDER): {first_line(err)}") from None
    space = VaeSpace(model.to(device), vae_reference(vae))
    if expected_sha256 is not None and space.sha256 != expected_sha256:
        raise UserError(f"the VAE {vae!r} has other weights (sha256 {space.sha256[:12]}…) than the one the model was trained with ({expected_sha256[:12]}…)")
    if dtype != model.dtype:
        space.cast(dtype)
    return space


def _split_revision(vae: str) -> tuple[str, str | None]:
    name, _, revision = vae.partition("@")
    return name, revision or None


_HUB_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})")


def vae_reference(vae: str) -> str:
    """How a VAE is recorded: a Hub id as given; a snapshot in the Hub cache as ``ORG/NAME@commit``; another folder by its name."""
    path = Path(vae)
    if not path.exists():
        return vae
    match = _HUB_SNAPSHOT.search(path.resolve().as_posix())
    if match:
        return f"{match['org']}/{match['name']}@{match['commit']}"
    return path.resolve().name
