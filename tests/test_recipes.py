"""Every shipped recipe loads into the settings of the command its own comments tell users to run."""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
import sys
from importlib import resources
from unittest import mock

import pytest

from d2c_pack import cli
from d2c_pack.core.recipe import read_recipe, shipped_recipes

# The library function each command hands its settings to; the test stops there.
ENTRY_POINTS = {
    "score": ("d2c_pack.selection.score", "score_source"),
    "build": ("d2c_pack.pipeline.build", "build_folder"),
    "train": ("d2c_pack.training.loop", "train"),
    "train-encoder": ("d2c_pack.training.encoder", "train_encoder"),
}
# A documented command line: `d2c-pack CMD ...` or `torchrun ... -m d2c_pack CMD ...`, or a benchmark script.
COMMAND_LINE = re.compile(r"^#\s+(?:d2c-pack|torchrun .*-m d2c_pack)\s+(\S+)(.*?--recipe.*?)(?:\s{2,}\(.*)?$")
BENCHMARK_LINE = re.compile(r"^#\s+python (benchmarks/\S+\.py) .*--recipe (\S+)")


class Reached(Exception):
    """Raised by the stubbed library function, carrying the settings it was given."""

    def __init__(self, config: object):
        self.config = config


def documented_commands(name: str) -> list[tuple[str, list[str]]]:
    """(command, its arguments) of every ``d2c-pack`` line in the recipe's comments."""
    text = (resources.files("d2c_pack") / "recipes" / f"{name}.yaml").read_text()
    return [(m[1], shlex.split(m[2])) for line in text.splitlines() if (m := COMMAND_LINE.match(line))]


def reach_library(monkeypatch: pytest.MonkeyPatch, command: str, args: list[str]) -> object:
    """Runs ``d2c-pack COMMAND ARGS`` through the console entry point up to the library call; returns its settings."""
    module_name, function = ENTRY_POINTS[command]

    def stop(config: object, *_, **__) -> None:
        raise Reached(config)

    monkeypatch.setattr(importlib.import_module(module_name), function, stop)
    monkeypatch.setattr(cli, function, stop, raising=False)  # where the CLI imported it by name
    with mock.patch.object(sys, "argv", ["d2c-pack", command, *args]), pytest.raises(Reached) as reached:
        cli.main()
    return reached.value.config


def same(value: object, expected: object) -> bool:
    """A recipe value equals the setting it became (YAML's 96 is the option's "96" where the option is a string; 'none' is None)."""
    return value == expected or str(value) == str(expected) or (value is None and expected == "none")


@pytest.mark.parametrize("name", shipped_recipes())
def test_each_shipped_recipe_loads_into_the_command_it_names(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # the recipes' relative --out: a demo already built by the Quickstart would be up to date
    commands = documented_commands(name)
    text = (resources.files("d2c_pack") / "recipes" / f"{name}.yaml").read_text()
    if not commands:  # a benchmark's recipe: its script reads it, and its --tiny test runs it
        script = next(m for line in text.splitlines() if (m := BENCHMARK_LINE.match(line)))
        assert script[2] == name and (resources.files("d2c_pack").parent / script[1]).is_file()
        return
    for command, args in commands:
        assert command in ENTRY_POINTS, f"recipe {name} names `{command}`, which takes no recipe"
        config = reach_library(monkeypatch, command, args)
        given = dict(zip(args[::2], args[1::2]))  # flags on the documented line win over the recipe
        fields = {f.name for f in dataclasses.fields(config)}
        for key, value in read_recipe(name, command).items():
            assert key in fields, f"{name}: `{command}` has no setting {key!r}"
            if f"--{key.replace('_', '-')}" not in given:
                assert same(getattr(config, key), value), f"{name}: {command} got {key}={getattr(config, key)!r}, recipe says {value!r}"
