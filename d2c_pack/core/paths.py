"""Telling a local folder from a Hub name ``ORG/NAME[@REVISION]``, and the default cache folder, with the standard library alone.

Light on purpose: the settings call it when they are made, so that a mistyped folder fails in the
time the command line takes to start, before any heavy library is imported or the Hub is asked.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from d2c_pack.core.errors import UserError


def local_folder(name: str) -> Path | None:
    """The folder ``name`` names, or None for a name that is not a path (a Hub dataset).

    Raises:
        UserError: ``name`` reads as a path (see :func:`looks_local`) but is no folder: a file, or a mistyped
            folder, for which the closest folder there is is named.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"`{name}` is a file, not a dataset folder")
    if looks_local(name):
        raise UserError(f"no folder `{name}`" + (f" (did you mean `{close}`?)" if (close := closest_folder(path)) else ""))
    return None


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a path rather than a Hub name: it starts with ``.``, ``/`` or ``~``, something of
    that name exists, or its first component is a local folder (``out/digits-d2cc``)."""
    return name.startswith((".", "/", "~")) or Path(name).exists() or Path(name.split("/")[0]).is_dir()


def closest_folder(path: Path) -> str | None:
    """The folder whose name is closest to the first missing component of ``path`` (a typo's likely target), as the
    user would write it; None if nothing is close."""
    parent, missing = Path(path.parts[0]) if path.is_absolute() else Path("."), list(path.parts[1:] if path.is_absolute() else path.parts)
    while missing and (parent / missing[0]).is_dir():
        parent = parent / missing.pop(0)
    if not missing or not parent.is_dir():
        return None
    siblings = [child.name for child in parent.iterdir() if child.is_dir()]
    if not (match := difflib.get_close_matches(missing[0], siblings, n=1, cutoff=0.75)):
        return None
    candidate = parent / match[0] / Path(*missing[1:]) if len(missing) > 1 else parent / match[0]
    return candidate.as_posix() if candidate.is_dir() else None


def default_work_dir() -> str:
    """``$D2C_PACK_CACHE``, else ``$XDG_CACHE_HOME/d2c-pack``, else ``~/.cache/d2c-pack``."""
    if "D2C_PACK_CACHE" in os.environ:
        return os.environ["D2C_PACK_CACHE"]
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d2c-pack")
