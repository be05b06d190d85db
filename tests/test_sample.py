"""Samplers integrate what they claim, guidance goes where it is asked, and sampling outputs have their documented layout."""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import one_and_two_processes
from host_sync import count_host_syncs
from PIL import Image
from torchdiffeq import odeint

from d2c_pack.core.distributed import Context
from d2c_pack.core.errors import UserError
from d2c_pack.diffusion.sampling import Sampling
from d2c_pack.diffusion.transport import (
    Condition,
    GuidanceInterval,
    dopri5_ode_sample,
    euler_maruyama_sample,
    euler_ode_sample,
    heun_ode_sample,
    integrate,
    time_grid,
    velocity,
)
from d2c_pack.evaluation.sample import (
    generate,
    generate_batches,
    load_for_sampling,
    sample_generators,
    sample_grid,
    sample_labels,
    sample_npz,
    to_uint8,
)
from d2c_pack.models.checkpoint import ClassText, backbone_config, save_backbone


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
        value = y.float() if text is None else y.float() + (text * text_mask[..., None]).sum((1, 2))  # (N,)
        return value.view(-1, 1, 1, 1).expand_as(x)


@pytest.fixture(scope="module")
def demo():
    return load_for_sampling("demo:digits")


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler-maruyama"])  # dopri5: see test_dopri5_samples_through_generate
def test_samples_depend_on_seed_and_position_only(demo, sampler: str) -> None:
    model, config, _class_text = demo
    labels = torch.tensor([0, 3, 3, 9, 1])
    settings = {"sampler": sampler, "steps": 3, "cfg_scale": 2.0, "guidance_interval": GuidanceInterval(0.2, 0.8)}
    first = generate(model, config, labels, Sampling(seed=7, batch_size=5, **settings))
    assert first.shape == (5, 3, 32, 32) and first.min() >= -1 and first.max() <= 1
    torch.testing.assert_close(generate(model, config, labels, Sampling(seed=7, batch_size=2, **settings)), first, atol=1e-5, rtol=0)
    assert not torch.allclose(generate(model, config, labels, Sampling(seed=8, batch_size=5, **settings)), first)


def test_bad_settings_fail_early_naming_their_flag(demo) -> None:
    model, config, _ = demo
    images = generate(model, config, torch.tensor([2, 4]), Sampling(steps=2, cfg_scale=1.5, seed=1))
    assert images.shape == (2, 3, 32, 32)
    with pytest.raises(UserError, match="unknown sampler"):
        Sampling(sampler="ddim")  # settings are checked when made, before any model is loaded
    with pytest.raises(UserError, match="--cfg-scale"):
        Sampling(cfg_scale=0.5)
    with pytest.raises(UserError, match="guidance interval"):
        Sampling(guidance_interval=GuidanceInterval(0.8, 0.2))
    with pytest.raises(UserError, match="--sampling-steps must be at least 2 for euler-maruyama"):
        Sampling(sampler="euler-maruyama", steps=1)
    with pytest.raises(UserError, match="--labels"):
        Sampling(labels="uniform")
    with pytest.raises(UserError, match="class indices"):
        generate_batches(model, config, torch.tensor([10]))  # before any batch is asked for


def test_heun_beats_euler_on_a_known_field() -> None:
    """dx/dt = −(1 + t)·x has x(1) = x(0)·e^(−3/2)."""
    field = Field(lambda x, t: -(1 + t) * x)
    noise = torch.linspace(-2, 2, 8).view(8, 1, 1, 1)
    exact = noise * math.exp(-1.5)
    labels = torch.zeros(8, dtype=torch.long)
    euler_error = (euler_ode_sample(field, noise, labels, Sampling(steps=10)) - exact).abs().max()
    field.calls = 0
    heun_error = (heun_ode_sample(field, noise, labels, Sampling(steps=10)) - exact).abs().max()
    assert field.calls == 19  # 2 per step, the last step Euler
    assert heun_error < euler_error / 5, (heun_error, euler_error)


def test_dopri5_solves_a_known_field_to_sits_tolerance() -> None:
    """dx/dt = −(1 + t)·x has x(1) = x(0)·e^(−3/2); the adaptive solver stays within SiT's tolerances."""
    field = Field(lambda x, t: -(1 + t) * x)
    noise = torch.linspace(-2, 2, 8).view(8, 1, 1, 1)
    exact = noise * math.exp(-1.5)
    labels = torch.zeros(8, dtype=torch.long)
    error = (dopri5_ode_sample(field, noise, labels) - exact).abs().max()
    assert error < 3e-3 * exact.abs().max(), error  # rtol 1e-3 per step
    assert field.calls % 6 == 2  # Dormand–Prince: 6 new evaluations a step (first-same-as-last), +2 to pick the first step
    tight = (dopri5_ode_sample(field, noise, labels, atol=1e-9, rtol=1e-9) - exact).abs().max()
    assert tight < 1e-6, tight  # the tolerances reach the solver: fifth order converges to float32 precision


def test_dopri5_is_sits_ode_sampler() -> None:
    """SiT's ``ode.sample``: odeint(drift, x, linspace(0, 1, num_steps), method="dopri5", atol=[1e-6], rtol=[1e-3])[-1], guided everywhere."""
    noise, labels = label_noise()
    model = LabelField()

    def sit_drift(t, x):
        out = model(torch.cat([x, x]), torch.ones(2 * len(x)) * t, torch.cat([labels, torch.full_like(labels, 10)]))
        cond, uncond = out.chunk(2)
        return uncond + 3.0 * (cond - uncond)

    sit = odeint(sit_drift, noise, torch.linspace(0, 1, 50), method="dopri5", atol=[1e-6], rtol=[1e-3])[-1]
    assert torch.equal(dopri5_ode_sample(model, noise, labels, Sampling(cfg_scale=3.0)), sit)


def test_dopri5_guides_inside_the_interval_only() -> None:
    model = Recorder(num_classes=10)
    cond = Condition(torch.tensor([1, 2]))
    dopri5_ode_sample(model, torch.zeros(2, 1, 1, 1), cond, Sampling(cfg_scale=3.0, guidance_interval=GuidanceInterval(0.25, 0.7, time="repa")))
    times = [(min(float(c["t"][0]), 1.0), len(c["y"])) for c in model.calls]  # past t = 1 (the overshoot of the last step) as at 1
    assert {size for t, size in times if 0.3 <= t <= 0.75} == {4} and {size for t, size in times if not 0.3 <= t <= 0.75} == {2}
    model.calls.clear()
    dopri5_ode_sample(model, torch.zeros(2, 1, 1, 1), cond, Sampling(cfg_scale=3.0))
    assert {len(c["y"]) for c in model.calls} == {4}  # the default interval [0, 1] guides the overshoot too, as SiT


def test_dopri5_samples_through_generate(demo) -> None:
    """Deterministic per seed; the steps are chosen for the whole batch (as in SiT), so unlike the fixed-step samplers a sample may move with its batch."""
    model, config, _ = demo
    labels = torch.tensor([0, 3])
    settings = {"sampler": "dopri5", "cfg_scale": 2.0, "guidance_interval": GuidanceInterval(0.2, 0.8), "seed": 7}
    first = generate(model, config, labels, Sampling(**settings))
    assert first.shape == (2, 3, 32, 32) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(generate(model, config, labels, Sampling(steps=3, **settings)), first)


EM_100 = Sampling(sampler="euler-maruyama", steps=100)


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
    out = euler_maruyama_sample(gaussian_data_velocity(3.0, 0.0), noise, labels, EM_100, generator=torch.Generator().manual_seed(1))
    # Stopping at t = 0.96 leaves a spread of 0.04·x₀, which SiT's last mean step keeps.
    assert (out - 3.0).abs().mean() < 0.06
    assert (out - 3.0).abs().max() < 0.3


def test_euler_maruyama_reproduces_gaussian_data() -> None:
    """Mean and spread of N(μ, s²) data come out right: the score and noise terms balance as derived."""
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4000, dtype=torch.long)
    field = gaussian_data_velocity(1.0, 0.5)
    out = euler_maruyama_sample(field, noise, labels, EM_100, generator=torch.Generator().manual_seed(1))
    assert abs(out.mean().item() - 1.0) < 0.05
    assert abs(out.std().item() - 0.5) < 0.04
    again = euler_maruyama_sample(field, noise, labels, EM_100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = euler_maruyama_sample(field, noise, labels, EM_100, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)


def test_guidance_uses_null_class_and_null_text_inside_the_interval_only() -> None:
    model = Recorder(num_classes=10)
    text = torch.rand(2, 3, 4) + 0.5  # (N, L, D)
    cond = Condition(torch.tensor([1, 2]), text, torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.int8))
    x = torch.zeros(2, 1, 1, 1)
    conditional = cond.labels.float() + (text * cond.text_mask[..., None]).sum((1, 2))  # (N,)

    guided = velocity(model, x, 0.5, cond, cfg_scale=3.0, guidance_interval=GuidanceInterval(0.3, 0.7))
    (call,) = model.calls
    assert call["y"].tolist() == [1, 2, 10, 10] and call["t"].tolist() == [0.5] * 4
    assert torch.equal(call["text"][:2], text) and torch.equal(call["mask"][:2], cond.text_mask)
    assert torch.count_nonzero(call["text"][2:]) == 0 and torch.count_nonzero(call["mask"][2:]) == 0
    torch.testing.assert_close(guided.flatten(), 10 + 3.0 * (conditional - 10))

    model.calls.clear()
    outside = velocity(model, x, 0.9, cond, cfg_scale=3.0, guidance_interval=GuidanceInterval(0.3, 0.7))
    (call,) = model.calls
    assert call["y"].tolist() == [1, 2]
    torch.testing.assert_close(outside.flatten(), conditional)

    model.calls.clear()
    euler_ode_sample(model, x, cond, Sampling(steps=4, cfg_scale=3.0, guidance_interval=GuidanceInterval(0.3, 0.7)))
    assert [len(c["y"]) for c in model.calls] == [2, 2, 4, 2]  # only t = 0.5 of 0, .25, .5, .75 is guided
    model.calls.clear()
    euler_ode_sample(model, x, cond, Sampling(steps=4, cfg_scale=1.0))
    assert [len(c["y"]) for c in model.calls] == [2, 2, 2, 2]


class LabelField(torch.nn.Module):
    """A smooth velocity that depends on the class, so guidance changes the path: v = −(1 + t)·x + (y − 4)/2."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.y_embedder = SimpleNamespace(num_classes=num_classes)

    def forward(self, x, t, y):
        return -(1 + t.view(-1, 1, 1, 1)) * x + (y.float().view(-1, 1, 1, 1) - 4) / 2


def repa_euler_sampler(model, latents, y, *, num_steps, heun, cfg_scale, guidance_low=0.0, guidance_high=1.0):
    """Our transcription of REPA's ``samplers.euler_sampler`` for a SiT-time ``model``.

    REPA's time is t_repa = 1 − t_sit (1 = noise) and its network predicts dx/dt_repa = −v_sit.
    Its grid is linspace(1, 0, N + 1) in float64, the state float64, the network's inputs in the
    latents' dtype; a step is guided when its start t_cur is in [guidance_low, guidance_high], and
    then so is Heun's corrector at t_next. The last step is Euler.
    """
    y_null = torch.full_like(y, model.y_embedder.num_classes)

    def d(x, t, guided):
        inputs, labels = (torch.cat([x, x]), torch.cat([y, y_null])) if guided else (x, y)
        times = torch.ones(len(inputs), dtype=torch.float64) * t
        out = -model(inputs.to(latents.dtype), 1 - times.to(latents.dtype), labels).to(torch.float64)
        if not guided:
            return out
        d_cond, d_uncond = out.chunk(2)
        return d_uncond + cfg_scale * (d_cond - d_uncond)

    t_steps = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    x_next = latents.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        guided = cfg_scale > 1.0 and guidance_low <= t_cur <= guidance_high
        d_cur = d(x_cur, t_cur, guided)
        x_next = x_cur + (t_next - t_cur) * d_cur
        if heun and i < num_steps - 1:
            d_prime = d(x_next, t_next, guided)
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def label_noise() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 3, 6, 9])


@pytest.mark.parametrize("num_steps", [50, 100])
def test_guidance_starts_where_repas_float64_grid_puts_it(num_steps: int) -> None:
    """REPA's guidance_high 0.7 is SiT's [0.3, 1]; its first guided step is the first t_repa = linspace(1, 0, N + 1)[i] ≤ 0.7."""
    first_guided = int((torch.linspace(1, 0, num_steps + 1, dtype=torch.float64) <= 0.7).nonzero()[0])
    model = Recorder(num_classes=10)
    euler_ode_sample(model, torch.zeros(1, 1, 1, 1), torch.tensor([1]), Sampling(steps=num_steps, cfg_scale=3.0, guidance_interval=GuidanceInterval(0.3, 1.0)))
    assert [len(c["y"]) for c in model.calls].index(2) == first_guided  # (a float32 grid guides from the next step)

    noise, labels = label_noise()
    ours = euler_ode_sample(LabelField(), noise, labels, Sampling(steps=num_steps, cfg_scale=3.0, guidance_interval=GuidanceInterval(0.3, 1.0)))
    repa = repa_euler_sampler(LabelField(), noise, labels, num_steps=num_steps, heun=False, cfg_scale=3.0, guidance_high=0.7)
    torch.testing.assert_close(ours.double(), repa, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_steps", [10, 50])
def test_heun_corrector_is_guided_as_repas(num_steps: int) -> None:
    """With REPA's interval [0.25, 0.7] the edge steps have one end inside and one outside: REPA guides by the start."""
    noise, labels = label_noise()
    interval = GuidanceInterval(0.25, 0.7, time="repa")
    ours = heun_ode_sample(LabelField(), noise, labels, Sampling(steps=num_steps, cfg_scale=3.0, guidance_interval=interval))
    repa = repa_euler_sampler(LabelField(), noise, labels, num_steps=num_steps, heun=True, cfg_scale=3.0, guidance_low=0.25, guidance_high=0.7)
    torch.testing.assert_close(ours.double(), repa, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("num_steps", "low", "high"), [(20, 0.0, 0.3), (50, 0.0, 0.7), (100, 0.3, 0.9), (250, 0.1, 0.5)])
def test_repa_interval_guides_repas_steps(num_steps: int, low: float, high: float) -> None:
    """Compared on REPA's own grid, so exact even where mapping to SiT time would move an edge (N = 20, guidance_high 0.3)."""
    repa_times = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)[:-1]
    expected = [4 if low <= t <= high else 2 for t in repa_times.tolist()]
    model = Recorder(num_classes=10)
    settings = {"steps": num_steps, "cfg_scale": 3.0, "guidance_interval": GuidanceInterval(low, high, time="repa")}
    euler_ode_sample(model, torch.zeros(2, 1, 1, 1), torch.tensor([1, 2]), Sampling(**settings))
    assert [len(c["y"]) for c in model.calls] == expected

    # Euler–Maruyama: REPA's grid is linspace(1, 0.04, N), each point guided by the same rule.
    sde_times = torch.linspace(1, 0.04, num_steps, dtype=torch.float64)
    model.calls.clear()
    euler_maruyama_sample(model, torch.zeros(2, 1, 1, 1), torch.tensor([1, 2]), Sampling(sampler="euler-maruyama", **settings))
    assert [len(c["y"]) for c in model.calls] == [4 if low <= t <= high else 2 for t in sde_times.tolist()]


def test_repa_and_sit_conventions_give_equal_samples(demo) -> None:
    model, config, _ = demo
    labels = torch.tensor([2, 7])
    settings = {"sampler": "heun", "steps": 10, "cfg_scale": 2.0, "seed": 3}
    sit = generate(model, config, labels, Sampling(guidance_interval=GuidanceInterval(0.3, 1.0), **settings))
    assert torch.equal(generate(model, config, labels, Sampling(guidance_interval=GuidanceInterval(0.0, 0.7, time="repa"), **settings)), sit)
    assert not torch.equal(generate(model, config, labels, Sampling(guidance_interval=GuidanceInterval(0.0, 0.7), **settings)), sit)
    with pytest.raises(UserError, match="REPA time, 1 = noise"):
        Sampling(guidance_interval=GuidanceInterval(0.7, 0.2, time="repa"))


def test_npz_has_the_adm_evaluator_layout(tmp_path: Path, demo) -> None:
    path = sample_npz("demo:digits", tmp_path / "samples.npz", num_samples=13, sampling=Sampling(steps=2, cfg_scale=1.5, batch_size=5))
    with np.load(path) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (13, 32, 32, 3)
    assert images.min() < 64 and images.max() > 192  # dark background, bright strokes: a real [0, 255] range
    assert labels.tolist() == sample_labels(13, 10, "random", seed=0).tolist()  # uniform random, as DiT/SiT/REPA
    balanced = sample_npz("demo:digits", tmp_path / "balanced.npz", num_samples=13, sampling=Sampling(labels="balanced", steps=1, batch_size=5))
    with np.load(balanced) as data:
        assert data["arr_1"].tolist() == [i % 10 for i in range(13)]
    model, config, _ = demo
    expected = to_uint8(generate(model, config, torch.tensor(labels), Sampling(steps=2, cfg_scale=1.5))).permute(0, 2, 3, 1)
    assert np.abs(images.astype(int) - expected.numpy().astype(int)).max() <= 1
    # guided-diffusion's evaluator streams arr_0.npy out of the zip and parses its header itself.
    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as file:
        assert np.lib.format.read_magic(file) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
    assert (shape, fortran, dtype) == ((13, 32, 32, 3), False, np.dtype(np.uint8))
    assert not (tmp_path / "samples.npz.partial").exists()


def test_grid_has_a_row_per_class(tmp_path: Path) -> None:
    path = sample_grid("demo:digits", tmp_path / "grid.png", per_class=2, classes=[0, 3, 7], sampling=Sampling(sampler="heun", steps=2, seed=3))
    with Image.open(path) as grid:
        assert grid.size == (2 * 33 + 1, 3 * 33 + 1)  # 32 px tiles, 1 px padding
    with pytest.raises(UserError, match="out of range"):
        sample_grid("demo:digits", tmp_path / "bad.png", classes=[10], sampling=Sampling(steps=1))


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
    images = generate(model, config, torch.tensor([0, 1, 2]), Sampling(steps=2, cfg_scale=2.0), class_text=class_text)
    assert images.shape == (3, 3, 8, 8)
    with pytest.raises(UserError, match="text-conditioned"):
        generate(model, config, torch.tensor([0]), Sampling(steps=2))
    tiny_text_model(tmp_path / "bare", with_text=False)
    assert load_for_sampling(tmp_path / "bare")[2] is None
    with pytest.raises(UserError, match="holds no model"):
        load_for_sampling(tmp_path / "run" / "checkpoints" / "0000006.partial")


class CountFromTheFirstStep(torch.nn.Module):
    """The model, with host syncs counted from its first call (the first sampling step) to the end of ``stack``."""

    def __init__(self, model: torch.nn.Module, stack: contextlib.ExitStack):
        super().__init__()
        self.model, self.y_embedder, self.stack = model, model.y_embedder, stack
        self.syncs: collections.Counter | None = None

    def forward(self, *args):
        if self.syncs is None:
            self.syncs = self.stack.enter_context(count_host_syncs())
        return self.model(*args)


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler-maruyama"])
def test_no_host_sync_inside_a_sampling_step(demo, sampler: str) -> None:
    """No step reads a tensor back or copies noise from the host: the grid and guidance are host floats, the SDE's noise is drawn where the samples are."""
    model, config, _ = demo
    sampling = Sampling(sampler=sampler, steps=4, cfg_scale=2.0, guidance_interval=GuidanceInterval(0.2, 0.8))
    noise = torch.randn(3, config.in_channels, config.input_size, config.input_size, generator=torch.Generator().manual_seed(0))
    with contextlib.ExitStack() as stack:
        stepped = CountFromTheFirstStep(model, stack)
        integrate(stepped, noise, Condition(torch.tensor([0, 4, 9])), sampling, generator=sample_generators(0, range(3)))
    assert stepped.syncs == collections.Counter()

    with count_host_syncs() as syncs:  # the counter sees what it should
        torch.ones(2).to("cpu").sum().item()  # from this test file: not d2c-pack's
        Context(0, 1, torch.device("cpu")).batches(3, 2)
        sample_labels(3, 10, "random", 0)  # torch.from_numpy, no sync
    assert syncs == collections.Counter()
    with count_host_syncs() as syncs:  # before the first batch: the labels' range checked, the schedule computed once
        generate_batches(model, config, torch.tensor([3]))
    assert {key.split(":")[0] for key in syncs} == {"d2c_pack/evaluation/sample.py", "d2c_pack/diffusion/transport.py"}


def random_sit(in_channels: int = 4, num_classes: int = 3) -> torch.nn.Module:
    """A tiny SiT with SiT's learned-σ layout (2C outputs) and random weights throughout (its zero-initialised layers too)."""
    config = backbone_config("SiT-T/4", image_size=8, num_classes=num_classes, vae=None, in_channels=in_channels, learn_sigma=True)
    model = config.build()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def sit_forward_with_cfg(forward, x, t, y, cfg_scale):
    """Our transcription of SiT's ``models.py`` ``forward_with_cfg`` (``self.forward`` passed in)."""
    half = x[: len(x) // 2]
    combined = torch.cat([half, half], dim=0)
    model_out = forward(combined, t, y)
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = torch.cat([half_eps, half_eps], dim=0)
    return torch.cat([eps, rest], dim=1)


def test_cfg_channels_3_is_sits_forward_with_cfg() -> None:
    model = random_sit()
    sit_forward = lambda x, t, y: model(x, t, y).chunk(2, dim=1)[0]  # noqa: E731  SiT's forward drops the learned σ
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2])
    doubled = (torch.cat([x, x]), torch.full((4,), 0.3), torch.cat([labels, torch.full_like(labels, 3)]))
    with torch.no_grad():
        sit = sit_forward_with_cfg(sit_forward, *doubled, 4.0)[:2]  # the conditional half, as SiT's sample.py keeps
        ours = velocity(model, x, 0.3, Condition(labels), cfg_scale=4.0, guided_channels=3)
        every = velocity(model, x, 0.3, Condition(labels), cfg_scale=4.0)
    assert torch.equal(ours, sit)
    assert torch.equal(every[:, :3], sit[:, :3]) and not torch.allclose(every[:, 3:], sit[:, 3:])  # REPA guides channel 4 too

    # Through a sampler: Euler on the doubled batch, as SiT samples with forward_with_cfg as its model.
    times = time_grid(4).tolist()
    state = x
    with torch.no_grad():
        for t0, t1 in itertools.pairwise(times):
            state = state + (t1 - t0) * sit_forward_with_cfg(sit_forward, torch.cat([state, state]), torch.full((4,), t0), doubled[2], 4.0)[:2]
    assert torch.equal(euler_ode_sample(model, x, labels, Sampling(steps=3, cfg_scale=4.0, cfg_channels="3")), state)
    assert not torch.equal(euler_ode_sample(model, x, labels, Sampling(steps=3, cfg_scale=4.0)), state)
    with pytest.raises(UserError, match="--cfg-channels"):
        Sampling(cfg_channels="2")


def test_bf16_precision_samples_close_to_fp32(demo) -> None:
    model, config, _ = demo
    labels = torch.tensor([1, 5, 8])
    settings = {"sampler": "heun", "steps": 3, "cfg_scale": 1.5, "seed": 4}
    full = generate(model, config, labels, Sampling(**settings))
    half = generate(model, config, labels, Sampling(precision="bf16", **settings))
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # the network ran in bfloat16
    assert (half - full).abs().mean() < 0.02, (half - full).abs().mean()
    assert torch.equal(generate(model, config, labels, Sampling(**settings)), full)  # autocast ends with the call
    with pytest.raises(UserError, match="--precision"):
        Sampling(precision="fp16")


def test_rank_batches_are_one_process_batches_shared_round_robin() -> None:
    for total, batch_size, world in [(7, 3, 2), (13, 4, 3), (2, 5, 2), (9, 3, 3)]:
        shares = [Context(rank, world, torch.device("cpu")).batches(total, batch_size) for rank in range(world)]
        assert len({len(share) for share in shares}) == 1  # every rank takes part in every round
        rounds = [part for parts in zip(*shares) for part in parts if part]
        assert rounds == [range(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def test_torchrun_two_ranks_write_the_npz_of_one_process(tmp_path: Path) -> None:
    """Rank 0 gathers and writes; the file is byte for byte one process's (7 samples in batches of 3: rank 1's last batch is empty)."""
    args = ["sample", "demo:digits", "--num-samples", "7", "--batch-size", "3", "--sampling-steps", "2", "--sampler", "euler-maruyama", "--cfg-scale", "1.5", "--device", "cpu"]
    _, two = one_and_two_processes(args, ["--out", str(tmp_path / "one.npz")], ["--out", str(tmp_path / "two.npz")])
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    assert two.stdout.count("wrote") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "two.npz"]
