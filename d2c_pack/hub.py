"""``d2c-pack push``: publish a built dataset folder as a versioned Hub dataset repository.

create_repo (dataset; ImageNet-derived data private and gated unless told otherwise) →
upload_folder (re-running uploads only what the repository lacks) → create_tag on the exact
commit made → the ``load_dataset`` line that reads that version. The token comes from
``HF_TOKEN`` or the stored login and is checked before anything is uploaded; it is never
printed or written anywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from huggingface_hub import DatasetCard, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from d2c_pack.errors import UserError, first_line
from d2c_pack.verify import LocalFolder, read_manifest, verify


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
    token = _write_token(api)
    restricted = _imagenet(folder)  # ImageNet's terms do not allow public redistribution
    private = restricted if config.private is None else config.private
    gated = restricted if config.gated is None else config.gated
    try:
        _refuse_existing_tag(api, config, token)
        api.create_repo(config.repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
        if gated:
            api.update_repo_settings(config.repo_id, repo_type="dataset", gated="auto", token=token)
        commit = api.upload_folder(
            repo_id=config.repo_id, repo_type="dataset", folder_path=str(folder.folder), revision=config.revision,
            commit_message=config.message or f"d2c-pack: {manifest['recipe']['selector']} subset, {manifest['selection']['rows']} rows",
            create_pr=config.create_pr, token=token,
        )  # fmt: skip
        if config.tag:
            if config.force:
                _delete_tag(api, config, token)
            api.create_tag(config.repo_id, tag=config.tag, revision=commit.oid, repo_type="dataset", token=token)
    except HfHubHTTPError as err:
        raise UserError(_http_problem(config.repo_id, err)) from None
    return PushResult(config.repo_id, commit.oid, config.tag or commit.oid)


def _write_token(api: HfApi) -> str:
    """The token, checked to allow writes, before anything is uploaded."""
    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a write token")
    try:
        whoami = api.whoami(token=token)
    except HfHubHTTPError as err:
        raise UserError(f"the Hub refused the token ({_status(err)}): use a valid write token") from None
    role = whoami.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise UserError("the token is read-only: push needs a write token (HF_TOKEN or `hf auth login`)")
    return token


def _refuse_existing_tag(api: HfApi, config: PushConfig, token: str) -> None:
    if not config.tag or config.force:
        return
    try:
        tags = {ref.name for ref in api.list_repo_refs(config.repo_id, repo_type="dataset", token=token).tags}
    except RepositoryNotFoundError:
        return  # a new repository has no tags
    if config.tag in tags:
        raise UserError(f"{config.repo_id} already has the tag {config.tag!r}; choose another or pass --force to move it")


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
