"""Live progress on a real, secured nats-server: on core NATS, never in the log, and only the holder's.

Fractions and rates are not events (``events.live``): providers publish them on
``gf.live.<submitter>.<job>.<index>.<provider>``, watchers subscribe to their own jobs' subjects and
show a message only if it comes from the task's current lease as the log shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.orchestrator import OrchestratorConfig
from events import AccessDenied, Envelope
from events.live import LiveProgress, is_live
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.subjects import job_of_task, live_filter, live_subject
from events.task import TaskCompleted, TaskLeased, TaskProgressed
from events.types import utc_now
from gpufleet import Client
from gpufleet.sim import SimulatedProvider
from gpufleet.watch import JobTracker
from tests.integration.orchestra import orchestrated, read_world
from tests.integration.runtime_support import Orchestrator as RuntimeDouble
from tests.integration.runtime_support import new_id
from tests.integration.runtime_support import provider as runtime_provider
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)


def sleep_job(n: int, seconds: float) -> dict[str, Any]:
    return {
        "workload": "sleep",
        "params": {"seconds": seconds},
        "split": {"kind": "count", "count": n},
        "retry": {"max_attempts": 3, "backoff_s": 0.1},
    }


@dataclass
class Net:
    server: SecureServer
    store: JetStreamEventStore
    providers: list[SimulatedProvider] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    async def provider(self, pid: str, **kw: Any) -> SimulatedProvider:
        sim = await SimulatedProvider.connect(self.server.access("provider", pid), heartbeat_s=0.2, **kw)
        self.providers.append(await sim.start())
        return sim

    async def client(self, name: str = "alice") -> Client:
        a = self.server.access("submitter", name)
        c = await Client.connect(a.url, creds=a.creds)
        self.clients.append(c)
        return c

    async def stored(self, job_id: str) -> list[Envelope]:
        """The job's and its tasks' events in the log."""
        _, log = await read_world(self.store)
        return [e for e in log if e.subject == f"job.{job_id}" or e.subject.startswith(f"task.{job_id}.")]


@pytest.fixture
async def net(own_nats_server: SecureServer) -> AsyncIterator[Net]:
    async with orchestrated(own_nats_server, config=FAST) as store:
        n = Net(own_nats_server, store)
        try:
            yield n
        finally:
            for p in n.providers:
                await p.kill()
            for c in n.clients:
                await c.close()


async def test_a_watcher_sees_live_progress_and_an_eta_and_none_of_it_is_stored(net: Net) -> None:
    await net.provider("p1", slots=2)
    alice = await net.client()
    job = await alice.submit(sleep_job(2, 2.0))
    tracker = JobTracker(job)
    live: list[TaskProgressed] = []
    etas: list[float] = []
    async for env in job.events():
        tracker.apply(env)
        if is_live(env):
            assert isinstance(env.data, TaskProgressed) and env.data.checkpoint is None
            live.append(env.data)
            st = tracker.status()
            assert st is not None
            (t,) = [t for t in st.tasks if t.task_id == env.data.task_id]
            # The watcher shows it: the task runs at the fraction it said, with an ETA from its rate.
            assert t.status == "running" and t.progress == env.data.fraction
            eta = t.eta()
            assert eta is not None
            etas.append(eta.seconds)
            job_eta = st.eta()
            assert job_eta is not None and 0.0 <= job_eta.seconds < 60.0
    assert tracker.status() is not None and tracker.status().status == "completed"  # type: ignore[union-attr]
    # Three live reports per task (a quarter, a half, three quarters), from the lease holder.
    assert sorted(p.fraction for p in live) == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75]
    assert {p.provider_id for p in live} == {"p1"}
    assert len(etas) == len(live) and all(0.0 <= s < 60.0 for s in etas)
    # And the log holds none of it: no progress report without a checkpoint is a durable event.
    stored = await net.stored(job.id)
    assert not any(isinstance(e.data, TaskProgressed) for e in stored)
    assert sum(isinstance(e.data, TaskCompleted) for e in stored) == 2


async def test_a_late_or_reconnecting_watcher_gets_the_log_then_live_progress(net: Net) -> None:
    await net.provider("p1", slots=1)
    first = await net.client()
    job = await first.submit(sleep_job(1, 4.0))
    seen: list[Envelope] = []
    async for env in job.events():
        seen.append(env)
        if is_live(env):
            break  # the watcher goes away at its first live report (0.25)
    await first.close()
    assert isinstance(seen[-1].data, TaskProgressed) and seen[-1].data.fraction == 0.25

    # A watcher that comes back later, on a new connection: the whole log from the start, then the
    # live progress made from then on, then the end.
    again = await net.client()
    later = [env async for env in again.job(job.id).events()]
    stored_before = [e.id for e in seen if not is_live(e)]
    assert [e.id for e in later if not is_live(e)][: len(stored_before)] == stored_before
    fractions = [e.data.fraction for e in later if is_live(e)]  # type: ignore[attr-defined]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 0.75
    assert 0.25 not in fractions, "live progress is at most once: it was not replayed"
    assert later[-1].type == "JobCompleted"
    # Live envelopes say where in the log they came: after the last stored event the watcher had.
    positions = [e.sequence for e in later]
    assert positions == sorted(positions)


async def test_forged_stale_oversized_and_malformed_live_messages_are_ignored(net: Net) -> None:
    honest = await net.provider("honest", slots=1)
    await net.provider("mallory", slots=1, workloads=("noop",))  # online, but never holds this task
    alice = await net.client()
    job = await alice.submit(sleep_job(1, 8.0))
    task_id = f"{job.id}.0"
    got: list[Envelope] = []
    marker = 0.375

    async def follow() -> None:
        async for env in job.events():
            got.append(env)
            if is_live(env) and env.data.fraction == marker:  # type: ignore[attr-defined]
                return

    watcher = asyncio.create_task(follow())
    lease: TaskLeased | None = None
    for _ in range(100):
        lease = next((e.data for e in got if isinstance(e.data, TaskLeased)), None)
        if lease is not None:
            break
        await asyncio.sleep(0.05)
    assert lease is not None and lease.provider_id == "honest"

    def body(lease_id: str, fraction: float = 0.99) -> bytes:
        return LiveProgress(lease_id=lease_id, fraction=fraction, at=utc_now()).model_dump_json().encode()

    mallory = net.providers[1].nc
    honest_subject = live_subject(task_id, "honest")
    assert honest_subject is not None
    # Another provider, with the real lease id, on its own subject (the only one it may use).
    await mallory.publish(str(live_subject(task_id, "mallory")), body(lease.lease_id))
    await mallory.flush()
    # The holder itself, under a lease that is not the current one (a stale attempt's).
    await honest.nc.publish(honest_subject, body("l-stale-lease"))
    # A task the job does not have; oversized, malformed and wrongly typed bodies.
    await honest.nc.publish(str(live_subject(f"{job.id}.7", "honest")), body(lease.lease_id))
    await honest.nc.publish(honest_subject, b"{" + b" " * 4096 + b"}")
    for junk in (b"not json", b"[]", b'{"lease_id": 1}', b"\xff\xfe", body(lease.lease_id)[:-2]):
        await honest.nc.publish(honest_subject, junk)
    # Then one true report, from the holder under its lease: the watcher shows that one only.
    await honest.nc.publish(honest_subject, body(lease.lease_id, marker))
    await honest.nc.flush()
    await asyncio.wait_for(watcher, 10.0)
    live = [e.data for e in got if is_live(e) and isinstance(e.data, TaskProgressed)]
    assert live and len(live) == sum(is_live(e) for e in got)
    assert {(p.provider_id, p.lease_id, p.task_id) for p in live} == {("honest", lease.lease_id, task_id)}
    assert 0.99 not in [p.fraction for p in live]
    await job.cancel("done")


async def test_a_killed_provider_s_task_restarts_from_its_durable_state_not_its_live_progress(net: Net) -> None:
    victim = await net.provider("victim", slots=1)
    alice = await net.client()
    job = await alice.submit(sleep_job(1, 4.0))
    async for env in job.events():
        if is_live(env) and env.data.fraction >= 0.5:  # type: ignore[attr-defined]
            break
    await victim.kill()  # half done, as its live progress said: none of that was durable
    await net.provider("rescuer", slots=1)
    st = await job.wait(timeout=60)
    assert st.status == "completed"
    stored = await net.stored(job.id)
    leases = [e.data for e in stored if isinstance(e.data, TaskLeased)]
    assert [x.provider_id for x in leases] == ["victim", "rescuer"]
    # The second attempt starts from the last durable checkpoint: here there is none, so from zero.
    assert leases[1].resume_from is None and leases[1].resume_step == 0
    assert not any(isinstance(e.data, TaskProgressed) for e in stored)


async def test_only_the_holder_s_name_and_the_owner_s_subscription_are_allowed(net: Net) -> None:
    """The server enforces the live subjects: a provider publishes only as itself, a submitter reads
    only its own jobs, an anonymous client cannot even connect."""
    subject = live_subject("alice.jx.0", "p1")
    forged = live_subject("alice.jx.0", "p2")
    assert subject is not None and forged is not None
    alice = await connect_nats(net.server.access("submitter", "alice"), name="alice")
    bob = await connect_nats(net.server.access("submitter", "bob"), name="bob")
    p1 = await connect_nats(net.server.access("provider", "p1"), name="p1")
    p2 = await connect_nats(net.server.access("provider", "p2"), name="p2")
    auditor = await connect_nats(net.server.access("auditor", "audit"), name="audit")
    try:
        heard: dict[str, list[tuple[str, bytes]]] = {"alice": [], "bob": [], "auditor": []}

        def recorder(who: str) -> Any:
            async def cb(msg: Any) -> None:
                heard[who].append((msg.subject, msg.data))

            return cb

        await alice.subscribe(str(live_filter("alice.jx")), cb=recorder("alice"))
        await bob.subscribe(str(live_filter("alice.jx")), cb=recorder("bob"))  # not bob's job
        await bob.subscribe("gf.live.>", cb=recorder("bob"))
        await auditor.subscribe("gf.live.>", cb=recorder("auditor"))
        for nc in (alice, bob, auditor):
            await nc.flush()
        # p2 tries to speak as p1 (on p1's subject) and on a subject that is not live progress at all.
        await p2.publish(subject, b"forged by p2")
        await p2.publish("gf.live.alice.jx.0", b"no provider")
        await p2.flush()
        await p1.publish(subject, b"true")
        await p2.publish(forged, b"p2 as itself")
        await p1.flush()
        await p2.flush()
        for _ in range(50):
            if len(heard["alice"]) >= 2 and len(heard["auditor"]) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert sorted(heard["alice"]) == [(subject, b"true"), (forged, b"p2 as itself")]
        assert sorted(heard["auditor"]) == sorted(heard["alice"])
        assert heard["bob"] == [], "another submitter read alice's live progress"
    finally:
        for nc in (alice, bob, p1, p2, auditor):
            with contextlib.suppress(Exception):
                await nc.close()
    with pytest.raises(AccessDenied):
        await connect_nats(net.server.url, timeout=3.0)


@pytest.mark.parametrize("per_s", [2.0, 40.0])
async def test_the_durable_writes_do_not_grow_with_the_progress_rate(nats_server: SecureServer, per_s: float) -> None:
    """A real provider runtime reporting progress 2 or 40 times a second: the same intake messages (a
    start and a completion), however many live reports it sends."""
    task_id = f"alice.{new_id('j')}.0"
    live: list[bytes] = []

    async def heard(msg: Any) -> None:
        live.append(msg.data)

    async with nats_server.connection("submitter", "alice") as alice, RuntimeDouble.connect(nats_server) as orch:
        await alice.subscribe(str(live_filter(job_of_task(task_id))), cb=heard)
        await alice.flush()
        async with runtime_provider(nats_server, progress_per_s=per_s) as rt:
            body = await orch.run(rt.provider_id, "sleep", {"seconds": 1.5, "steps": 150}, task_id=task_id)
            assert body.report == "completed"
            await orch.assert_contract_kept(rt)
        await alice.flush()
        assert [s.kind for s in orch.of(task_id)] == ["started", "completed"]
        # Live: up to per_s a second over 1.5 s (the first and the last always pass the throttle), and
        # at 40 a second many more than the durable writes (on a loaded machine, fewer than 60).
        assert (10 if per_s > 10 else 2) <= len(live) <= 1.5 * per_s + 3, len(live)
