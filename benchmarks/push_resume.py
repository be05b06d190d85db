"""``push`` of a large folder to a local Hub-protocol server: MB/s, peak RSS, and what a killed and re-run push sends.

A tiny real build is padded with ``--files`` incompressible LFS files of ``--mb`` MB each, listed in its manifest (push,
verify and the Hub check treat them like data shards). It is pushed whole once; then, to a second repository, killed
(KeyboardInterrupt, as Ctrl-C) once half of the padding files are sent, and re-run. The server (``tests/hub_server.py``,
in this process, objects on disk) counts the bytes it receives: the two runs together should send the folder once.

    python benchmarks/push_resume.py [--files 8] [--mb 64] [--commit-mb 128] [--tiny] [--json benchmarks/results/push_resume.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import pytest
from huggingface_hub import _commit_api
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the local Hub server and the tiny build helpers

from conftest import make_image_folder, make_official_scorer  # noqa: E402
from hub_server import WRITE_TOKEN, HubServer, use_hub  # noqa: E402

from d2c_pack.core.fingerprint import sha256_file  # noqa: E402
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig  # noqa: E402
from d2c_pack.publish.hub import push
from d2c_pack.publish.settings import PushConfig  # noqa: E402


def padded_build(root: Path, files: int, megabytes: int) -> Path:
    """A tiny build plus ``files`` random ``.bin`` files of ``megabytes`` MB under ``extra/``, in the manifest."""
    out = build(BuildConfig(
        source=str(make_image_folder(root / "images")), scorer=str(make_official_scorer(root / "scorer")), resolution=16, timesteps=2,
        workers=0, device="cpu", work=str(root / "work"), out=str(root / "out"), budget="2/class", text_encoder="none",
        visual_encoder="none", vae="none",
    ))  # fmt: skip
    manifest_path = out / "d2c" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    (out / "extra").mkdir()
    for i in range(files):
        path = out / "extra" / f"blob-{i:03d}.bin"
        with open(path, "wb") as file:
            for _ in range(megabytes):
                file.write(os.urandom(1 << 20))
        manifest["files"][path.relative_to(out).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(files: int, megabytes: int, commit_mb: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, HubServer(tokens={WRITE_TOKEN: "write"}, root=Path(tmp) / "hub") as server, \
            pytest.MonkeyPatch.context() as patch:  # fmt: skip
        use_hub(server, patch, Path(tmp) / "home")
        folder = padded_build(Path(tmp), files, megabytes)
        size = folder_bytes(folder)
        settings = {"source_dir": str(folder), "tag": "v1.0", "commit_bytes": commit_mb << 20}
        tic = time.perf_counter()
        push(PushConfig(repo_id="bench/whole", **settings))
        seconds = time.perf_counter() - tic
        whole = server.received

        real_upload, started = _commit_api.lfs_upload, []

        def killed_upload(**kwargs) -> None:
            started.append(kwargs["operation"].path_in_repo)
            if sum(path.startswith("extra/") for path in started) == files // 2 + 1:  # half the padding sent
                raise KeyboardInterrupt
            real_upload(**kwargs)

        patch.setattr(_commit_api, "lfs_upload", killed_upload)
        try:
            push(PushConfig(repo_id="bench/killed", **settings))
        except KeyboardInterrupt:
            pass
        killed = server.received - whole
        patch.setattr(_commit_api, "lfs_upload", real_upload)
        push(PushConfig(repo_id="bench/killed", **settings))
        rerun = server.received - whole - killed
        commits = len(server.repos[("dataset", "bench/whole")].commits) - 1  # less the initial commit
    return {
        "folder_mb": size / 1e6, "files": files, "file_mb": megabytes, "commit_mb": commit_mb, "commits": commits,
        "push_seconds": seconds, "push_mb_per_s": size / 1e6 / seconds, "sent_whole_mb": whole / 1e6,
        "sent_before_kill_mb": killed / 1e6, "sent_by_rerun_mb": rerun / 1e6, "sent_twice_mb": (killed + rerun - size) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mb", type=int, default=64, help="size of each padding file")
    parser.add_argument("--commit-mb", type=int, default=128, help="commit size bound (push's default is 5 GiB)")
    parser.add_argument("--tiny", action="store_true", help="4 files of 1 MB, commits of 2 MB: a few seconds")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "push_resume.json"))
    args = parser.parse_args()
    if args.tiny:
        args.files, args.mb, args.commit_mb = 4, 1, 2
    result = measure(args.files, args.mb, args.commit_mb)
    table = Table(title="push to a local Hub server (killed after half the padding files, then re-run)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key.replace("_", " "), f"{value:.1f}" if isinstance(value, float) else str(value))
    Console().print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
