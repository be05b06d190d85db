"""The committed demo scorer is a real digits model: what it draws, a classifier recognises."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from d2c_pack.diffusion.sampling import Sampling
from d2c_pack.evaluation.sample import generate
from d2c_pack.models.checkpoint import load_backbone
from d2c_pack.sources.preprocess import tensor_to_image


def as_sklearn_digit(image: Image.Image) -> np.ndarray:
    """A 32×32 RGB sample in the 8×8, 0..16 layout of ``load_digits`` (the inverse of the demo rendering)."""
    small = image.convert("L").resize((8, 8), Image.BOX)
    return np.asarray(small, dtype=np.float64).ravel() * (16 / 255)


def test_demo_scorer_draws_recognisable_digits() -> None:
    model, config = load_backbone("demo:digits")
    assert (config.name, config.prediction, config.vae, config.image_size) == ("SiT-T/4", "velocity", None, 32)
    assert config.class_names == [str(d) for d in range(10)]

    digits = load_digits()
    classifier = LogisticRegression(max_iter=2000).fit(digits.data, digits.target)
    labels = torch.arange(10).repeat_interleave(10)
    samples = generate(model, config, labels, Sampling(steps=25, cfg_scale=1.5, seed=0))
    features = np.stack([as_sklearn_digit(tensor_to_image(sample)) for sample in samples])
    accuracy = (classifier.predict(features) == labels.numpy()).mean()
    assert accuracy >= 0.8, f"only {accuracy:.0%} of the demo scorer's digits are recognised"
