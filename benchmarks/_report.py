"""What every benchmark here reports with: its command line's common options, a rich table, a JSON file.

The scripts beside this file import it by name: ``python benchmarks/NAME.py`` puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table


def timing_parser(description: str, *, repeat: int, out: str) -> argparse.ArgumentParser:
    """A parser with ``--repeat`` (fresh runs per figure) and ``--out`` (the JSON report), for a benchmark to add to."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--out", default=out)
    return parser


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """The figures as a table on the terminal, every column right-aligned."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def write_report(path: str | Path, results: list[dict], **settings: object) -> None:
    """``{"machine", "cpus", **settings, "results"}`` as indented JSON at ``path``, its folder made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": platform.platform(), "cpus": os.cpu_count(), **settings, "results": results}
    path.write_text(json.dumps(payload, indent=2) + "\n")
