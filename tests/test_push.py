"""`push` end to end against a local Hub server with the real huggingface_hub and datasets clients."""

from __future__ import annotations

import hashlib
import json
import runpy
import shutil
import sys
import time
from pathlib import Path
from unittest import mock

import datasets
import httpx2
import hub_server
import pytest
from conftest import build_config, encode, make_official_scorer, noise_image
from hub_server import READ_TOKEN, WRITE_TOKEN, HubServer
from huggingface_hub import HfApi, _commit_api
from huggingface_hub.errors import HfHubHTTPError
from typer.testing import CliRunner

from d2c_pack.cli import main
from d2c_pack.core.errors import UserError
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.hub import RetryPolicy, push, with_retries
from d2c_pack.publish.settings import PushConfig

hub = hub_server.hub  # the fixture: clients talk to a fresh local Hub with HF_TOKEN = WRITE_TOKEN
REPO = "tester/tiny-d2c"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, tiny_images: Path, tiny_scorer: Path, tiny_build: Path) -> dict[str, Path]:
    """Two different builds of the same source (v1.0: 2 per class, v1.1: 4 per class)."""
    root = tmp_path_factory.mktemp("builds")
    return {"v1.0": tiny_build, "v1.1": build(build_config(root, tiny_images, tiny_scorer, budget="4/class", text_encoder="none", repo_id=REPO))}


def cli(*args: str) -> tuple[int, str]:
    """Exit code and output (stdout, then stderr) of the console entry point ``d2c_pack.cli.main`` run as ``d2c-pack ARGS``.

    ``main`` itself turns a user error or a Hub failure into one line and exit code 2, so the code is the program's.
    """
    with CliRunner().isolation() as (stdout, stderr, _), mock.patch.object(sys, "argv", ["d2c-pack", *args]):
        with pytest.raises(SystemExit) as exited:
            main()
        sys.stdout.flush(), sys.stderr.flush()
        output = stdout.getvalue().decode() + stderr.getvalue().decode()
    return exited.value.code or 0, output


def test_versions_load_their_own_rows_and_verify(hub: HubServer, builds) -> None:
    for tag, folder in builds.items():
        code, output = cli("push", REPO, "--from", str(folder), "--tag", tag)
        assert code == 0, output
        assert f'load_dataset("{REPO}", revision="{tag}", split="train")' in output
    assert {ref.name for ref in HfApi().list_repo_refs(REPO, repo_type="dataset").tags} == {"v1.0", "v1.1"}
    assert datasets.load_dataset(REPO, revision="v1.0", split="train").num_rows == 6
    assert datasets.load_dataset(REPO, revision="v1.1", split="train").num_rows == 12
    assert datasets.load_dataset(REPO, "scores", revision="v1.0", split="train").num_rows == 36
    assert cli("verify", f"{REPO}@v1.0")[0] == 0 and cli("verify", f"{REPO}@v1.1")[0] == 0
    assert not hub.repo_settings(REPO)["private"]  # not ImageNet: public by default


def test_verify_on_the_hub_reads_no_data_and_names_a_tampered_file(hub: HubServer, tmp_path: Path) -> None:
    images = tmp_path / "large"
    for c, name in enumerate(("a", "b")):
        (images / name).mkdir(parents=True)
        for i in range(3):  # ~0.8 MB of incompressible PNG each: a data shard of several MB
            (images / name / f"{i}.png").write_bytes(encode(noise_image((512, 512), 10 * c + i), "PNG"))
    out = build(BuildConfig(
        source=str(images), scorer=str(make_official_scorer(tmp_path / "scorer", num_classes=2)), resolution=16, timesteps=2,
        workers=0, device="cpu", work=str(tmp_path / "work"), out=str(tmp_path / "out"), budget="3/class",
        text_encoder="none", visual_encoder="none", vae="none",
    ))  # fmt: skip
    assert cli("push", REPO, "--from", str(out), "--tag", "v1.0")[0] == 0
    hub.served.clear()
    code, output = cli("verify", f"{REPO}@v1.0")
    assert code == 0, output
    shard = "data/train-00000-of-00001.parquet"
    original = hub.files(REPO, "v1.0")[shard]
    assert len(original) > 4_000_000 and hub.served[shard] < 600_000  # footer blocks only; LFS sha256 from the Hub
    hub.tamper(REPO, shard, original[:-10] + b"0123456789", revision="v1.0")
    code, output = cli("verify", f"{REPO}@v1.0")
    assert code == 1 and f"{shard}: sha256 differs from the manifest" in output


def test_rerunning_a_push_uploads_nothing_new(hub: HubServer, builds) -> None:
    assert cli("push", REPO, "--from", str(builds["v1.0"]))[0] == 0
    hub.requests.clear()
    assert cli("push", REPO, "--from", str(builds["v1.0"]))[0] == 0
    assert not [path for method, path in hub.requests if method == "PUT"]


@pytest.mark.parametrize(("commit_bytes", "killed_at"), [(1, 3), (None, 3), (None, 1)])
def test_a_killed_push_rerun_uploads_only_what_is_missing(hub: HubServer, builds, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, commit_bytes: int | None, killed_at: int) -> None:  # fmt: skip
    """Killed (as by Ctrl-C) when its n-th LFS upload starts, in commits of one file each (two files committed) or in one
    commit (two LFS objects uploaded, none committed): the re-run sends every byte the first run did not, and no more."""
    real_upload, started = _commit_api.lfs_upload, []

    def killed_upload(**kwargs) -> None:
        started.append(kwargs["operation"].path_in_repo)
        if len(started) == killed_at:
            raise KeyboardInterrupt
        real_upload(**kwargs)

    monkeypatch.setattr(_commit_api, "lfs_upload", killed_upload)
    config = PushConfig(repo_id=REPO, source_dir=str(builds["v1.0"]), tag="v1.0", **({"commit_bytes": commit_bytes} if commit_bytes else {}))
    with pytest.raises(KeyboardInterrupt):
        push(config)
    first = hub.received
    monkeypatch.setattr(_commit_api, "lfs_upload", real_upload)
    assert push(config).revision == "v1.0"
    manifest = json.loads((builds["v1.0"] / "d2c" / "manifest.json").read_text())
    total = sum(f["size"] for f in manifest["files"].values()) + (builds["v1.0"] / "d2c" / "manifest.json").stat().st_size
    assert (first > 0) == (killed_at > 1) and hub.received == total  # over both runs, every byte was sent once
    assert not set(started[: killed_at - 1]) & set(started[killed_at:])  # no LFS file uploaded by both runs
    assert cli("verify", f"{REPO}@v1.0")[0] == 0
    assert "B/s" in capsys.readouterr().err  # one bar in bytes, with the rate


def test_a_new_version_drops_shards_the_manifest_no_longer_lists(hub: HubServer, builds) -> None:
    """A shard left by an older version (other shard count or names) is deleted: load_dataset reads every data/ file."""
    assert cli("push", REPO, "--from", str(builds["v1.0"]), "--tag", "v1.0")[0] == 0
    api = HfApi()
    shard = next(p for p in api.list_repo_files(REPO, repo_type="dataset", revision="v1.0") if p.startswith("data/"))
    api.upload_file(path_or_fileobj=str(builds["v1.0"] / shard), path_in_repo="data/train-00001-of-00002.parquet", repo_id=REPO, repo_type="dataset")
    code, output = cli("push", REPO, "--from", str(builds["v1.1"]), "--tag", "v1.1")
    assert code == 0, output
    assert "data/train-00001-of-00002.parquet" not in api.list_repo_files(REPO, repo_type="dataset", revision="v1.1")
    assert datasets.load_dataset(REPO, revision="v1.1", split="train").num_rows == 12  # not 12 + 6 from the stale shard
    assert cli("verify", f"{REPO}@v1.1")[0] == 0


def test_an_existing_tag_is_refused_unless_forced(hub: HubServer, builds) -> None:
    assert cli("push", REPO, "--from", str(builds["v1.0"]), "--tag", "v1.0")[0] == 0
    code, output = cli("push", REPO, "--from", str(builds["v1.1"]), "--tag", "v1.0")
    assert code == 2 and "already has the tag 'v1.0'" in output and "--force" in output
    assert datasets.load_dataset(REPO, revision="v1.0", split="train").num_rows == 6
    assert cli("push", REPO, "--from", str(builds["v1.1"]), "--tag", "v1.0", "--force")[0] == 0
    assert datasets.load_dataset(REPO, revision="v1.0", split="train").num_rows == 12


def test_missing_or_read_only_token_fails_before_any_upload(hub: HubServer, builds, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.requests.clear()
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    code, output = cli("push", REPO, "--from", str(builds["v1.0"]))
    assert code == 2 and "read-only" in output
    monkeypatch.delenv("HF_TOKEN")
    code, output = cli("push", REPO, "--from", str(builds["v1.0"]))
    assert code == 2 and "no Hugging Face token" in output
    assert not [path for _, path in hub.requests if "/commit/" in path or "/preupload/" in path or path.endswith("/repos/create")]


def test_the_token_appears_in_no_output_and_no_file(hub: HubServer, builds) -> None:
    code, output = cli("push", REPO, "--from", str(builds["v1.1"]), "--tag", "v1.1")
    assert code == 0 and WRITE_TOKEN not in output
    assert all(WRITE_TOKEN.encode() not in data for data in hub.files(REPO, "v1.1").values())


def test_imagenet_derived_data_is_pushed_private_and_gated(hub: HubServer, tmp_path: Path) -> None:
    images = tmp_path / "imagenet"
    for seed, wnid in enumerate(("n01440764", "n01443537")):
        (images / wnid).mkdir(parents=True)
        for i in range(3):
            (images / wnid / f"{i}.png").write_bytes(encode(noise_image((20, 20), seed * 10 + i), "PNG"))
    out = build(BuildConfig(
        source=str(images), scorer=str(make_official_scorer(tmp_path / "scorer", num_classes=1000)), resolution=16, timesteps=2,
        workers=0, device="cpu", work=str(tmp_path / "work"), out=str(tmp_path / "out"), budget="2/class",
        text_encoder="none", visual_encoder="none", vae="none",
    ))  # fmt: skip
    assert cli("push", "tester/imagenet-tiny", "--from", str(out), "--tag", "v1.0")[0] == 0
    settings = hub.repo_settings("tester/imagenet-tiny")
    assert settings["private"] and settings["gated"]
    assert cli("push", "tester/imagenet-open", "--from", str(out), "--public", "--not-gated")[0] == 0
    assert not hub.repo_settings("tester/imagenet-open")["private"]
    HfApi().create_repo("tester/already-public", repo_type="dataset", private=False)
    code, output = cli("push", "tester/already-public", "--from", str(out), "--tag", "v1.0")
    assert code == 2 and "is public and this data's licence" in output and "--public" in output
    assert not hub.files("tester/already-public", "main").keys() - {".gitattributes"}  # nothing was uploaded
    assert cli("push", "tester/already-public", "--from", str(out), "--public")[0] == 0


def test_a_corrupted_local_folder_is_not_pushed(hub: HubServer, builds, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(builds["v1.0"], tmp_path / "broken"))
    (broken / "d2c" / "recipe.yaml").write_text("edited\n")
    code, output = cli("push", REPO, "--from", str(broken))
    assert code == 2 and "fails verification" in output


FAST_RETRIES = RetryPolicy(attempts=10, base_delay=0.05, max_delay=2.0, max_wait=120.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_push_completes_while_a_fifth_of_the_hubs_answers_fail(hub: HubServer, builds, seed: int) -> None:
    """429 (Retry-After), 500/502/503, dropped connections and slow answers on 20% of requests: push retries through them."""
    hub.inject_faults(0.2, seed=seed, retry_after=1, slow_seconds=0.2)
    result = push(PushConfig(repo_id=REPO, source_dir=str(builds["v1.0"]), tag="v1.0", retry=FAST_RETRIES))
    hub.inject_faults(0)
    assert len({kind for _, _, kind in hub.faults}) >= 3, hub.faults  # several kinds of failure were met and passed
    manifest = json.loads((builds["v1.0"] / "d2c" / "manifest.json").read_text())
    remote = hub.files(REPO, "v1.0")
    assert {path: hashlib.sha256(remote[path]).hexdigest() for path in manifest["files"]} == {p: f["sha256"] for p, f in manifest["files"].items()}
    assert result.revision == "v1.0" and cli("verify", f"{REPO}@v1.0")[0] == 0


def test_retries_are_bounded_in_count_and_honour_retry_after(hub: HubServer, builds) -> None:
    hub.inject_faults(1.0, kinds=("503",))
    tic = time.monotonic()
    with pytest.raises(UserError, match=r"push to tester/tiny-d2c failed \(503\)"):
        push(PushConfig(repo_id=REPO, source_dir=str(builds["v1.0"]), retry=RetryPolicy(attempts=3, base_delay=0.05)))
    assert len(hub.requests) == 3 and time.monotonic() - tic < 5  # whoami, tried 3 times, then given up
    hub.inject_faults(1.0, kinds=("429",), retry_after=1)
    hub.requests.clear()
    tic = time.monotonic()
    with pytest.raises(UserError, match=r"\(429\)"):
        push(PushConfig(repo_id=REPO, source_dir=str(builds["v1.0"]), retry=RetryPolicy(attempts=3, base_delay=0.01)))
    assert len(hub.requests) == 3 and time.monotonic() - tic >= 2  # waited Retry-After: 1 s twice


def test_a_failure_late_in_a_long_upload_is_retried(hub: HubServer, builds, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries are bounded per request, not over the whole push: the commit failing after uploads that took longer
    than the whole retry budget (max_wait) is still retried."""
    real_upload = _commit_api.lfs_upload

    def slow_upload(**kwargs) -> None:
        time.sleep(0.4)
        real_upload(**kwargs)

    monkeypatch.setattr(_commit_api, "lfs_upload", slow_upload)  # 4 LFS files: 1.6 s of uploading
    commits = []
    hub.inject_faults(1.0, ("503",), only=lambda method, path: "/commit/" in path and len(commits.append(path) or commits) == 1)
    result = push(PushConfig(repo_id=REPO, source_dir=str(builds["v1.0"]), tag="v1.0", retry=RetryPolicy(attempts=3, base_delay=0.05, max_wait=1.0)))
    assert result.revision == "v1.0" and [(path, kind) for _, path, kind in hub.faults] == [(commits[0], "503")]


@pytest.mark.parametrize(
    ("status", "where", "message"),
    [
        (401, None, "the Hub refused the token (401)"),
        (403, lambda method, path: "/commit/" in path, "(403): the token may not write to tester/tiny-d2c"),
        (404, lambda method, path: "/preupload/" in path, "(404): tester/tiny-d2c or the revision does not exist"),
    ],
)
def test_a_permanent_refusal_fails_fast_with_one_line(hub: HubServer, builds, status: int, where, message: str) -> None:
    hub.fail_permanently(status, only=where)
    tic = time.monotonic()
    code, output = cli("push", REPO, "--from", str(builds["v1.0"]))
    last = output.strip().splitlines()[-1]  # before it, at most the upload's progress bar
    assert code == 2 and last.startswith("error: ") and message in last and "Traceback" not in output, output
    assert time.monotonic() - tic < 10  # no backoff on what waiting cannot fix


def test_a_wrapped_transient_failure_is_retried_and_a_foreign_error_is_not() -> None:
    """huggingface_hub re-raises a failed LFS upload as RuntimeError from the HTTP error: that is retried too."""
    request = httpx2.Request("PUT", "http://hub/lfs")
    unavailable = HfHubHTTPError("503 Service Unavailable", response=httpx2.Response(503, request=request))
    attempts = []

    def upload() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("Error while uploading 'data/train.parquet' to the Hub.") from unavailable
        return "done"

    assert with_retries(upload, "upload", FAST_RETRIES) == "done" and len(attempts) == 3
    with pytest.raises(KeyError):
        with_retries(lambda: attempts.append(1) or {}["missing"], "lookup", FAST_RETRIES)
    assert len(attempts) == 4  # a bug is not retried


def test_the_push_benchmark_at_its_tiny_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/push_resume.py --tiny: a push killed half-way and re-run sends each byte once over both runs.

    The script runs as ``__main__`` in this process (its server is in-process anyway): a new interpreter would add only
    its imports. It must finish (an exception fails the test) and write its JSON."""
    out = tmp_path / "push.json"
    monkeypatch.setattr(sys, "argv", ["push_resume.py", "--tiny", "--json", str(out)])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "push_resume.py"), run_name="__main__")
    result = json.loads(out.read_text())
    assert result["commits"] >= 3 and result["sent_whole_mb"] == pytest.approx(result["folder_mb"])
    assert result["sent_before_kill_mb"] >= 2 and result["sent_twice_mb"] == 0 and result["push_mb_per_s"] > 0
