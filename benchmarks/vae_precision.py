"""What ``--vae-precision bf16`` does to the scores and their ranking, against fp32 (the official code's precision).

The demo's scorer (``demo:digits``) works on pixels and has no VAE, so a latent-space pair is
built here, offline: an ``AutoencoderKL`` shaped like ``stabilityai/sd-vae-ft-ema`` (4 down
blocks, 8× downsampling, 4 latent channels, scale 0.18215) but narrower, and a latent SiT
scorer; both have random weights (every weight of the scorer drawn, so that it is not the zero
output a fresh DiT starts with). The images are ``demo:digits`` at 32 px; each is scored twice
by ``score_source``, with the VAE in fp32 and in bf16, and the two score lists are compared.

    python benchmarks/vae_precision.py        # all 1,797 digits, |T| = 8 → benchmarks/results/vae_precision.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from scipy.stats import kendalltau, spearmanr

from d2c_pack.models.checkpoint import backbone_config, save_backbone
from d2c_pack.selection.score import read_scores, score_source
from d2c_pack.selection.settings import ScoreConfig

RESOLUTION = 32
# stabilityai/sd-vae-ft-ema's config with narrower blocks (its 128…512 channels would take minutes per pass on a CPU)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 64, 64, 64], layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=RESOLUTION,
)  # fmt: skip


def make_models(folder: Path) -> tuple[Path, Path]:
    """The random SD-VAE-shaped VAE and a random latent SiT-S/2 scorer for 10 classes, saved in ``folder``."""
    torch.manual_seed(0)
    vae = folder / "vae"
    AutoencoderKL(**VAE_CONFIG).save_pretrained(vae)
    config = backbone_config("SiT-S/2", image_size=RESOLUTION, num_classes=10, vae=str(vae), in_channels=4)
    model = config.build()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # keep the fixed sin-cos position embedding
                parameter.normal_(0, 0.05)
    return save_backbone(model, config, folder / "scorer"), vae


def compare(timesteps: int) -> dict:
    source = "demo:digits"
    with tempfile.TemporaryDirectory() as scratch:
        scorer, vae = make_models(Path(scratch))
        scores, seconds = {}, {}
        for precision in ("fp32", "bf16"):
            config = ScoreConfig(
                source=source, scorer=str(scorer), vae=str(vae), vae_precision=precision, resolution=RESOLUTION, timesteps=timesteps,
                workers=0, device="cpu", work=str(Path(scratch) / "work"),
            )  # fmt: skip
            tic = time.perf_counter()
            scores[precision] = read_scores(score_source(config))
            seconds[precision] = time.perf_counter() - tic
    exact, rounded = scores["fp32"].scores, scores["bf16"].scores
    ranks = [np.argsort(np.argsort(s)) for s in (exact, rounded)]
    moved = np.abs(ranks[0] - ranks[1])
    top = max(1, len(exact) // 10)
    return {
        "source": source, "images": len(exact), "timesteps": timesteps, "resolution": RESOLUTION, "vae": VAE_CONFIG, "scorer": "SiT-S/2 (random weights)",
        "spearman_rho": float(spearmanr(exact, rounded).statistic), "kendall_tau": float(kendalltau(exact, rounded).statistic),
        "max_relative_score_change": float(np.max(np.abs(rounded - exact) / np.abs(exact))),
        "median_rank_shift": float(np.median(moved)), "max_rank_shift": int(moved.max()),
        "hardest_tenth_overlap": len(set(np.argsort(exact)[-top:]) & set(np.argsort(rounded)[-top:])) / top,
        "seconds": seconds, "machine": platform.platform(), "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--json", default="benchmarks/results/vae_precision.json")
    args = parser.parse_args()
    result = compare(args.timesteps)
    print(json.dumps({k: v for k, v in result.items() if k != "vae"}, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
