"""Option metadata: a settings-dataclass field that is also a command-line option and a recipe key.

The library's settings dataclasses (the ``settings`` module of each stage) declare their options with :func:`flag`;
only the command line (``d2c_pack.cli``) turns the metadata into typer options. This module
imports nothing but the standard library and :mod:`d2c_pack.core.errors`, so declaring an option costs nothing at import time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from d2c_pack.core.errors import UserError

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

# Help texts several commands share.
DEVICE_HELP = "'auto' (this rank's GPU if any, else the CPU), 'cpu', 'cuda', 'cuda:1', …"
NUM_HEADS_HELP = (
    "Attention heads of an official or REPA .pt whose width and depth are no DiT/SiT size (default: the size's; "
    "such a file is refused without it, never guessed)."
)


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


def check_positive(settings: object, names: tuple[str, ...]) -> None:
    """Refuses a named setting that is set and not positive, naming its flag."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
