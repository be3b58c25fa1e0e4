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


orchestrator_app = typer.Typer(help="Run the orchestrator.", no_args_is_help=True)
app.add_typer(orchestrator_app, name="orchestrator")


@orchestrator_app.command("run")
def orchestrator_run(
    nats_url: Annotated[str, typer.Option("--nats", help="NATS server or cluster URL.")] = "nats://127.0.0.1:4222",
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds without a heartbeat before a provider is lost.")
    ] = 6.0,
    lease_start_timeout: Annotated[float, typer.Option(help="Seconds for a provider to start a leased task.")] = 30.0,
    lease_grace: Annotated[float, typer.Option(help="Seconds a started lease outlives the task timeout.")] = 30.0,
) -> None:
    """Run an orchestrator against NATS until interrupted (Ctrl-C stops it cleanly)."""
    from actors.orchestrator import Orchestrator, OrchestratorConfig

    config = OrchestratorConfig(
        heartbeat_timeout_s=heartbeat_timeout, lease_start_timeout_s=lease_start_timeout, lease_grace_s=lease_grace
    )

    async def run() -> None:
        orch = await Orchestrator.connect(nats_url, config=config)
        console.print(f"orchestrator running on {nats_url} (log position {orch.world.position})", highlight=False)
        try:
            await asyncio.Event().wait()
        finally:
            await orch.close()

    try:
        asyncio.run(run())
    except GpufleetError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("orchestrator stopped")


provider_app = typer.Typer(help="Run a provider.", no_args_is_help=True)
app.add_typer(provider_app, name="provider")


@provider_app.command("simulate")
def provider_simulate(
    nats_url: Annotated[str, typer.Option("--nats", help="NATS server or cluster URL.")] = "nats://127.0.0.1:4222",
    count: Annotated[int, typer.Option(help="How many simulated providers.")] = 4,
    slots: Annotated[int, typer.Option(help="Slots per provider.")] = 4,
    prefix: Annotated[str, typer.Option(help="Provider ids are <prefix><n>.")] = "sim",
    price: Annotated[int, typer.Option(help="Price, micro-credits per GPU-second.")] = 100,
) -> None:
    """Simulated providers (noop and sleep only) that speak the real protocol: for tests and benchmarks."""
    from events.store.connection import connect_nats
    from gpufleet.sim import SimulatedProvider

    async def run() -> None:
        nc = await connect_nats(nats_url, name="gpufleet-sim")
        fleet = [
            await SimulatedProvider(nc, f"{prefix}{i}", slots=slots, price_micros=price).start() for i in range(count)
        ]
        console.print(f"{count} simulated providers with {slots} slots each on {nats_url}", highlight=False)
        try:
            await asyncio.Event().wait()
        finally:
            for p in fleet:
                await p.kill()
            await nc.close()

    try:
        asyncio.run(run())
    except GpufleetError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        pass


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
