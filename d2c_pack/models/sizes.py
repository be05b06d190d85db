"""The DiT/SiT sizes and the models' default companions, as plain constants.

Standard library only: the settings of ``train`` and the dataset card name models and patch
sizes without importing torch. :mod:`d2c_pack.models.dit` builds its networks from these tables.
"""

from __future__ import annotations

# size → (depth, hidden_size, num_heads), as in the DiT paper's Table 1. "T" (tiny) is not in
# the papers: it is this project's size for the embedded demo and for tests.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
    "T": (6, 128, 4),
}
PATCH_SIZES = (2, 4, 8)

# "DiT-XL/2", "SiT-B/4", … → (size, patch size): every name the model factories know.
MODEL_NAMES: dict[str, tuple[str, int]] = {
    f"{family}-{size}/{patch}": (size, patch) for family in ("DiT", "SiT") for size in MODEL_SIZES for patch in PATCH_SIZES
}

PROJECTOR_DIM = 2048  # REPA's projector width
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"  # the latent space of the official SiT and DiT checkpoints
