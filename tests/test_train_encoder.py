"""The encoder trainer: a DINOv2 classifier that trains, saves, reloads and reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import Dinov2ForImageClassification

from d2c_pack.attach.visual import VisualEncoder
from d2c_pack.core.errors import UserError
from d2c_pack.training.encoder import holdout_split, lr_factor, train_encoder
from d2c_pack.training.settings import EncoderTrainConfig

COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trivially separable source: noisy images of one colour per class, 12 per class."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(12):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def tiny_config(source: Path, out: Path, **changes) -> EncoderTrainConfig:
    settings = dict(
        source=str(source), out=str(out), resolution=32, patch_size=7, hidden_size=16, num_layers=1, num_heads=2,
        steps=40, batch_size=16, lr=3e-3, holdout=0.25, device="cpu",
    )
    return EncoderTrainConfig(**(settings | changes))


def test_training_writes_a_loadable_accurate_classifier(colour_folder: Path, tmp_path: Path) -> None:
    folder = train_encoder(tiny_config(colour_folder, tmp_path / "run"))
    assert folder == tmp_path / "run" / "model"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_images"] == 27 and metrics["heldout_images"] == 9 and metrics["steps"] == 40
    assert metrics["train_accuracy"] >= 0.9 and metrics["heldout_accuracy"] >= 0.9  # chance is 1/3

    assert {t.dtype for t in load_file(str(folder / "model.safetensors")).values()} == {torch.float16}
    classifier = Dinov2ForImageClassification.from_pretrained(folder, dtype=torch.float32)
    assert classifier.config.id2label == {0: "blue", 1: "green", 2: "red"}
    assert classifier.config.image_size == 28 and classifier.config.patch_size == 7
    as_stored = dict(Dinov2ForImageClassification.from_pretrained(folder).named_parameters())  # float16, as saved
    for name, parameter in classifier.named_parameters():
        assert parameter.dtype == torch.float32 and as_stored[name].dtype == torch.float16
        torch.testing.assert_close(parameter.detach(), as_stored[name].detach().float(), rtol=0, atol=0)

    encoder = VisualEncoder(str(folder), resolution=32)
    tokens, cls = encoder(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert tokens.shape == (2, 16, 16) and cls.shape == (2, 16)


def test_same_seed_same_weights(colour_folder: Path, tmp_path: Path) -> None:
    runs = [train_encoder(tiny_config(colour_folder, tmp_path / name, steps=6, seed=seed)) for name, seed in [("a", 1), ("b", 1), ("c", 2)]]
    weights = [(run / "model.safetensors").read_bytes() for run in runs]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]


def test_holdout_split_is_fixed_and_disjoint() -> None:
    train, held = holdout_split(100, 0.1)
    assert len(held) == 10 and sorted(train + held) == list(range(100))
    assert holdout_split(100, 0.1) == (train, held)
    assert holdout_split(100, 0.0) == (list(range(100)), [])


def test_learning_rate_warms_up_then_decays() -> None:
    factors = [lr_factor(step, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] < 0.01


@pytest.mark.parametrize(
    "changes, message",
    [({"num_heads": 3}, "divisible"), ({"patch_size": 5}, "patch-size"), ({"holdout": 1.0}, "holdout"), ({"steps": 0}, "steps")],
)
def test_bad_settings_are_user_errors(changes: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        tiny_config(tmp_path, tmp_path / "run", **changes)
