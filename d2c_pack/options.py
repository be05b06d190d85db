"""Option metadata: a settings-dataclass field that is also a command-line option and a recipe key.

The library's settings dataclasses (``d2c_pack.configs``) declare their options with :func:`flag`;
only the command line (``d2c_pack.cli``) turns the metadata into typer options. This module
imports nothing but the standard library, so declaring an option costs nothing at import time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The help panels options are grouped under in ``--help``, in the order a command's work runs.
SOURCE = "Source"
SCORING = "Scoring"
SELECTION = "Selection"
ATTACH = "Attach"
MODEL = "Model"
TRAINING = "Training"
SAMPLING = "Sampling"
EVALUATION = "Evaluation"
CARD = "Dataset card"
OUTPUT = "Output"
RUN = "Run"


def flag(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    panel: str | None = None,
    factory: Any = dataclasses.MISSING,
    argument: bool = False,
    names: tuple[str, ...] = (),
) -> Any:
    """A dataclass field that is also a command-line option (no default: required).

    Args:
        default: The option's default; leave it out for a required setting.
        help: The option's help text.
        panel: The ``--help`` panel the option is listed under (one of this module's constants).
        factory: A function giving the default, instead of ``default``.
        argument: A positional argument instead of an option.
        names: The option's spellings when they are not ``--field-name`` (e.g. ``("--private/--public",)``).

    Returns:
        A ``dataclasses.field`` carrying the metadata.
    """
    metadata = {"help": help, "panel": panel, "argument": argument, "names": names}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def is_option(field: dataclasses.Field) -> bool:
    """Whether a settings field was declared with :func:`flag` (a plain field is for library callers only)."""
    return "help" in field.metadata


def is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def display_name(field: dataclasses.Field) -> str:
    """How a user names the setting: ``--field-name`` (its first spelling), or ``NAME`` for an argument."""
    if field.metadata.get("argument"):
        return field.name.upper()
    names = field.metadata.get("names")
    return names[0].split("/")[0] if names else f"--{field.name.replace('_', '-')}"
