"""The local Hub (``hub_server.py``) driven by the real clients: ``huggingface_hub.HfApi`` and ``datasets.load_dataset``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import hub_server
import pytest
from hub_server import READ_TOKEN, HubServer, git_blob_sha
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile, RepoFolder

hub = hub_server.hub  # the fixture: a running local Hub the clients point at

REPO = "tester/condensed"
CARD = """---
license: apache-2.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.parquet
---
# A condensed dataset
"""


def write_folder(folder: Path, version: int) -> dict[str, bytes]:
    """A dataset folder (card, parquet written by ``datasets``, small json); returns its files' bytes."""
    rows = {"label": [version * 10 + i for i in range(40)], "name": [f"v{version}-{i}" for i in range(40)]}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows).to_parquet(folder / "data" / "train.parquet")
    (folder / "README.md").write_text(CARD)
    (folder / "manifest.json").write_text(json.dumps({"version": version, "rows": 40}))
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def publish_two_versions(tmp_path: Path) -> tuple[HfApi, list[str], list[dict[str, bytes]]]:
    """create_repo (private) → upload v1, tag v1.0 → upload v2, tag v1.1."""
    api, oids, contents = HfApi(), [], []
    assert api.create_repo(REPO, repo_type="dataset", private=True).repo_id == REPO
    for version, tag in ((1, "v1.0"), (2, "v1.1")):
        contents.append(write_folder(tmp_path / "folder", version))
        commit = api.upload_folder(folder_path=tmp_path / "folder", repo_id=REPO, repo_type="dataset", commit_message=f"v{version}")
        api.create_tag(REPO, tag=tag, revision=commit.oid, repo_type="dataset")
        oids.append(commit.oid)
    return api, oids, contents


def test_publish_tag_download_and_list(hub: HubServer, tmp_path: Path) -> None:
    api, (c1, c2), (v1, v2) = publish_two_versions(tmp_path)
    assert v1["data/train.parquet"] != v2["data/train.parquet"]
    assert any(m == "PUT" and p.startswith("/__lfs/") for m, p in hub.requests)  # the parquet went through LFS

    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert {t.name: t.target_commit for t in refs.tags} == {"v1.0": c1, "v1.1": c2}
    assert {b.name: b.target_commit for b in refs.branches} == {"main": c2}

    path = hf_hub_download(REPO, "data/train.parquet", repo_type="dataset", revision="v1.0")
    assert Path(path).read_bytes() == v1["data/train.parquet"]
    assert Path(hf_hub_download(REPO, "manifest.json", repo_type="dataset", revision=c2)).read_bytes() == v2["manifest.json"]

    infos = {i.path: i for i in api.get_paths_info(REPO, ["data/train.parquet", "manifest.json", "data", "nope"], repo_type="dataset", revision="v1.0")}
    parquet, manifest = infos["data/train.parquet"], infos["manifest.json"]
    assert isinstance(infos["data"], RepoFolder) and "nope" not in infos
    assert parquet.size == len(v1["data/train.parquet"]) and parquet.lfs.sha256 == hashlib.sha256(v1["data/train.parquet"]).hexdigest()
    assert manifest.lfs is None and manifest.blob_id == git_blob_sha(v1["manifest.json"])

    tree = {e.path: e for e in api.list_repo_tree(REPO, repo_type="dataset", revision="v1.1", recursive=True, expand=True)}
    assert set(tree) == {".gitattributes", "README.md", "manifest.json", "data", "data/train.parquet"}
    assert tree["data/train.parquet"].lfs.sha256 == hashlib.sha256(v2["data/train.parquet"]).hexdigest()
    assert tree["data/train.parquet"].last_commit.oid == c2 and tree["README.md"].last_commit.oid == c1
    assert [e.path for e in api.list_repo_tree(REPO, "data", repo_type="dataset")] == ["data/train.parquet"]

    info = api.repo_info(REPO, repo_type="dataset", revision="v1.0", files_metadata=True)
    assert info.private and info.sha == c1 and info.card_data["license"] == "apache-2.0"
    assert {s.rfilename: s.size for s in info.siblings}["data/train.parquet"] == len(v1["data/train.parquet"])
    assert hub.files(REPO, "v1.0") == {".gitattributes": hub.files(REPO)[".gitattributes"], **v1}
    assert [c.commit_id for c in api.list_repo_commits(REPO, repo_type="dataset")][:2] == [c2, c1]
    with HfFileSystem().open(f"datasets/{REPO}@v1.0/data/train.parquet", "rb") as file:  # ranged reads
        file.seek(-4, 2)
        assert file.read() == b"PAR1"


def test_pull_request_and_branch(hub: HubServer) -> None:
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    main = api.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id=REPO, repo_type="dataset").oid
    pr = api.upload_file(path_or_fileobj=b"two", path_in_repo="a.txt", repo_id=REPO, repo_type="dataset", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert Path(hf_hub_download(REPO, "a.txt", repo_type="dataset", revision="refs/pr/1")).read_bytes() == b"two"
    assert hub.files(REPO)["a.txt"] == b"one"
    refs = api.list_repo_refs(REPO, repo_type="dataset", include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", pr.oid)]

    api.create_branch(REPO, branch="dev", revision=main, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="b.txt", repo_id=REPO, repo_type="dataset", revision="dev")
    assert hub.files(REPO, "dev")["b.txt"] == b"dev" and "b.txt" not in hub.files(REPO)
    with pytest.raises(HfHubHTTPError) as err:  # parent_commit no longer the branch head
        api.upload_file(path_or_fileobj=b"x", path_in_repo="c.txt", repo_id=REPO, repo_type="dataset", revision="dev", parent_commit=main)
    assert err.value.response.status_code == 412


def test_load_dataset_at_each_tag(hub: HubServer, tmp_path: Path) -> None:
    publish_two_versions(tmp_path)
    for version, tag in ((1, "v1.0"), (2, "v1.1")):
        rows = datasets.load_dataset(REPO, revision=tag, split="train")
        assert rows["label"] == [version * 10 + i for i in range(40)] and rows[0]["name"] == f"v{version}-0"
    streamed = list(datasets.load_dataset(REPO, revision="v1.0", split="train", streaming=True))
    assert [r["label"] for r in streamed] == list(range(10, 50))
    assert any("/resolve/" in p for _, p in hub.requests)


def test_reupload_is_incremental(hub: HubServer, tmp_path: Path) -> None:
    api, (_, c2), _ = publish_two_versions(tmp_path)

    def puts() -> int:
        return sum(m == "PUT" for m, _ in hub.requests)

    before = puts()
    again = api.upload_folder(folder_path=tmp_path / "folder", repo_id=REPO, repo_type="dataset")
    assert puts() == before and again.oid == c2  # nothing uploaded, no empty commit

    (tmp_path / "folder" / "extra.json").write_text("{}")  # one new small file: committed inline, no LFS PUT
    assert api.upload_folder(folder_path=tmp_path / "folder", repo_id=REPO, repo_type="dataset").oid != c2
    assert puts() == before

    blob = bytes(range(256)) * 64  # an LFS object uploaded, then the push "interrupted" before its commit
    api.preupload_lfs_files(REPO, additions=[CommitOperationAdd("blob.bin", blob)], repo_type="dataset")
    assert puts() == before + 1
    api.create_commit(REPO, operations=[CommitOperationAdd("blob.bin", blob)], commit_message="resume", repo_type="dataset")
    assert puts() == before + 1 and hub.files(REPO)["blob.bin"] == blob


def test_permissions_and_errors(hub: HubServer, tmp_path: Path) -> None:
    api, (c1, _), _ = publish_two_versions(tmp_path)
    reader = HfApi(token=READ_TOKEN)
    assert reader.whoami()["auth"]["accessToken"]["role"] == "read" and api.whoami()["auth"]["accessToken"]["role"] == "write"
    assert reader.repo_info(REPO, repo_type="dataset").private  # read tokens read private repos of their user

    with pytest.raises(HfHubHTTPError) as err:
        reader.create_repo("tester/other", repo_type="dataset")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        reader.upload_folder(folder_path=tmp_path / "folder", repo_id=REPO, repo_type="dataset")
    assert err.value.response.status_code == 403

    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_unknown").repo_info(REPO, repo_type="dataset")
    assert err.value.response.status_code == 401 and not isinstance(err.value, RepositoryNotFoundError)

    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("tester/missing", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).repo_info(REPO, repo_type="dataset")  # private, anonymous
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/missing", "README.md", repo_type="dataset")

    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(REPO, tag="v1.0", revision=c1, repo_type="dataset")
    assert err.value.response.status_code == 409
    api.delete_tag(REPO, tag="v1.0", repo_type="dataset")
    assert {t.name for t in api.list_repo_refs(REPO, repo_type="dataset").tags} == {"v1.1"}


def test_settings_are_reflected(hub: HubServer) -> None:
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    assert api.repo_info(REPO, repo_type="dataset").gated is False
    api.update_repo_settings(REPO, gated="manual", private=True, repo_type="dataset")
    info = api.repo_info(REPO, repo_type="dataset")
    assert info.gated == "manual" and info.private
    assert hub.repo_settings(REPO) == {"private": True, "gated": "manual"}


def test_tamper_changes_served_bytes_and_hashes(hub: HubServer, tmp_path: Path) -> None:
    api, (_, c2), (_, v2) = publish_two_versions(tmp_path)
    assert Path(hf_hub_download(REPO, "data/train.parquet", repo_type="dataset")).read_bytes() == v2["data/train.parquet"]

    hub.tamper(REPO, "data/train.parquet", b"not the parquet that was pushed")
    # The client's cache is keyed by commit: a fresh cache sees the new bytes (force_download alone does not: the
    # snapshot's pointer to the old blob is kept).
    path = hf_hub_download(REPO, "data/train.parquet", repo_type="dataset", cache_dir=tmp_path / "fresh-cache")
    assert Path(path).read_bytes() == b"not the parquet that was pushed"
    (info,) = api.get_paths_info(REPO, ["data/train.parquet"], repo_type="dataset")
    assert isinstance(info, RepoFile) and info.lfs.sha256 == hashlib.sha256(b"not the parquet that was pushed").hexdigest()
    assert api.repo_info(REPO, repo_type="dataset").sha == c2  # no new commit
    assert hub.files(REPO, "v1.0")["data/train.parquet"] != b"not the parquet that was pushed"


def test_fault_injection(hub: HubServer, tmp_path: Path) -> None:
    """503 on a third of the /resolve/ requests.

    What the installed client does: ``hf_hub_download``'s metadata HEAD is retried when no cached copy exists (a
    first failure is followed by up to 5 more tries with 1-8 s backoff); with ``force_download=True`` it is NOT
    retried (``ValueError: Force download failed``), and with a cached copy the cached file is returned. The GET of
    the content is retried on 408/429 and broken connections but NOT on 5xx, so a 503 there surfaces as an
    ``HfHubHTTPError`` (503). Hence: each download returns the right bytes or fails with 503 exactly when its GET
    was faulted, as the server's fault log shows.
    """
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"payload", path_in_repo="x.txt", repo_id=REPO, repo_type="dataset")
    hub.inject_faults(0.3, kinds=("503",), seed=3, only=lambda m, p: "/resolve/" in p)
    outcomes = []
    for attempt in range(6):  # each into an empty cache: with a cached copy a failed HEAD falls back to it silently
        try:
            outcomes.append(Path(hf_hub_download(REPO, "x.txt", repo_type="dataset", cache_dir=tmp_path / str(attempt))).read_bytes())
        except HfHubHTTPError as err:
            outcomes.append(err.response.status_code)
    hub.inject_faults(0)

    assert hub.faults and all(kind == "503" and "/resolve/" in path for _, path, kind in hub.faults)
    assert set(outcomes) <= {b"payload", 503} and b"payload" in outcomes
    head_faults = [f for f in hub.faults if f[0] == "HEAD"]
    get_faults = [f for f in hub.faults if f[0] == "GET"]
    assert head_faults, "seed 3 makes a HEAD fail: the download retried it and went on"
    assert outcomes.count(503) == len(get_faults)  # only GET faults make a download fail

    hub.fail_permanently(404, only=lambda m, p: "/resolve/" in p)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "x.txt", repo_type="dataset", cache_dir=tmp_path / "after")
    hub.fail_permanently(None)
    assert Path(hf_hub_download(REPO, "x.txt", repo_type="dataset", cache_dir=tmp_path / "after")).read_bytes() == b"payload"
