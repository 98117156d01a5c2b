"""The one rich console every module prints through (so progress bars and messages do not fight)."""

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

# soft_wrap: long lines (paths, commands to copy) are never hard-wrapped at 80 columns when the output is
# a file or a pipe; a terminal wraps them itself.
console = Console(highlight=False, soft_wrap=True)


# Messages are plain text: escaped, so a value in square brackets ("expected one of [bwrap, none]") is
# printed rather than read as a style tag and dropped.
def error_line(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def progress_bar(label: str, total: int, unit: str):
    """Yields `advance(done, total)`: a bar in a terminal, a line every quarter in a log file."""
    if console.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda done, _total: bar.update(task, completed=done)
        return
    shown = {0}

    def advance(done: int, total: int) -> None:
        quarter = 4 * done // max(1, total)
        if quarter not in shown:
            shown.add(quarter)
            console.print(f"{label}: {done}/{total} {unit}")

    yield advance
