"""The settings of scoring (``d2c-pack score`` and build's scoring flags), light as every settings module."""

from __future__ import annotations

import dataclasses

from d2c_pack.core.errors import UserError
from d2c_pack.core.options import DEVICE_HELP, NUM_HEADS_HELP, RUN, SCORING, SOURCE, check_positive, flag
from d2c_pack.core.paths import default_work_dir
from d2c_pack.sources.settings import SourceArgs

VAE_PRECISIONS = ("fp32", "bf16")  # --vae-precision: what the scorer's VAE runs in


@dataclasses.dataclass(kw_only=True)
class ScoreConfig(SourceArgs):
    """Settings of a scoring pass; the flags and recipe keys of ``d2c-pack score``."""

    scorer: str = flag(
        "DiT-XL-2-256x256.pt",
        help="Frozen class-conditional backbone: an official DiT/SiT .pt file, a d2c-pack model folder, or demo:digits.",
        panel=SCORING,
    )
    prediction: str | None = flag(None, help="What the scorer predicts, 'epsilon' (DiT) or 'velocity' (SiT); default: from its file name or config.", panel=SCORING)
    num_heads: int | None = flag(None, help=NUM_HEADS_HELP, panel=SCORING)
    vae: str | None = flag(None, help="diffusers AutoencoderKL of a latent-space scorer: a local folder or a Hub id, optionally ID@REVISION (default: the scorer's own, stabilityai/sd-vae-ft-ema for the official DiT/SiT).", panel=SCORING)
    vae_precision: str = flag(
        "fp32", help="Weights and activations of a latent-space scorer's VAE: fp32 (the official code's scores) or bf16 (faster; see docs/scoring.md for its effect).", panel=SCORING
    )
    timesteps: int = flag(8, help="Number |T| of stratified timesteps the loss is averaged over.", panel=SCORING)
    seed: int = flag(0, help="Seed of the per-(image, timestep) noise.", panel=SCORING)
    resolution: int = flag(256, help="Resolution R of the ADM centre crop; must match the scorer.", panel=SCORING)
    batch_size: int = flag(32, help="Images per forward pass (each goes through with all |T| noisy copies).", panel=RUN)
    chunk_size: int = flag(4096, help="Images per cache chunk: the unit of resumption and of work per rank.", panel=RUN)
    workers: int = flag(4, help="DataLoader processes decoding and cropping images (0 = in the main process).", panel=RUN)
    streaming: bool = flag(False, help="Stream a Hub source instead of downloading it first (read front to back, no workers).", panel=SOURCE)
    device: str = flag("auto", help=DEVICE_HELP, panel=RUN)
    work: str = flag(help="Cache folder for scores (default $D2C_PACK_CACHE or ~/.cache/d2c-pack).", factory=default_work_dir, panel=RUN)

    def __post_init__(self) -> None:
        check_positive(self, ("timesteps", "resolution", "batch_size", "chunk_size", "num_heads"))
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if self.vae in ("none", ""):
            self.vae = None
        if self.prediction not in (None, "epsilon", "velocity"):
            raise UserError(f"--prediction must be 'epsilon' or 'velocity', got {self.prediction!r}")
        if self.vae_precision not in VAE_PRECISIONS:
            raise UserError(f"--vae-precision must be {' or '.join(VAE_PRECISIONS)}, got {self.vae_precision!r}")
