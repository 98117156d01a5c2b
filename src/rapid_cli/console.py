"""The one rich console every module prints through (so progress bars and messages do not fight), and the
copy of what it prints that a run keeps in its `rapid.log`."""

from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape


class RunConsole(Console):
    """A console that also writes every message, as plain text, into a run's log file while one is open
    (`log_to`), so `tail -f <run>/rapid.log` follows a run from another terminal. Live displays and progress
    bars stay on the terminal only."""

    copy: Console | None = None

    def print(self, *objects, **kwargs) -> None:
        super().print(*objects, **kwargs)
        if self.copy is not None and not self.quiet:
            self.copy.print(*objects, **kwargs)


# soft_wrap: long lines (paths, commands to copy) are never hard-wrapped at 80 columns when the output is
# a file or a pipe; a terminal wraps them itself.
console = RunConsole(highlight=False, soft_wrap=True)


@contextmanager
def log_to(path: Path):
    """Copies what the console prints into `path` (appended: a resumed run continues its log), line-buffered so
    the file is current while the run trains; an exception that ends the block is written there too."""
    with open(path, "a", buffering=1, encoding="utf-8") as f:
        console.copy = Console(file=f, width=120, no_color=True, highlight=False, soft_wrap=True, emoji=False)
        try:
            yield
        except BaseException as err:  # a signal's stop names the signal; an error is the line the terminal shows
            stop = type(err).__name__ in ("Interrupted", "Abandoned", "KeyboardInterrupt")
            console.copy.print(escape(f"{'stopped' if stop else 'error'}: {err or type(err).__name__}"))
            raise
        finally:
            console.copy = None


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
