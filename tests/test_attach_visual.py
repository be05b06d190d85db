"""The visual encoder: DINOv2 preprocessing, transformers and timm backbones, the demo encoder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from d2c_pack.attach.settings import DEFAULT_VISUAL_ENCODER
from d2c_pack.attach.visual import VisualEncoder, dinov2_inputs, encoder_input_size
from d2c_pack.core.errors import UserError
from d2c_pack.core.registry import resolve_model_path
from d2c_pack.sources.image_source import open_source
from d2c_pack.sources.preprocess import center_crop_adm
from d2c_pack.training.encoder import classifier_inputs

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
# DINOv2's own geometry (14 px patches, a 37×37 position grid from 518 px pretraining) at width 32.
TINY_518 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=518, patch_size=14)


def random_crops(resolution: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, 3, resolution, resolution), dtype=np.uint8))


def saved(model: torch.nn.Module, folder: Path) -> str:
    model.save_pretrained(folder)
    return str(folder)


def test_encoder_input_size() -> None:
    assert [encoder_input_size(r) for r in (32, 256, 512)] == [28, 224, 448]
    assert DEFAULT_VISUAL_ENCODER == "facebook/dinov2-base"


def repa_preprocess(crops: torch.Tensor) -> torch.Tensor:
    """REPA's ``preprocess_raw_image`` for DINOv2 (train.py): /255, ImageNet Normalize, then ``F.interpolate(x, 224 * (R // 256), mode='bicubic')``."""
    resolution = crops.shape[-1]
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    x = (crops / 255.0 - mean) / std
    return F.interpolate(x, 224 * (resolution // 256), mode="bicubic")


def repa_targets(
    crops: torch.Tensor,
    *,
    patch_embed: Callable[[torch.Tensor], torch.Tensor],
    patch_size: int,
    cls_token: torch.Tensor,
    pos_embed: torch.Tensor,
    register_tokens: torch.Tensor | None,
    blocks_and_norm: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """REPA's DINOv2 targets: ``x_norm_patchtokens`` (B, N, D) and ``x_norm_clstoken`` (B, D), in float32.

    Transcribed from REPA's utils.py ``load_encoders`` (the hub-format ``pos_embed``, CLS entry
    first, resampled once with timm's ``resample_abs_pos_embed(pos_embed, [g, g])``, g = 16·R/256)
    and train.py (``preprocess_raw_image``, then ``forward_features``), with the torch.hub DINOv2's
    ``prepare_tokens_with_masks``: patches, CLS in front, plus the position embedding (no further
    interpolation: the grid now matches the input), registers inserted after CLS, blocks, norm.
    """
    pixels = repa_preprocess(crops)  # (B, 3, S, S)
    grid = 16 * (crops.shape[-1] // 256)
    assert grid == pixels.shape[-1] // patch_size
    pos_embed = resample_abs_pos_embed(pos_embed, [grid, grid])  # (1, 1 + grid², D)
    x = patch_embed(pixels)  # (B, grid², D)
    x = torch.cat([cls_token.expand(len(x), -1, -1), x], dim=1) + pos_embed
    num_registers = 0
    if register_tokens is not None:
        num_registers = register_tokens.shape[1]
        x = torch.cat([x[:, :1], register_tokens.expand(len(x), -1, -1), x[:, 1:]], dim=1)
    x_norm = blocks_and_norm(x)  # (B, 1 + registers + grid², D)
    return x_norm[:, 1 + num_registers :], x_norm[:, 0]


@torch.no_grad()
def repa_targets_transformers(model: Dinov2Model | Dinov2WithRegistersModel, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """REPA's targets for the weights of a transformers DINOv2 (its position_embeddings are the hub pos_embed)."""
    embeddings = model.embeddings
    return repa_targets(
        crops,
        patch_embed=embeddings.patch_embeddings,
        patch_size=model.config.patch_size,
        cls_token=embeddings.cls_token,
        pos_embed=embeddings.position_embeddings,
        register_tokens=getattr(embeddings, "register_tokens", None),
        blocks_and_norm=lambda x: model.layernorm(model.encoder(x).last_hidden_state),
    )


@torch.no_grad()
def repa_targets_timm(model: timm.models.VisionTransformer, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """REPA's targets for the weights of a timm DINOv2 at its pretraining size.

    timm stores a registers model without a CLS position entry (``no_embed_class``: that entry is
    folded into ``cls_token``); a zero entry restores the hub format, which REPA's resampling keeps apart.
    """
    pos_embed = F.pad(model.pos_embed, (0, 0, 1, 0)) if model.no_embed_class else model.pos_embed
    return repa_targets(
        crops,
        patch_embed=lambda pixels: model.patch_embed.proj(pixels).flatten(2).transpose(1, 2),
        patch_size=model.patch_embed.patch_size[0],
        cls_token=model.cls_token,
        pos_embed=pos_embed,
        register_tokens=model.reg_token,
        blocks_and_norm=lambda x: model.norm(model.blocks(x)),
    )


def assert_repa_targets(tokens: torch.Tensor, cls: torch.Tensor, expected: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Stored features equal REPA's within 1e-4, the float16 patch tokens within their rounding besides."""
    expected_tokens, expected_cls = expected
    torch.testing.assert_close(cls, expected_cls, atol=1e-4, rtol=0)
    torch.testing.assert_close(tokens.float(), expected_tokens, atol=1e-4, rtol=2**-11)


@pytest.mark.parametrize("resolution", [256, 512])
@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_features_are_repas(tmp_path: Path, resolution: int, registers: int) -> None:
    torch.manual_seed(0)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY_518, num_register_tokens=registers)).eval()
    else:
        model = Dinov2Model(Dinov2Config(**TINY_518)).eval()
    with torch.no_grad():  # a rough position grid at the scale of the patch embeddings, and registers that matter
        model.embeddings.position_embeddings.normal_()
        if registers:
            model.embeddings.register_tokens.normal_()
    crops = random_crops(resolution)
    tokens, cls = VisualEncoder(saved(model, tmp_path / "dinov2"), resolution)(crops)
    assert tokens.shape == (2, (16 * resolution // 256) ** 2, 32)
    assert_repa_targets(tokens, cls, repa_targets_transformers(model, crops))


@pytest.mark.parametrize("resolution", [256, 512])
@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_timm_features_are_repas(tmp_path: Path, resolution: int, name: str) -> None:
    torch.manual_seed(0)
    # LayerScale at 1, not timm's 1e-5 initialisation, so that the blocks mix the tokens.
    model = timm.create_model(name, pretrained=False, num_classes=0, depth=2, embed_dim=32, num_heads=2, img_size=518, init_values=1.0).eval()
    with torch.no_grad():  # a rough position grid at the scale of the patch embeddings, and registers that matter
        model.pos_embed.normal_()
        if model.reg_token is not None:
            model.reg_token.normal_()
    timm.models.save_for_hf(model, tmp_path / "timm-dinov2", safe_serialization=True)
    crops = random_crops(resolution)
    tokens, cls = VisualEncoder(f"local-dir:{tmp_path / 'timm-dinov2'}", resolution)(crops)
    assert_repa_targets(tokens, cls, repa_targets_timm(model, crops))


@pytest.mark.parametrize("resolution", [32, 256])
def test_antialiased_dinov2_inputs_match_a_plain_computation(resolution: int) -> None:
    crops = random_crops(resolution)
    size = encoder_input_size(resolution)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = np.empty((2, 3, size, size), np.float32)
    for b in range(2):
        for c in range(3):
            channel = ((crops[b, c].numpy() / 255.0 - mean[c]) / std[c]).astype(np.float32)
            # PIL's float-image BICUBIC is antialiased (its kernel widens when shrinking), as required.
            expected[b, c] = np.asarray(Image.fromarray(channel, mode="F").resize((size, size), Image.BICUBIC))
    got = dinov2_inputs(crops, resolution, antialias=True)
    assert got.shape == (2, 3, size, size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-4, rtol=0)


def test_transformers_tokens_match_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**TINY)).eval()
    encoder = VisualEncoder(saved(model, tmp_path / "dinov2"), resolution=32)
    crops = random_crops(32, batch=3)
    tokens, cls = encoder(crops)
    with torch.no_grad():
        hidden = model(pixel_values=dinov2_inputs(crops, 32)).last_hidden_state  # (B, 1 + 16, 32)
    assert encoder.num_tokens == (28 // 7) ** 2 == 16 and encoder.dim == 32
    assert tokens.shape == (3, 16, 32) and tokens.dtype == torch.float16 and tokens.device.type == "cpu"
    assert cls.shape == (3, 32) and cls.dtype == torch.float32
    torch.testing.assert_close(tokens, hidden[:, 1:].half())
    torch.testing.assert_close(cls, hidden[:, 0])


def test_register_tokens_are_dropped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY, num_register_tokens=4)).eval()
    with torch.no_grad():  # registers start at zero; make them matter
        model.embeddings.register_tokens.normal_()
    encoder = VisualEncoder(saved(model, tmp_path / "dinov2-reg"), resolution=32)
    crops = random_crops(32)
    tokens, cls = encoder(crops)
    with torch.no_grad():
        hidden = model(pixel_values=dinov2_inputs(crops, 32)).last_hidden_state  # (B, 1 + 4 + 16, 32)
    assert hidden.shape[1] == 21 and tokens.shape == (2, 16, 32)
    torch.testing.assert_close(tokens, hidden[:, 5:].half())
    torch.testing.assert_close(cls, hidden[:, 0])


def test_a_classifier_checkpoint_loads_as_its_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = Dinov2ForImageClassification(Dinov2Config(**TINY, num_labels=3)).eval()
    encoder = VisualEncoder(saved(classifier, tmp_path / "classifier"), resolution=32)
    crops = random_crops(32)
    tokens, cls = encoder(crops)
    with torch.no_grad():
        hidden = classifier.dinov2(pixel_values=dinov2_inputs(crops, 32)).last_hidden_state
    torch.testing.assert_close(tokens, hidden[:, 1:].half())
    torch.testing.assert_close(cls, hidden[:, 0])


def test_fingerprint_follows_weights_and_input_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = saved(Dinov2Model(Dinov2Config(**TINY)), tmp_path / "a")
    other = saved(Dinov2Model(Dinov2Config(**TINY)), tmp_path / "b")
    fingerprint = VisualEncoder(first, 32).fingerprint()
    assert len(fingerprint) == 64 and fingerprint == VisualEncoder(first, 32).fingerprint()
    assert fingerprint != VisualEncoder(other, 32).fingerprint()
    assert fingerprint != VisualEncoder(first, 64).fingerprint()


def test_timm_tokens_match_the_model(tmp_path: Path) -> None:
    # A shrunken DINOv2 with registers, exported the way timm publishes models (config.json + weights).
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, depth=2, embed_dim=32, num_heads=2, img_size=56)
    timm.models.save_for_hf(model, tmp_path / "timm-dinov2", safe_serialization=True)
    encoder = VisualEncoder(f"local-dir:{tmp_path / 'timm-dinov2'}", resolution=64)
    crops = random_crops(64)
    tokens, cls = encoder(crops)
    with torch.no_grad():
        hidden = model.eval().forward_features(dinov2_inputs(crops, 64))  # (B, 1 + 4 + 16, 32)
    assert encoder.num_tokens == 16 and encoder.dim == 32
    assert tokens.shape == (2, 16, 32) and tokens.dtype == torch.float16 and cls.dtype == torch.float32
    torch.testing.assert_close(tokens, hidden[:, model.num_prefix_tokens :].half())
    torch.testing.assert_close(cls, hidden[:, 0])


def test_demo_encoder_classifies_the_digits() -> None:
    folder = Path(resolve_model_path("demo:digits-encoder"))
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float16}
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Dinov2ForImageClassification"]

    source = open_source("demo:digits")
    records = list(source.iter_records(range(300)))
    crops = torch.stack([torch.from_numpy(np.array(center_crop_adm(r.image, 32))).permute(2, 0, 1) for r in records])
    labels = torch.tensor([r.label for r in records])

    tokens, cls = VisualEncoder("demo:digits-encoder", resolution=32)(crops[:8])
    assert tokens.shape == (8, 49, 64) and cls.shape == (8, 64)

    classifier = Dinov2ForImageClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        predicted = classifier(pixel_values=classifier_inputs(crops, 32)).logits.argmax(-1)
    assert (predicted == labels).float().mean().item() >= 0.95


def test_unusable_encoders_are_one_line_user_errors(tmp_path: Path) -> None:
    names = (
        str(tmp_path / "missing"),  # no such folder
        str(tmp_path),  # a folder without a model
        f"local-dir:{tmp_path / 'missing'}",  # timm export folder
        "timm/no_such_timm_model",  # timm registry
        "demo:no-such-demo",
    )
    for name in names:
        with pytest.raises(UserError) as caught:
            VisualEncoder(name, resolution=32)
        assert str(caught.value) and "\n" not in str(caught.value), name
    with pytest.raises(UserError, match="patches"):  # R=48 gives a 42 px input: not a multiple of 4
        VisualEncoder("demo:digits-encoder", resolution=48)
