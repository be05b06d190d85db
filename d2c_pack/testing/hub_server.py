"""A local Hugging Face Hub, in one process: the real ``HfApi``, ``datasets.load_dataset`` and ``d2c-pack push`` work against it unchanged.

Run it to try publishing without the Hub (``push``, ``verify ORG/NAME``, ``load_dataset``)::

    python -m d2c_pack.testing.hub_server --port 8080

which prints the environment to give the clients (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET``) in
another shell. The test suite starts one in-process through the ``hub`` fixture of ``tests/hub_server.py``.
It needs nothing but the standard library and PyYAML, so it ships with the package.

Model. A repo is a set of commits (path -> :class:`Entry`, parent, message), branches, tags, pull-request refs
(``refs/pr/N``) and the LFS objects uploaded to it. Creating a repo makes an ``initial commit`` with a
``.gitattributes``, as the Hub does. File ids are the Hub's: a regular file's oid is its git blob sha
(``sha1(b"blob %d\\0" + data)``); an LFS file's oid is the git blob sha of its pointer file and its ``lfs.oid``
is the sha256 of the content. Bytes are kept in memory, or under ``root/objects/<sha256>`` when ``root`` is given.

Auth. ``tokens`` maps a token to ``"write"`` or ``"read"``; all tokens belong to one user (``user``) who owns
every namespace. Unknown token: 401 on any route. No token: reads of public repos only. Read token on a write
route: 403. Missing or (anonymously) private repo: 404 / 401 with ``X-Error-Code: RepoNotFound``; missing
revision ``RevisionNotFound``; missing file ``EntryNotFound`` (with ``X-Repo-Commit``); anonymous download from
a gated repo: 401 ``GatedRepo``. ``tokens=None`` turns auth off (everyone may write).

``requests`` logs ``(method, raw URL path without the query)`` of every request, faulted ones included;
``faults`` logs ``(method, path, kind)`` of injected faults; ``served`` counts the file bytes sent by downloads
and ``received`` the content bytes uploaded (LFS objects stored, regular files committed).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

WRITE_TOKEN = "hf_test_write_token"
READ_TOKEN = "hf_test_read_token"
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SUFFIXES = (".7z", ".arrow", ".avro", ".bin", ".bz2", ".ckpt", ".gif", ".gz", ".h5", ".jpeg", ".jpg", ".joblib", ".lz4", ".mp3",
                ".msgpack", ".npy", ".npz", ".ogg", ".onnx", ".parquet", ".pickle", ".pkl", ".png", ".pt", ".pth", ".safetensors",
                ".tar", ".tgz", ".wav", ".webp", ".xz", ".zip", ".zst")  # fmt: skip
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
LFS_THRESHOLD = 10 * 1024 * 1024  # larger files always go through LFS, as on the Hub
FAULT_KINDS = ("429", "500", "502", "503", "drop", "slow")


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Entry:
    """A file in a commit: the sha256 its bytes are stored under, and the ids the Hub reports."""

    sha256: str
    size: int
    lfs: bool
    oid: str  # git blob sha (of the pointer file for LFS files)

    @classmethod
    def of(cls, data: bytes, lfs: bool) -> Entry:
        sha256 = hashlib.sha256(data).hexdigest()
        return cls(sha256, len(data), lfs, git_blob_sha(lfs_pointer(sha256, len(data)) if lfs else data))

    def to_json(self, path: str) -> dict:
        out = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        return out


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, Entry]

    def dirs(self) -> set[str]:
        return {"/".join(path.split("/")[:i]) for path in self.files for i in range(1, path.count("/") + 1)}

    def under(self, path: str) -> tuple:
        return tuple(sorted((p, e.oid) for p, e in self.files.items() if p == path or p.startswith(path + "/")))


@dataclass
class Repo:
    type: str
    id: str
    private: bool = False
    gated: bool | str = False
    created: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: list[str] = field(default_factory=list)  # refs/pr/{i + 1} -> commit oid
    lfs: set[str] = field(default_factory=set)  # sha256 of the LFS objects uploaded to this repo

    def resolve(self, rev: str) -> Commit | None:
        rev = unquote(rev)
        if m := re.fullmatch(r"refs/pr/(\d+)", rev):
            oid = self.prs[int(m[1]) - 1] if 0 < int(m[1]) <= len(self.prs) else None
        else:
            name = rev.removeprefix("refs/heads/").removeprefix("refs/tags/")
            oid = self.branches.get(name) or self.tags.get(name) or (rev if rev in self.commits else None)
        return self.commits.get(oid) if oid else None

    def url(self, base: str) -> str:
        return f"{base}/{PREFIX[self.type]}{self.id}"


class HubError(Exception):
    """An error answer in the Hub's shape: JSON ``{"error": ...}`` plus ``X-Error-Message`` / ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}

    def response(self) -> tuple[int, dict, bytes]:
        headers = {"Content-Type": "application/json", "X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return self.status, headers, json.dumps({"error": self.message}).encode()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    role: str | None = None  # "write" / "read" / None (anonymous)

    def json(self) -> dict:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")


@dataclass
class _Faults:
    share: float
    kinds: tuple[str, ...]
    rng: random.Random
    retry_after: int
    slow_seconds: float
    only: Callable[[str, str], bool] | None


_API = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects"
_REV = r"(?P<rev>refs/pr/\d+|refs/convert/[^/]+|[^/]+)"
ROUTES = [  # (method, path regex, handler): the first match wins
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("DELETE", r"/api/repos/delete", "delete_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", _API + r"(?:/revision/" + _REV + ")?", "repo_info"),
    ("PUT", _API + r"/settings", "settings"),
    ("GET", _API + r"/tree/" + _REV + r"(?:/(?P<path>.*))?", "tree"),
    ("POST", _API + r"/paths-info/" + _REV, "paths_info"),
    ("GET", _API + r"/refs", "refs"),
    ("GET", _API + r"/commits/" + _REV, "commits"),
    ("POST", _API + r"/preupload/" + _REV, "preupload"),
    ("POST", _API + r"/commit/" + _REV, "commit"),
    ("POST", _API + r"/tag/" + _REV, "create_tag"),
    ("DELETE", _API + r"/tag/(?P<tag>[^/]+)", "delete_tag"),
    ("POST", _API + r"/branch/(?P<branch>[^/]+)", "create_branch"),
    ("DELETE", _API + r"/branch/(?P<branch>[^/]+)", "delete_branch"),
    ("POST", _GIT + r"/batch", "lfs_batch"),
    ("POST", _GIT + r"/verify", "lfs_verify"),
    ("PUT", r"/__lfs/(?P<ticket>[0-9a-f]+)", "lfs_put"),  # the "presigned" upload URL handed out by lfs_batch
    ("HEAD", r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/" + _REV + r"/(?P<path>.+)", "resolve"),
    ("GET", r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/" + _REV + r"/(?P<path>.+)", "resolve"),
]
ROUTES = [(method, re.compile(pattern), name) for method, pattern, name in ROUTES]


class HubServer:
    """An in-process Hub: repos (datasets and models) with git-like commits, branches, tags and LFS objects, in memory or on a temp dir."""

    def __init__(self, *, tokens: dict[str, str] | None = None, root: Path | None = None, user: str = "tester", port: int = 0):
        self.tokens, self.root, self.user, self.port = tokens, Path(root) if root else None, user, port
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[tuple[str, str, str]] = []
        self.served: dict[str, int] = {}  # file path in repo -> content bytes sent by resolve GETs
        self.received = 0  # content bytes uploaded: LFS objects stored and regular files committed
        self.url = ""
        self._blobs: dict[str, bytes] = {}
        self._tickets: dict[str, tuple[tuple[str, str], str, int]] = {}  # upload ticket -> (repo key, sha256, size)
        self._lock = threading.RLock()
        self._fault_config: _Faults | None = None
        self._permanent: tuple[int, Callable[[str, str], bool] | None] | None = None
        self._httpd: _HTTPServer | None = None
        self._connections: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        self._httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        self._httpd.hub = self
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        for conn in list(self._connections):  # wake up handler threads idling on keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._httpd = None

    def __enter__(self) -> HubServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers (direct state access, no HTTP) -----------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        with self._lock:
            commit = self._commit(self._get(repo_type, repo_id), revision)
            return {path: self._read(entry.sha256) for path, entry in sorted(commit.files.items())}

    def tamper(self, repo_id: str, path: str, data: bytes, revision: str = "main", repo_type: str = "dataset") -> None:
        """Replace ``path``'s content in the commit ``revision`` resolves to, in place, as a corrupted upload would look.

        From then on that commit serves ``data`` and reports its size, sha256 (``lfs.oid``, ``ETag`` /
        ``X-Linked-Etag``) and git oid; the file keeps its LFS-ness. No commit is made: the commit oid, refs and
        every other commit (even ones sharing the blob) are unchanged. ``hf_hub_download`` keeps returning a copy it
        cached before (its ``snapshots/<commit>/<path>`` pointer is not replaced, even with ``force_download=True``):
        read the tampered file with a fresh ``cache_dir``, ``local_dir``, ``HfFileSystem`` or ``get_paths_info``.
        """
        with self._lock:
            repo = self._get(repo_type, repo_id)
            commit = self._commit(repo, revision)
            if path not in commit.files:
                raise KeyError(path)
            entry = Entry.of(data, commit.files[path].lfs)
            self._store(data)
            if entry.lfs:
                repo.lfs.add(entry.sha256)
            commit.files[path] = entry

    def repo_settings(self, repo_id: str, repo_type: str = "dataset") -> dict:
        with self._lock:
            repo = self._get(repo_type, repo_id)
            return {"private": repo.private, "gated": repo.gated}

    def inject_faults(self, share: float, kinds: tuple[str, ...] = FAULT_KINDS, *, seed: int = 0, retry_after: int = 1,
                      slow_seconds: float = 0.5, only: Callable[[str, str], bool] | None = None) -> None:  # fmt: skip
        """Make a seeded ``share`` of the requests (those ``only(method, path)`` accepts) fail in one of ``kinds``:
        ``"429"`` (with ``Retry-After: retry_after``), ``"500"``/``"502"``/``"503"``, ``"drop"`` (the request is read,
        then the connection is closed without an answer) or ``"slow"`` (answered normally after ``slow_seconds``).
        Draws are made in arrival order from ``random.Random(seed)``. ``inject_faults(0)`` turns it off."""
        assert set(kinds) <= set(FAULT_KINDS), kinds
        with self._lock:
            self._fault_config = _Faults(share, tuple(kinds), random.Random(seed), retry_after, slow_seconds, only) if share > 0 else None

    def fail_permanently(self, status: int | None, only: Callable[[str, str], bool] | None = None) -> None:
        """Answer every request ``only`` accepts with ``status`` (401, 403 or 404 as a missing repo); None turns it off."""
        with self._lock:
            self._permanent = None if status is None else (status, only)

    # -- request handling --------------------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes] | None:
        """Answer one request: (status, headers, body), or None to drop the connection."""
        split = urlsplit(target)
        path, fault = split.path, None
        with self._lock:
            self.requests.append((method, path))
            permanent, faults = self._permanent, self._fault_config
            if faults and (faults.only is None or faults.only(method, path)) and faults.rng.random() < faults.share:
                fault = faults.rng.choice(faults.kinds)
                self.faults.append((method, path, fault))
        if permanent and (permanent[1] is None or permanent[1](method, path)):
            status = permanent[0]
            message = {401: "Invalid credentials in Authorization header", 403: "Forbidden", 404: "Repository not found"}
            return HubError(status, message.get(status, "Failure"), "RepoNotFound" if status == 404 else None).response()
        if fault == "drop":
            return None
        if fault == "slow":
            time.sleep(faults.slow_seconds)
        elif fault:
            extra = {"Retry-After": str(faults.retry_after)} if fault == "429" else {}
            return HubError(int(fault), f"Injected fault {fault}", headers=extra).response()
        request = Request(method, path, parse_qs(split.query), {k.lower(): v for k, v in headers.items()}, body)
        try:
            request.role = self._role(request)
            for route_method, pattern, name in ROUTES:
                if route_method == method and (match := pattern.fullmatch(path)):
                    with self._lock:
                        return getattr(self, "_h_" + name)(request, **{k: v for k, v in match.groupdict().items() if v is not None})
            raise HubError(404, f"Sorry, we can't find the page you are looking for ({method} {path}).")
        except HubError as err:
            return err.response()

    def _role(self, request: Request) -> str | None:
        if self.tokens is None:
            return "write"
        auth = request.headers.get("authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    # -- state helpers -----------------------------------------------------------------------------------------
    def _store(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if self.root is None:
            self._blobs[sha256] = data
        elif not (target := self.root / "objects" / sha256).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return sha256

    def _read(self, sha256: str) -> bytes:
        return self._blobs[sha256] if self.root is None else (self.root / "objects" / sha256).read_bytes()

    def _get(self, repo_type: str, repo_id: str) -> Repo:
        repo_type = TYPES.get(repo_type, repo_type)
        if (repo_type, repo_id) not in self.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self.repos[(repo_type, repo_id)]

    def _repo(self, req: Request, type: str | None, repo: str, *, write: bool = False, download: bool = False) -> Repo:
        """The repo, if ``req``'s token may see it (and write to it / download from it)."""
        found = self.repos.get((TYPES[type or "models"], unquote(repo)))
        if found is None or (found.private and req.role is None):
            raise HubError(401 if req.role is None else 404, "Repository not found", "RepoNotFound")
        if write:
            self._require_write(req)
        if download and found.gated and req.role is None:
            raise HubError(401, "Access to this repository is restricted: you must be authenticated", "GatedRepo")
        return found

    @staticmethod
    def _require_write(req: Request) -> None:
        if req.role is None:
            raise HubError(401, "You must be authenticated to write")
        if req.role != "write":
            raise HubError(403, "You don't have the rights to write with this token (read-only)")

    @staticmethod
    def _commit(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, parent: str | None, title: str, message: str, files: dict[str, Entry]) -> Commit:
        date = _now()
        key = json.dumps([repo.type, repo.id, len(repo.commits), parent, title, message, date, sorted((p, e.oid) for p, e in files.items())])
        commit = Commit(hashlib.sha1(key.encode()).hexdigest(), parent, title, message, date, files)
        repo.commits[commit.oid] = commit
        return commit

    def _dir_json(self, commit: Commit, path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(repr(commit.under(path)).encode()).hexdigest(), "size": 0, "path": path}

    def _last_commit(self, repo: Repo, commit: Commit, path: str) -> dict:
        """The newest commit (from ``commit`` back) that changed ``path`` (a file or everything under a folder)."""
        while commit.parent and commit.under(path) == repo.commits[commit.parent].under(path):
            commit = repo.commits[commit.parent]
        return {"id": commit.oid, "title": commit.title, "date": commit.date}

    def _entries(self, repo: Repo, commit: Commit, paths: list[str], expand: bool) -> list[dict]:
        dirs, out = commit.dirs(), []
        for path in paths:
            if path in commit.files:
                out.append(commit.files[path].to_json(path))
            elif path in dirs:
                out.append(self._dir_json(commit, path))
            else:
                continue
            if expand:
                out[-1]["lastCommit"] = self._last_commit(repo, commit, path)
        return out

    # -- handlers: one per endpoint, called with the lock held -------------------------------------------------
    def _json(self, data, status: int = 200, headers: dict | None = None) -> tuple[int, dict, bytes]:
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode()

    def _h_whoami(self, req: Request):
        if req.role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        token = {"displayName": f"test-{req.role}", "role": req.role, "createdAt": "2024-01-01T00:00:00.000Z"}
        return self._json({"type": "user", "id": "0" * 24, "name": self.user, "fullname": self.user, "email": f"{self.user}@example.com",
                           "emailVerified": True, "isPro": False, "orgs": [], "auth": {"type": "access_token", "accessToken": token}})  # fmt: skip

    def _h_create_repo(self, req: Request):
        self._require_write(req)
        body = req.json()
        repo_type, repo_id = body.get("type") or "model", f"{body.get('organization') or self.user}/{body['name']}"
        if (repo_type, repo_id) in self.repos:
            url = self.repos[(repo_type, repo_id)].url(self.url)
            return self._json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        private = body["visibility"] == "private" if "visibility" in body else bool(body.get("private"))
        repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private=private)
        self._store(GITATTRIBUTES)
        repo.branches["main"] = self._new_commit(repo, None, "initial commit", "", {".gitattributes": Entry.of(GITATTRIBUTES, False)}).oid
        return self._json({"url": repo.url(self.url), "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _h_delete_repo(self, req: Request):
        self._require_write(req)
        body = req.json()
        key = (body.get("type") or "model", f"{body.get('organization') or self.user}/{body['name']}")
        if self.repos.pop(key, None) is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self._json({})

    def _h_validate_yaml(self, req: Request):
        content = req.json().get("content", "")
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as err:
                return self._json({"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []}, 400)
        return self._json({"errors": [], "warnings": []})

    def _h_repo_info(self, req: Request, type: str, repo: str, rev: str = "main"):
        found = self._repo(req, type, repo)
        commit = self._commit(found, rev)
        card = None
        if (readme := commit.files.get("README.md")) and (text := self._read(readme.sha256).decode(errors="replace")).startswith("---"):
            try:
                card = yaml.safe_load(text.split("---")[1])
            except yaml.YAMLError:
                pass
        siblings = [{"rfilename": p} for p in sorted(commit.files)]
        if req.flag("blobs"):
            siblings = [{"rfilename": p, "size": e.size, "blobId": e.oid, **({"lfs": {"sha256": e.sha256, "size": e.size,
                         "pointerSize": len(lfs_pointer(e.sha256, e.size))}} if e.lfs else {})} for p, e in sorted(commit.files.items())]  # fmt: skip
        info = {"_id": hashlib.sha1(found.id.encode()).hexdigest()[:24], "id": found.id, "author": found.id.split("/")[0], "sha": commit.oid,
                "private": found.private, "gated": found.gated, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "createdAt": found.created, "lastModified": commit.date, "siblings": siblings, "cardData": card if isinstance(card, dict) else None,
                "usedStorage": sum(e.size for e in commit.files.values())}  # fmt: skip
        if found.type == "model":
            info["modelId"] = found.id
        return self._json(info)

    def _h_settings(self, req: Request, type: str, repo: str):
        found = self._repo(req, type, repo, write=True)
        body = req.json()
        if "gated" in body:
            if body["gated"] not in (False, "auto", "manual"):
                raise HubError(400, f"Invalid gated value: {body['gated']!r}")
            found.gated = body["gated"]
        if "visibility" in body or "private" in body:
            found.private = body["visibility"] == "private" if "visibility" in body else bool(body["private"])
        return self._json({})

    def _h_tree(self, req: Request, type: str, repo: str, rev: str, path: str = ""):
        found = self._repo(req, type, repo)
        commit = self._commit(found, rev)
        base = unquote(path).strip("/")
        dirs = commit.dirs()
        if base and base not in dirs:
            raise HubError(404, f"{base} does not exist on {unquote(rev)}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        prefix = base + "/" if base else ""
        chosen = [p for p in sorted(dirs) + sorted(commit.files) if p.startswith(prefix) and (req.flag("recursive") or "/" not in p[len(prefix):])]
        return self._json(self._entries(found, commit, chosen, req.flag("expand")))

    def _h_paths_info(self, req: Request, type: str, repo: str, rev: str):
        found = self._repo(req, type, repo)
        form = parse_qs(req.body.decode())
        paths = [p.strip("/") for p in form.get("paths", [])]
        return self._json(self._entries(found, self._commit(found, rev), paths, form.get("expand", [""])[0].lower() in ("1", "true")))

    def _h_refs(self, req: Request, type: str, repo: str):
        found = self._repo(req, type, repo)

        def ref(name: str, full: str, oid: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": oid}

        return self._json({"branches": [ref(n, f"refs/heads/{n}", o) for n, o in found.branches.items()], "converts": [],
                           "tags": [ref(n, f"refs/tags/{n}", o) for n, o in found.tags.items()],
                           "pullRequests": [ref(f"refs/pr/{i}", f"refs/pr/{i}", o) for i, o in enumerate(found.prs, 1)]})  # fmt: skip

    def _h_commits(self, req: Request, type: str, repo: str, rev: str):
        found = self._repo(req, type, repo)
        commit, out = self._commit(found, rev), []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.message, "date": commit.date, "authors": [{"user": self.user}]})
            commit = found.commits.get(commit.parent) if commit.parent else None
        return self._json(out)

    def _h_preupload(self, req: Request, type: str, repo: str, rev: str):
        found = self._repo(req, type, repo, write=True)
        commit, out = found.resolve(rev), []
        for file in req.json()["files"]:
            sample = base64.b64decode(file["sample"])
            lfs = file["path"].lower().endswith(LFS_SUFFIXES) or file["size"] >= LFS_THRESHOLD or b"\0" in sample
            existing = commit.files.get(file["path"]) if commit else None
            oid = None if existing is None else existing.sha256 if existing.lfs else existing.oid
            out.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self._json({"files": out, "commitOid": commit.oid if commit else None})

    def _h_lfs_batch(self, req: Request, repo: str, type: str | None = None):
        found = self._repo(req, type, repo, write=True)
        objects = []
        for obj in req.json()["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in found.lfs:  # already uploaded objects get no actions: the client skips them
                ticket = uuid.uuid4().hex
                self._tickets[ticket] = ((found.type, found.id), obj["oid"], obj["size"])
                item["actions"] = {"upload": {"href": f"{self.url}/__lfs/{ticket}", "expires_in": 3600},
                                   "verify": {"href": f"{found.url(self.url)}.git/info/lfs/objects/verify", "header": {}}}  # fmt: skip
            objects.append(item)
        return self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _h_lfs_put(self, req: Request, ticket: str):
        if ticket not in self._tickets:
            raise HubError(403, "Unknown or expired upload URL")
        key, sha256, size = self._tickets[ticket]
        if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != sha256:
            raise HubError(400, "Uploaded content does not match the announced sha256/size")
        self._store(req.body)
        self.repos[key].lfs.add(sha256)
        self.received += len(req.body)
        return 200, {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'}, b""

    def _h_lfs_verify(self, req: Request, repo: str, type: str | None = None):
        found = self._repo(req, type, repo, write=True)
        if req.json().get("oid") not in found.lfs:
            raise HubError(404, "LFS object not found")
        return self._json({"success": True})

    def _h_commit(self, req: Request, type: str, repo: str, rev: str):
        found = self._repo(req, type, repo, write=True)
        base, rev = self._commit(found, rev), unquote(rev)
        create_pr = req.flag("create_pr")
        pr = re.fullmatch(r"refs/pr/(\d+)", rev)
        if not create_pr and rev.removeprefix("refs/heads/") not in found.branches and not pr:
            raise HubError(400, f"Invalid rev id: {rev} is not a branch")
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header, files = lines[0]["value"], dict(base.files)
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        for op in lines[1:]:
            key, value = op["key"], op["value"]
            path = value.get("path", "").strip("/")
            if key == "file":
                data = base64.b64decode(value["content"])
                self._store(data)
                self.received += len(data)
                files[path] = Entry.of(data, False)
            elif key == "lfsFile":
                if value["oid"] not in found.lfs:
                    raise HubError(400, f"LFS file {path} ({value['oid']}) has not been uploaded")
                size = len(self._read(value["oid"]))
                files[path] = Entry(value["oid"], size, True, git_blob_sha(lfs_pointer(value["oid"], size)))
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: e for p, e in files.items() if not p.startswith(path + "/")}
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self._new_commit(found, base.oid, header.get("summary") or "Update", header.get("description", ""), files)
        answer = {"success": True, "commitOid": commit.oid, "commitUrl": f"{found.url(self.url)}/commit/{commit.oid}", "pullRequestUrl": None}
        if create_pr:
            found.prs.append(commit.oid)
            answer["pullRequestUrl"] = f"{found.url(self.url)}/discussions/{len(found.prs)}"
        elif pr:
            found.prs[int(pr[1]) - 1] = commit.oid
        else:
            found.branches[rev.removeprefix("refs/heads/")] = commit.oid
        return self._json(answer)

    def _h_create_tag(self, req: Request, type: str, repo: str, rev: str):
        found = self._repo(req, type, repo, write=True)
        commit, tag = self._commit(found, rev), req.json()["tag"]
        if tag in found.tags:
            raise HubError(409, f"Tag {tag} already exists")
        found.tags[tag] = commit.oid
        return self._json({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.oid})

    def _h_delete_tag(self, req: Request, type: str, repo: str, tag: str):
        found = self._repo(req, type, repo, write=True)
        if found.tags.pop(unquote(tag), None) is None:
            raise HubError(404, f"Invalid rev id: {unquote(tag)}", "RevisionNotFound")
        return self._json({})

    def _h_create_branch(self, req: Request, type: str, repo: str, branch: str):
        found = self._repo(req, type, repo, write=True)
        branch, start = unquote(branch), req.json().get("startingPoint") or "main"
        if branch in found.branches:
            raise HubError(409, f"Branch {branch} already exists")
        found.branches[branch] = self._commit(found, start).oid
        return self._json({})

    def _h_delete_branch(self, req: Request, type: str, repo: str, branch: str):
        found = self._repo(req, type, repo, write=True)
        if found.branches.pop(unquote(branch), None) is None:
            raise HubError(404, f"Invalid rev id: {unquote(branch)}", "RevisionNotFound")
        return self._json({})

    def _h_resolve(self, req: Request, repo: str, rev: str, path: str, type: str | None = None):
        found = self._repo(req, type, repo, download=True)
        commit = self._commit(found, rev)
        entry = commit.files.get(unquote(path))
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self._read(entry.sha256)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        if m := re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", req.headers.get("range", "")):
            start, end = (int(m[1]), int(m[2] or len(data) - 1)) if m[1] else (max(len(data) - int(m[2] or 0), 0), len(data) - 1)
            if start >= len(data):
                return 416, {**headers, "Content-Range": f"bytes */{len(data)}"}, b""
            end = min(end, len(data) - 1)
            self._count_served(req, path, end + 1 - start)
            return 206, {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}, data[start : end + 1]
        self._count_served(req, path, len(data))
        return 200, headers, data

    def _count_served(self, req: Request, path: str, size: int) -> None:
        if req.method == "GET":
            with self._lock:
                self.served[unquote(path)] = self.served.get(unquote(path), 0) + size


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    timeout = 60
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        self.server.hub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        body = self._read_body()
        answer = self.server.hub.handle(self.command, self.path, dict(self.headers.items()), body)
        if answer is None:  # injected "drop": close without a response
            self.close_connection = True
            return
        status, headers, payload = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


def main(argv: list[str] | None = None) -> None:
    """``python -m d2c_pack.testing.hub_server``: serve until Ctrl-C, after printing how to point the clients at it."""
    parser = argparse.ArgumentParser(prog="python -m d2c_pack.testing.hub_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--root", type=Path, help="keep the uploaded files under this folder (default: in memory)")
    args = parser.parse_args(argv)
    server = HubServer(tokens={WRITE_TOKEN: "write", READ_TOKEN: "read"}, root=args.root, port=args.port).start()
    print(f"a local Hub at {server.url} (user {server.user}; files {f'under {args.root}' if args.root else 'in memory'}); Ctrl-C stops it")
    print("point the clients at it, in another shell:")
    print(f"  export HF_ENDPOINT={server.url} HF_TOKEN={WRITE_TOKEN} HF_HUB_DISABLE_XET=1 HF_HUB_OFFLINE=0")
    print(f"  d2c-pack push {server.user}/digits-d2c --from out/digits-d2c --tag v1.0", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
