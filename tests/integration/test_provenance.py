"""Provenance on a real network: events forged with the orchestrator's own credentials (a stolen key or
a buggy build: the server lets them in, and they look like any other decision) are each flagged by
``gpufleet replay --audit`` at their position, and the clean log before them passes. (The admin's
credentials cannot publish events at all: only the orchestrator's may.) A real nats-server, a real
orchestrator and provider, the real command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

from actors.ids import derive_id
from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import new_envelope
from events.job import JobCancelled, SubmitterCharged, UsageMetered
from events.provider import ProviderRegistered
from events.store import JetStreamEventStore
from events.task import TaskCompleted
from events.types import Capabilities, ResultRef, utc_now
from gpufleet.sim import SimulatedProvider
from tests.integration.audited import assert_audit_passes, audit_at_rest
from tests.integration.orchestra import Tenants, wait_for
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)
ROOT = Path(__file__).resolve().parents[2]


async def test_forged_events_of_every_kind_are_each_flagged_at_their_position(own_nats_server: SecureServer) -> None:
    server = own_nats_server
    orch = await Orchestrator.connect(server.access("orchestrator"), config=FAST)
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), heartbeat_s=0.2, slots=2)).start()
    tenants = Tenants(server)
    try:
        await tenants.submit(
            "alice", "done", {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 2}}
        )
        await tenants.submit("alice", "open", {"workload": "sleep", "params": {"seconds": 60}})
        world, _ = await wait_for(
            store,
            lambda w: (
                w.jobs.get("alice.done") is not None
                and w.jobs["alice.done"].status == "completed"
                and any(t.status == "running" for t in w.tasks.values())
            ),
            timeout=30,
        )
    finally:
        await sim.kill()
        await tenants.close()
        await orch.close()
        await store.close()

    auditor = await JetStreamEventStore.connect(server.access("auditor", "aud"), reads="direct")
    forger = await JetStreamEventStore.connect(server.access("orchestrator"))
    try:
        # The log as the network wrote it passes, provenance included.
        clean = await assert_audit_passes(auditor)
        assert clean.coverage["provenance"] > 0

        open_task = next(t for t, s in world.tasks.items() if s.status == "running")
        running = world.tasks[open_task]
        assert running.lease is not None
        now = utc_now()
        caps = Capabilities(backend="cpu", gpu_model="x", vram_mb=1, slots=1)
        forgeries = [
            # (stream, event id, event, what the finding must say)
            ("job.alice.open", "op-1.0", JobCancelled(at=now, job_id="alice.open", reason="forged"), "no cause"),
            (
                "provider.ghost",
                "in-99999.0",
                ProviderRegistered(at=now, provider_id="ghost", name="ghost", capabilities=caps),
                "intake message 99999, which the intake stream does not hold",
            ),
            (
                "job.alice.done",
                "st-forged.0",
                SubmitterCharged(at=now, job_id="alice.done", submitter="alice", amount_micros=1, gpu_ms=1),
                "no cause",
            ),
            (
                "job.alice.done",
                derive_id("mu-", "alice.done.0") + "x.0",
                UsageMetered(
                    at=now,
                    job_id="alice.done",
                    task_id="alice.done.0",
                    provider_id="p1",
                    submitter="alice",
                    gpu_ms=10_000,
                    price_micros=0,
                    amount_micros=0,
                ),
                "no cause",
            ),
            (
                f"task.{open_task}",
                "in-1.7",
                TaskCompleted(
                    at=now,
                    task_id=open_task,
                    lease_id=running.lease.lease_id,
                    provider_id=running.lease.provider_id,
                    result=ResultRef(sha256="0" * 64, size=0),
                    gpu_ms=5,
                ),
                "intake message 1 already caused",
            ),
        ]
        positions: dict[int, str] = {}
        for stream, event_id, event, expect in forgeries:
            env = new_envelope(stream, event, id=event_id, source="gpufleet/orchestrator")
            result = await forger.append(stream, [env], expected=None)
            positions[result.last] = expect

        report = await audit_at_rest(auditor)
        found = {f.position: f.message for f in report.of("provenance")}
        for position, expect in positions.items():
            assert position in found, f"forged event at {position} not flagged:\n{report.render()}"
            assert expect in found[position], f"at {position}: {found[position]}"
        assert not report.ok and "FAIL" in report.render()

        # The command a person runs says the same, and fails.
        creds = server.access("auditor", "aud").creds
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gpufleet", "replay", "--audit", "--nats", server.url, "--creds", str(creds)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        flagged = {int(m) for m in re.findall(r"\[provenance\] @(\d+) ", proc.stdout)}
        assert set(positions) <= flagged, proc.stdout
        assert "re-decided" in proc.stdout and "FAIL" in proc.stdout
    finally:
        with contextlib.suppress(Exception):
            await forger.close()
        await auditor.close()
