"""The orchestrator's less travelled paths, on a real secured nats-server.

- Intake: a message that keeps tripping an unexpected exception is retried, then recorded as
  ``InputRejected("internal error: ...")``, and blocks nothing behind it.
- Liveness across a real server restart: ``Orchestrator.reconnected()`` gives every provider one
  heartbeat timeout from the reconnect.
- Restart: ``Core.reconcile`` (``actors/reactions.py``) issues what a dead orchestrator still owed,
  exactly once. The history before the restart is written by an orchestrator whose shells append and
  whose loops never run: a process that died between each append and the reactions it owed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from nats.aio.msg import Msg

from actors.ids import derive_id
from actors.job import CancelJob, CompleteJob, DecideJob, JobState, MeterUsage, SubmitJob, unsettled
from actors.orchestrator import Orchestrator, OrchestratorConfig
from actors.provider import HeartbeatLapsed, LeaveProvider, RegisterProvider
from actors.reactions import plan_task, reconcile
from actors.task import TERMINAL, CreateTask, LeaseTask, ReportCompleted, ReportFailed, ReportStarted
from actors.world import World
from events.intake import InputAccepted, InputRejected
from events.job import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSpec,
    ProviderCredited,
    SubmitterCharged,
    UsageMetered,
)
from events.provider import ProviderLost
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.subjects import intake_subject, task_id_of
from events.task import TaskCancelled, TaskCreated, TaskLeaseExpired
from events.types import Capabilities, utc_now
from gpufleet.sim import SimulatedProvider, inline_result
from projections.audit import audit_jetstream
from tests.integration.orchestra import Tenants, assert_exactly_once, intake_outcomes, read_world, wait_for
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=5.0, lease_start_timeout_s=5.0, lease_grace_s=5.0)
#: After a restart: nothing times out on its own during the test unless the test arranged it.
PATIENT = OrchestratorConfig(heartbeat_timeout_s=30.0, lease_start_timeout_s=30.0, lease_grace_s=30.0)


def count_of(log: list[Any], kind: type, key: Callable[[Any], Any]) -> Counter[Any]:
    return Counter(key(e.data) for e in log if isinstance(e.data, kind))


async def settled_and_read(orch: Orchestrator, store: JetStreamEventStore) -> tuple[World, list[Any]]:
    """Wait until the orchestrator has nothing in flight and no unfinished task, then read the log."""
    await orch.settle(timeout=15)
    return await read_world(store)


# ---- intake: an internal error ---------------------------------------------------------------------


async def test_an_intake_message_that_keeps_tripping_a_bug_is_rejected_as_internal_error_and_blocks_nothing(
    own_nats_server: SecureServer,
) -> None:
    server = own_nats_server
    orch = await Orchestrator.connect(server.access("orchestrator"), config=FAST)
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    tenants = Tenants(server)
    sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), slots=2, heartbeat_s=0.2)).start()
    poisoned = intake_subject("submitter", "alice", "submit", "poison")
    tries: list[int] = []
    real_accept = orch.intake.accept

    # Test-only fault injection: validating the message on this one subject raises an exception that
    # is not a GpufleetError (a bug), every time; every other message goes through the real method.
    async def accept(msg: Msg, seq: int, at: datetime) -> InputAccepted | InputRejected | None:
        if msg.subject == poisoned:
            tries.append(seq)
            raise RuntimeError("injected bug")
        return await real_accept(msg, seq, at)

    orch.intake.accept = accept  # type: ignore[method-assign]
    try:
        # Given the poisoned message, then two ordinary jobs behind it
        job = {"workload": "sleep", "params": {"seconds": 0.05}, "split": {"kind": "count", "count": 2}}
        ack = await tenants.publish("submitter", "alice", poisoned, json.dumps(job).encode())
        after = [await tenants.submit("alice", "after", job), await tenants.submit("bob", "after", job)]
        # When the orchestrator has taken them all
        w, log = await wait_for(
            store,
            lambda w: w.intake_done(ack.seq) and all(w.jobs.get(j) and w.jobs[j].status == "completed" for j in after),
            timeout=20,
            poll=0.1,
        )
        await sim.kill()
        await orch.close()
        intake = await store.js.stream_info("GF_INTAKE")
        report = await audit_jetstream(store)
    finally:
        await sim.kill()
        await orch.close()
        await store.close()
        await tenants.close()
    # Then the poisoned one was tried three times and recorded once, as an internal error
    assert tries == [ack.seq] * 3
    rejected = [e.data for e in log if isinstance(e.data, InputRejected)]
    assert len(rejected) == 1, rejected
    assert rejected[0].intake_seq == ack.seq and rejected[0].subject == poisoned
    assert rejected[0].reason.startswith("internal error") and "injected bug" in rejected[0].reason
    assert "alice.poison" not in w.jobs
    # And the jobs behind it ran; every intake message has exactly one outcome
    assert_exactly_once(log)
    assert intake_outcomes(log) == dict.fromkeys(range(1, intake.state.last_seq + 1), 1)
    # And the audit passes: an internal error is recorded as the message's one outcome, with a
    # reason; the network kept its rules (nothing was half-applied, nothing lost)
    assert report.ok, report.render()


# ---- liveness across a server restart --------------------------------------------------------------


def liveness(timeout: float) -> OrchestratorConfig:
    return OrchestratorConfig(heartbeat_timeout_s=timeout, lease_start_timeout_s=5.0, lease_grace_s=5.0)


@contextlib.asynccontextmanager
async def restarted_network(
    server: SecureServer, timeout: float, outage: float = 0.0
) -> AsyncIterator[tuple[Orchestrator, JetStreamEventStore, datetime, datetime]]:
    """p1 and p2 online; p2 crashes; the server is stopped, kept down ``outage`` seconds and started.

    Yields the orchestrator, a log reader, when the server was up again and when the orchestrator had
    reconnected. p1 keeps heartbeating throughout (its connection reconnects by itself).
    """
    orch = await Orchestrator.connect(server.access("orchestrator"), config=liveness(timeout))
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    sims = [
        await (await SimulatedProvider.connect(server.access("provider", p), slots=1, heartbeat_s=0.2)).start()
        for p in ("p1", "p2")
    ]
    try:
        await wait_for(
            store,
            lambda w: all(w.providers.get(p) and w.providers[p].status == "online" for p in ("p1", "p2")),
            timeout=10,
            poll=0.1,
        )
        await sims[1].kill()  # p2 stops heartbeating for good, just before the outage
        await asyncio.to_thread(server.stop)
        if outage:
            await asyncio.sleep(outage)  # the fault itself: how long the server stays down (not a wait for anything)
        await asyncio.to_thread(server.start)
        up = utc_now()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not orch.nc.is_connected:
            assert loop.time() < deadline, "the orchestrator did not reconnect"
            await asyncio.sleep(0.02)
        yield orch, store, up, utc_now()
    finally:
        await sims[0].kill()
        await orch.close()
        await store.close()


@pytest.mark.parametrize(
    ("timeout", "outage"),
    [
        # p2's last heartbeat is ~1.3 s old when the server is back: without the restarted clock it
        # would be lost ~1.7 s after that; with it, 3 s after.
        pytest.param(3.0, 1.0, id="outage_shorter_than_the_timeout"),
        pytest.param(
            1.5,
            3.0,
            id="outage_longer_than_the_timeout",
        ),
    ],
)
async def test_a_provider_silent_across_a_restart_is_lost_one_timeout_after_the_reconnect(
    own_nats_server: SecureServer, timeout: float, outage: float
) -> None:
    async with restarted_network(own_nats_server, timeout, outage) as (_, store, up, reconnected):
        # When the orchestrator has reconnected, p2 (which never heartbeats again) is lost...
        _, log = await wait_for(store, lambda w: w.providers["p2"].status == "lost", timeout=timeout + 5, poll=0.1)
    lost = [e.data for e in log if isinstance(e.data, ProviderLost) and e.data.provider_id == "p2"]
    assert len(lost) == 1, lost
    # ...no sooner than one heartbeat timeout after the reconnect (its clock restarted then, and the
    # server was up again no later than the reconnect), and within a lapse check of it
    assert lost[0].at >= up + timedelta(seconds=timeout), (lost[0].at - up).total_seconds()
    assert lost[0].at <= reconnected + timedelta(seconds=timeout + 1.0), (lost[0].at - reconnected).total_seconds()


async def test_a_provider_heartbeating_through_a_short_server_restart_is_never_lost(
    own_nats_server: SecureServer,
) -> None:
    timeout = 1.5
    # The server is down only as long as a stop and a start take (well under the timeout).
    async with restarted_network(own_nats_server, timeout) as (orch, store, _, reconnected):
        kv = await store.js.key_value(orch.topology.heartbeat_bucket)
        first = (await kv.get("p1")).revision
        # p1 keeps heartbeating (its connection reconnects by itself): watch the log for three timeouts
        loop = asyncio.get_running_loop()
        watch_until = loop.time() + 3 * timeout + 1.0
        false_loss: list[ProviderLost] = []
        while loop.time() < watch_until and not false_loss:
            w, log = await read_world(store)
            false_loss = [e.data for e in log if isinstance(e.data, ProviderLost) and e.data.provider_id == "p1"]
            await asyncio.sleep(0.2)
        beats = (await kv.get("p1")).revision - first
    # p1 really did heartbeat after the reconnect (if not, this test proves nothing)
    assert beats >= 3, beats
    # And it was never declared lost
    assert not false_loss, f"p1 lost {(false_loss[0].at - reconnected).total_seconds():.2f}s after the reconnect"
    assert w.providers["p1"].status == "online"


# ---- restart: what reconcile owes ------------------------------------------------------------------

_ids = itertools.count(1)


class DeadOrchestrator:
    """The shells of an orchestrator whose loops never run: it appends, then dies before reacting.

    Steps that a reaction would have taken use the reaction's own derived command id, as the dead
    orchestrator would have, so a restarted one recognises them.
    """

    def __init__(self, orch: Orchestrator) -> None:
        self.o = orch
        #: When each lease written here expires unless started.
        self.expiry: dict[str, datetime] = {}

    @staticmethod
    def cid() -> str:
        return f"w-{next(_ids)}"

    async def register(self, pid: str, *, workloads: tuple[str, ...] = (), slots: int = 4) -> Capabilities:
        caps = Capabilities(
            backend="cpu", gpu_model="dead", vram_mb=8000, slots=slots, price_micros=100, workloads=workloads
        )
        await self.o.providers.handle(
            pid, RegisterProvider(command_id=self.cid(), at=utc_now(), provider_id=pid, name=pid, capabilities=caps)
        )
        return caps

    async def job(
        self, job_id: str, count: int, *, workload: str = "noop", decide: bool = True, create: range | None = None
    ) -> JobState:
        """Submit (and decide, and create tasks ``create`` of) a job of ``count`` tasks."""
        spec = JobSpec.model_validate({"workload": workload, "split": {"kind": "count", "count": count}})
        now = utc_now()
        await self.o.jobs.handle(
            job_id,
            SubmitJob(command_id=self.cid(), at=now, job_id=job_id, spec=spec, submitter=job_id.split(".", 1)[0]),
        )
        if decide:
            await self.o.jobs.handle(job_id, DecideJob(command_id=derive_id("dj-", job_id), at=now))
        state, _ = await self.o.jobs.state(job_id)
        assert state.spec is not None
        for i in create if create is not None else (range(count) if decide else ()):
            created = plan_task(job_id, state.spec, i, now)
            await self.o.tasks.handle(
                created.task_id, CreateTask(command_id=derive_id("ct-", job_id, i), at=now, created=created)
            )
        return state

    async def lease(self, task_id: str, pid: str, *, start: bool = False, expires_in: float = 60.0) -> str:
        lease_id = f"lw{next(_ids)}"
        now = utc_now()
        cmd = LeaseTask(
            command_id=self.cid(),
            at=now,
            lease_id=lease_id,
            provider_id=pid,
            expires_at=now + timedelta(seconds=expires_in),
            price_micros=100,
        )
        await self.o.tasks.handle(task_id, cmd)
        self.expiry[lease_id] = cmd.expires_at
        if start:
            await self.o.tasks.handle(
                task_id,
                ReportStarted(command_id=self.cid(), at=utc_now(), lease_id=lease_id, provider_id=pid, grace_s=60.0),
            )
        return lease_id

    async def run(self, task_id: str, pid: str) -> None:
        """Lease, start and complete the task on ``pid``."""
        lease_id = await self.lease(task_id, pid, start=True)
        done = ReportCompleted(
            command_id=self.cid(),
            at=utc_now() + timedelta(seconds=1.5),  # it ran 1.5 s: the bill is what was observed
            lease_id=lease_id,
            provider_id=pid,
            result=inline_result({"task": task_id}),
            gpu_ms=1200,
        )
        await self.o.tasks.handle(task_id, done)

    async def meter(self, task_id: str) -> None:
        t, _ = await self.o.tasks.state(task_id)
        assert t.spec is not None and t.lease is not None
        cmd = MeterUsage(
            command_id=derive_id("mu-", task_id),
            at=utc_now(),
            task_id=task_id,
            provider_id=t.lease.provider_id,
            gpu_ms=t.gpu_ms,
            price_micros=t.lease.price_micros,
        )
        await self.o.jobs.handle(t.spec.job_id, cmd)


@contextlib.asynccontextmanager
async def died_after(server: SecureServer) -> AsyncIterator[DeadOrchestrator]:
    nc = await connect_nats(server.access("orchestrator"), name="test-dead-orchestrator")
    orch = Orchestrator(nc, config=PATIENT)
    await orch.store.ensure()
    try:
        yield DeadOrchestrator(orch)
    finally:
        await orch.close()


@contextlib.asynccontextmanager
async def restarted(server: SecureServer) -> AsyncIterator[tuple[Orchestrator, JetStreamEventStore]]:
    orch = await Orchestrator.connect(server.access("orchestrator"), config=PATIENT)
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    try:
        yield orch, store
    finally:
        await orch.close()
        await store.close()


def nothing_owed(w: World) -> None:
    owed = reconcile(w, utc_now())
    assert owed == [], [(i.kind, i.aggregate_id, type(i.command).__name__) for i in owed]


def settled(*job_ids: str, status: str = "completed") -> Callable[[World], bool]:
    return lambda w: all(j in w.jobs and w.jobs[j].status == status and not unsettled(w.jobs[j]) for j in job_ids)


async def test_reconcile_decides_a_submitted_job_and_creates_the_tasks_an_accepted_job_lacks(
    own_nats_server: SecureServer,
) -> None:
    # Branches: job "submitted" -> DecideJob; job "accepted" with tasks missing -> CreateTask for each.
    server = own_nats_server
    async with died_after(server) as dead:
        await dead.job("alice.partial", 3, create=range(1))  # died after creating task 0 of 3
        await dead.job("alice.undecided", 2, decide=False)  # died after the submission
    async with restarted(server) as (orch, store):
        sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), slots=2, heartbeat_s=0.2)).start()
        try:
            await wait_for(store, settled("alice.partial", "alice.undecided"), timeout=20, poll=0.1)
            w, log = await settled_and_read(orch, store)
        finally:
            await sim.kill()
        report = await audit_jetstream(store)
    assert count_of(log, JobAccepted, lambda e: e.job_id) == {"alice.partial": 1, "alice.undecided": 1}
    created = count_of(log, TaskCreated, lambda e: e.task_id)
    expected = [task_id_of("alice.partial", i) for i in range(3)] + [task_id_of("alice.undecided", i) for i in range(2)]
    assert created == dict.fromkeys(expected, 1)
    assert count_of(log, JobCompleted, lambda e: e.job_id) == {"alice.partial": 1, "alice.undecided": 1}
    assert_exactly_once(log)
    nothing_owed(w)
    assert report.ok, report.render()


async def test_reconcile_meters_completes_and_settles_what_a_dead_orchestrator_left(
    own_nats_server: SecureServer,
) -> None:
    # Branches: task completed, not metered -> MeterUsage; job accepted, all metered -> CompleteJob;
    # job ended and unsettled -> SettleJob.
    server = own_nats_server
    async with died_after(server) as dead:
        await dead.register("pw")
        await dead.job("alice.meter", 2)
        await dead.job("alice.complete", 1)
        await dead.job("alice.settle", 1)
        for job in ("alice.meter", "alice.complete", "alice.settle"):
            for task_id in sorted(
                t for t in (task_id_of(job, i) for i in range(2)) if job == "alice.meter" or t.endswith(".0")
            ):
                await dead.run(task_id, "pw")
        await dead.meter("alice.meter.0")  # died before metering task 1
        await dead.meter("alice.complete.0")  # died before completing the job
        await dead.meter("alice.settle.0")
        await dead.o.jobs.handle("alice.settle", CompleteJob(command_id=derive_id("cj-", "alice.settle"), at=utc_now()))
        # ...and died before settling it
    jobs = ("alice.meter", "alice.complete", "alice.settle")
    async with restarted(server) as (orch, store):
        await wait_for(store, settled(*jobs), timeout=15, poll=0.1)
        w, log = await settled_and_read(orch, store)
        report = await audit_jetstream(store)
    tasks = ["alice.meter.0", "alice.meter.1", "alice.complete.0", "alice.settle.0"]
    assert count_of(log, UsageMetered, lambda e: e.task_id) == dict.fromkeys(tasks, 1)
    assert count_of(log, JobCompleted, lambda e: e.job_id) == dict.fromkeys(jobs, 1)
    assert count_of(log, SubmitterCharged, lambda e: e.job_id) == dict.fromkeys(jobs, 1)
    assert count_of(log, ProviderCredited, lambda e: e.job_id) == dict.fromkeys(jobs, 1)
    assert_exactly_once(log)
    nothing_owed(w)
    assert report.ok, report.render()


async def test_reconcile_expires_leases_of_lost_and_departed_providers_and_a_lease_timer_fires_after_restart(
    own_nats_server: SecureServer,
) -> None:
    # Branches: provider "lost" holding a live lease -> ExpireLease(provider_lost); provider "left"
    # holding one -> ExpireLease(provider_left). And start-up re-arms a lease timer that fires later.
    server = own_nats_server
    async with died_after(server) as dead:
        await dead.register("pa", workloads=("noop",))
        await dead.register("pb", workloads=("noop",))
        await dead.register("pc", workloads=("sleep",))
        await dead.job("alice.lost", 1)
        await dead.job("alice.left", 1)
        await dead.job("alice.timer", 1, workload="sleep")
        on_lost = await dead.lease("alice.lost.0", "pa", start=True)
        on_left = await dead.lease("alice.left.0", "pb")
        timed = await dead.lease("alice.timer.0", "pc", expires_in=3.0)
        await dead.o.providers.handle("pa", HeartbeatLapsed(command_id=DeadOrchestrator.cid(), at=utc_now()))
        await dead.o.providers.handle(
            "pb", LeaveProvider(command_id=DeadOrchestrator.cid(), at=utc_now(), reason="bye")
        )
        # ...and died before expiring the leases they held
    async with restarted(server) as (_, store):
        _, log = await wait_for(
            store,
            lambda w: all(
                w.tasks[t].lease is None or w.tasks[t].lease.lease_id != lid  # type: ignore[union-attr]
                for t, lid in (("alice.lost.0", on_lost), ("alice.left.0", on_left), ("alice.timer.0", timed))
            ),
            timeout=15,
            poll=0.1,
        )
        ours = {on_lost, on_left, timed}
        # The timer, armed again at start-up from the log, fired on time (a lease never ends early)
        expired = {
            e.data.lease_id: e.data for e in log if isinstance(e.data, TaskLeaseExpired) and e.data.lease_id in ours
        }
        due = dead.expiry[timed]
        assert due <= expired[timed].at <= due + timedelta(seconds=2.0), (expired[timed].at - due).total_seconds()
    # Exactly once: another restart finds nothing more owed, and every lease ended once, for its reason
    async with restarted(server) as (orch2, store):
        assert [i for i in orch2.core.reconcile(utc_now()) if i.kind == "task"] == []
        _, log = await read_world(store)
    ended = Counter(
        (e.data.lease_id, e.data.reason)
        for e in log
        if isinstance(e.data, TaskLeaseExpired) and e.data.lease_id in ours
    )
    assert ended == {(on_lost, "provider_lost"): 1, (on_left, "provider_left"): 1, (timed, "expired"): 1}


async def test_reconcile_fails_a_job_whose_task_died_and_cancels_the_tasks_of_an_ended_job(
    own_nats_server: SecureServer,
) -> None:
    # Branches: task "dead" while its job is accepted -> FailJob; job failed/cancelled with tasks
    # not terminal -> CancelTask for each (after FailJob, the reaction does it; for the cancelled
    # job, reconcile does).
    server = own_nats_server
    async with died_after(server) as dead:
        await dead.register("pw")
        await dead.job("alice.dead", 2)
        await dead.job("alice.cancelled", 2)
        lease_id = await dead.lease("alice.dead.0", "pw", start=True)
        failed = ReportFailed(
            command_id=DeadOrchestrator.cid(),
            at=utc_now(),
            lease_id=lease_id,
            provider_id="pw",
            reason="invalid_params",
            message="not retryable",
        )
        await dead.o.tasks.handle("alice.dead.0", failed)  # died before failing the job
        await dead.o.jobs.handle(
            "alice.cancelled", CancelJob(command_id=DeadOrchestrator.cid(), at=utc_now(), reason="no")
        )
        # ...and died before cancelling its tasks
    async with restarted(server) as (orch, store):
        await wait_for(
            store,
            lambda w: (
                settled("alice.dead", status="failed")(w)
                and settled("alice.cancelled", status="cancelled")(w)
                and all(t.status in TERMINAL for t in w.tasks.values())
            ),
            timeout=15,
            poll=0.1,
        )
        w, log = await settled_and_read(orch, store)
        report = await audit_jetstream(store)
    assert count_of(log, JobFailed, lambda e: e.job_id) == {"alice.dead": 1}
    assert count_of(log, JobCancelled, lambda e: e.job_id) == {"alice.cancelled": 1}
    cancelled = count_of(log, TaskCancelled, lambda e: e.task_id)
    assert cancelled == {"alice.dead.1": 1, "alice.cancelled.0": 1, "alice.cancelled.1": 1}
    assert w.tasks["alice.dead.0"].status == "dead"
    nothing_owed(w)
    assert report.ok, report.render()
