"""The training core learns, resumes exactly, works in pixel and VAE space, and samples deterministically."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from conftest import make_tiny_vae
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

from d2c_pack import cli
from d2c_pack.core import distributed
from d2c_pack.core.arrays import array_feature
from d2c_pack.core.errors import UserError
from d2c_pack.core.fingerprint import module_sha256
from d2c_pack.core.recipe import read_recipe
from d2c_pack.diffusion.sampling import Sampling
from d2c_pack.diffusion.transport import euler_ode_sample, interpolate
from d2c_pack.evaluation.sample import generate, load_for_sampling
from d2c_pack.models.checkpoint import load_backbone
from d2c_pack.pipeline import demo as demo_flow
from d2c_pack.pipeline.settings import BuildConfig, DemoConfig
from d2c_pack.training import loop
from d2c_pack.training.data import EpochPermutationBatches, collate_rows
from d2c_pack.training.loop import _new_run, _train_step, prepare_data, step_randomness, train, training_losses
from d2c_pack.training.settings import TrainConfig


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(
        source="demo:digits", out=str(tmp_path / "run"), model="SiT-T/4", resolution=16, vae="none",
        learn_sigma=False, steps=4, batch_size=8, lr=1e-3, ema_decay=0.9, workers=0, log_every=1,
        ckpt_every=2, device="cpu", text=False, align=False,
    )  # fmt: skip
    return TrainConfig(**(settings | overrides))


def test_interpolant_follows_sit_convention() -> None:
    x1, x0 = torch.full((2, 1, 1, 1), 3.0), torch.full((2, 1, 1, 1), -1.0)
    xt, ut = interpolate(x1, x0, torch.tensor([0.0, 1.0]))
    assert xt.flatten().tolist() == [-1.0, 3.0]  # t = 0 is noise, t = 1 is data
    assert ut.flatten().tolist() == [4.0, 4.0]  # u = x1 - x0


def test_the_trainers_loss_is_velocity_matching_and_its_steps_lower_it(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, batch_size=4, class_dropout=0.0)
    context = distributed.init("cpu")
    run = _new_run(config, prepare_data(config, context.device), context)
    batch = collate_rows([run.data.dataset[i] for i in range(4)])  # 4 fixed digits
    del batch["positions"]
    held_out = {k: v for k, v in step_randomness(run, 4).items()} | {"t": torch.tensor([0.1, 0.4, 0.6, 0.9])}

    def loss() -> float:
        with torch.no_grad():
            return training_losses(run, run.model, batch, held_out)["loss"].item()

    before = loss()
    for _ in range(40):  # the trainer's own steps on the same batch, each with its step's noise and t
        _train_step(run, run.model, batch | {"positions": torch.arange(4)}, offset=0)
        run.step += 1
    assert loss() < 0.5 * before
    # The loss is SiT's velocity matching, computed here independently: x_t = t·x₁ + (1 − t)·x₀, target x₁ − x₀.
    x1, x0, t = batch["image"], held_out["noise"], held_out["t"].view(-1, 1, 1, 1)
    with torch.no_grad():
        predicted = run.model(t * x1 + (1 - t) * x0, held_out["t"], batch["label"])
    assert loss() == pytest.approx(((predicted - (x1 - x0)) ** 2).mean().item(), rel=1e-5)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(tiny_config(tmp_path / "a"))
    train(tiny_config(tmp_path / "b", steps=2))
    resumed = train(tiny_config(tmp_path / "b", steps=4))
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a/run/checkpoints/0000004" / name))
        b = load_file(str(tmp_path / "b/run/checkpoints/0000004" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(tmp_path / "a/run/checkpoints/0000004/optimizer.pt", weights_only=True)
    opt_b = torch.load(tmp_path / "b/run/checkpoints/0000004/optimizer.pt", weights_only=True)
    assert all(torch.equal(opt_a["state"][i]["exp_avg"], opt_b["state"][i]["exp_avg"]) for i in opt_a["state"])
    final_a, final_b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert (tmp_path / "a/run/metrics.jsonl").read_text().count("\n") == 4
    assert (tmp_path / "b/run/metrics.jsonl").read_text().count("\n") == 4


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    train(tiny_config(tmp_path, steps=1))
    with pytest.raises(UserError, match="resolution"):
        train(tiny_config(tmp_path, steps=2, resolution=32))


def test_training_in_vae_latent_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=16)  # fmt: skip
    vae.save_pretrained(tmp_path / "tiny-vae")
    model_dir = train(tiny_config(tmp_path, vae=str(tmp_path / "tiny-vae"), model="SiT-T/2", steps=2))
    model, config = load_backbone(model_dir)
    # The model names its VAE portably (no path of this machine) and pins its weights by hash.
    assert (config.in_channels, config.input_size, config.image_size, config.vae) == (4, 8, 16, "tiny-vae")
    assert config.vae_sha256 == module_sha256(vae) and str(tmp_path) not in (model_dir / "config.json").read_text()
    # "tiny-vae" is no Hub id: the user points at a copy. The Hub is not asked (huggingface_hub read HF_HUB_OFFLINE before
    # conftest set it: without this, a machine with no network waits out 23 s of retries for the same answer).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="--vae FOLDER"):
        generate(model, config, torch.tensor([0, 1]), Sampling(steps=2))
    moved = (tmp_path / "tiny-vae").rename(tmp_path / "elsewhere")
    model, config, _ = load_for_sampling(model_dir, vae=str(moved))
    images = generate(model, config, torch.tensor([0, 1]), Sampling(steps=2))
    assert images.shape == (2, 3, 16, 16)
    torch.manual_seed(1)
    AutoencoderKL(**vae.config).save_pretrained(tmp_path / "other-vae")
    model, config, _ = load_for_sampling(model_dir, vae=str(tmp_path / "other-vae"))
    with pytest.raises(UserError, match="other weights"):
        generate(model, config, torch.tensor([0]), Sampling(steps=2))


def test_a_latent_column_without_a_manifest_needs_its_vae_named(tmp_path: Path) -> None:
    """No guess of the SD VAE and R = 8 × the latent side: --vae names the VAE, whose own factors and downsampling then count."""
    features = datasets.Features({"label": datasets.ClassLabel(names=["a", "b"]), "latent": array_feature((8, 4, 4), "float16")})
    rows = {"label": [0, 1], "latent": np.zeros((2, 8, 4, 4), np.float16)}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "latents"))
    config = dict(data=str(tmp_path / "latents"), out=str(tmp_path / "run"), model="SiT-T/2", text=False, align=False, device="cpu", workers=0)
    with pytest.raises(UserError, match="no d2c-pack manifest naming the VAE.*--vae"):
        prepare_data(TrainConfig(**config), torch.device("cpu"))
    vae = AutoencoderKL.from_pretrained(make_tiny_vae(tmp_path / "tiny-vae"))
    data = prepare_data(TrainConfig(**config, vae=str(tmp_path / "tiny-vae")), torch.device("cpu"))
    assert (data.image_size, data.input_size, data.in_channels) == (8, 4, 4)  # R = 4 × the VAE's 2× downsampling, not 32
    assert (data.vae, data.vae_sha256, data.latent_scale) == ("tiny-vae", module_sha256(vae), vae.config.scaling_factor)
    with pytest.raises(UserError, match="built at resolution 8"):
        prepare_data(TrainConfig(**config, vae=str(tmp_path / "tiny-vae"), resolution=32), torch.device("cpu"))


def test_batches_resume_at_any_step_and_cover_each_epoch() -> None:
    full = EpochPermutationBatches(10, 4, seed=3, start_step=0, num_steps=5)
    batches = list(full)
    assert all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert list(EpochPermutationBatches(10, 4, seed=3, start_step=3, num_steps=5)) == batches[3:]
    halves = [list(EpochPermutationBatches(10, 4, seed=3, start_step=0, num_steps=5, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == batches


def test_sampler_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    model, config = load_backbone(train(tiny_config(tmp_path, steps=2)))
    labels = torch.tensor([0, 5])
    first = generate(model, config, labels, Sampling(steps=4, cfg_scale=2.0, seed=7))
    assert torch.equal(first, generate(model, config, labels, Sampling(steps=4, cfg_scale=2.0, seed=7)))
    assert not torch.equal(first, generate(model, config, labels, Sampling(steps=4, cfg_scale=2.0, seed=8)))


def test_euler_ode_integrates_a_known_velocity_field() -> None:
    class ConstantVelocity(torch.nn.Module):
        """v = 2 everywhere: x(1) = x(0) + 2."""

        def forward(self, x, t, y):
            return torch.full_like(x, 2.0)

    noise = torch.zeros(3, 1, 2, 2)
    out = euler_ode_sample(ConstantVelocity(), noise, torch.zeros(3, dtype=torch.long), Sampling(steps=5))
    torch.testing.assert_close(out, torch.full_like(noise, 2.0))


def images_without_classes(folder: Path) -> Path:
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(folder / f"{i}.png")
    return folder


def no_data_at_all(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("not a dataset")
    return folder


@pytest.mark.parametrize("make", [images_without_classes, no_data_at_all])
def test_training_on_a_folder_that_is_no_labelled_dataset_fails_in_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, capsys, make) -> None:
    data, run = make(tmp_path / "data"), tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--model", "SiT-T/4", "--vae", "none", "--no-text", "--no-align", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["d2c-pack", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # before it, at most datasets' progress bars as it tries the folder
    assert exited.value.code == 2 and last.startswith("error: ") and "is not a labelled image dataset" in last and "Traceback" not in err, err
    assert not run.exists()


def test_a_time_based_checkpoint_lets_a_stopped_run_resume_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --ckpt-every-seconds a run stopped between scheduled checkpoints resumes from its last minute, to the same weights."""
    straight = train(tiny_config(tmp_path / "a", ckpt_every=100))
    steps_done = []

    def stop_after_three_steps(*args, **kwargs):
        if len(steps_done) == 3:
            raise KeyboardInterrupt  # the user stops the run during step 4
        steps_done.append(1)
        return train_step(*args, **kwargs)

    train_step = loop._train_step
    monkeypatch.setattr(loop, "_train_step", stop_after_three_steps)
    stopped = tiny_config(tmp_path / "b", ckpt_every=100, ckpt_every_seconds=1e-9)  # every step is "a minute"
    with pytest.raises(KeyboardInterrupt):
        train(stopped)
    assert [p.name for p in (tmp_path / "b/run/checkpoints").iterdir()] == ["0000003"]  # the newest only: older ones are removed
    monkeypatch.undo()
    resumed = train(stopped)
    final_a, final_b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert (tmp_path / "b/run/metrics.jsonl").read_text().count("\n") == 4


class Stop(Exception):
    pass


def test_the_demo_reuses_the_quickstarts_score_cache_and_checkpoints_every_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def stop_training(config: TrainConfig) -> None:
        seen["train"] = config
        raise Stop

    (tmp_path / "data").mkdir()  # what the stubbed build "built": training's settings refuse a folder that is not there
    monkeypatch.setattr(demo_flow, "build", lambda config: seen.setdefault("build", config) and tmp_path / "data")
    monkeypatch.setattr(demo_flow, "_publish", lambda data, repo_id: ("verified", str(data), None))
    monkeypatch.setattr(demo_flow, "_load", lambda where, revision: SimpleNamespace(num_rows=180, column_names=["image", "label"]))
    monkeypatch.setattr(demo_flow, "train", stop_training)
    with pytest.raises(Stop):
        demo_flow.run_demo(DemoConfig(out=str(tmp_path / "demo")))
    quickstart = BuildConfig(**read_recipe("demo"))  # `d2c-pack build --recipe demo`
    assert seen["build"].work == quickstart.work == str(tmp_path / "d2c-cache")  # conftest points the default cache here
    assert seen["train"].ckpt_every_seconds is not None and seen["train"].ckpt_every_seconds <= 60


def test_a_time_based_checkpoint_is_taken_at_log_steps_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock is read where the metrics are (no host sync of its own): with every step "a minute", checkpoints land on log steps."""
    saved = []
    save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda run, out: saved.append(run.step) or save(run, out))
    train(tiny_config(tmp_path, steps=5, log_every=2, ckpt_every=100, ckpt_every_seconds=1e-9))
    assert saved == [2, 4, 5]  # the log steps, and the last step (always logged and checkpointed)


def test_the_host_sync_counter_counts_the_projects_calls_only() -> None:
    from host_sync import HostSyncs

    from d2c_pack.sources.preprocess import tensor_to_image

    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(model.parameters())  # on the CPU its step reads its step counters: torch's own syncs
    with HostSyncs() as syncs:
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()
        torch.ones(2).tolist()  # this file is not the project
        tensor_to_image(torch.zeros(3, 2, 2))  # .cpu() and .numpy() in d2c_pack/sources/preprocess.py; the dtype-only .to() is no copy
        torch.zeros(2).to("cpu")  # a blocking copy, but not the project's
    assert sorted(call.rsplit(" ", 1)[1] for call in syncs.calls) == ["cpu", "numpy"] and syncs.count == 2, syncs.calls
    assert all(call.startswith("d2c_pack/sources/preprocess.py:") for call in syncs.calls)
