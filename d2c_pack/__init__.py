"""d2c-pack: Diffusion Dataset Condensation (D2C) as a tool.

Score a labelled image dataset with a class-conditional diffusion model, select a small
subset per class by interval sampling, attach training-ready columns, publish it on the
Hugging Face Hub, and train SiT models from it::

    import d2c_pack

    folder = d2c_pack.build("out/digits-d2c", recipe="demo")
    assert d2c_pack.verify(folder) == []
    model = d2c_pack.train("runs/digits", data=str(folder), recipe="demo", steps=600)

The functions below live in :mod:`d2c_pack.api` and are loaded on first use, so that
``import d2c_pack`` (and the CLI's start) does not import torch and the model libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from d2c_pack.version import __version__

API = ("build", "score_source", "select", "push", "verify", "load_backbone", "train", "load_subset")
__all__ = ["__version__", *API]

if TYPE_CHECKING:
    from d2c_pack.api import build, load_backbone, load_subset, push, score_source, select, train, verify  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in API:
        from d2c_pack import api

        return getattr(api, name)
    raise AttributeError(f"module 'd2c_pack' has no attribute {name!r}")
