"""Test-wide settings and builders: no test reaches the network; models and data are made here."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from d2c_pack.models.dit import (
    DiT,
    get_2d_sincos_pos_embed,  # noqa: E402
)

if TYPE_CHECKING:
    from d2c_pack.evaluation.evaluator import Reference


def private_caches(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow files ``datasets`` prepares, and d2c-pack's default cache (``demo`` uses it), under ``root``."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
    monkeypatch.setenv("D2C_PACK_CACHE", str(root / "d2c-cache"))


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow files ``datasets`` prepares, and d2c-pack's default cache (``demo`` uses it), out of the user's cache."""
    private_caches(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def demo_cache_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """d2c-pack's default cache after ``d2c-pack build --recipe demo``: the 1,797 digits scored, the subset's columns attached.

    Built once a session, since scoring the digits is the demo's costliest step. Never change it: take ``demo_cache``.
    """
    from d2c_pack.core.recipe import read_recipe
    from d2c_pack.pipeline.build import build
    from d2c_pack.pipeline.settings import BuildConfig

    root = tmp_path_factory.mktemp("demo-build")
    with pytest.MonkeyPatch.context() as monkeypatch:
        private_caches(root, monkeypatch)
        build(BuildConfig(**read_recipe("demo") | {"out": str(root / "out")}))
    return root / "d2c-cache"


@pytest.fixture
def demo_cache(demo_cache_pristine: Path, tmp_path: Path) -> Path:
    """This test's copy of ``demo_cache_pristine``, at d2c-pack's default cache (``datasets_cache`` points it here)."""
    return Path(shutil.copytree(demo_cache_pristine, tmp_path / "d2c-cache"))


@pytest.fixture(scope="session")
def digits_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference]:
    """The FID reference of the demo digits under ``demo:digits-encoder`` at 32 px, what ``eval`` of a demo model compares
    with: ``reference_from_source`` computed it once, from an empty work folder. Returns (that folder, the reference).

    Never change it: ``copy_digits_reference`` puts the cached file into a test's own work folder or cache.
    """
    from d2c_pack.evaluation.evaluator import load_features, reference_from_source

    work = tmp_path_factory.mktemp("digits-reference")
    return work, reference_from_source("demo:digits", load_features("demo:digits-encoder", 32), 32, work_dir=work)


def copy_digits_reference(digits_reference: tuple[Path, Reference], work: Path) -> Path:
    """``work`` (a work folder or d2c-pack's cache, made if missing) holding the digits' cached reference, as an earlier ``eval`` leaves it."""
    shutil.copytree(digits_reference[0] / "fid-references", work / "fid-references", dirs_exist_ok=True)
    return work


def encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def noise_image(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0]) + ((channels,) if channels else ())
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


CLASS_SIZES = {"ant": 12, "bee": 9, "cat": 15}


def make_image_folder(root: Path, *, corrupt: bool = True) -> Path:
    """An ImageFolder tree: classes of ``CLASS_SIZES`` images of varied sizes and formats, plus one corrupt file."""
    seed = 0
    for name, count in CLASS_SIZES.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            seed += 1
            size = (16 + seed % 13, 16 + (seed * 7) % 11)
            fmt, suffix = ("PNG", "png") if seed % 2 else ("JPEG", "jpg")
            (root / name / f"{i:03d}.{suffix}").write_bytes(encode(noise_image(size, seed), fmt))
    if corrupt:
        (root / "bee" / "broken.jpg").write_bytes(b"not an image at all")
    return root


def make_official_scorer(folder: Path, family: str = "SiT", *, num_classes: int = 3, image_size: int = 16) -> Path:
    """A tiny pixel-space DiT/SiT with random weights, saved as an official-format raw state dict.

    Its size is the table's T (6 blocks, 128 wide, 4 heads): an official file records no head count, and
    only a table size loads without ``--num-heads``.
    """
    generator = torch.Generator().manual_seed(0)
    model = DiT(input_size=image_size, patch_size=4, in_channels=3, hidden_size=128, depth=6, num_heads=4, num_classes=num_classes)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # keep the fixed sin-cos position embedding
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{family}-tiny-{image_size}.pt"
    torch.save(model.state_dict(), path)
    return path


def repa_state_dict(
    *, depth: int, hidden: int, z_dim: int, projector_dim: int, patch: int = 2, channels: int = 4, grid: int = 4, classes: int = 3, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The state dict of REPA's ``models/sit.py`` SiT (``SiT(..., z_dims=[z_dim], projector_dim=...)``, no --qk-norm),
    written from REPA's module names and constructor shapes, with random weights."""
    generator = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.proj.weight": (hidden, channels, patch, patch), "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + 1, hidden),  # cfg_prob > 0: the null class row
    }  # fmt: skip
    for i in range(depth):
        block = {"attn.qkv": (3 * hidden, hidden), "attn.proj": (hidden, hidden), "mlp.fc1": (4 * hidden, hidden), "mlp.fc2": (hidden, 4 * hidden), "adaLN_modulation.1": (6 * hidden, hidden)}
        for name, (out, inp) in block.items():
            shapes |= {f"blocks.{i}.{name}.weight": (out, inp), f"blocks.{i}.{name}.bias": (out,)}
    for layer, (out, inp) in {0: (projector_dim, hidden), 2: (projector_dim, projector_dim), 4: (z_dim, projector_dim)}.items():  # build_mlp
        shapes |= {f"projectors.0.{layer}.weight": (out, inp), f"projectors.0.{layer}.bias": (out,)}
    # FinalLayer(decoder_hidden_size = hidden_size, patch, out_channels = in_channels): no learned sigma.
    shapes |= {"final_layer.linear.weight": (patch * patch * channels, hidden), "final_layer.linear.bias": (patch * patch * channels,)}
    shapes |= {"final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden), "final_layer.adaLN_modulation.1.bias": (2 * hidden,)}
    state = {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in shapes.items()}
    state["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(hidden, grid)).float().unsqueeze(0)
    return state


def make_repa_checkpoint(path: Path, *, encoder_depth: int = 2, **shape) -> dict[str, dict[str, torch.Tensor]]:
    """A REPA train.py checkpoint file: {"model", "ema", "opt", "args": Namespace, "steps"}; returns its model and EMA weights."""
    model, ema = repa_state_dict(seed=1, **shape), repa_state_dict(seed=2, **shape)
    args = argparse.Namespace(model="SiT-T/2", encoder_depth=encoder_depth, cfg_prob=0.1, path_type="linear", prediction="v", qk_norm=False, enc_type="dinov2-vit-b")
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    torch.save({"model": model, "ema": ema, "opt": opt, "args": args, "steps": 3}, path)
    return {"model": model, "ema": ema}


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_image_folder``, made once a session: read it, never change it."""
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "images")


@pytest.fixture(scope="session")
def tiny_scorer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_official_scorer`` (SiT, 3 classes, 16 px), made once a session: never change it."""
    return make_official_scorer(tmp_path_factory.mktemp("tiny-scorer"))


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory, tiny_images: Path, tiny_scorer: Path) -> Path:
    """A build of ``tiny_images`` (2 per class, no attached column) for ``tester/tiny-d2c``, made once a session: copy it to change it."""
    root = tmp_path_factory.mktemp("tiny-build")
    from d2c_pack.pipeline.build import build

    return build(build_config(root, tiny_images, tiny_scorer, budget="2/class", text_encoder="none", repo_id="tester/tiny-d2c"))


def make_tiny_dinov2(folder: Path, *, image_size: int = 14, patch_size: int = 2) -> Path:
    """A tiny DINOv2 (random weights) saved with ``save_pretrained``: 49 patch tokens of width 32 at R = 16."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        image_size=image_size, patch_size=patch_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    Dinov2Model(config).save_pretrained(folder)
    return folder


def make_tiny_vae(folder: Path) -> Path:
    """A tiny diffusers AutoencoderKL (random weights, 2× downsampling, 4 latent channels) saved with ``save_pretrained``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=4, sample_size=16,
    )  # fmt: skip
    vae.save_pretrained(folder)
    return folder


def build_config(tmp_path: Path, images: Path, scorer: Path, **overrides):
    """A ``BuildConfig`` for tiny pixel-space scorers at 16 px: 4 images per class, class-prompt text, no visual or latent column."""
    from d2c_pack.pipeline.settings import BuildConfig

    settings = dict(
        source=str(images), scorer=str(scorer), resolution=16, timesteps=2, batch_size=8, chunk_size=16, workers=0, device="cpu",
        work=str(tmp_path / "work"), out=str(tmp_path / "out"), budget="4/class", text_encoder="demo:minilm", visual_encoder="none",
        vae="none", repo_id="me/tiny-d2c",
    )  # fmt: skip
    return BuildConfig(**(settings | overrides))


def run_tiny_benchmark(script: str, tmp_path: Path, timeout: int) -> dict:
    """Runs ``benchmarks/SCRIPT --tiny`` with its JSON and work files under ``tmp_path``; returns its report.

    The benchmark must remove its synthetic files: afterwards ``tmp_path`` holds the report alone.
    """
    out = tmp_path / f"{Path(script).stem}.json"
    command = [sys.executable, f"benchmarks/{script}", "--tiny", "--out", str(out), "--work", str(tmp_path)]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(tmp_path.iterdir()) == [out]  # the synthetic inputs and outputs are removed
    return json.loads(out.read_text())


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Exit code of ``d2c-pack ARGS`` run in this process through the console entry point ``d2c_pack.cli.main``.

    ``main`` itself turns a user error or a Hub failure into one line and exit code 2, and an interrupt into 130 or 143,
    so the code is the program's: a subprocess would add only its seconds of imports. Read the output with ``capsys``.
    """
    from d2c_pack import cli

    monkeypatch.setattr(sys, "argv", ["d2c-pack", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch and the BLAS libraries on one thread, as ``OMP_NUM_THREADS=1`` starts a process."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def one_and_two_processes(
    args: list[str], one: list[str], two: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """``d2c-pack ARGS ONE`` in one process, then ``ARGS TWO`` under ``torchrun`` with 2 CPU ranks; both must succeed.

    Every run has one torch thread, as ``OMP_NUM_THREADS=1``. The one process is this one (``run_cli``, with ``env``
    set): the ranks are separate processes, the run they must equal need not be.
    """
    with pytest.MonkeyPatch.context() as monkeypatch, one_thread(), CliRunner().isolation() as (stdout, stderr, _):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        try:
            code = run_cli(monkeypatch, *args, *one)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
        single = subprocess.CompletedProcess(["d2c-pack", *args, *one], code, stdout.getvalue().decode(), stderr.getvalue().decode())
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "d2c_pack"]
    pair = subprocess.run([*torchrun, *args, *two], env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}), capture_output=True, text=True, timeout=300)
    assert pair.returncode == 0, pair.stderr[-3000:]
    return single, pair
