"""Recipes: YAML files that carry a command's flags; command-line flags override them.

A command's settings are one dataclass of its stage's ``settings`` module (``TrainConfig``, ``BuildConfig`` …)
whose fields, declared with :func:`d2c_pack.core.options.flag`, are at once its command-line options,
its recipe keys and the arguments of the library function it calls. The command line merges a
recipe under its flags (``d2c_pack.cli``).

A recipe is named by path or by the name of one shipped in ``d2c_pack/recipes/`` (the
repository's ``recipes/`` folder): ``--recipe demo-scorer`` reads ``demo-scorer.yaml``.
Keys are the command's option names (``batch_size`` or ``batch-size``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from d2c_pack.core.errors import UserError, first_line

COMMAND_SECTIONS = ("train", "sample", "eval")


def shipped_recipes() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in (resources.files("d2c_pack") / "recipes").iterdir() if p.name.endswith(".yaml"))


def read_recipe(name_or_path: str, command: str | None = None) -> dict:
    """The keys a recipe (file path or shipped name) gives ``command``.

    A recipe may hold a section per command (``train:``, ``sample:``, ``eval:`` mappings) next to
    its top-level keys: a command with a section reads only that section; any other command
    reads the top-level keys (so the ``demo`` recipe drives ``build`` and, through its sections,
    ``train``, ``sample`` and ``eval``).
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
