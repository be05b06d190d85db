"""The scorer encodes with the VAE the user names (offline, local folders), keyed and recorded by its weights' hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from scipy.stats import spearmanr

from d2c_pack.core.errors import UserError
from d2c_pack.core.fingerprint import module_sha256
from d2c_pack.models.dit import DiT
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.selection.score import read_cache_key, read_scores, score_source
from d2c_pack.selection.settings import ScoreConfig

RESOLUTION = 32  # 8× VAE → 4×4 latents, patch 2 → 4 tokens


def save_vae(folder: Path, *, seed: int, blocks: int = 4) -> Path:
    """A tiny AutoencoderKL: 4 latent channels, 2^(blocks-1)× downsampling (8× as the SD VAEs)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(
        block_out_channels=(8,) * blocks, down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=RESOLUTION,
    ).save_pretrained(folder)  # fmt: skip
    return folder


def latent_scorer(folder: Path) -> Path:
    """A tiny latent-space DiT-T/2 saved as an official raw state dict (which implies stabilityai/sd-vae-ft-ema)."""
    torch.manual_seed(0)
    model = DiT(input_size=RESOLUTION // 8, patch_size=2, in_channels=4, hidden_size=128, depth=6, num_heads=4, num_classes=3)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "DiT-tiny.pt")
    return folder / "DiT-tiny.pt"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scorer-vae")
    return {
        "images": make_image_folder(root / "images", corrupt=False),
        "scorer": latent_scorer(root / "scorer"),
        "vae": save_vae(root / "sd-vae-ft-ema", seed=0),
        "other_vae": save_vae(root / "other-vae", seed=1),
        "root": root,
    }


def score_config(inputs: dict[str, Path], vae: Path, work: Path, **overrides: str | int) -> ScoreConfig:
    return ScoreConfig(
        source=str(inputs["images"]), scorer=str(inputs["scorer"]), vae=str(vae), resolution=RESOLUTION, timesteps=2, batch_size=8,
        workers=0, device="cpu", work=str(work), **overrides,
    )  # fmt: skip


def test_the_scorer_uses_the_given_vae_and_keys_the_cache_by_its_weights(inputs: dict[str, Path], tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    merged = score_source(score_config(inputs, inputs["vae"], tmp_path / "work"))  # offline: no Hub VAE is fetched
    key = read_cache_key(merged)
    assert key["vae_sha256"] == module_sha256(AutoencoderKL.from_pretrained(inputs["vae"]))
    assert str(inputs["root"]) not in (merged.parent / "key.json").read_text()
    copy = shutil.copytree(inputs["vae"], tmp_path / "copy-of-the-vae")
    assert score_source(score_config(inputs, copy, tmp_path / "work")) == merged  # the same weights elsewhere: the same cache
    other = score_source(score_config(inputs, inputs["other_vae"], tmp_path / "work"))
    assert other != merged and read_cache_key(other)["vae_sha256"] != key["vae_sha256"]


def test_a_vae_that_does_not_fit_the_scorer_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    coarse = save_vae(tmp_path / "2x-vae", seed=0, blocks=2)
    with pytest.raises(UserError, match="latents at 1/2 of the image"):
        score_source(score_config(inputs, coarse, tmp_path / "work"))


def test_build_records_the_scorer_vae_hash_in_the_manifest(inputs: dict[str, Path], tmp_path: Path) -> None:
    config = BuildConfig(
        source=str(inputs["images"]), scorer=str(inputs["scorer"]), vae=str(inputs["vae"]), resolution=RESOLUTION, timesteps=2, batch_size=8,
        chunk_size=16, workers=0, device="cpu", work=str(tmp_path / "work"), out=str(tmp_path / "out"), budget="2/class",
        text_encoder="none", visual_encoder="none",
    )  # fmt: skip
    manifest = json.loads((build(config) / "d2c/manifest.json").read_text())
    sha = manifest["inputs"]["vae_sha256"]
    assert manifest["inputs"]["scorer_vae_sha256"] == sha and manifest["models"]["scorer"]["vae"] == {"name": "sd-vae-ft-ema", "weights_sha256": sha}
    assert manifest["inputs"]["vae"] == manifest["models"]["vae"]["name"] == "sd-vae-ft-ema"
    assert str(inputs["root"]) not in json.dumps(manifest["inputs"])


def test_a_bf16_vae_scores_close_to_fp32_in_a_cache_of_its_own(inputs: dict[str, Path], tmp_path: Path) -> None:
    # A DiT starts with a zero output layer, which would score every image alike: give every weight a value.
    torch.manual_seed(0)
    scorer = DiT(input_size=RESOLUTION // 8, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=1, num_classes=3)
    with torch.no_grad():
        for parameter in scorer.parameters():
            if parameter.requires_grad:  # keep the fixed sin-cos position embedding
                parameter.normal_(0, 0.05)
    torch.save(scorer.state_dict(), tmp_path / "DiT-random.pt")
    inputs = inputs | {"scorer": tmp_path / "DiT-random.pt"}
    fp32 = score_source(score_config(inputs, inputs["vae"], tmp_path / "work", num_heads=1))  # 64 wide: no DiT size
    bf16 = score_source(score_config(inputs, inputs["vae"], tmp_path / "work", vae_precision="bf16", num_heads=1))
    assert bf16 != fp32
    assert read_cache_key(bf16)["vae_dtype"] == "bfloat16" and "vae_dtype" not in read_cache_key(fp32)
    assert read_cache_key(bf16)["vae_sha256"] == read_cache_key(fp32)["vae_sha256"]  # the weights as stored, not as cast
    exact, rounded = read_scores(fp32), read_scores(bf16)
    assert rounded.source_ids == exact.source_ids
    assert not np.array_equal(rounded.losses, exact.losses)  # the VAE did run in bf16
    np.testing.assert_allclose(rounded.scores, exact.scores, rtol=0.05)
    assert spearmanr(rounded.scores, exact.scores).statistic > 0.9


def test_an_unknown_vae_precision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--vae-precision must be fp32 or bf16"):
        ScoreConfig(source="demo:digits", work=str(tmp_path), vae_precision="fp16")
