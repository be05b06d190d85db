"""Recipes: YAML files that carry a command's flags; command-line flags override them.

A command's settings are one dataclass (``TrainConfig``, ``BuildConfig`` …) whose fields,
declared with :func:`flag`, are at once its command-line options, its recipe keys and the
arguments of the library function it calls.

A recipe is named by path or by the name of one shipped in ``d2c_pack/recipes/`` (the
repository's ``recipes/`` folder): ``--recipe demo-scorer`` reads ``demo-scorer.yaml``.
Keys are the command's option names (``batch_size`` or ``batch-size``).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import typer
import yaml

from d2c_pack.errors import UserError, first_line


def flag(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line option with this ``help`` (no default: required)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


COMMAND_SECTIONS = ("train", "sample", "eval")


def shipped_recipes() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in (resources.files("d2c_pack") / "recipes").iterdir() if p.name.endswith(".yaml"))


def read_recipe(name_or_path: str, command: str | None = None) -> dict:
    """The keys a recipe (file path or shipped name) gives ``command``.

    A recipe may hold a section per command (``train:``, ``sample:``, ``eval:`` mappings) next to
    its top-level keys: a command with a section reads only that section; any other command
    reads the top-level keys (so ``demo`` drives ``build`` and, through its ``train:`` section,
    ``train``).
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped = (resources.files("d2c_pack") / "recipes") / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise UserError(f"no recipe {name_or_path!r}: not a file, nor one of {', '.join(shipped_recipes())}")
        path = Path(str(shipped))
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {first_line(err)}") from None
    if not isinstance(recipe, dict):
        raise UserError(f"recipe {path} must be a mapping of option names to values")
    sections = {k: v for k, v in recipe.items() if k in COMMAND_SECTIONS and isinstance(v, dict)}
    chosen = sections.get(command, {k: v for k, v in recipe.items() if k not in sections})
    return {str(k).replace("-", "_"): v for k, v in chosen.items()}


def merge_recipe(ctx: typer.Context, recipe: dict, ignored: frozenset[str] = frozenset()) -> dict:
    """The command's parameters, with recipe values where no flag was given on the command line.

    Recipe values are converted by the option's own type, so a wrong type is refused the same
    way a wrong flag is. Keys in ``ignored`` (another command's settings, e.g. a build recipe's
    budget given to ``score``) are skipped; any other unknown key is an error.
    """
    params = {p.name: p for p in ctx.command.params if p.name != "recipe"}
    merged = dict(ctx.params)
    for key, value in recipe.items():
        if key in ignored:
            continue
        if key not in params:
            raise UserError(f"unknown recipe key {key!r} for `{ctx.info_name}`; known: {', '.join(sorted(params))}")
        if ctx.get_parameter_source(key).name != "DEFAULT":  # a flag given on the command line wins
            continue
        try:
            merged[key] = None if value is None else params[key].process_value(ctx, value)
        except typer.BadParameter as err:
            raise UserError(f"recipe key {key!r}: {err.message}") from None
    return merged
