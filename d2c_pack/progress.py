"""Rich progress bars for the long loops of every stage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0, *, in_bytes: bool = False) -> Iterator[Callable[..., None]]:
    """Shows one bar on stderr (counts, or bytes with the rate when ``in_bytes``); yields ``advance(n=1, description=None)``."""
    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), *counts, TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, completed=completed)

        def advance(n: int = 1, description: str | None = None) -> None:
            progress.update(task, advance=n, **({"description": description} if description else {}))

        yield advance
