"""Attack review (de76f09): an append already in flight when the server crashed reaches the restored,
shorter log. ``pause_writes`` is checked once at the top of ``append``; ``_publish`` retries its request
without looking at it again, and nats-py buffers publishes made while reconnecting and flushes them on
reconnect, before ``reconnected_cb``. A real nats-server, restored from an older copy of its own store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import NO_STREAM, LogRegressed
from events.store import JetStreamEventStore
from tests.factories import queued
from tests.integration.audited import eventually
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)


# Was a strict xfail (fixed): an append's retries stop at the first pause after it began.
async def test_an_append_in_flight_at_the_crash_is_not_written_on_the_restored_shorter_log(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    server = own_nats_server
    config = OrchestratorConfig(**{**FAST.__dict__, "state_dir": tmp_path / "state"})
    orch = await Orchestrator.connect(server.access("orchestrator"), config=config)
    late: asyncio.Task[object] | None = None
    try:
        for i in range(3):
            await orch.store.append(f"task.a{i}", [queued(f"task.a{i}")], NO_STREAM)
        # The backup: a consistent copy of the store while the server is down.
        before = orch.store.write_epoch
        server.stop()
        backup = tmp_path / "backup"
        shutil.copytree(server.store_dir, backup)
        server.start()
        await eventually(
            lambda: orch.store.write_epoch > before and orch.store._writable.is_set(),
            "writes paused at the disconnect and resumed after the clean restart's check",
        )
        for i in range(3, 6):
            await orch.store.append(f"task.a{i}", [queued(f"task.a{i}")], NO_STREAM)
        head = await orch.store.head()
        await eventually(lambda: orch.world.position >= head, "the orchestrator at the head")

        # The server hangs, then crashes, while an append is in flight (it passed the pause check).
        os.kill(server.proc.pid, signal.SIGSTOP)
        late = asyncio.ensure_future(orch.store.append("task.late", [queued("task.late")], NO_STREAM))
        await asyncio.sleep(0.3)
        server.kill()
        # It comes back from the older copy: fewer events, same stream.
        shutil.rmtree(server.store_dir)
        shutil.copytree(backup, server.store_dir)
        server.start()

        with pytest.raises(LogRegressed):
            await asyncio.wait_for(orch.wait(), 30)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(late, 20)  # its retries are over

        reader = await JetStreamEventStore.connect(server.access("orchestrator"))
        try:
            written = await reader.read_stream("task.late")
            assert written == [], f"appended on top of the restored log at {[e.sequence for e in written]}"
        finally:
            await reader.close()
    finally:
        if late is not None:
            late.cancel()
        await orch.close()
