"""FID, IS and classifier accuracy: exact on identical sets, sensitive to degradation, offline-safe."""

from __future__ import annotations

import itertools
import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
from PIL import Image

from d2c_pack.errors import UserError
from d2c_pack.sources import open_source
from d2c_pack.train import fid
from d2c_pack.train.fid import (
    classifier_predictions,
    evaluate,
    frechet_distance,
    inception_network,
    load_classifier,
    load_features,
    reference_statistics,
    source_batches,
)

ENCODER = "demo:digits-encoder"


@pytest.fixture(scope="module")
def digits() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All demo digits as uint8 32×32 crops with their labels, in batches."""
    return list(source_batches(open_source("demo:digits"), 32))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-fidelity's Inception v3 with random weights (He-initialised so features do not vanish), saved like the real file."""
    with pytest.MonkeyPatch.context() as patch:  # build the module without its download
        patch.setattr(fidelity_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        network = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.manual_seed(0)
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    path = tmp_path_factory.mktemp("inception") / fid.INCEPTION_WEIGHTS_NAME
    torch.save(network.state_dict(), path)
    return path


def test_fid_is_zero_on_the_reference_set_and_grows_with_noise(tmp_path: Path, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = load_features(ENCODER, 32)
    reference = reference_statistics("demo:digits", extractor, 32, work_dir=tmp_path)
    assert reference.count == 1797 and reference.mu.shape == (extractor.num_features,)
    crops = [batch for batch, _ in digits]
    assert abs(frechet_distance(crops, reference, extractor)) < 1e-6

    generator = torch.Generator().manual_seed(0)
    distances = []
    for strength in (4, 12, 36, 100):
        noisy = [(c.float() + strength * torch.randn(c.shape, generator=generator)).clamp(0, 255).round().to(torch.uint8) for c in crops]
        distances.append(frechet_distance(noisy, reference, extractor))
    assert all(a < b for a, b in itertools.pairwise(distances)), distances
    assert distances[0] > 0

    # The second call reads the cache: no image is looked at.
    monkeypatch.setattr(fid, "source_batches", lambda *args, **kwargs: pytest.fail("reference features recomputed"))
    cached = reference_statistics("demo:digits", ENCODER, 32, work_dir=tmp_path)
    np.testing.assert_array_equal(cached.sigma, reference.sigma)
    assert len(list((tmp_path / "fid-references").glob("*.npz"))) == 1


def test_demo_encoder_classifies_real_digits(digits) -> None:
    classifier = load_classifier(ENCODER, num_classes=10)
    correct = sum(int((classifier_predictions(classifier, crops, 32) == labels).sum()) for crops, labels in digits)
    assert correct / 1797 >= 0.95
    assert load_classifier(ENCODER, num_classes=7) is None  # its classes are not the model's


def test_evaluate_demo_model_with_encoder_features(tmp_path: Path) -> None:
    result = evaluate("demo:digits", reference="demo:digits", features=ENCODER, num_samples=30, num_steps=4, cfg_scale=1.5, batch_size=16, work_dir=tmp_path)
    assert math.isfinite(result["fid"]) and result["fid"] > 0
    assert 0.7 <= result["accuracy"] <= 1  # the demo model draws recognisable digits, even in 4 steps
    assert result["inception_score"] is None
    assert result["num_samples"] == 30 and result["resolution"] == 32


def test_inception_fid_and_is_from_local_weights(tmp_path: Path, inception_weights: Path) -> None:
    folder = tmp_path / "reference"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(5):
            pixels = np.random.default_rng([ord(label), i]).integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    result = evaluate(
        "demo:digits", reference=str(folder), features="inception", inception_weights=inception_weights,
        num_samples=10, num_steps=2, work_dir=tmp_path / "work",
    )  # fmt: skip
    assert math.isfinite(result["fid"]) and result["fid"] > 0
    assert math.isfinite(result["inception_score"]) and result["inception_score"] >= 1
    assert result["accuracy"] is None and result["reference_images"] == 10


def test_missing_inception_weights_offline_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached download
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError, match="--inception-weights"):
        inception_network(None)
    with pytest.raises(UserError, match="no Inception weights"):
        inception_network(tmp_path / "missing.pth")
    (tmp_path / "other.pth").write_bytes(b"not a state dict")
    with pytest.raises(UserError, match="weights-only"):
        inception_network(tmp_path / "other.pth")
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "small.pth")
    with pytest.raises(UserError, match="does not hold torch-fidelity's Inception"):
        inception_network(tmp_path / "small.pth")
