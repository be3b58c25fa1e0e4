"""Loss is loud: a store that lost acknowledged events (a message block truncated on disk while the server
was down, as a disk fault would leave it) stops the orchestrator and the projector with one clear line,
and neither writes anything on top of the shorter log. A real nats-server, real files, real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import LogRegressed
from events.store import JetStreamEventStore
from events.store.watermark import WatermarkFile
from gpufleet.sim import SimulatedProvider
from projections.projector import Projector
from projections.storage import SqliteStore
from tests.integration.audited import eventually
from tests.integration.orchestra import Tenants, all_jobs_ended, wait_for
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)
ROOT = Path(__file__).resolve().parents[2]


def _largest_block(server: SecureServer) -> Path:
    found = list(server.store_dir.glob("jetstream/*/streams/GF_EVENTS/msgs/*.blk"))
    assert found, f"no message blocks under {server.store_dir}"
    return max(found, key=lambda p: p.stat().st_size)


async def _run_some_jobs(server: SecureServer, state: Path, db_path: Path) -> int:
    """Three jobs to completion with a watermarking orchestrator and a projector; the log's head."""
    orch = await Orchestrator.connect(
        server.access("orchestrator"), config=OrchestratorConfig(**{**FAST.__dict__, "state_dir": state})
    )
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), heartbeat_s=0.2, slots=2)).start()
    tenants = Tenants(server)
    db = SqliteStore(str(db_path))
    projector = Projector(store, db, flush_interval=0.02)
    follower = asyncio.create_task(projector.run())
    try:
        for j in range(3):
            await tenants.submit(
                "alice",
                f"j{j}",
                {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 4}},
            )
        await wait_for(store, all_jobs_ended(3), timeout=30)
        head = await store.head()
        await eventually(lambda: projector.position >= head, "the projector at the head")
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        db.close()
        await sim.kill()
        await tenants.close()
        await orch.close()  # saves the watermark
        await store.close()
    return head


@pytest.mark.parametrize("index", ["kept", "deleted"])
async def test_a_truncated_store_stops_the_orchestrator_and_the_projector_loudly(
    own_nats_server: SecureServer, tmp_path: Path, index: str
) -> None:
    server = own_nats_server
    state, db_path = tmp_path / "state", tmp_path / "readmodels.sqlite"
    head = await _run_some_jobs(server, state, db_path)
    (path,) = state.glob("orchestrator.*.watermark.json")
    mark = WatermarkFile(path).load()
    assert mark is not None and mark.position == head

    # The disk fault: with the server down, the message block loses its second half (and, in one
    # variant, the index that remembers how far the stream went).
    server.stop()
    block = _largest_block(server)
    os.truncate(block, block.stat().st_size // 2)
    if index == "deleted":
        (block.parent / "index.db").unlink()
    server.start()
    reader = await JetStreamEventStore.connect(server.access("orchestrator"))
    try:
        shorter = await reader.head()
        # nats-server repairs the store quietly. With its index it keeps the stream's length and
        # loses the messages; without, the stream is shorter.
        assert shorter < head if index == "deleted" else shorter == head
        if shorter < head:
            expected = f"log regressed from {head} to {shorter} events"
        else:
            assert await reader.event_id_at(head) is None
            expected = f"log lost events: position {head} ({mark.event_id!r}, already applied) is gone"

        # The orchestrator refuses, before it reads or writes anything.
        with pytest.raises(LogRegressed) as info:
            await Orchestrator.connect(
                server.access("orchestrator"), config=OrchestratorConfig(**{**FAST.__dict__, "state_dir": state})
            )
        assert expected in str(info.value), str(info.value)
        assert "\n" not in str(info.value)

        # So does the projector, and its read models stay as they were.
        db = SqliteStore(str(db_path))
        projector = Projector(reader, db)
        projector.open()
        before = projector.dump()
        with pytest.raises(LogRegressed) as info:
            await projector.catch_up()
        assert str(info.value).startswith("projector: ") and expected in str(info.value)
        assert projector.dump() == before
        db.close()

        # The command a person runs says so in one line, and fails.
        creds = server.access("orchestrator").creds
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gpufleet", "orchestrator", "run", "--nats", server.url, "--creds", str(creds),
             "--data-dir", str(state)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        assert proc.returncode != 0
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert expected in proc.stderr + proc.stdout, proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr

        # Nothing was written on top of the shorter log by anyone.
        assert await reader.head() == shorter
    finally:
        await reader.close()


async def test_a_log_lost_under_a_running_orchestrator_halts_it_before_it_writes(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    """The server crashes and comes back with fewer events while the orchestrator runs, and work keeps
    arriving: the orchestrator holds every append from the disconnect, checks the log after the
    reconnect, and halts with one line. Nothing is written on top of the shorter log."""
    server = own_nats_server
    config = OrchestratorConfig(**{**FAST.__dict__, "state_dir": tmp_path / "state"})
    orch = await Orchestrator.connect(server.access("orchestrator"), config=config)
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), heartbeat_s=0.2, slots=2)).start()
    tenants = Tenants(server)
    try:
        for j in range(3):
            await tenants.submit(
                "alice",
                f"j{j}",
                {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 4}},
            )
        await wait_for(store, all_jobs_ended(3), timeout=30)
        head = await store.head()
        await eventually(lambda: orch.world.position >= head, "the orchestrator at the head")

        server.stop()
        block = _largest_block(server)
        os.truncate(block, block.stat().st_size // 2)
        (block.parent / "index.db").unlink()
        server.start()
        # More work arrives at once: its outcome would be appended on top of the shorter log.
        with contextlib.suppress(Exception):
            await tenants.submit("alice", "after", {"workload": "sleep", "params": {"seconds": 0.01}})

        with pytest.raises(LogRegressed) as info:
            await asyncio.wait_for(orch.wait(), 30)
        assert str(info.value).startswith("orchestrator: log regressed from ")
        shorter = await store.head()
        assert shorter < head
        await asyncio.sleep(1.0)  # a negative check: given a moment, still nothing was appended
        assert await store.head() == shorter
    finally:
        await sim.kill()
        await tenants.close()
        await orch.close()
        await store.close()
