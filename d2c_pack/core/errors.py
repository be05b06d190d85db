"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A problem with the user's input (paths, flags, recipes, data), not a bug.

    The CLI shows ``error: <message>`` and exits with status 2; ``--debug`` shows the traceback.
    """


class SourceError(UserError):
    """A source that is missing, empty or cannot be read as a labelled image dataset."""


def first_line(error: BaseException) -> str:
    """An exception's message as one line (its first), for a ``UserError`` that wraps it."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Imports ``module``, a dependency of an optional feature, or says which extra installs it.

    The core install (``pip install d2c-pack``) builds, pushes, verifies, inspects and trains;
    the demo and evaluation packages come with ``d2c-pack[demo]`` and ``d2c-pack[eval]``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{needed_for} needs {module.split('.')[0]}, which is not installed: pip install 'd2c-pack[{extra}]'") from None
