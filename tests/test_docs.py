"""The README and docs/: the CLI reference is current, every relative link resolves, the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from d2c_pack.cli import COMMANDS, app
from d2c_pack.cli_reference import cli_reference

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == cli_reference(), "docs/cli.md is stale: run python -m d2c_pack.cli_reference > docs/cli.md"


def test_cli_reference_covers_every_command_and_option() -> None:
    registered = set(typer.main.get_command(app).commands)
    assert registered == set(COMMANDS)
    reference = cli_reference()
    for name in registered:
        assert f"## `d2c-pack {name}`" in reference
    assert "`--sampling-steps`" in reference and "`--private/--public`" in reference and "`--streaming/--no-streaming`" in reference


def test_markdown_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)} → {target}"
        for page in pages
        for target in LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, broken


def test_readme_is_short_and_names_no_commit() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "## Quickstart" in text
    assert not re.search(r"\bcommit [0-9a-f]{7}\b", text), "commit hashes in prose go stale: put figures in docs/results.md with a date"
