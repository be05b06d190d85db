"""The local Hub for tests: the ``hub`` fixture, and :func:`use_hub` to point the already-imported clients at a server.

The server itself is :mod:`d2c_pack.testing.hub_server` (it ships with the package, so a user can try ``push``
offline); this module re-exports it. Use it from a test file through the ``hub`` fixture (``tests/`` is on
``sys.path`` under pytest)::

    import hub_server
    from hub_server import READ_TOKEN, HubServer

    hub = hub_server.hub  # makes the fixture available in this module (an assignment keeps ruff's F811 quiet)

    def test_push(hub: HubServer):  # HfApi() / load_dataset now talk to hub.url, as HF_TOKEN = WRITE_TOKEN
        HfApi().create_repo("tester/data", repo_type="dataset")

or start one yourself: ``with HubServer(tokens=...) as server: use_hub(server, monkeypatch, tmp_path / "home")``.

Pointing the clients at it. ``huggingface_hub.constants`` and ``datasets.config`` read ``HF_ENDPOINT``,
``HF_HOME``, ``HF_HUB_DISABLE_XET``, ``HF_HUB_OFFLINE``... once, at import time, and ``tests/conftest.py`` imports
``datasets`` (and sets ``HF_HUB_OFFLINE=1``) long before any fixture runs, so setting the environment is not
enough: :func:`use_hub` sets the variables (for subprocesses) *and* monkeypatches the already-imported constants:
``constants.ENDPOINT`` / ``HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_url``, hence ``hf_hub_download`` and
``datasets.utils.hub.hf_dataset_url``), ``constants.HF_HUB_DISABLE_XET`` (``is_xet_available()`` reads it; with
``hf_xet`` installed uploads would otherwise go to a Xet CAS, never to the LFS batch endpoint), the cache and token
paths, ``HF_HUB_OFFLINE``; ``datasets.config.HF_ENDPOINT`` / ``HUB_DATASETS_URL`` / caches / offline switches,
``HF_UPDATE_DOWNLOAD_COUNTS`` and ``USE_PARQUET_EXPORT`` off (both would contact other hosts). The token is given
as ``HF_TOKEN`` (read at call time). It also closes the shared httpx client and clears ``HfFileSystem``'s
instance cache, before and after, so nothing leaks between servers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from d2c_pack.testing import hub_server as _shipped
from d2c_pack.testing.hub_server import READ_TOKEN, WRITE_TOKEN, HubServer, git_blob_sha

__all__ = ["READ_TOKEN", "WRITE_TOKEN", "HubServer", "git_blob_sha", "hub", "use_hub"]

# The handler writes an answer's headers, then its body: with Nagle's algorithm on, the body waits for the client's
# delayed ACK of the headers, 40 ms an answer on Linux (a push makes dozens of requests). socketserver's own switch
# sets TCP_NODELAY on each connection, for every server a test process starts (the tests' and the benchmarks').
_shipped._Handler.disable_nagle_algorithm = True


# -- pointing the real clients at a server ---------------------------------------------------------------------
def use_hub(server: HubServer, monkeypatch: pytest.MonkeyPatch, home: Path, token: str | None = WRITE_TOKEN) -> None:
    """Point ``huggingface_hub`` and ``datasets`` (already imported) at ``server``, caches under ``home``."""
    import datasets
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    home = Path(home)
    env = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
           "HF_DATASETS_CACHE": str(home / "datasets"), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0",
           "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    patches = {
        constants: {"ENDPOINT": server.url, "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
                    "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"}, "HF_HUB_DISABLE_XET": True, "HF_HOME": str(home),
                    "HF_HUB_CACHE": str(home / "hub"), "HUGGINGFACE_HUB_CACHE": str(home / "hub"), "HF_ASSETS_CACHE": str(home / "assets"),
                    "HF_XET_CACHE": str(home / "xet"), "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
                    "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_IMPLICIT_TOKEN": False},
        datasets.config: {"HF_ENDPOINT": server.url, "HUB_DATASETS_URL": server.url + "/datasets/{repo_id}/resolve/{revision}/{path}",
                          "HF_DATASETS_CACHE": home / "datasets", "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
                          "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted", "HF_HUB_OFFLINE": False,
                          "HF_DATASETS_OFFLINE": False, "HF_UPDATE_DOWNLOAD_COUNTS": False, "USE_PARQUET_EXPORT": False},
        _http: {"_HUB_ORIGINS": _http._HUB_ORIGINS | {_http._url_origin(server.url)}},
    }  # fmt: skip
    for module, values in patches.items():
        for name, value in values.items():
            monkeypatch.setattr(module, name, value)
    _reset_clients()


def _reset_clients() -> None:
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import close_session

    close_session()
    HfFileSystem.clear_instance_cache()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    """A running :class:`HubServer` (tokens ``WRITE_TOKEN``: write, ``READ_TOKEN``: read) the clients point at, as ``WRITE_TOKEN``."""
    with HubServer(tokens={WRITE_TOKEN: "write", READ_TOKEN: "read"}) as server:
        use_hub(server, monkeypatch, tmp_path / "hf-home")
        yield server
        _reset_clients()
