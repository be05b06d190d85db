"""Samplers integrate what they claim, guidance goes where it is asked, and sampling outputs have their documented layout."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from d2c_pack.errors import UserError
from d2c_pack.models import ClassText, backbone_config, save_backbone
from d2c_pack.train.sample import generate, generate_batches, load_for_sampling, sample_grid, sample_npz, to_uint8
from d2c_pack.train.transport import Condition, euler_maruyama_sample, euler_ode_sample, heun_ode_sample, velocity


class Field(torch.nn.Module):
    """A known velocity field v(x, t) standing in for the network."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.calls = 0

    def forward(self, x, t, y):
        self.calls += 1
        return self.fn(x, t.view(-1, 1, 1, 1))


class Recorder(torch.nn.Module):
    """Records its inputs; its velocity y + Σ text tells conditional and null halves apart."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.y_embedder = SimpleNamespace(num_classes=num_classes)
        self.calls: list[dict] = []

    def forward(self, x, t, y, text=None, text_mask=None):
        self.calls.append({"t": t, "y": y, "text": text, "mask": text_mask})
        value = y.float() + (text * text_mask[..., None]).sum((1, 2))  # (N,)
        return value.view(-1, 1, 1, 1).expand_as(x)


@pytest.fixture(scope="module")
def demo():
    return load_for_sampling("demo:digits")


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler-maruyama"])
def test_samples_depend_on_seed_and_position_only(demo, sampler: str) -> None:
    model, config, _class_text = demo
    labels = torch.tensor([0, 3, 3, 9, 1])
    settings = {"sampler": sampler, "num_steps": 3, "cfg_scale": 2.0, "guidance_interval": (0.2, 0.8)}
    first = generate(model, config, labels, seed=7, batch_size=5, **settings)
    assert first.shape == (5, 3, 32, 32) and first.min() >= -1 and first.max() <= 1
    torch.testing.assert_close(generate(model, config, labels, seed=7, batch_size=2, **settings), first, atol=1e-5, rtol=0)
    assert not torch.allclose(generate(model, config, labels, seed=8, batch_size=5, **settings), first)


def test_old_generate_call_still_works_and_bad_settings_fail_early(demo) -> None:
    model, config, _ = demo
    images = generate(model, config, torch.tensor([2, 4]), num_steps=2, cfg_scale=1.5, seed=1)
    assert images.shape == (2, 3, 32, 32)
    labels = torch.tensor([0])
    with pytest.raises(UserError, match="unknown sampler"):
        generate_batches(model, config, labels, sampler="ddim")  # before any batch is asked for
    with pytest.raises(UserError, match="cfg-scale"):
        generate_batches(model, config, labels, cfg_scale=0.5)
    with pytest.raises(UserError, match="guidance interval"):
        generate_batches(model, config, labels, guidance_interval=(0.8, 0.2))
    with pytest.raises(UserError, match="class indices"):
        generate_batches(model, config, torch.tensor([10]))


def test_heun_beats_euler_on_a_known_field() -> None:
    """dx/dt = −(1 + t)·x has x(1) = x(0)·e^(−3/2)."""
    field = Field(lambda x, t: -(1 + t) * x)
    noise = torch.linspace(-2, 2, 8).view(8, 1, 1, 1)
    exact = noise * math.exp(-1.5)
    labels = torch.zeros(8, dtype=torch.long)
    euler_error = (euler_ode_sample(field, noise, labels, num_steps=10) - exact).abs().max()
    field.calls = 0
    heun_error = (heun_ode_sample(field, noise, labels, num_steps=10) - exact).abs().max()
    assert field.calls == 19  # 2 per step, the last step Euler
    assert heun_error < euler_error / 5, (heun_error, euler_error)


def gaussian_data_velocity(mu: float, s: float):
    """Exact velocity E[x₁ − x₀ | x_t] for data x₁ ~ N(μ, s²) on x_t = t·x₁ + (1 − t)·x₀.

    x_t ~ N(tμ, V), V = t²s² + (1 − t)²; regressing x₁ and x₀ on x_t gives
    v = μ + (t·s² − (1 − t))·(x − tμ)/V. With s = 0 (all data at μ) this is (μ − x)/(1 − t).
    """

    def v(x, t):
        variance = t**2 * s**2 + (1 - t) ** 2
        return mu + (t * s**2 - (1 - t)) * (x - t * mu) / variance

    return Field(v)


def test_euler_maruyama_lands_on_single_point_data() -> None:
    noise = torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(512, dtype=torch.long)
    out = euler_maruyama_sample(gaussian_data_velocity(3.0, 0.0), noise, labels, num_steps=100, generator=torch.Generator().manual_seed(1))
    # Stopping at t = 0.96 leaves a spread of 0.04·x₀, which SiT's last mean step keeps.
    assert (out - 3.0).abs().mean() < 0.06
    assert (out - 3.0).abs().max() < 0.3


def test_euler_maruyama_reproduces_gaussian_data() -> None:
    """Mean and spread of N(μ, s²) data come out right: the score and noise terms balance as derived."""
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4000, dtype=torch.long)
    field = gaussian_data_velocity(1.0, 0.5)
    out = euler_maruyama_sample(field, noise, labels, num_steps=100, generator=torch.Generator().manual_seed(1))
    assert abs(out.mean().item() - 1.0) < 0.05
    assert abs(out.std().item() - 0.5) < 0.04
    again = euler_maruyama_sample(field, noise, labels, num_steps=100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = euler_maruyama_sample(field, noise, labels, num_steps=100, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)


def test_guidance_uses_null_class_and_null_text_inside_the_interval_only() -> None:
    model = Recorder(num_classes=10)
    text = torch.rand(2, 3, 4) + 0.5  # (N, L, D)
    cond = Condition(torch.tensor([1, 2]), text, torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.int8))
    x = torch.zeros(2, 1, 1, 1)
    conditional = cond.labels.float() + (text * cond.text_mask[..., None]).sum((1, 2))  # (N,)

    guided = velocity(model, x, 0.5, cond, cfg_scale=3.0, guidance_interval=(0.3, 0.7))
    (call,) = model.calls
    assert call["y"].tolist() == [1, 2, 10, 10] and call["t"].tolist() == [0.5] * 4
    assert torch.equal(call["text"][:2], text) and torch.equal(call["mask"][:2], cond.text_mask)
    assert torch.count_nonzero(call["text"][2:]) == 0 and torch.count_nonzero(call["mask"][2:]) == 0
    torch.testing.assert_close(guided.flatten(), 10 + 3.0 * (conditional - 10))

    model.calls.clear()
    outside = velocity(model, x, 0.9, cond, cfg_scale=3.0, guidance_interval=(0.3, 0.7))
    (call,) = model.calls
    assert call["y"].tolist() == [1, 2]
    torch.testing.assert_close(outside.flatten(), conditional)

    model.calls.clear()
    euler_ode_sample(model, x, cond, num_steps=4, cfg_scale=3.0, guidance_interval=(0.3, 0.7))
    assert [len(c["y"]) for c in model.calls] == [2, 2, 4, 2]  # only t = 0.5 of 0, .25, .5, .75 is guided
    model.calls.clear()
    euler_ode_sample(model, x, cond, num_steps=4, cfg_scale=1.0)
    assert [len(c["y"]) for c in model.calls] == [2, 2, 2, 2]


def test_npz_has_the_adm_evaluator_layout(tmp_path: Path, demo) -> None:
    path = sample_npz("demo:digits", tmp_path / "samples.npz", num_samples=13, num_steps=2, cfg_scale=1.5, batch_size=5)
    with np.load(path) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (13, 32, 32, 3)
    assert images.min() < 64 and images.max() > 192  # dark background, bright strokes: a real [0, 255] range
    assert labels.tolist() == [i % 10 for i in range(13)]
    model, config, _ = demo
    expected = to_uint8(generate(model, config, torch.tensor(labels), num_steps=2, cfg_scale=1.5)).permute(0, 2, 3, 1)
    assert np.abs(images.astype(int) - expected.numpy().astype(int)).max() <= 1
    # guided-diffusion's evaluator streams arr_0.npy out of the zip and parses its header itself.
    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as file:
        assert np.lib.format.read_magic(file) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
    assert (shape, fortran, dtype) == ((13, 32, 32, 3), False, np.dtype(np.uint8))
    assert not (tmp_path / "samples.npz.partial").exists()


def test_grid_has_a_row_per_class(tmp_path: Path) -> None:
    path = sample_grid("demo:digits", tmp_path / "grid.png", per_class=2, classes=[0, 3, 7], sampler="heun", num_steps=2, seed=3)
    with Image.open(path) as grid:
        assert grid.size == (2 * 33 + 1, 3 * 33 + 1)  # 32 px tiles, 1 px padding
    with pytest.raises(UserError, match="out of range"):
        sample_grid("demo:digits", tmp_path / "bad.png", classes=[10], num_steps=1)


def tiny_text_model(folder: Path, *, with_text: bool) -> Path:
    config = backbone_config("SiT-T/4", image_size=8, num_classes=3, vae=None, in_channels=3, learn_sigma=False)
    config.text_dim, config.text_length = 6, 4
    torch.manual_seed(0)
    model = config.build()
    class_text = ClassText(torch.randn(3, 4, 6).half(), torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.int8))
    return save_backbone(model, config, folder, ema=model, class_text=class_text if with_text else None)


def test_run_folders_and_text_conditioned_models(tmp_path: Path) -> None:
    for step in ("0000002", "0000004"):
        tiny_text_model(tmp_path / "run" / "checkpoints" / step, with_text=True)
    (tmp_path / "run" / "checkpoints" / "0000006.partial").mkdir()
    model, config, class_text = load_for_sampling(tmp_path / "run")
    assert class_text is not None and class_text.embedding.shape == (3, 4, 6)
    images = generate(model, config, torch.tensor([0, 1, 2]), class_text=class_text, num_steps=2, cfg_scale=2.0)
    assert images.shape == (3, 3, 8, 8)
    with pytest.raises(UserError, match="text-conditioned"):
        generate(model, config, torch.tensor([0]), num_steps=2)
    tiny_text_model(tmp_path / "bare", with_text=False)
    assert load_for_sampling(tmp_path / "bare")[2] is None
    with pytest.raises(UserError, match="holds no model"):
        load_for_sampling(tmp_path / "run" / "checkpoints" / "0000006.partial")
