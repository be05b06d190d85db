"""Content fingerprints (sha256 hex) that key caches and record provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from d2c_pack.core.errors import UserError

if TYPE_CHECKING:
    import torch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


FILE_ENDS = 4096  # bytes hashed at each end of a source image file


def file_ends_sha256(path: Path) -> str:
    """sha256 of a file's size and its first and last 4 KiB (so of all of it up to 8 KiB).

    What a local image folder's fingerprint takes of each file: two small reads, at any scale, and
    no modification time, so a copy of the folder fingerprints as its original. An edit is seen when
    it changes the size, the header or the end: a PNG ends with the checksum of all its pixels and
    a JPEG's coded data runs to its end, so a re-encoded image almost never keeps all three.
    """
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        file.seek(0)
        head = file.read(FILE_ENDS)
        file.seek(max(size - FILE_ENDS, len(head)))
        tail = file.read()
    return hashlib.sha256(b"%d\0" % size + head + tail).hexdigest()


def parquet_footer_sha256(path: Path) -> str:
    """sha256 of a parquet file's size and footer: its schema, row groups, column statistics and byte offsets.

    What a local parquet source's fingerprint takes of each file: a few kilobytes at the end, read
    whatever the file's size, and no modification time, so a copy fingerprints as its original.
    """
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        file.seek(max(0, size - 8))
        end = file.read()  # footer length (4 bytes, little-endian) and the magic "PAR1"
        length = int.from_bytes(end[:4], "little") if len(end) == 8 and end[4:] == b"PAR1" else 0
        file.seek(max(0, size - 8 - length))
        footer = file.read()
    return hashlib.sha256(b"%d\0" % size + footer).hexdigest()


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
    import torch  # here, not at the top: sources fingerprint their files without loading torch

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
    ``from_pretrained`` filled, without network. A model with no weight file to hash there is a
    ``UserError``: the manifest promises every model's hashes, so it never records an empty list.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from d2c_pack.core.registry import resolve_model_path

    path = Path(resolve_model_path(name_or_path).removeprefix("local-dir:"))
    if path.is_file():
        return {path.name: sha256_file(path)}
    if not path.is_dir():
        repo_id, _, revision = name_or_path.removeprefix("hf-hub:").partition("@")
        try:
            path = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=list(WEIGHT_PATTERNS), local_files_only=True))
        except (LocalEntryNotFoundError, ValueError, OSError) as err:
            raise UserError(
                f"cannot hash the weights of {name_or_path!r} for the manifest: not a file, a folder or a model in the "
                f"local Hugging Face cache ({' '.join(str(err).split())[:200]}); download it with `hf download {repo_id}`"
            ) from None
    files = sorted(p for pattern in WEIGHT_PATTERNS for p in path.rglob(pattern))
    if not files:
        raise UserError(f"cannot hash the weights of {name_or_path!r} for the manifest: {path} holds no {', '.join(WEIGHT_PATTERNS)} file")
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in files}
