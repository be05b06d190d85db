"""Names of models and sources that a plugin package provides, such as the embedded demo's ``demo:digits``.

The library never imports a plugin's code to learn its names: a plugin registers them here when
it is imported, and the registry imports the plugin the first time a name with its prefix is
asked for (``PLUGINS``: ``demo:…`` names come from :mod:`d2c_pack.demo`). A run that names no
plugin model loads nothing of the plugin.

- a *model* name stands for the local file or folder of its weights (what ``from_pretrained``,
  ``load_backbone`` or timm's ``local-dir:`` reads): :func:`resolve_model_path`;
- a *source* name stands for a function that opens the source: :func:`source_opener`.

Any other name (a Hub id, a path, ``timm/…``) passes through unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d2c_pack.core.errors import SourceError, UserError

PLUGINS = {"demo": "d2c_pack.demo"}
"""Name prefix → the package that registers that prefix's names on import (the only import of a plugin by the library)."""

_models: dict[str, Callable[[], Path]] = {}
# Openers return a d2c_pack.sources.image_source.ImageSource; not named here, as sources.py imports this module.
_sources: dict[str, Callable[[str], Any]] = {}


def register_model(name: str, locate: Callable[[], Path]) -> None:
    """Makes ``name`` stand for the weights at ``locate()`` (called when the name is used, so it may fail then)."""
    _models[name] = locate


def register_source(name: str, open_source: Callable[[str], Any]) -> None:
    """Makes ``name`` a source spec that ``open_source(spec)`` opens (it returns an ``ImageSource``)."""
    _sources[name] = open_source


def _plugin_prefix(name: str) -> str | None:
    """The plugin prefix of ``name`` (its plugin imported, so its names are registered), or None for a plain name."""
    prefix, colon, _ = name.partition(":")
    if not colon or prefix not in PLUGINS:
        return None
    importlib.import_module(PLUGINS[prefix])
    return prefix


def _available(names: dict, prefix: str) -> str:
    return ", ".join(sorted(name for name in names if name.startswith(prefix + ":")))


def resolve_model_path(name_or_path: str) -> str:
    """The local weights of a plugin model (``demo:digits`` → its folder); any other name or path as given."""
    prefix = _plugin_prefix(name_or_path)
    if prefix is None:
        return name_or_path
    if name_or_path not in _models:
        raise UserError(f"unknown {prefix} model {name_or_path!r}; available: {_available(_models, prefix)}")
    return str(_models[name_or_path]())


def source_opener(spec: str) -> Callable[[str], Any] | None:
    """The function that opens a plugin source (``demo:digits``), or None when ``spec`` names none (a path, ``hf:…``)."""
    prefix = _plugin_prefix(spec)
    if prefix is None:
        return None
    if spec not in _sources:
        raise SourceError(f"unknown {prefix} source {spec!r}; available: {_available(_sources, prefix)}")
    return _sources[spec]
