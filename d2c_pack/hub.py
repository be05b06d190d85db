"""``d2c-pack push``: publish a built dataset folder as a versioned Hub dataset repository.

create_repo (dataset; ImageNet-derived data private and gated unless told otherwise) →
upload_folder (re-running uploads only what the repository lacks) → create_tag on the exact
commit made → verify the tagged revision against the manifest → the ``load_dataset`` line
that reads that version. The token comes from ``HF_TOKEN`` or the stored login and is checked
before anything is uploaded; it is never printed or written anywhere.

Every Hub call is retried on what passes (429, honouring ``Retry-After``; 500/502/503/504;
dropped connections and timeouts) with exponential backoff, bounded in attempts and in time
(:class:`RetryPolicy`); what does not pass (401, 403, 404, 409 …) fails at once with one line.
huggingface_hub retries only its LFS transfers itself, not the commit, tag or repo calls.
Each step is idempotent, so a retried or re-run push converges on the same repository.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import DatasetCard, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from d2c_pack.errors import UserError, first_line
from d2c_pack.fingerprint import git_blob_sha1
from d2c_pack.verify import LocalFolder, read_manifest, verify

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long a Hub call is retried: at most ``attempts`` tries within ``deadline`` seconds,
    waiting base·2ⁿ (jittered, at most ``max_delay``) or the server's ``Retry-After``."""

    attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 30.0
    deadline: float = 600.0


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """``call()``, retried on transient failures as ``policy`` allows; the last failure is raised."""
    start = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except Exception as err:
            failure = hub_failure(err)
            delay = None if failure is None else _retry_delay(failure, attempt, policy)
            if delay is None or attempt == policy.attempts or time.monotonic() - start + delay > policy.deadline:
                raise
            log.warning("%s: %s; retry %d/%d in %.1f s", what, _failure(failure), attempt, policy.attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def hub_failure(err: BaseException) -> HfHubHTTPError | httpx2.TransportError | None:
    """The HTTP or connection failure behind ``err``: itself, or what it wraps (huggingface_hub
    re-raises a failed LFS upload as a RuntimeError ``from`` the HTTP error)."""
    while err is not None and not isinstance(err, (HfHubHTTPError, httpx2.TransportError)):
        err = err.__cause__
    return err


def _retry_delay(err: Exception, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before the next try, or None when the failure will not pass by waiting."""
    if isinstance(err, HfHubHTTPError):
        status = _status(err)
        if status not in TRANSIENT_STATUSES:
            return None
        retry_after = err.response.headers.get("Retry-After") if err.response is not None else None
        if status == 429 and retry_after and retry_after.isdigit():
            return min(float(retry_after), policy.max_delay)
    backoff = min(policy.base_delay * 2 ** (attempt - 1), policy.max_delay)
    return backoff * random.uniform(0.5, 1.0)  # jitter: many clients do not retry in lockstep


def _failure(err: Exception) -> str:
    status = _status(err) if isinstance(err, HfHubHTTPError) else None
    return f"HTTP {status}" if status else type(err).__name__


@dataclasses.dataclass(kw_only=True)
class PushConfig:
    """Settings of ``d2c-pack push``; None for ``private``/``gated`` means: decided by the data's licence."""

    repo_id: str
    source_dir: str = "."
    tag: str | None = None
    private: bool | None = None
    gated: bool | None = None
    create_pr: bool = False
    revision: str | None = None
    message: str | None = None
    force: bool = False
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)


@dataclasses.dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit: str
    revision: str  # the tag when one was set, else the commit

    def load_line(self) -> str:
        return f'load_dataset("{self.repo_id}", revision="{self.revision}")'


def push(config: PushConfig, api: HfApi | None = None) -> PushResult:
    """Pushes ``config.source_dir`` to ``config.repo_id`` and tags the commit."""
    folder = LocalFolder(Path(config.source_dir))
    if not folder.folder.is_dir():
        raise UserError(f"no dataset folder at {config.source_dir}")
    manifest = read_manifest(folder)
    if problems := verify(folder):
        raise UserError(f"{folder.name} fails verification ({problems[0]}); rebuild it before pushing")
    api = api or HfApi()
    retry = config.retry

    def hub(what: str, call: Callable[[], T]) -> T:
        return with_retries(call, f"push {config.repo_id}: {what}", retry)

    restricted = _imagenet(folder)  # ImageNet's terms do not allow public redistribution
    private = restricted if config.private is None else config.private
    gated = restricted if config.gated is None else config.gated
    try:
        token = _write_token(api, retry)
        if restricted and config.private is None:
            _refuse_public_repo(api, config.repo_id, token, retry)
        if (tagged := _existing_tag(api, config, token, retry)) is not None:
            if hub("check", lambda: remote_problems(api, config.repo_id, config.tag, folder, manifest, token)):
                raise UserError(f"{config.repo_id} already has the tag {config.tag!r}; choose another or pass --force to move it")
            return PushResult(config.repo_id, tagged, config.tag)  # this very folder, pushed and tagged before: done
        hub("create_repo", lambda: api.create_repo(config.repo_id, repo_type="dataset", private=private, exist_ok=True, token=token))
        if gated:
            hub("gate", lambda: api.update_repo_settings(config.repo_id, repo_type="dataset", gated="auto", token=token))
        commit = hub("upload", lambda: api.upload_folder(
            repo_id=config.repo_id, repo_type="dataset", folder_path=str(folder.folder), revision=config.revision,
            commit_message=config.message or f"d2c-pack: {manifest['recipe']['selector']} subset, {manifest['selection']['rows']} rows",
            create_pr=config.create_pr, token=token,
        ))  # fmt: skip
        if config.tag:
            if config.force:
                hub("delete tag", lambda: _delete_tag(api, config, token))
            hub("tag", lambda: _create_tag(api, config, commit.oid, token))
        revision = config.tag or commit.oid
        problems = hub("check", lambda: remote_problems(api, config.repo_id, revision, folder, manifest, token))
    except Exception as err:
        failure = hub_failure(err)
        if isinstance(failure, HfHubHTTPError):
            raise UserError(_http_problem(config.repo_id, failure)) from None
        if failure is not None:
            raise UserError(f"push to {config.repo_id} failed: the Hub could not be reached ({first_line(failure)}); re-run to continue") from None
        raise
    if problems:
        raise UserError(f"{config.repo_id}@{revision} does not match the manifest after the push: {problems[0]}")
    return PushResult(config.repo_id, commit.oid, revision)


def remote_problems(api: HfApi, repo_id: str, revision: str, folder: LocalFolder, manifest: dict, token: str) -> list[str]:
    """What differs between the pushed revision and the manifest, from the Hub's file listing alone:
    LFS files by the sha256 the Hub computed, regular files by their git blob id."""
    entries = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True, expand=True, token=token)
    remote = {e.path: e for e in entries if hasattr(e, "size")}
    problems = []
    for path, expected in manifest["files"].items():
        entry = remote.get(path)
        if entry is None:
            problems.append(f"{path}: missing on the Hub")
        elif entry.lfs is not None and entry.lfs.sha256 != expected["sha256"]:
            problems.append(f"{path}: the Hub's sha256 differs from the manifest")
        elif entry.lfs is None and entry.blob_id != git_blob_sha1(folder.folder / path):
            problems.append(f"{path}: the Hub's copy differs from the local file")
    return problems


def _write_token(api: HfApi, retry: RetryPolicy) -> str:
    """The token, checked to allow writes, before anything is uploaded."""
    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a write token")
    try:
        whoami = with_retries(lambda: api.whoami(token=token), "push: check the token", retry)
    except HfHubHTTPError as err:
        if _status(err) not in (401, 403):
            raise
        raise UserError(f"the Hub refused the token ({_status(err)}): use a valid write token") from None
    role = whoami.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise UserError("the token is read-only: push needs a write token (HF_TOKEN or `hf auth login`)")
    return token


def _refuse_public_repo(api: HfApi, repo_id: str, token: str, retry: RetryPolicy) -> None:
    """Data whose licence restricts redistribution goes to an existing public repository only with an explicit --public."""
    try:
        info = with_retries(lambda: api.repo_info(repo_id, repo_type="dataset", token=token), f"push {repo_id}: visibility", retry)
    except RepositoryNotFoundError:
        return  # it will be created private
    if not info.private:
        raise UserError(
            f"{repo_id} is public and this data's licence (ImageNet's terms) restricts redistribution: "
            "push to a private repository, or pass --public to publish it anyway"
        )


def _existing_tag(api: HfApi, config: PushConfig, token: str, retry: RetryPolicy) -> str | None:
    """The commit that ``config.tag`` already names (None if it names none, or --force moves it anyway)."""
    if not config.tag or config.force:
        return None
    try:
        refs = with_retries(lambda: api.list_repo_refs(config.repo_id, repo_type="dataset", token=token), f"push {config.repo_id}: tags", retry)
    except RepositoryNotFoundError:
        return None  # a new repository has no tags
    return next((ref.target_commit for ref in refs.tags if ref.name == config.tag), None)


def _create_tag(api: HfApi, config: PushConfig, commit: str, token: str) -> None:
    """Tags ``commit``; a tag already there on that commit (a retried call that had succeeded) is success."""
    try:
        api.create_tag(config.repo_id, tag=config.tag, revision=commit, repo_type="dataset", token=token)
    except HfHubHTTPError as err:
        if _status(err) != 409:
            raise
        refs = api.list_repo_refs(config.repo_id, repo_type="dataset", token=token)
        if not any(ref.name == config.tag and ref.target_commit == commit for ref in refs.tags):
            raise


def _delete_tag(api: HfApi, config: PushConfig, token: str) -> None:
    try:
        api.delete_tag(config.repo_id, tag=config.tag, repo_type="dataset", token=token)
    except HfHubHTTPError as err:
        if _status(err) != 404:
            raise


def _imagenet(folder: LocalFolder) -> bool:
    return DatasetCard(folder.read_text("README.md")).data.get("license_name") == "imagenet"


def _status(err: HfHubHTTPError) -> int | None:
    return err.response.status_code if err.response is not None else None


def _http_problem(repo_id: str, err: HfHubHTTPError) -> str:
    status = _status(err)
    cause = {
        401: "the token was refused",
        403: f"the token may not write to {repo_id}",
        404: f"{repo_id} or the revision does not exist",
        409: "conflict with the repository's current state",
    }.get(status, first_line(err))
    return f"push to {repo_id} failed ({status}): {cause}"
