"""The command line: recipes merge with flags, and user errors are one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from d2c_pack import cli


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["d2c-pack", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code


def assert_user_error(monkeypatch, capsys, args: list[str], message: str) -> None:
    assert run_cli(monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flags_override_recipe_values(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    code = run_cli(monkeypatch, "train", "--recipe", "demo-scorer", "--out", str(out), "--steps", "1", "--resolution", "16", "--batch-size", "4")
    assert code == 0
    settings = yaml.safe_load((out / "train_config.yaml").read_text())
    assert (settings["steps"], settings["resolution"], settings["batch_size"]) == (1, 16, 4)  # from the flags
    assert (settings["model"], settings["vae"], settings["lr"]) == ("SiT-T/4", None, 0.001)  # from the recipe
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("recipe_text", "message"),
    [
        ("source: demo:digits\nbatchsize: 4\n", "unknown recipe key 'batchsize'"),
        ("source: demo:digits\nsteps: many\n", "recipe key 'steps'"),
        ("- just\n- a list\n", "must be a mapping"),
        ("source: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_recipe_is_one_line_error(tmp_path: Path, monkeypatch, capsys, recipe_text: str, message: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    assert_user_error(monkeypatch, capsys, ["train", "--recipe", str(recipe), "--out", str(tmp_path / "o")], message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--recipe", "no-such-recipe", "--out", "x"], "no recipe 'no-such-recipe'"),
        (["train", "--source", "demo:digits", "--out", "{tmp}/o", "--model", "SiT-Huge/2", "--no-text", "--no-align"], "unknown model"),
        (["train", "--source", "{tmp}/missing", "--out", "{tmp}/o", "--vae", "none", "--no-text", "--no-align"], "missing"),
        (["train", "--out", "{tmp}/o"], "exactly one of --data"),
        (["train", "--source", "demo:digits", "--out", "{tmp}/o"], "pass --no-text --no-align"),
        (["train", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"], "neither a dataset folder nor a Hub dataset"),
        (["sample", "demo:digits", "--classes", "3,12", "--out", "{tmp}/g.png"], "class 12 is out of range"),
        (["sample", "demo:digits", "--classes", "a,b"], "comma-separated integers"),
        (["sample", "{tmp}/nowhere"], "no backbone"),
        (["sample", "demo:digits", "--guidance-interval", "0.3,1", "--guidance-high", "0.7"], "not both"),
        (["sample", "demo:digits", "--guidance-interval", "0.3"], "takes 'low,high'"),
        (["eval", "--ckpt", "demo:digits", "--samples", "{tmp}/s.npz", "--reference", "demo:digits"], "--ckpt MODEL to sample a model, or --samples"),
        (["eval", "--samples", "{tmp}/s.npz"], "give --reference"),
        (["eval", "--samples", "{tmp}/s.npz", "--reference", "demo:digits"], "s.npz as an .npz file: [Errno 2]"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    assert_user_error(monkeypatch, capsys, [a.format(tmp=tmp_path) for a in args], message)


def test_sample_takes_repas_guidance_convention_and_dopri5(tmp_path: Path, monkeypatch) -> None:
    """REPA's --guidance-high 0.7 is SiT's --guidance-interval 0.3,1 (t_REPA = 1 − t_SiT): the same samples."""
    common = ["sample", "demo:digits", "--num-samples", "2", "--steps", "10", "--cfg-scale", "2"]
    assert run_cli(monkeypatch, *common, "--guidance-high", "0.7", "--out", str(tmp_path / "repa.npz")) == 0
    assert run_cli(monkeypatch, *common, "--guidance-interval", "0.3,1", "--out", str(tmp_path / "sit.npz")) == 0
    assert run_cli(monkeypatch, *common, "--guidance-low", "0.3", "--out", str(tmp_path / "low.npz")) == 0
    with np.load(tmp_path / "repa.npz") as repa, np.load(tmp_path / "sit.npz") as sit, np.load(tmp_path / "low.npz") as low:
        assert np.array_equal(repa["arr_0"], sit["arr_0"]) and not np.array_equal(repa["arr_0"], low["arr_0"])
    assert run_cli(monkeypatch, "sample", "demo:digits", "--sampler", "dopri5", "--classes", "4", "--per-class", "1", "--out", str(tmp_path / "d.png")) == 0
    assert Image.open(tmp_path / "d.png").size == (32, 32)  # one tile, no padding


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "d2c_pack", "--debug", "sample", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "UserError" in result.stderr


def test_help_explains_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "d2c_pack", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "train" in result.stdout and "sample" in result.stdout


def test_demo_main_job_scores_once_and_selects_many(tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's main job (`build --recipe demo`), after a `score` pass that it reuses."""
    work = ["--work", str(tmp_path / "work")]
    assert run_cli(monkeypatch, "score", "--recipe", "demo", *work) == 0  # a build recipe: its selection keys are ignored
    assert "1,797 images scored" in capsys.readouterr().out
    (chunks,) = (tmp_path / "work" / "scores").glob("*/chunks")
    stamps = {p: p.stat().st_mtime_ns for p in chunks.iterdir()}

    assert run_cli(monkeypatch, "build", "--recipe", "demo", "--out", str(tmp_path / "d2c"), *work) == 0
    assert "180 rows over 10 classes (18–18 per class)" in capsys.readouterr().out
    assert run_cli(monkeypatch, "build", "--recipe", "demo", "--out", str(tmp_path / "min"), "--selector", "min", "--budget", "5/class", *work) == 0
    assert "50 rows over 10 classes" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in chunks.iterdir()} == stamps  # scored once

    import datasets

    subset = datasets.load_dataset(str(tmp_path / "d2c"), split="train")
    assert subset.num_rows == 180 and subset.features["label"].names == [str(d) for d in range(10)]
    assert sorted(set(subset["difficulty_rank"])) == list(range(0, 18 * 7, 7))  # interval auto: k = 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--recipe", "demo", "--budget", "abc"], "invalid budget 'abc'"),
        (["build", "--recipe", "demo", "--budget", "101%"], "invalid budget '101%'"),
        (["build", "--recipe", "demo", "--selector", "best"], "unknown selector 'best'"),
        (["build", "--source", "demo:digits", "--scorer", "demo:digits", "--resolution", "32"], "--out is required"),
        (["build", "--recipe", "demo", "--scorer", "{tmp}/DiT-XL-2-256x256.pt"], "dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"),
        (["score", "--source", "demo:digits", "--scorer", "demo:digits"], "set --resolution 32"),
    ],
)
def test_build_user_errors_are_one_line(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    extra = ["--work", str(tmp_path / "work")] + (["--out", str(tmp_path / "o")] if "--out is required" not in message and args[0] == "build" else [])
    assert_user_error(monkeypatch, capsys, [a.format(tmp=tmp_path) for a in args] + extra, message)


def test_demo_acceptance_flow(tmp_path: Path, monkeypatch, capsys) -> None:
    """build --recipe demo → train --recipe demo --data → sample --ckpt → eval --ckpt --data, at tiny sizes."""
    data, run = tmp_path / "data", tmp_path / "run"
    assert run_cli(monkeypatch, "build", "--recipe", "demo", "--out", str(data), "--work", str(tmp_path / "work")) == 0
    assert run_cli(monkeypatch, "train", "--recipe", "demo", "--data", str(data), "--steps", "3", "--out", str(run)) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 3 and {"velocity_loss", "align_loss", "loss"} <= set(json.loads(lines[-1]))
    assert (run / "checkpoints" / "0000003" / "ema.safetensors").exists() and (run / "model" / "class_text.safetensors").exists()
    assert run_cli(monkeypatch, "sample", "--ckpt", str(run), "--out", str(tmp_path / "grid.png"), "--steps", "3", "--per-class", "2") == 0
    assert Image.open(tmp_path / "grid.png").size[1] > 10 * 32  # one row per digit
    capsys.readouterr()
    code = run_cli(monkeypatch, "eval", "--ckpt", str(run), "--data", str(data), "--num-samples", "20", "--steps", "3", "--json", str(tmp_path / "fid.json"))
    assert code == 0 and "demo:digits-encoder features" in capsys.readouterr().out
    results = json.loads((tmp_path / "fid.json").read_text())
    assert results["reference"] == "demo:digits" and results["fid"] > 0 and 0 <= results["accuracy"] <= 1
    assert 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1 and results["labels"] == "random"

    # The same protocol on an existing .npz, with no model: the ADM evaluator's input.
    assert run_cli(monkeypatch, "sample", "--ckpt", str(run), "--out", str(tmp_path / "s.npz"), "--num-samples", "20", "--steps", "3") == 0
    capsys.readouterr()
    args = ["eval", "--samples", str(tmp_path / "s.npz"), "--reference", "demo:digits", "--features", "demo:digits-encoder", "--json", str(tmp_path / "npz.json")]
    assert run_cli(monkeypatch, *args) == 0
    assert "precision" in capsys.readouterr().out
    from_file = json.loads((tmp_path / "npz.json").read_text())
    assert from_file["fid"] == pytest.approx(results["fid"], abs=1e-6) and from_file["accuracy"] == results["accuracy"]
