"""Every command that reads the Hub, against a local Hub failing a fifth of its requests (5xx, 429, dropped
connections): each completes, retrying request by request; what retries cannot cure (a missing repository, a
refused token, a Hub that keeps failing) is one line and exit code 2, never a traceback."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import hub_server
import pytest
from conftest import run_cli
from hub_server import HubServer
from huggingface_hub.utils import _http

from d2c_pack.core import hub_retry
from d2c_pack.core.hub_retry import RetryPolicy
from d2c_pack.pipeline import demo as demo_flow
from d2c_pack.publish.hub import push
from d2c_pack.publish.settings import PushConfig

hub = hub_server.hub  # the fixture: clients talk to a fresh local Hub with HF_TOKEN = WRITE_TOKEN
REPO = "tester/faulty-d2c"
FAULTS = ("429", "500", "502", "503", "drop")


@pytest.fixture
def pushed(hub: HubServer, tiny_build: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """``tiny_build`` pushed as REPO@v1.0; retries shortened for every Hub call, huggingface_hub's own backoff included."""
    monkeypatch.setattr(hub_retry, "DEFAULT_POLICY", RetryPolicy(attempts=12, base_delay=0.02, max_delay=1.0, max_wait=60.0))
    for backoff in (_http.http_backoff, _http.http_stream_backoff.__wrapped__):  # the latter is a contextmanager
        monkeypatch.setattr(backoff, "__kwdefaults__", backoff.__kwdefaults__ | {"base_wait_time": 0.01, "max_wait_time": 0.05})
    push(PushConfig(repo_id=REPO, source_dir=str(tiny_build), tag="v1.0"))
    return hub


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "verify": lambda tmp, scorer: ["verify", f"{REPO}@v1.0"],
    "inspect": lambda tmp, scorer: ["inspect", f"{REPO}@v1.0"],
    "train": lambda tmp, scorer: [
        "train", "--data", f"{REPO}@v1.0", "--model", "SiT-T/4", "--resolution", "16", "--vae", "none", "--no-learn-sigma", "--no-text",
        "--no-align", "--steps", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(tmp / "run"),
    ],
    "build": lambda tmp, scorer: [
        "build", "--source", f"hf:{REPO}", "--revision", "v1.0", "--scorer", str(scorer), "--resolution", "16", "--timesteps", "2",
        "--workers", "0", "--device", "cpu", "--work", str(tmp / "work"), "--out", str(tmp / "out"), "--budget", "1/class",
        "--text-encoder", "none", "--visual-encoder", "none", "--vae", "none",
    ],
}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_hub_reading_command_completes_while_a_fifth_of_the_requests_fail(
    pushed: HubServer, tiny_scorer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str
) -> None:
    pushed.inject_faults(0.2, FAULTS, seed=4, retry_after=0)  # this seed fails each command once huggingface_hub and datasets do not retry
    code = run_cli(monkeypatch, *COMMANDS[command](tmp_path, tiny_scorer))
    err = capsys.readouterr().err
    assert code == 0, err
    assert pushed.faults and "Traceback" not in err  # faults were met and retried through


def test_the_demo_publish_step_completes_while_a_fifth_of_the_requests_fail(pushed: HubServer, tiny_build: Path) -> None:
    """``demo --push-to``'s Hub calls: push (tag moved with --force) and ``load_dataset`` of the pushed version."""
    pushed.inject_faults(0.2, FAULTS, seed=4, retry_after=0)
    _, where, revision = demo_flow._publish(tiny_build, REPO)
    assert demo_flow._load(where, revision).num_rows == 6 and pushed.faults


# datasets reports a Hub that keeps failing as a file it could not locate
FAILURES = {"missing": "does not exist|doesn't exist", "token": "401", "unavailable": "503|trying to locate the file on the Hub"}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_hub_failure_retries_cannot_cure_is_one_line_and_exit_2(
    pushed: HubServer, tiny_scorer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str, failure: str
) -> None:
    args = COMMANDS[command](tmp_path, tiny_scorer)
    if failure == "missing":
        args = [arg.replace(REPO, "tester/no-such-repo") for arg in args]
    elif failure == "token":
        monkeypatch.setenv("HF_TOKEN", "hf_unknown_token")
    else:
        monkeypatch.setattr(hub_retry, "DEFAULT_POLICY", RetryPolicy(attempts=2, base_delay=0.01))
        pushed.inject_faults(1.0, ("503",))
    capsys.readouterr()
    assert run_cli(monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert re.search(FAILURES[failure], err) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
