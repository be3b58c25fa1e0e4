"""Honest pay on a real network: a bill is what the orchestrator observed, and a poisoned stored event is
quarantined by the read models (and flagged by the audit) while everything behind it is applied.

Real nats-server with credentials, the orchestrator and a simulated provider in this process, the
projector following live into SQLite, then restarted, then rebuilt from position 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import DEFAULT_REGISTRY
from events.job import UsageMetered
from events.metering import observed_ms
from events.store import JetStreamEventStore
from events.subjects import report_subject
from events.task import TaskCompleted, TaskLeased
from events.types import MAX_GPU_MS
from gpufleet.sim import SimulatedProvider, inline_result
from projections.projector import Projector
from projections.query import ReadModels
from projections.storage import SqliteStore
from tests.integration.audited import assert_audit_passes, assert_findings, audit_at_rest, eventually
from tests.integration.orchestra import Tenants, all_jobs_ended, wait_for
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)


@dataclass
class Net:
    server: SecureServer
    orch: Orchestrator
    store: JetStreamEventStore
    tenants: Tenants
    provider: SimulatedProvider


@pytest.fixture
async def net(own_nats_server: SecureServer) -> AsyncIterator[Net]:
    orch = await Orchestrator.connect(own_nats_server.access("orchestrator"), config=FAST)
    store = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"))
    sim = await SimulatedProvider.connect(own_nats_server.access("provider", "p1"), heartbeat_s=0.2, slots=2)
    provider = await sim.start()
    tenants = Tenants(own_nats_server)
    try:
        yield Net(own_nats_server, orch, store, tenants, provider)
    finally:
        await provider.kill()
        await orch.close()
        await store.close()
        await tenants.close()


def sleep_job(n: int, seconds: float) -> dict[str, object]:
    return {"workload": "sleep", "params": {"seconds": seconds}, "split": {"kind": "count", "count": n}}


async def test_a_provider_that_over_claims_its_time_is_billed_what_was_observed(net: Net) -> None:
    await net.tenants.submit("alice", "long", sleep_job(1, 30.0))
    w, _ = await wait_for(net.store, lambda w: any(t.status == "running" for t in w.tasks.values()), timeout=20)
    task_id, task = next(iter(w.tasks.items()))
    assert task.lease is not None and task.lease.provider_id == "p1"
    # The lease holder itself finishes early and claims (nearly) a week of GPU time: in range, so
    # accepted at intake, and the provider's word on everything but the time.
    claim = {
        "report": "completed",
        "lease_id": task.lease.lease_id,
        "result": inline_result(7).model_dump(mode="json"),
        "gpu_ms": MAX_GPU_MS,
    }
    await net.tenants.publish("provider", "p1", report_subject("p1", task_id), json.dumps(claim).encode())
    _, log = await wait_for(net.store, all_jobs_ended(1), timeout=30)
    leased = next(e.data for e in log if isinstance(e.data, TaskLeased))
    done = next(e.data for e in log if isinstance(e.data, TaskCompleted))
    metered = next(e.data for e in log if isinstance(e.data, UsageMetered))
    observed = observed_ms(leased.at, done.at)
    assert 0 < done.gpu_ms <= observed < 30_000, (done.gpu_ms, observed)
    assert metered.gpu_ms == done.gpu_ms
    await assert_audit_passes(net.store)


async def test_a_poisoned_stored_event_is_quarantined_and_everything_behind_it_is_applied(
    net: Net, tmp_path: Path
) -> None:
    db = SqliteStore(str(tmp_path / "live.sqlite"))
    live = Projector(net.store, db, flush_interval=0.02)
    follower = asyncio.create_task(live.run())
    try:
        await net.tenants.submit("alice", "before", sleep_job(2, 0.01))
        _, log = await wait_for(net.store, all_jobs_ended(1), timeout=30)
        done = next(e for e in log if isinstance(e.data, TaskCompleted))
        # Written straight into the domain log with the orchestrator's own credentials (a bug or a
        # stolen key): a completion billed 10^20 ms, which once crashed the projector at every start,
        # and a body that is not JSON at all.
        body = json.loads(DEFAULT_REGISTRY.encode(done.data))
        body["gpu_ms"] = 10**20
        subject = f"{net.store.settings.prefix}.{done.subject}"
        poisoned = []
        for i, data in enumerate((json.dumps(body).encode(), b"\x00not json")):
            ack = await net.store.js.publish(subject, data, headers={"ce-id": f"poison-{i}"})
            poisoned.append(ack.seq)
        # And one into the stream of a job that is still running: the job decider must go on after
        # it (appending behind it), not conflict with it forever.
        await net.tenants.submit("alice", "during", sleep_job(2, 1.0))
        await wait_for(
            net.store, lambda w: "alice.during" in w.jobs and w.jobs["alice.during"].status == "accepted", timeout=20
        )
        ack = await net.store.js.publish(
            f"{net.store.settings.prefix}.job.alice.during", b'{"type": "JobCancelled"}', headers={"ce-id": "poison-2"}
        )
        poisoned.append(ack.seq)
        await net.tenants.submit("alice", "after", sleep_job(3, 0.01))
        w, _ = await wait_for(net.store, all_jobs_ended(3), timeout=30)
        assert {j.status for j in w.jobs.values()} == {"completed"}
        head = await net.store.head()

        await eventually(lambda: live.position >= head, lambda: f"projector at {live.position} of {head}")
        await live.flush()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    models = ReadModels(db)
    after = await models.get_job("alice.after")
    assert after is not None and after.job.status == "completed"
    rows = await models.quarantined()
    expected = [(poisoned[0], "*", "gpu_ms"), (poisoned[1], "*", "body"), (poisoned[2], "*", "v")]
    assert [(r.position, r.view, r.field) for r in rows] == expected
    assert "less than or equal" in rows[0].reason
    assert live.quarantined == 3

    # A restart starts behind the poisoned events and never meets them again.
    again = Projector(net.store, db)
    again.open()
    assert await again.catch_up() == head
    assert again.quarantined == 0
    db.close()

    # A rebuild from position 0 quarantines the same two, and builds the same read models.
    fresh = SqliteStore(str(tmp_path / "rebuilt.sqlite"))
    rebuilt = Projector(net.store, fresh)
    await rebuilt.rebuild()
    assert [(r.position, r.view, r.field) for r in await ReadModels(fresh).quarantined()] == expected
    live_dump = Projector(net.store, SqliteStore(str(tmp_path / "live.sqlite"))).dump()
    assert rebuilt.dump() == live_dump
    fresh.close()

    # The auditor names exactly the three stored events that are not valid events, nothing else.
    report = await audit_at_rest(net.store)
    findings = assert_findings(
        report, [("schema", p, f.message) for p in poisoned for f in report.findings if f.position == p]
    )
    assert sorted(f.position or 0 for f in findings) == poisoned, report.render()
    assert "gpu_ms" in next(f.message for f in findings if f.position == poisoned[0])
