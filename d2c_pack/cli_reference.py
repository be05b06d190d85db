"""The CLI reference (``docs/cli.md``), generated from the commands' settings and their flag metadata.

Every command's options are the :func:`~d2c_pack.core.options.flag` fields of its settings dataclass,
so the reference is made from the same declarations as ``--help``: what a flag does, its default
and its panel are written once. ``python -m d2c_pack.cli_reference > docs/cli.md`` rewrites the
file; a test fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from d2c_pack.cli import COMMANDS, RECIPE_HELP, CommandSpec
from d2c_pack.core.options import is_option, is_required

HEADER = """# CLI reference

Generated from the commands' settings by `python -m d2c_pack.cli_reference > docs/cli.md`
(a test fails when this file is stale); `d2c-pack COMMAND --help` shows the same. Options are
grouped in the panels `--help` shows; a recipe (`--recipe`) may carry any option of a command
that takes one, and flags on the command line win. User errors print one line and exit with
status 2; `d2c-pack --debug COMMAND …` shows the traceback instead.
"""


def _spellings(field: dataclasses.Field) -> str:
    flag = f"--{field.name.replace('_', '-')}"
    names = field.metadata["names"] or ((f"{flag}/--no-{flag[2:]}",) if field.type in ("bool", bool) else (flag,))  # typer's spelling of a switch
    return " ".join(f"`{name}`" for name in names)


def _default(field: dataclasses.Field) -> str:
    if is_required(field):
        return "required"
    if field.default is dataclasses.MISSING:
        return "computed (see its help)"  # a factory: the value depends on the machine or the environment
    return "none" if field.default is None else f"`{_plain(field.default)}`"


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def command_reference(name: str, spec: CommandSpec) -> str:
    """One command's section: description, usage, arguments, options by panel, examples."""
    fields = [f for f in dataclasses.fields(spec.config_class) if is_option(f)]
    arguments = [f for f in fields if f.metadata["argument"]]
    options = [f for f in fields if not f.metadata["argument"]]
    usage = " ".join([f"d2c-pack {name}", *(f.name.upper() if is_required(f) else f"[{f.name.upper()}]" for f in arguments), "[OPTIONS]"])
    lines = [f"## `d2c-pack {name}`", "", spec.help, "", f"```\n{usage}\n```", ""]
    for field in arguments:
        lines.append(f"- `{field.name.upper()}` ({'required' if is_required(field) else 'optional'}): {field.metadata['help']}")
    if arguments:
        lines.append("")
    panels: dict[str, list[dataclasses.Field]] = {}
    for field in options:
        panels.setdefault(field.metadata["panel"] or "Options", []).append(field)
    for panel, members in panels.items():
        lines += [f"**{panel}**", "", "| option | default | |", "|---|---|---|"]
        lines += [f"| {_spellings(f)} | {_cell(_default(f))} | {_cell(f.metadata['help'])} |" for f in members]
        lines.append("")
    if spec.recipe:
        lines += [f"`--recipe NAME_OR_PATH`: {RECIPE_HELP}", ""]
    lines += ["Examples:", "", "```bash", *spec.examples, "```", ""]
    return "\n".join(lines)


def cli_reference() -> str:
    """The whole reference: a header, a table of the commands, then one section per command."""
    table = ["| command | does |", "|---|---|"] + [f"| [`{name}`](#d2c-pack-{name}) | {_cell(_first_sentence(spec.help))} |" for name, spec in COMMANDS.items()]
    sections = [command_reference(name, spec) for name, spec in COMMANDS.items()]
    return "\n".join([HEADER, *table, "", *sections]).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(cli_reference())
