"""Progress of the long loops of every stage: rich bars on a terminal, plain lines in logs.

On a terminal (stderr is one) a stage draws a rich bar. Written to a file or a pipe (CI, ``nohup``, a
cluster job) a bar would show only at the end, so there each stage prints a plain line to stderr
every tenth of the work or every :data:`LINE_SECONDS`, whichever comes first: what it has done, the
rate and the time left, and a last line when it ends. A stage with nothing left to do (cached, or
finished before) prints one line saying so instead of an empty bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
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

LINE_SECONDS = 30.0  # at most this long between two plain lines
LINE_PARTS = 10  # and a line every tenth of the work,
LINE_GAP = 2.0  # but not within this many seconds of the last: a loop of a second prints its last line alone
UNITS = {"images_per_second": "images/s"}  # values shown with a unit after them, not a name before


class Advance:
    """What a stage calls as it goes: ``advance(n=1, description=None)``, and ``advance.log(**values)`` where it
    reads figures anyway (the trainer's log steps: loss, images/s), which are shown with the progress."""

    def __call__(self, n: int = 1, description: str | None = None) -> None:
        """``n`` more units done; ``description`` replaces the stage's name on a terminal."""

    def log(self, **values: float) -> None:
        """Figures read at this point, shown beside the count (on a terminal, in the bar's description)."""


class _Bar(Advance):
    def __init__(self, progress: Progress, task: int, description: str):
        self.progress, self.task, self.description = progress, task, description

    def __call__(self, n: int = 1, description: str | None = None) -> None:
        self.progress.update(self.task, advance=n, **({"description": description} if description else {}))

    def log(self, **values: float) -> None:
        self.progress.update(self.task, description=f"{self.description} {format_values(values, ' ')}")


class _Lines(Advance):
    """Plain lines for logs: one every 1/``LINE_PARTS`` of the work or ``LINE_SECONDS``, and one at the end.

    With ``lines_from_log`` the lines come from :meth:`log` calls only, so each carries the figures read there."""

    def __init__(self, description: str, total: int, completed: int, *, unit: str, in_bytes: bool, lines_from_log: bool):
        self.description, self.total, self.done, self.start = description, total, completed, completed
        self.unit, self.in_bytes, self.lines_from_log = unit, in_bytes, lines_from_log
        self.tic = self.last_time = time.monotonic()
        self.next_part = completed * LINE_PARTS // total + 1  # the next line once done reaches next_part/LINE_PARTS of total
        self.printed_at = completed

    def __call__(self, n: int = 1, description: str | None = None) -> None:
        self.done += n
        if not self.lines_from_log and self._due():
            self._print({})

    def log(self, **values: float) -> None:
        if self._due() or self.done >= self.total:
            self._print(values)

    def end(self) -> None:
        if self.done > self.printed_at:
            self._print({})

    def _due(self) -> bool:
        waited = time.monotonic() - self.last_time
        return waited >= LINE_SECONDS or (self.done * LINE_PARTS >= self.next_part * self.total and waited >= LINE_GAP)

    def _print(self, values: dict[str, float]) -> None:
        elapsed = time.monotonic() - self.tic
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"{self._amount(self.done)}/{self._amount(self.total)}{unit} ({self.done / self.total:.0%})"]
        parts += [format_values(values, ", ")] if values else []
        parts.append(f"{self._amount(rate)}{unit}/s")
        if self.done < self.total:
            parts.append(f"{_duration((self.total - self.done) / rate) if rate > 0 else '?'} left")
        else:
            parts.append(f"done in {_duration(elapsed)}")
        print(f"{self.description}: {', '.join(parts)}", file=sys.stderr, flush=True)
        self.last_time, self.printed_at = time.monotonic(), self.done
        self.next_part = self.done * LINE_PARTS // self.total + 1

    def _amount(self, value: float) -> str:
        if self.in_bytes:
            return f"{value / 1e6:,.1f} MB"
        return f"{value:,.0f}" if value >= 10 or float(value).is_integer() else f"{value:.2f}"


def format_values(values: dict[str, float], separator: str) -> str:
    """``loss 0.1234, 85.3 images/s``: 4 significant digits, a unit where it has one."""
    return separator.join(f"{value:.1f} {UNITS[key]}" if key in UNITS else f"{key} {value:.4g}" for key, value in values.items())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def on_terminal() -> bool:
    """Whether progress is drawn as bars: stderr is a terminal (rich's test, which also honours ``FORCE_TERMINAL``)."""
    return Console(stderr=True).is_terminal


@contextmanager
def progress_bar(
    description: str, total: int, completed: int = 0, *, in_bytes: bool = False, unit: str = "", lines_from_log: bool = False
) -> Iterator[Advance]:
    """Shows a stage's progress on stderr (counts, or bytes with the rate when ``in_bytes``); yields its :class:`Advance`.

    Args:
        description: The stage's name, first on its bar or lines.
        total: Units of work in all.
        completed: Units done before (a resumed stage).
        in_bytes: Count bytes (shown in MB, with the transfer rate).
        unit: The units' name in plain lines (``"steps"``).
        lines_from_log: Plain lines only at :meth:`Advance.log` calls, with the figures read there.
    """
    if completed >= total:  # cached or finished before: one line, not an empty bar
        print(f"{description}: nothing to do" if total == 0 else f"{description}: all {total:,}{' ' + unit if unit else ''} done before", file=sys.stderr, flush=True)
        yield Advance()
        return
    if not on_terminal():
        lines = _Lines(description, total, completed, unit=unit, in_bytes=in_bytes, lines_from_log=lines_from_log)
        yield lines
        lines.end()
        return
    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), *counts, TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, completed=completed), description)


def quiet_loading_bars() -> None:
    """transformers' own "Loading weights" bars off: loading a model is a moment of a stage, not a stage to watch."""
    from transformers.utils import logging

    logging.disable_progress_bar()
