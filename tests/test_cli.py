"""The command line: recipes merge with flags, and user errors are one line with exit code 2."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from conftest import copy_digits_reference, run_cli, run_tiny_benchmark
from PIL import Image
from typer.testing import CliRunner

from d2c_pack import cli
from d2c_pack.core.errors import UserError
from d2c_pack.pipeline.settings import BuildConfig


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
        (["train", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"], "no folder `{tmp}/nowhere`"),
        (["train", "--data", "no-such-org/a/b", "--out", "{tmp}/o"], "neither a dataset folder nor a Hub dataset"),
        (["sample", "demo:digits", "--classes", "3,12", "--out", "{tmp}/g.png"], "class 12 is out of range"),
        (["sample", "demo:digits", "--classes", "a,b"], "comma-separated integers"),
        (["sample", "{tmp}/nowhere"], "no backbone"),
        (["sample", "demo:digits", "--guidance-interval", "0.3,1", "--guidance-high", "0.7"], "not both"),
        (["sample", "demo:digits", "--guidance-interval", "0.3"], "takes 'low,high'"),
        (["eval", "demo:digits", "--samples", "{tmp}/s.npz", "--reference", "demo:digits"], "a model CHECKPOINT to sample, or --samples"),
        (["sample", "demo:digits", "--sampler", "euler-maruyama", "--sampling-steps", "1"], "--sampling-steps must be at least 2"),
        (["sample", "demo:digits", "--cfg-scale", "0.5"], "--cfg-scale must be at least 1"),
        (["sample", "--classes", "1"], "CHECKPOINT is required"),
        (["eval", "--samples", "{tmp}/s.npz"], "give --reference"),
        (["eval", "--samples", "{tmp}/s.npz", "--reference", "demo:digits"], "s.npz as an .npz file: [Errno 2]"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    assert_user_error(monkeypatch, capsys, [a.format(tmp=tmp_path) for a in args], message.format(tmp=tmp_path))


def test_sample_takes_repas_guidance_convention_and_dopri5(tmp_path: Path, monkeypatch) -> None:
    """REPA's --guidance-high 0.7 is SiT's --guidance-interval 0.3,1 (t_REPA = 1 − t_SiT): the same samples."""
    common = ["sample", "demo:digits", "--num-samples", "2", "--sampling-steps", "10", "--cfg-scale", "2"]
    assert run_cli(monkeypatch, *common, "--guidance-high", "0.7", "--out", str(tmp_path / "repa.npz")) == 0
    assert run_cli(monkeypatch, *common, "--guidance-interval", "0.3,1", "--out", str(tmp_path / "sit.npz")) == 0
    assert run_cli(monkeypatch, *common, "--guidance-low", "0.3", "--out", str(tmp_path / "low.npz")) == 0
    with np.load(tmp_path / "repa.npz") as repa, np.load(tmp_path / "sit.npz") as sit, np.load(tmp_path / "low.npz") as low:
        assert np.array_equal(repa["arr_0"], sit["arr_0"]) and not np.array_equal(repa["arr_0"], low["arr_0"])
    assert run_cli(monkeypatch, "sample", "demo:digits", "--sampler", "dopri5", "--classes", "4", "--per-class", "1", "--out", str(tmp_path / "d.png")) == 0
    assert Image.open(tmp_path / "d.png").size == (32, 32)  # one tile, no padding


def test_debug_flag_shows_the_traceback(tmp_path: Path, monkeypatch) -> None:
    """With --debug the entry point lets the error go: Python prints its traceback and exits with 1, not one line and 2."""
    monkeypatch.setattr(cli, "_show_tracebacks", False)  # --debug sets it for the process: undone after the test
    monkeypatch.setattr(sys, "argv", ["d2c-pack", "--debug", "sample", str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="no backbone"):
        cli.main()


COMMANDS = ["score", "build", "train", "demo", "train-encoder", "sample", "eval", "push", "verify", "inspect", "explore", "export"]
HEAVY = {"torch", "transformers", "diffusers", "datasets", "timm", "sklearn", "matplotlib", "torch_fidelity"}


def help_text(*args: str) -> str:
    result = CliRunner().invoke(cli.app, [*args, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_help_explains_every_command(name: str) -> None:
    """The command list names every command with its description; each command's help has the description, an
    example that runs that command, and help text for every option, grouped in panels where it has many."""
    command = typer.main.get_command(cli.app).commands[name]
    description = " ".join(command.help.split()[:6])
    assert description in " ".join(help_text().split())
    text = help_text(name)
    assert description in " ".join(text.split())
    assert "Examples" in text and (f"$ d2c-pack {name} " in text or f"-m d2c_pack {name} " in text)
    for param in command.params:
        assert param.help and param.help.strip(), f"{name}: {param.name} has no help"
    if len(command.params) > 15:  # long option lists are grouped (source, scoring, selection, attach, output, run …)
        assert len({param.rich_help_panel for param in command.params if param.rich_help_panel}) >= 3


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_shows_flags_without_placeholders_and_usage_without_braces(name: str | None) -> None:
    text = help_text(*([name] if name else []))
    assert "<bool>" not in text
    (usage,) = [line for line in text.splitlines() if "Usage:" in line]
    assert "{" not in usage and "}" not in usage


def test_required_arguments_show_as_required() -> None:
    """sample needs its CHECKPOINT (from the command line or the recipe); eval takes one or --samples."""
    assert re.search(r"Usage: .* sample \[OPTIONS\] CHECKPOINT\s*$", help_text("sample"), re.M)
    assert "[required]" in " ".join(help_text("sample").split())
    assert re.search(r"Usage: .* eval \[OPTIONS\] \[CHECKPOINT\]\s*$", help_text("eval"), re.M)
    assert re.search(r"Usage: .* push \[OPTIONS\] REPO_ID\s*$", help_text("push"), re.M)


def test_descriptions_quote_no_measured_figures() -> None:
    """A description says what a command does; measured sizes and speeds go stale (they live in benchmarks/RESULTS.md)."""
    for name, command in typer.main.get_command(cli.app).commands.items():
        assert not re.search(r"\d\s*(MB|kB|GB|s\b|seconds|min)", command.help), name


def test_dataset_commands_show_the_revision_form() -> None:
    for name in ("verify", "inspect", "explore", "export"):
        assert "ORG/NAME[@REVISION]" in help_text(name)


def test_one_vocabulary_across_commands() -> None:
    """--steps is training steps, --sampling-steps sampling steps; --device defaults to auto; push's branch is not --revision."""
    commands = typer.main.get_command(cli.app).commands
    options = {name: {opt: param for param in command.params for opt in param.opts} for name, command in commands.items()}
    for name in ("train", "demo", "train-encoder"):
        assert "training steps" in options[name]["--steps"].help.lower()
    for name in ("sample", "eval", "demo"):
        assert "--sampling-steps" in options[name]
    assert not {"--steps"} & (set(options["sample"]) | set(options["eval"]))
    for name, opts in options.items():
        if "--device" in opts:
            assert opts["--device"].default == "auto", name
    assert "--branch" in options["push"] and "--revision" not in options["push"]
    assert {"sample", "eval"} <= {name for name, command in commands.items() if any(p.name == "checkpoint" for p in command.params)}


def test_importing_the_cli_imports_no_heavy_library() -> None:
    code = f"import d2c_pack.cli, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_help_benchmark_tiny(tmp_path: Path) -> None:
    payload = run_tiny_benchmark("cli_help.py", tmp_path, timeout=120)
    assert {row["command"] for row in payload["rows"]} >= {"d2c-pack --help", "hf --help"}


def test_demo_main_job_scores_once_and_selects_many(tmp_path: Path, demo_cache: Path, monkeypatch, capsys) -> None:
    """The README's main job (`build --recipe demo`), after a `score` pass that it reuses."""
    work = ["--work", str(demo_cache)]
    assert run_cli(monkeypatch, "score", "--recipe", "demo", *work) == 0  # a build recipe: its selection keys are ignored
    assert "1,797 images scored" in capsys.readouterr().out
    (chunks,) = (demo_cache / "scores").glob("*/chunks")
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


def test_demo_acceptance_flow(tmp_path: Path, demo_cache: Path, digits_reference, monkeypatch, capsys) -> None:
    """build --recipe demo → train --recipe demo --data → sample RUN → eval RUN --data, at tiny sizes.

    The digits' reference features are in the cache, as after a first ``eval`` (``test_eval.py`` computes them).
    """
    copy_digits_reference(digits_reference, demo_cache)
    data, run = tmp_path / "data", tmp_path / "run"
    assert run_cli(monkeypatch, "build", "--recipe", "demo", "--out", str(data), "--work", str(demo_cache)) == 0
    assert run_cli(monkeypatch, "train", "--recipe", "demo", "--data", str(data), "--steps", "3", "--out", str(run)) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 3 and {"velocity_loss", "align_loss", "loss"} <= set(json.loads(lines[-1]))
    assert (run / "checkpoints" / "0000003" / "ema.safetensors").exists() and (run / "model" / "class_text.safetensors").exists()
    assert run_cli(monkeypatch, "sample", str(run), "--out", str(tmp_path / "grid.png"), "--sampling-steps", "3", "--per-class", "2") == 0
    assert Image.open(tmp_path / "grid.png").size[1] > 10 * 32  # one row per digit
    capsys.readouterr()
    code = run_cli(monkeypatch, "eval", str(run), "--data", str(data), "--num-samples", "20", "--sampling-steps", "3", "--json", str(tmp_path / "fid.json"))
    assert code == 0 and "demo:digits-encoder features" in capsys.readouterr().out
    results = json.loads((tmp_path / "fid.json").read_text())
    assert results["reference"] == "demo:digits" and results["fid"] > 0 and 0 <= results["accuracy"] <= 1
    assert 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1 and results["labels"] == "random"

    # The same protocol on an existing .npz, with no model: the ADM evaluator's input.
    assert run_cli(monkeypatch, "sample", str(run), "--out", str(tmp_path / "s.npz"), "--num-samples", "20", "--sampling-steps", "3") == 0
    capsys.readouterr()
    args = ["eval", "--samples", str(tmp_path / "s.npz"), "--reference", "demo:digits", "--features", "demo:digits-encoder", "--json", str(tmp_path / "npz.json")]
    assert run_cli(monkeypatch, *args) == 0
    assert "precision" in capsys.readouterr().out
    from_file = json.loads((tmp_path / "npz.json").read_text())
    assert from_file["fid"] == pytest.approx(results["fid"], abs=1e-6) and from_file["accuracy"] == results["accuracy"]


def test_sample_and_eval_read_their_recipe_sections(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("source: demo:digits\ntrain: {steps: 5}\nsample: {sampler: heun, sampling_steps: 1, per_class: 1}\neval: {reference: demo:digits}\n")
    grid = ["sample", "demo:digits", "--classes", "3", "--seed", "4"]
    assert run_cli(monkeypatch, *grid, "--recipe", str(recipe), "--out", str(tmp_path / "recipe.png")) == 0
    assert run_cli(monkeypatch, *grid, "--sampler", "heun", "--sampling-steps", "1", "--per-class", "1", "--out", str(tmp_path / "flags.png")) == 0
    assert (tmp_path / "recipe.png").read_bytes() == (tmp_path / "flags.png").read_bytes()
    # eval's section supplies --reference: the command goes on to read the (missing) samples.
    assert_user_error(monkeypatch, capsys, ["eval", "--recipe", str(recipe), "--samples", str(tmp_path / "s.npz")], "s.npz as an .npz file")


def test_every_shipped_recipe_fits_the_commands_it_names() -> None:
    """Each `d2c-pack COMMAND --recipe NAME` line of a shipped recipe: every key it gives COMMAND is one of COMMAND's options."""
    from d2c_pack.core.recipe import read_recipe, shipped_recipes

    commands = typer.main.get_command(cli.app).commands
    checked = 0
    for name in shipped_recipes():
        text = (Path(cli.__file__).parent / "recipes" / f"{name}.yaml").read_text()
        for command in re.findall(rf"(?:d2c-pack|-m d2c_pack) ([a-z-]+) --recipe {name}\b", text):
            options = {param.name for param in commands[command].params}
            ignored = set(BuildConfig.__dataclass_fields__) if command == "score" else set()
            assert set(read_recipe(name, command)) <= options | ignored, (name, command)
            checked += 1
        assert re.search(rf"--recipe {name}\b", text), f"{name} names no command that reads it"
    assert checked >= len(shipped_recipes())


def test_every_error_names_a_real_flag() -> None:
    """Each `--flag` written in a UserError message of the library is an option of some command."""
    commands = typer.main.get_command(cli.app).commands
    flags = {opt for command in commands.values() for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    named = {}
    for path in Path(cli.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "UserError":
                texts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                named |= {flag: f"{path.name}:{node.lineno}" for text in texts for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)}
    assert len(named) > 20 and {flag: where for flag, where in named.items() if flag not in flags} == {}
