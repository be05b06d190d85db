"""The visual encoder: DINOv2 preprocessing, transformers and timm backbones, the demo encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from d2c_pack.attach.visual import DEFAULT_VISUAL_ENCODER, VisualEncoder, dinov2_inputs, encoder_input_size
from d2c_pack.demo import resolve_model_path
from d2c_pack.errors import UserError
from d2c_pack.preprocess import center_crop_adm
from d2c_pack.sources import open_source

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)


def random_crops(resolution: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, 3, resolution, resolution), dtype=np.uint8))


def saved(model: torch.nn.Module, folder: Path) -> str:
    model.save_pretrained(folder)
    return str(folder)


def test_encoder_input_size() -> None:
    assert [encoder_input_size(r) for r in (32, 256, 512)] == [28, 224, 448]
    assert DEFAULT_VISUAL_ENCODER == "facebook/dinov2-base"


@pytest.mark.parametrize("resolution", [32, 256])
def test_dinov2_inputs_match_a_plain_computation(resolution: int) -> None:
    crops = random_crops(resolution)
    size = encoder_input_size(resolution)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = np.empty((2, 3, size, size), np.float32)
    for b in range(2):
        for c in range(3):
            channel = ((crops[b, c].numpy() / 255.0 - mean[c]) / std[c]).astype(np.float32)
            # PIL's float-image BICUBIC is antialiased (its kernel widens when shrinking), as required.
            expected[b, c] = np.asarray(Image.fromarray(channel, mode="F").resize((size, size), Image.BICUBIC))
    got = dinov2_inputs(crops, resolution)
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
        predicted = classifier(pixel_values=dinov2_inputs(crops, 32)).logits.argmax(-1)
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
