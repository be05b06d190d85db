"""``d2c-pack push``: publish a built dataset folder as a versioned Hub dataset repository.

create_repo (dataset; ImageNet-derived data private and gated unless told otherwise) →
upload what the revision lacks (below) → create_tag on the exact commit made → verify the tagged
revision against the manifest → the ``load_dataset`` line that reads that version. The token comes
from ``HF_TOKEN`` or the stored login and is checked before anything is uploaded; it is never
printed or written anywhere.

What is uploaded: the files the manifest lists, and the manifest, that the revision lacks or holds
with other content (compared with the Hub's listing: LFS sha256, git blob ids). Each file is
uploaded on its own, then committed in commits of at most ``commit_bytes`` (card and manifest in
the last one, so a revision with a manifest is a complete one); with ``--create-pr`` everything
goes in one commit, the pull request. So a push killed at any point and re-run uploads only what
is missing: committed files are skipped, and LFS objects uploaded but not yet committed are
skipped by the Hub's LFS batch answer. Every request (each file's upload, each commit, tag,
listing) is retried on its own (:mod:`d2c_pack.core.hub_retry`), so a failure late in a long upload is
retried like any other. Each step is idempotent, so a retried or re-run push converges on the same
repository. Progress: one bar in bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from d2c_pack.core.errors import UserError, first_line
from d2c_pack.core.fingerprint import git_blob_sha1
from d2c_pack.core.hub_retry import RetryPolicy, hub_failure, hub_problem, status_of, with_retries
from d2c_pack.core.paths import closest_folder
from d2c_pack.core.progress import progress_bar
from d2c_pack.publish.settings import PushConfig
from d2c_pack.publish.verify import MANIFEST, LocalFolder, read_manifest, verify

T = TypeVar("T")
CONFIG_FOLDERS = ("data/", "scores/")  # what load_dataset reads of the repository: nothing else may be there
LAST = ("README.md", MANIFEST)  # committed last: a revision with the card and manifest holds every file they describe


@dataclasses.dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit: str
    revision: str  # the tag when one was set, else the commit

    def load_line(self) -> str:
        """The ``load_dataset`` call that reads this version's rows (a Dataset: ``split="train"``, as the card shows)."""
        return f'load_dataset("{self.repo_id}", revision="{self.revision}", split="train")'


def push(config: PushConfig, api: HfApi | None = None) -> PushResult:
    """Pushes ``config.source_dir`` to ``config.repo_id`` and tags the commit."""
    folder = LocalFolder(Path(config.source_dir))
    if not folder.folder.is_dir():
        close = closest_folder(folder.folder)
        raise UserError(f"no dataset folder at {config.source_dir}" + (f" (did you mean `{close}`?)" if close else ""))
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
    target = "main" if config.create_pr or not config.branch else config.branch  # a pull request is opened against main
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
        differences = hub("compare", lambda: list(_remote_differences(api, config.repo_id, target, folder, manifest, token)))
        stale = [path for path in differences if path != MANIFEST and path not in manifest["files"]]
        missing = [path for path in differences if path not in stale]
        message = config.message or f"d2c-pack: {manifest['recipe']['selector']} subset, {manifest['selection']['rows']} rows"
        commit = _upload(api, config, folder, missing, stale, message, token, hub) or hub(
            "head", lambda: api.repo_info(config.repo_id, repo_type="dataset", revision=target, token=token).sha
        )  # nothing was missing: the revision's head holds this folder already
        if config.tag:
            if config.force:
                hub("delete tag", lambda: _delete_tag(api, config, token))
            hub("tag", lambda: _create_tag(api, config, commit, token))
        revision = config.tag or commit
        problems = hub("check", lambda: remote_problems(api, config.repo_id, revision, folder, manifest, token))
    except Exception as err:
        failure = hub_failure(err)
        if isinstance(failure, HfHubHTTPError):
            raise UserError(_http_problem(config.repo_id, failure)) from None
        if failure is not None:
            raise UserError(f"push to {config.repo_id} failed: {hub_problem(failure)}") from None
        raise
    if problems:
        raise UserError(f"{config.repo_id}@{revision} does not match the manifest after the push: {problems[0]}")
    return PushResult(config.repo_id, commit, revision)


def remote_problems(api: HfApi, repo_id: str, revision: str, folder: LocalFolder, manifest: dict, token: str) -> list[str]:
    """What differs between the pushed revision and the manifest, from the Hub's file listing alone."""
    return list(_remote_differences(api, repo_id, revision, folder, manifest, token).values())


def _remote_differences(api: HfApi, repo_id: str, revision: str, folder: LocalFolder, manifest: dict, token: str) -> dict[str, str]:
    """Each file of the manifest, and the manifest, that ``revision`` lacks or holds with other content
    (LFS files by the sha256 the Hub computed, regular files by their git blob id), and each file in the
    configs' folders that the manifest does not list (an older version's shard, which ``load_dataset``
    would read too): path -> problem."""
    entries = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True, expand=True, token=token)
    remote = {e.path: e for e in entries if hasattr(e, "size")}
    expected = {path: file["sha256"] for path, file in manifest["files"].items()} | {MANIFEST: None}
    problems = {}
    for path, sha256 in expected.items():
        entry = remote.get(path)
        if entry is None:
            problems[path] = f"{path}: missing on the Hub"
        elif entry.lfs is not None and entry.lfs.sha256 != (sha256 or folder.sha256(path)):
            problems[path] = f"{path}: the Hub's sha256 differs from the manifest"
        elif entry.lfs is None and entry.blob_id != git_blob_sha1(folder.folder / path):
            problems[path] = f"{path}: the Hub's copy differs from the local file"
    for path in sorted(remote.keys() - expected.keys()):
        if path.startswith(CONFIG_FOLDERS):
            problems[path] = f"{path}: on the Hub but not in the manifest (a file of another version)"
    return problems


def _upload(api: HfApi, config: PushConfig, folder: LocalFolder, paths: list[str], stale: list[str], message: str, token: str,
            hub: Callable[[str, Callable[[], T]], T]) -> str | None:  # fmt: skip
    """Uploads ``paths`` file by file and commits them in bounded commits (one with --create-pr),
    deleting the ``stale`` files in the last; the oid of the last commit, None if there was nothing to do."""
    sizes = {path: (folder.folder / path).stat().st_size for path in paths}
    batches = _batches(sizes, None if config.create_pr else config.commit_bytes) or ([[]] if stale else [])
    where = {"repo_type": "dataset", "revision": config.branch, "create_pr": config.create_pr, "token": token}

    def upload(operation: CommitOperationAdd) -> None:
        hub(f"upload {operation.path_in_repo}", lambda: api.preupload_lfs_files(config.repo_id, additions=[operation], **where))

    def commit(operations: list[CommitOperationAdd | CommitOperationDelete], title: str) -> CommitInfo:
        return hub("commit", lambda: api.create_commit(config.repo_id, operations, commit_message=title, **where))

    oid = None
    with _hub_bars_off(), progress_bar(f"push {config.repo_id}", sum(sizes.values()), in_bytes=True) as advance:
        for number, batch in enumerate(batches, 1):
            operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder.folder / path)) for path in batch]
            for operation in operations:
                upload(operation)  # regular (small) files travel inside the commit itself
                advance(sizes[operation.path_in_repo])
            deletions = [CommitOperationDelete(path_in_repo=path) for path in stale] if number == len(batches) else []
            oid = commit(operations + deletions, message if len(batches) == 1 else f"{message} ({number}/{len(batches)})").oid
    return oid


def _batches(sizes: dict[str, int], limit: int | None) -> list[list[str]]:
    """The paths in commits of at most ``limit`` bytes (at least one file each; one commit if None),
    the card and manifest in the last one."""
    batches: list[list[str]] = []
    held = 0
    for path in sorted(set(sizes) - set(LAST)):
        if not batches or (limit is not None and held + sizes[path] > limit):
            batches.append([])
            held = 0
        batches[-1].append(path)
        held += sizes[path]
    if last := [path for path in LAST if path in sizes]:
        batches[-1:] = [(batches[-1] if batches else []) + last]
    return batches


@contextmanager
def _hub_bars_off() -> Iterator[None]:
    """huggingface_hub's own tqdm bars off while push shows its one bar in bytes."""
    was_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            enable_progress_bars()


def _write_token(api: HfApi, retry: RetryPolicy | None) -> str:
    """The token, checked to allow writes, before anything is uploaded."""
    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a write token")
    try:
        whoami = with_retries(lambda: api.whoami(token=token), "push: check the token", retry)
    except HfHubHTTPError as err:
        if status_of(err) not in (401, 403):
            raise
        raise UserError(f"the Hub refused the token ({status_of(err)}): use a valid write token") from None
    role = whoami.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise UserError("the token is read-only: push needs a write token (HF_TOKEN or `hf auth login`)")
    return token


def _refuse_public_repo(api: HfApi, repo_id: str, token: str, retry: RetryPolicy | None) -> None:
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


def _existing_tag(api: HfApi, config: PushConfig, token: str, retry: RetryPolicy | None) -> str | None:
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
        if status_of(err) != 409:
            raise
        refs = api.list_repo_refs(config.repo_id, repo_type="dataset", token=token)
        if not any(ref.name == config.tag and ref.target_commit == commit for ref in refs.tags):
            raise


def _delete_tag(api: HfApi, config: PushConfig, token: str) -> None:
    try:
        api.delete_tag(config.repo_id, tag=config.tag, repo_type="dataset", token=token)
    except HfHubHTTPError as err:
        if status_of(err) != 404:
            raise


def _imagenet(folder: LocalFolder) -> bool:
    return DatasetCard(folder.read_text("README.md")).data.get("license_name") == "imagenet"


def _http_problem(repo_id: str, err: HfHubHTTPError) -> str:
    status = status_of(err)
    cause = {
        401: "the token was refused",
        403: f"the token may not write to {repo_id}",
        404: f"{repo_id} or the revision does not exist",
        409: "conflict with the repository's current state",
    }.get(status, first_line(err))
    return f"push to {repo_id} failed ({status}): {cause}"
