"""Rich progress bars with items/s and ETA for every long loop."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


def table_console(stderr: bool = False) -> Console:
    """A console for result tables: as wide as the terminal, and 140 columns when output is piped or
    logged (Rich's default of 80 folds every column header)."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=140)


class RateColumn(ProgressColumn):
    """Items per second, with a unit (img/s, step/s, ...)."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def progress(unit: str = "it", disable: bool | None = None) -> Progress:
    """A Progress with description, bar, n/total, rate, elapsed and ETA (quiet when not a terminal)."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, disable=disable, transient=False)
