"""The ``gpufleet`` command line."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from events import GpufleetError

app = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console()


@app.callback()
def _root(
    log_format: Annotated[str, typer.Option(help="Logs: auto, console or json.")] = "auto",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """gpufleet: rent GPU compute across many independent providers."""
    from gpufleet.logging import configure_logging

    if log_format not in ("auto", "console", "json"):
        _fail(f"--log-format must be auto, console or json, not {log_format!r}")
    configure_logging(log_format, log_level)  # type: ignore[arg-type]


def _fail(message: str) -> None:
    """One line, no traceback, non-zero exit."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


@app.command()
def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Where the embedded server keeps its log.")] = None,
) -> None:
    """Start an embedded nats-server, append events and replay them from the log."""
    from gpufleet.demo import run_demo

    try:
        asyncio.run(run_demo(data_dir or Path(tempfile.mkdtemp(prefix="gpufleet-demo-")), console))
    except GpufleetError as e:
        _fail(str(e))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
