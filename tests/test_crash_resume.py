"""Crash and resume: SIGKILL `build`, `push` and `train` at many points; a plain re-run gives the same bytes.

Each kill point is a callable of the pipeline and a call count (tests/killpoint.py); the process
kills itself there with SIGKILL, so nothing is flushed or cleaned up, as in a power cut or an
OOM kill. The same command is then re-run unchanged, and every output file must be
byte-identical (sha256) to the output of a run that was never interrupted. Build and train
processes are forked by a server that has imported the tool once (killpoint.Server): a new
interpreter would spend most of each run importing torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hub_server
import pytest
from hub_server import HubServer
from killpoint import Server

from d2c_pack.sources.image_source import open_source

TESTS = Path(__file__).parent
# The demo build, made quick: the first 64 digits (DIGITS) of the classes 0-4 (CLASSES: the card's figures draw a row
# a class), one timestep, 30% of them (4 a class) and chunks of 8, so scoring writes 8 chunk files and attaching 8 more,
# as the whole 1,797 digits at 10% in chunks of 256 do.
DIGITS, CLASSES = 64, 5
BUILD = ["build", "--recipe", "demo", "--timesteps", "1", "--budget", "30%", "--chunk-size", "8"]
# Where the killed run starts: an empty --work folder (EMPTY), or one holding a copy of the score cache the reference
# build left (SCORED), for the kill points past scoring: a run from an empty folder would have written those same files
# before getting there, so the killed run leaves the files it would have left, and the re-run starts from them, without
# scoring the digits once more. A SCORED point's call count starts there: ChunkCache.add 2 is the second attach chunk.
EMPTY, SCORED = "empty", "scored"
BUILD_KILL_POINTS = [
    ("d2c_pack.selection.chunks:ChunkCache.add", 1, "after", EMPTY),  # scoring: first chunk stored
    ("d2c_pack.selection.chunks:ChunkCache.add", 4, "before", EMPTY),  # scoring: mid-way, a chunk computed but not stored
    ("os:replace", 6, "before", EMPTY),  # scoring: a chunk's temporary file written, not renamed into place
    ("d2c_pack.selection.chunks:ChunkCache.add", 8, "after", EMPTY),  # scoring: every chunk stored, the merged file not yet
    ("pyarrow.parquet:ParquetWriter.write_table", 11, "after", EMPTY),  # scoring: 8 chunks stored, the merged file a few chunks in
    ("d2c_pack.selection.chunks:ChunkCache.merge", 1, "after", EMPTY),  # scoring done
    ("d2c_pack.selection.chunks:ChunkCache.add", 2, "after", SCORED),  # attaching: first chunks of the attach columns
    ("d2c_pack.selection.chunks:ChunkCache.add", 6, "before", SCORED),  # attaching: later
    ("d2c_pack.publish.package:write_split", 1, "before", SCORED),  # packaging: nothing written
    ("d2c_pack.publish.shard_writer:HashingFile.write", 3, "after", SCORED),  # packaging: the data shard half written
    ("d2c_pack.publish.package:write_split", 1, "after", SCORED),  # packaging: data shard written
    ("d2c_pack.publish.package:write_assets", 1, "after", SCORED),  # packaging: card figures written
    ("d2c_pack.publish.package:write_split", 2, "after", SCORED),  # packaging: scores shard written
    ("d2c_pack.publish.package:_file_list", 1, "after", SCORED),  # packaging: everything but the manifest and the final rename
]


def d2c_pack(*args: str, kill: tuple[str, int, str] | None = None, cwd: Path | None = None, server: Server | None = None) -> subprocess.CompletedProcess:
    """``d2c-pack ARGS`` in a process of its own, forked by ``server`` if given, SIGKILLed at ``kill`` if given."""
    if server:
        return server.run(list(args), kill, cwd)
    prefix = [str(TESTS / "killpoint.py"), kill[0], str(kill[1]), kill[2], "--"] if kill else ["-m", "d2c_pack"]
    return subprocess.run([sys.executable, *prefix, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def killed_then_resumed(args: list[str], kill: tuple[str, int, str], cwd: Path | None = None, server: Server | None = None) -> subprocess.CompletedProcess:
    killed = d2c_pack(*args, kill=kill, cwd=cwd, server=server)
    assert killed.returncode == -signal.SIGKILL, f"{kill} was never reached (exit {killed.returncode}): {killed.stderr[-2000:]}"
    resumed = d2c_pack(*args, cwd=cwd, server=server)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return resumed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Forks the build and train commands from one process that imported the tool (push runs in new processes:
    huggingface_hub reads the address of the test's Hub when it is imported)."""
    server = Server(tmp_path_factory.mktemp("killpoint"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def build_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """BUILD on an image folder of the first DIGITS demo digits of the first CLASSES classes (the PNG files of ``demo:digits``),
    in class folders 0..4."""
    root = tmp_path_factory.mktemp("digits")
    digits = open_source("demo:digits")
    for record in itertools.islice((r for r in digits.iter_records(range(len(digits))) if r.label < CLASSES), DIGITS):
        (root / str(record.label)).mkdir(exist_ok=True)
        (root / str(record.label) / f"{record.index:04d}.png").write_bytes(record.data)
    return [*BUILD, "--source", str(root)]


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory: pytest.TempPathFactory, server: Server, build_args: list[str]) -> Path:
    """The output folder of an uninterrupted build; its --work folder is beside it (``work``): never change either."""
    root = tmp_path_factory.mktemp("reference")
    done = d2c_pack(*build_args, "--out", str(root / "out"), "--work", str(root / "work"), server=server)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out"


@pytest.mark.parametrize("kill", BUILD_KILL_POINTS, ids=[f"{t.split(':')[1]}-{n}-{w}" + ("-scored" if s == SCORED else "") for t, n, w, s in BUILD_KILL_POINTS])
def test_a_killed_build_resumes_to_identical_bytes(server: Server, build_args: list[str], reference_build: Path, tmp_path: Path, kill) -> None:
    *point, start = kill
    out, work = tmp_path / "out", tmp_path / "work"
    if start == SCORED:
        shutil.copytree(reference_build.parent / "work" / "scores", work / "scores")
    killed_then_resumed([*build_args, "--out", str(out), "--work", str(work)], tuple(point), server=server)
    assert file_hashes(out) == file_hashes(reference_build)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "work"]  # no half-written folder left beside it


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_build_says_so_in_one_line_and_resumes_to_identical_bytes(
    server: Server, build_args: list[str], reference_build: Path, tmp_path: Path, name: str, status: int
) -> None:
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM mid-scoring: one line on what was kept and that the same command continues."""
    out, work = tmp_path / "out", tmp_path / "work"
    args = [*build_args, "--out", str(out), "--work", str(work)]
    stopped = d2c_pack(*args, kill=("d2c_pack.selection.chunks:ChunkCache.add", 4, f"after:{name}"), server=server)
    assert stopped.returncode == status, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "Aborted" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"interrupted: what was scored and attached so far is cached in {work}; the same command continues where it stopped"
    )
    if name == "SIGINT":  # the cache is left as consistent as by a crash: the re-run completes to the same bytes
        resumed = d2c_pack(*args, server=server)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert file_hashes(out) == file_hashes(reference_build)


hub = hub_server.hub
PUSH_KILL_POINTS = [
    ("huggingface_hub._commit_api:lfs_upload", 1, "after"),  # mid-upload: one LFS file sent, the others not
    ("huggingface_hub.hf_api:HfApi.create_commit", 1, "before"),  # every file uploaded, no commit
    ("huggingface_hub.hf_api:HfApi.create_tag", 1, "after"),  # committed and tagged, not yet checked
]


@pytest.mark.parametrize("kill", PUSH_KILL_POINTS, ids=["lfs_upload", "before-commit", "after-tag"])
def test_a_killed_push_resumes_and_the_hub_matches_the_manifest(hub: HubServer, reference_build: Path, kill) -> None:
    repo = "tester/crash"
    killed_then_resumed(["push", repo, "--from", str(reference_build), "--tag", "v1.0"], kill)
    manifest = json.loads((reference_build / "d2c" / "manifest.json").read_text())
    remote = hub.files(repo, "v1.0")
    assert {path: hashlib.sha256(remote[path]).hexdigest() for path in manifest["files"]} == {p: f["sha256"] for p, f in manifest["files"].items()}


TRAIN = ["train", "--recipe", "demo", "--steps", "6", "--ckpt-every", "2", "--batch-size", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, server: Server, reference_build: Path) -> Path:
    """The model folder of a TRAIN run on the reference build that was never interrupted."""
    out = tmp_path_factory.mktemp("train") / "reference"
    uninterrupted = d2c_pack(*TRAIN, "--data", str(reference_build), "--out", str(out), server=server)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    return out / "model"


@pytest.mark.parametrize(
    "kill",
    [
        ("d2c_pack.training.loop:_train_step", 3, "after"),  # between checkpoints: steps 3 is lost and redone
        ("d2c_pack.training.loop:save_backbone", 2, "after"),  # mid-checkpoint: weights written, the checkpoint not complete
    ],
    ids=["between-checkpoints", "mid-checkpoint"],
)
def test_a_killed_training_run_resumes_to_the_same_weights(server: Server, reference_build: Path, reference_run: Path, tmp_path: Path, kill) -> None:
    killed_then_resumed([*TRAIN, "--data", str(reference_build), "--out", str(tmp_path / "run")], kill, server=server)
    assert file_hashes(tmp_path / "run" / "model") == file_hashes(reference_run)
    metrics = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics == list(range(1, 7))
