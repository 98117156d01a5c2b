"""The one rich console every module prints through (so progress bars and messages do not fight)."""

from rich.console import Console

console = Console(highlight=False)


def error_line(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
