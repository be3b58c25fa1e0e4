"""``gpufleet demo``: the event backbone end to end on an embedded nats-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from events import NO_STREAM, new_envelope
from events.store import JetStreamEventStore
from events.task import TaskCreated, TaskLeased, TaskQueued
from events.types import Estimate, Resources
from gpufleet.natsserver import NatsServer


async def run_demo(data_dir: Path, console: Console) -> None:
    """Start nats-server, append a task's first events, replay the log and print it."""
    with NatsServer(data_dir / "nats") as server:
        console.print(f"nats-server with JetStream at [bold]{server.url}[/] (store: {data_dir / 'nats'})")
        store = await JetStreamEventStore.connect(server.url)
        try:
            t0 = datetime.now(UTC)
            task = "demo-0"
            stream = f"task.{task}"
            created = TaskCreated(
                at=t0,
                task_id=task,
                job_id="demo",
                index=0,
                submitter="newcomer",
                workload="noop",
                params={},
                resources=Resources(),
                estimate=Estimate(),
                timeout_s=60.0,
            )
            r = await store.append(
                stream, [new_envelope(stream, created, id=f"{task}-1", source="gpufleet/demo")], NO_STREAM
            )
            leased = TaskLeased(
                at=t0,
                task_id=task,
                lease_id="l1",
                provider_id="local",
                attempt=1,
                expires_at=t0 + timedelta(seconds=30),
            )
            requeued = TaskQueued(at=t0, task_id=task)
            await store.append(
                stream,
                [
                    new_envelope(stream, leased, id=f"{task}-2", source="gpufleet/demo"),
                    new_envelope(stream, requeued, id=f"{task}-3", source="gpufleet/demo"),
                ],
                r.last,
            )
            table = Table(title="replayed from the log")
            for col in ("position", "stream", "type", "id"):
                table.add_column(col)
            async for env in store.read_all():
                table.add_row(str(env.sequence), env.subject, env.type, env.id)
            console.print(table)
        finally:
            await store.close()
