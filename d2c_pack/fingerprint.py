"""Content fingerprints (sha256 hex) that key caches and record provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content, which the Hub reports as ``blob_id`` for regular (non-LFS) files."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_json(value: object) -> str:
    """sha256 of a JSON-serialisable value, keys sorted."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def module_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in name order).

    Identifies the weights a model was loaded with, wherever they came from (Hub cache, local
    folder, timm file), without finding the files behind ``from_pretrained``.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")


def weight_files_sha256(name_or_path: str) -> dict[str, str]:
    """sha256 of the weight files behind a model name: a file, a folder, or a Hub repository in the local cache.

    Hub names (``org/name``, ``timm/name``, ``hf-hub:org/name``) are looked up in the cache that
    ``from_pretrained`` filled, without network; a name whose files are not there gives {}.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from d2c_pack.demo import resolve_model_path

    path = Path(resolve_model_path(name_or_path).removeprefix("local-dir:"))
    if path.is_file():
        return {path.name: sha256_file(path)}
    if not path.is_dir():
        repo_id, _, revision = name_or_path.removeprefix("hf-hub:").partition("@")
        try:
            path = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=list(WEIGHT_PATTERNS), local_files_only=True))
        except (LocalEntryNotFoundError, ValueError, OSError):
            return {}
    files = sorted(p for pattern in WEIGHT_PATTERNS for p in path.rglob(pattern))
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in files}
