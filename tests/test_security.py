"""Secrets and safety: the token never leaks, names cannot steer writes, checkpoints are never unpickled freely."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import encode, make_official_scorer, noise_image, run_cli
from hub_server import HubServer, use_hub

FAKE_TOKEN = "hf_d2cFAKEsecret_7c1e9a5b3d_must_never_leak"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2c_pack", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_the_token_appears_in_no_output_log_card_manifest_or_checkpoint(tmp_path: Path, demo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command, run with HF_TOKEN set to a recognisable fake (a write token of the test Hub).

    ``score``, ``build`` and ``demo`` find the digits' scores and columns in the default cache (``demo_cache``, under
    ``tmp_path``), which the search for the token reads too.
    """
    with HubServer(tokens={FAKE_TOKEN: "write"}) as server:
        use_hub(server, monkeypatch, tmp_path / "hf-home", token=FAKE_TOKEN)
        data, run = tmp_path / "data", tmp_path / "run"
        runs = [
            cli("score", "--recipe", "demo"),
            cli("build", "--recipe", "demo", "--out", str(data)),
            cli("inspect", str(data)),
            cli("push", "tester/secret", "--from", str(data), "--tag", "v1.0"),
            cli("verify", "tester/secret@v1.0"),
            cli("train", "--recipe", "demo", "--data", "tester/secret@v1.0", "--out", str(run), "--steps", "2", "--batch-size", "8"),
            cli("sample", str(run), "--out", str(tmp_path / "grid.png"), "--per-class", "1", "--sampling-steps", "2"),
            cli("eval", str(run), "--data", str(data), "--num-samples", "10", "--sampling-steps", "2", "--json", str(tmp_path / "eval.json")),
            cli("train-encoder", "--source", "demo:digits", "--out", str(tmp_path / "encoder"), "--steps", "2", "--batch-size", "8",
                "--hidden-size", "16", "--num-layers", "1", "--num-heads", "1", "--workers", "0"),  # fmt: skip
            cli("demo", "--out", str(tmp_path / "demo"), "--push-to", "tester/secret-demo", "--steps", "2", "--num-samples", "10", "--sampling-steps", "2"),
        ]
    for done in runs:
        assert done.returncode == 0, f"{done.args}: {done.stderr[-2000:]}"
        assert FAKE_TOKEN not in done.stdout + done.stderr
    assert files_holding(tmp_path, FAKE_TOKEN.encode()) == []  # data, cards, manifests, caches, runs, checkpoints, hub cache
    assert all(FAKE_TOKEN.encode() not in blob for blob in server.files("tester/secret", "v1.0").values())


def test_class_names_and_source_ids_cannot_steer_writes_outside_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A datasets source whose class names and ids are paths (../, absolute): every file lands in the chosen folders.

    The commands run in this process (``run_cli``), from a working folder three levels down, with the caches that
    ``datasets_cache`` gives every test, which lie in ``tmp_path`` too: nothing may write there either.
    """
    outside = tmp_path / "outside"
    escapes = ["../../outside/escaped-class", str(outside / "absolute-class")]
    ids = ["../../../outside/escaped-id.png", str(outside / "absolute-id.png"), "..", "/"]
    rows = {"image": [], "label": [], "id": []}
    for i in range(8):
        rows["image"].append({"bytes": encode(noise_image((20, 20), i), "PNG"), "path": ids[i % 4]})
        rows["label"].append(i % 2)
        rows["id"].append(ids[i % 4] + f"-{i}")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=escapes), "id": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "source"))
    workdir = tmp_path / "a" / "b" / "c"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    scorer_file = make_official_scorer(tmp_path / "scorer", num_classes=2)
    build = run_cli(
        monkeypatch, "build", "--source", str(tmp_path / "source"), "--id-column", "id", "--scorer", str(scorer_file), "--resolution", "16",
        "--timesteps", "1", "--budget", "2/class", "--text-encoder", "none", "--visual-encoder", "none", "--vae", "none",
        "--out", "subset", "--work", "work",
    )  # fmt: skip
    assert build == 0, capsys.readouterr().err[-2000:]
    train = run_cli(monkeypatch, "train", "--data", "subset", "--out", "run", "--model", "SiT-T/4", "--resolution", "16", "--vae", "none",
                    "--no-text", "--no-align", "--steps", "1", "--batch-size", "4", "--workers", "0")  # fmt: skip
    assert train == 0, capsys.readouterr().err[-2000:]
    assert run_cli(monkeypatch, "sample", "run", "--out", "grid.png", "--per-class", "1", "--sampling-steps", "1") == 0
    assert not outside.exists()
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"source", "scorer", "a"}, written
    assert {p.name for p in workdir.iterdir()} == {"subset", "work", "run", "grid.png"}
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob("absolute*"))


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_checkpoints_are_read_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Each command that reads a checkpoint, given a pickle that runs code when unpickled: one line, exit code 2, no code run.
    They run in this process (``run_cli``), where the payload would run as in a process of their own."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "SiT-evil.pt"
    evil.write_bytes(pickle.dumps({"model": {"weight": np.zeros(1)}, "payload": _Payload(marker)}, protocol=2))  # as torch.save writes
    for args in (
        ["score", "--source", "demo:digits", "--scorer", str(evil), "--resolution", "32", "--work", str(tmp_path / "w")],
        ["train", "--source", "demo:digits", "--model", "SiT-T/4", "--resolution", "32", "--vae", "none", "--no-text", "--no-align",
         "--init", str(evil), "--out", str(tmp_path / "run"), "--steps", "1"],
        ["sample", str(evil), "--out", str(tmp_path / "g.png")],
        ["eval", "demo:digits", "--features", "inception", "--inception-weights", str(evil), "--reference", "demo:digits"],
    ):  # fmt: skip
        code = run_cli(monkeypatch, *args)
        err = capsys.readouterr().err
        assert code == 2, f"{args[0]}: {err[-2000:]}"
        assert "weights-only" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
        assert not marker.exists()
