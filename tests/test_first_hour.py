"""A new user's first hour: a mistyped folder, a missing Hub dataset, progress in a log, a build re-run, one layer of retries."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import hub_server
import pytest
from conftest import build_config, make_image_folder, make_official_scorer, run_cli
from hub_server import HubServer, use_hub

from d2c_pack.core import hub_retry, progress
from d2c_pack.core.hub_retry import RetryPolicy
from d2c_pack.pipeline.build import build_folder

hub = hub_server.hub  # the fixture: clients talk to a fresh local Hub with HF_TOKEN = WRITE_TOKEN


TYPOS = {
    "inspect": (["inspect", "out/digits-d2cc"], "out/digits-d2cc"),
    "verify": (["verify", "./out/digits-d2cc"], "./out/digits-d2cc"),
    "explore": (["explore", "out/digits-d2cc", "--out", "page.html"], "out/digits-d2cc"),
    "train": (["train", "--data", "out/digit-d2c", "--out", "runs/x", "--device", "cpu"], "out/digit-d2c"),
    "push": (["push", "tester/digits", "--from", "out/digits-d2cc"], "out/digits-d2cc"),
}


@pytest.mark.parametrize("reachable", [True, False], ids=["hub-reachable", "hub-unreachable"])
@pytest.mark.parametrize("command", TYPOS)
def test_a_mistyped_folder_fails_at_once_naming_the_folder_it_resembles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str, reachable: bool
) -> None:
    """Read as a path (its first component is a folder here, or it starts with ./): never sent to the Hub, never retried."""
    (tmp_path / "out" / "digits-d2c").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    args, typed = TYPOS[command]
    with HubServer(tokens=None) as server:
        use_hub(server, monkeypatch, tmp_path / "hf-home")
        if not reachable:
            server.stop()  # connections refused: what the old code retried for minutes
        tic = time.perf_counter()
        code = run_cli(monkeypatch, *args)
        seconds = time.perf_counter() - tic
    assert code == 2 and seconds < 5
    no_folder = f"no dataset folder at {typed}" if command == "push" else f"no folder `{typed}`"
    assert capsys.readouterr().err == f"error: {no_folder} (did you mean `out/digits-d2c`?)\n"
    assert server.requests == []


def test_a_hub_dataset_that_does_not_exist_is_one_line_and_one_request(hub: HubServer, monkeypatch, capsys) -> None:
    assert run_cli(monkeypatch, "inspect", "tester/no-such-dataset") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no folder `tester/no-such-dataset` here; reading tester/no-such-dataset@main from the Hub failed:")
    assert "the repository does not exist" in err and len(err.splitlines()) == 1 and "re-run" not in err
    assert len(hub.requests) == 1  # a 404 is not retried


def test_offline_mode_is_said_once_not_retried(tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_retry, "DEFAULT_POLICY", RetryPolicy(attempts=5, base_delay=5.0))  # a retry would show in the time
    tic = time.perf_counter()
    assert run_cli(monkeypatch, "verify", "tester/data@v1.0") == 2
    assert time.perf_counter() - tic < 5
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and len(err.splitlines()) == 1 and "re-run" not in err


def test_transient_failures_are_retried_by_one_layer_with_one_line_a_try(hub: HubServer, monkeypatch, capsys) -> None:
    """huggingface_hub's own five retries per request are off under d2c-pack's: 3 attempts are 3 requests, not 18."""
    monkeypatch.setattr(hub_retry, "DEFAULT_POLICY", RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))
    hub.fail_permanently(503)
    assert run_cli(monkeypatch, "inspect", "tester/data") == 2
    assert len(hub.requests) == 3
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "retry" in line.lower()] == [
        f"list tester/data@main: HTTP 503; retry {n}/2 in {delay}" for n, delay in zip((1, 2), re.findall(r"in (\S+ s)", "\n".join(lines)))
    ]
    assert lines[-1].startswith("error: ") and "HTTP 503" in lines[-1]
    # and outside d2c-pack's retries huggingface_hub's own are as they were
    from huggingface_hub.utils import _http

    assert _http.http_backoff.__kwdefaults__["max_retries"] == 5


def test_plain_progress_lines_in_a_log(monkeypatch, capsys) -> None:
    """Not on a terminal: a line every tenth of the work (here, with no minimum gap), then a last one; a finished stage says so once."""
    monkeypatch.setattr(progress, "LINE_GAP", 0.0)
    with progress.progress_bar("score", total=50) as advance:
        for _ in range(50):
            advance()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"score: {n}/50 ({n * 2}%)" for n in range(5, 51, 5)]
    assert lines[0].endswith(" left") and lines[-1].endswith(tuple(f"done in 0:00:0{s}" for s in range(10)))
    with progress.progress_bar("attach", total=0) as advance:
        pass
    with progress.progress_bar("train", total=10, completed=10, unit="steps") as advance:
        advance()
    assert capsys.readouterr().err == "attach: nothing to do\ntrain: all 10 steps done before\n"


def test_piped_training_prints_steps_loss_and_images_per_second(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress, "LINE_GAP", 0.0)
    args = ["train", "--recipe", "demo-scorer", "--out", str(tmp_path / "run"), "--steps", "10", "--resolution", "16", "--batch-size", "4"]
    assert run_cli(monkeypatch, *args, "--log-every", "2") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: ")]
    pattern = r"train: (\d+)/10 steps \(\d+%\), loss [\d.]+, [\d.]+ images/s, [\d.]+ steps/s, (.* left|done in .*)"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert [int(re.match(pattern, line)[1]) for line in lines] == [2, 4, 6, 8, 10]  # at the log steps, where the loss is read


@pytest.fixture
def tiny_build(tmp_path: Path):
    images = make_image_folder(tmp_path / "images", corrupt=False)
    scorer = make_official_scorer(tmp_path / "scorer")
    config = build_config(tmp_path, images, scorer)
    assert not build_folder(config).up_to_date
    return config


def test_a_finished_build_is_up_to_date_without_loading_a_model(tiny_build, monkeypatch, capsys) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("d2c_pack.selection.score.load_scorer", no_model)
    monkeypatch.setattr("d2c_pack.attach.columns.TextEncoder", no_model)
    out = Path(tiny_build.out)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    common = ["build", "--source", tiny_build.source, "--scorer", tiny_build.scorer, "--resolution", "16", "--timesteps", "2", "--batch-size", "8",
              "--chunk-size", "16", "--workers", "0", "--device", "cpu", "--work", tiny_build.work, "--out", tiny_build.out,
              "--text-encoder", "demo:minilm", "--visual-encoder", "none", "--vae", "none", "--repo-id", "me/tiny-d2c"]  # fmt: skip
    args = [*common, "--budget", "4/class"]
    assert run_cli(monkeypatch, *args) == 0
    assert capsys.readouterr().out == f"{out} is up to date: built before from these settings and inputs; nothing to do\n"
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before
    assert build_folder(tiny_build).up_to_date  # the library's build, too
    # other settings: refused before any model loads
    assert run_cli(monkeypatch, *common, "--budget", "2/class") == 2
    assert "holds a dataset built with other settings" in capsys.readouterr().err
    # only the card's settings: the card is rendered again, still without a model
    assert run_cli(monkeypatch, *args, "--license", "cc-by-4.0") == 0
    assert "license: cc-by-4.0" in (out / "README.md").read_text()
    assert run_cli(monkeypatch, "verify", str(out)) == 0


def test_a_changed_model_file_is_another_build(tiny_build, monkeypatch) -> None:
    """The manifest check compares the models' weight files too: a retrained scorer under the same name is not up to date."""
    from d2c_pack.core.errors import UserError

    weights = Path(tiny_build.scorer)
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(UserError, match="built with other settings or inputs"):
        build_folder(tiny_build)


def test_the_shipped_local_hub_takes_a_push_as_its_instructions_say(tmp_path: Path) -> None:
    """``python -m d2c_pack.testing.hub_server`` prints the environment to export; ``d2c-pack push`` then publishes offline."""
    images = make_image_folder(tmp_path / "images", corrupt=False)
    folder = build_folder(build_config(tmp_path, images, make_official_scorer(tmp_path / "scorer"), text_encoder="none")).out
    server = subprocess.Popen([sys.executable, "-m", "d2c_pack.testing.hub_server", "--port", "0", "--root", str(tmp_path / "hub")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        printed = [server.stdout.readline() for _ in range(4)]
        exports = next(line for line in printed if line.strip().startswith("export "))
        env = os.environ | dict(item.split("=", 1) for item in exports.split()[1:]) | {"HF_HOME": str(tmp_path / "hf-home")}
        pushed = subprocess.run([sys.executable, "-m", "d2c_pack", "push", "tester/tiny", "--from", str(folder), "--tag", "v1.0"],
                                env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert 'subset = load_dataset("tester/tiny", revision="v1.0", split="train")' in pushed.stdout
    assert server.returncode == 0 and any((tmp_path / "hub" / "objects").iterdir())


def test_the_manifest_check_imports_no_model_library() -> None:
    code = "import d2c_pack.pipeline.finished, sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'diffusers', 'timm'}))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_a_mistyped_folder_is_refused_when_the_settings_are_made_before_any_heavy_import(tmp_path: Path) -> None:
    (tmp_path / "out" / "digits-d2c").mkdir(parents=True)
    code = """
import sys
from d2c_pack.evaluation.settings import EvalConfig
from d2c_pack.publish.settings import ExportConfig, InspectConfig
from d2c_pack.training.settings import TrainConfig
from d2c_pack.core.errors import UserError
settings = [
    lambda: InspectConfig(name="out/digits-d2cc"), lambda: ExportConfig(name="out/digits-d2cc", format="repa", out="x"),
    lambda: TrainConfig(data="out/digits-d2cc", out="run"), lambda: EvalConfig(checkpoint="demo:digits", data="out/digits-d2cc"),
]
for make in settings:
    try:
        make()
    except UserError as err:
        print(err)
print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'datasets', 'transformers', 'huggingface_hub'}))
"""
    lines = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines == ["no folder `out/digits-d2cc` (did you mean `out/digits-d2c`?)"] * 4 + ["[]"]
