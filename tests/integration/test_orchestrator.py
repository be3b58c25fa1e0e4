"""The orchestrator on a real nats-server, with simulated providers and injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events.intake import MAX_INTAKE_BYTES, InputRejected
from events.job import JobCompleted
from events.store import JetStreamEventStore
from events.subjects import intake_subject, report_subject
from events.task import TaskCancelled, TaskLeased, TaskResultRejected
from gpufleet.audit import full_audit
from gpufleet.sim import SimulatedProvider, inline_result
from tests.integration.orchestra import (
    Tenants,
    all_jobs_ended,
    assert_exactly_once,
    every_input_has_its_outcome,
    intake_outcomes,
    wait_for,
)
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)


@dataclass
class Network:
    server: SecureServer
    orch: Orchestrator | None
    store: JetStreamEventStore
    tenants: Tenants
    providers: list[SimulatedProvider] = field(default_factory=list)

    async def provider(self, pid: str, **kw: object) -> SimulatedProvider:
        sim = await SimulatedProvider.connect(self.server.access("provider", pid), heartbeat_s=0.2, **kw)
        p = await sim.start()
        self.providers.append(p)
        return p


@pytest.fixture
async def net(own_nats_server: SecureServer) -> AsyncIterator[Network]:
    orch = await Orchestrator.connect(own_nats_server.access("orchestrator"), config=FAST)
    store = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"))
    network = Network(own_nats_server, orch, store, Tenants(own_nats_server))
    yield network
    try:
        for p in network.providers:
            await p.kill()
        if network.orch is not None:
            # Every test here ends with the full audit of what it left in the log: nothing sent is
            # without its outcome, and no check of the auditor finds anything.
            await every_input_has_its_outcome(store)
            report, _ = await full_audit(store)
            assert report.ok, report.render()
    finally:
        if network.orch is not None:
            await network.orch.close()
        await store.close()
        await network.tenants.close()


def sleep_job(n: int, seconds: float, **extra: object) -> dict[str, object]:
    return {
        "workload": "sleep",
        "params": {"seconds": seconds},
        "split": {"kind": "count", "count": n},
        "retry": {"max_attempts": 3, "backoff_s": 0.1},
        **extra,
    }


async def test_jobs_run_to_completion_and_bill_exactly(net: Network) -> None:
    for i in range(3):
        await net.provider(f"p{i}", slots=2, price_micros=1000 + i)
    for j in range(6):
        await net.tenants.submit(f"u{j % 2}", f"job{j}", sleep_job(3, 0.05))
    w, log = await wait_for(net.store, all_jobs_ended(6), timeout=30)
    assert {j.status for j in w.jobs.values()} == {"completed"}
    assert_exactly_once(log)
    assert Counter(type(e.data).__name__ for e in log)["JobCompleted"] == 6


async def test_two_hundred_jobs_survive_random_provider_kills(net: Network) -> None:
    rng = random.Random(7)
    serial = 0
    for _ in range(6):
        serial += 1
        await net.provider(f"p{serial}", slots=4)
    jobs = 200
    for j in range(jobs):
        # A short timeout: a lease that goes silent on a live provider heals by timing out.
        spec = sleep_job(rng.randint(2, 5), rng.choice([0.02, 0.05, 0.1]), timeout_s=10.0)
        await net.tenants.submit(f"u{j % 5}", f"job{j}", spec)
    kills = 0

    async def chaos() -> None:
        nonlocal serial, kills
        while True:
            await asyncio.sleep(0.7)
            victims = [p for p in net.providers if p.running]
            if victims:
                victim = rng.choice(victims)
                await victim.kill()  # mid-task, no goodbye
                net.providers.remove(victim)
                kills += 1
            serial += 1
            await net.provider(f"p{serial}", slots=4)

    monkey = asyncio.create_task(chaos())
    try:
        w, log = await wait_for(net.store, all_jobs_ended(jobs), timeout=60, poll=1.0)
    except AssertionError as e:
        state = [
            (p.provider_id, {k: (t.done(), t.cancelled()) for k, t in p.running.items()})
            for p in net.providers
            if p.running
        ]
        raise AssertionError(f"{e}; providers running: {state}") from None
    finally:
        monkey.cancel()
    assert kills >= 3
    assert {j.status for j in w.jobs.values()} == {"completed"}
    assert_exactly_once(log)
    types = Counter(type(e.data).__name__ for e in log)
    assert types["ProviderLost"] >= 3 and types["TaskLeaseExpired"] >= 1
    assert types["JobCompleted"] == jobs
    for p in net.providers:
        await p.kill()
    await every_input_has_its_outcome(net.store)
    report, _ = await full_audit(net.store)
    assert report.ok, report.render()


async def test_a_cancellation_reaches_the_provider_holding_the_lease(net: Network) -> None:
    p = await net.provider("p1", slots=2)
    await net.tenants.submit("alice", "long", sleep_job(2, 30.0))
    await wait_for(net.store, lambda w: sum(t.status == "running" for t in w.tasks.values()) == 2, timeout=20)
    await net.tenants.cancel("alice", "long", "not needed")
    w, log = await wait_for(
        net.store, lambda w: all_jobs_ended(1)(w) and all(t.status == "cancelled" for t in w.tasks.values()), timeout=20
    )
    assert w.jobs["alice.long"].status == "cancelled"
    assert sum(isinstance(e.data, TaskCancelled) and e.data.lease_id is not None for e in log) == 2
    for _ in range(50):
        if p.revoked == 2:
            break
        await asyncio.sleep(0.1)
    assert p.revoked == 2 and not p.running


async def test_forged_and_malformed_inputs_are_recorded_and_never_block(net: Network) -> None:
    await net.provider("p1", slots=1)
    # Long enough to report its start (a shorter run's completion implies it): a lease that runs.
    await net.tenants.submit("alice", "before", sleep_job(1, 2.0))
    w, _ = await wait_for(net.store, lambda w: any(t.status == "running" for t in w.tasks.values()), timeout=20)
    task_id = next(iter(w.tasks))
    lease = w.tasks[task_id].lease
    assert lease is not None
    # Another provider, with credentials of its own, reports on a lease it does not hold.
    forged = {
        "report": "completed",
        "lease_id": lease.lease_id,
        "result": inline_result(42).model_dump(mode="json"),
        "gpu_ms": 1,
    }
    await net.tenants.publish("provider", "mallory", report_subject("mallory", task_id), json.dumps(forged).encode())

    def sub(verb: str, job: str) -> str:
        return intake_subject("submitter", "alice", verb, job)

    bad = [
        (sub("submit", "x1"), b"{not json"),
        (sub("submit", "x2"), b'{"workload": "sleep", "priority": "high"}'),
        (sub("teleport", "x3"), b"{}"),
        (sub("submit", "x4"), b'{"workload": "sleep", "surprise": 1}'),
        (sub("submit", "x5"), b'{"workload": "sleep", "params": {"seconds": -1}}'),
        (sub("submit", "x6"), b"[" + b" " * MAX_INTAKE_BYTES + b"]"),
        (sub("submit", "x7"), b'{"workload": "sleep", "submitter": "bob"}'),
    ]
    for subject, body in bad:
        await net.tenants.publish("submitter", "alice", subject, body)
    ghost = report_subject("p1", "ghost.j.0")
    await net.tenants.publish("provider", "p1", ghost, b'{"report": "started", "lease_id": "l"}')
    await net.tenants.submit("alice", "after", sleep_job(1, 0.01))
    w, log = await wait_for(
        net.store,
        lambda w: all_jobs_ended(3)(w) and w.intake_low > 14,
        timeout=30,  # every input has its outcome
    )
    assert w.jobs["alice.before"].status == "completed" and w.jobs["alice.after"].status == "completed"
    assert w.jobs["alice.x5"].status == "rejected"
    rejected = {e.data.subject: e.data for e in log if isinstance(e.data, InputRejected)}
    assert rejected[sub("submit", "x1")].field == "body"
    assert rejected[sub("submit", "x2")].field == "priority"
    assert rejected[sub("teleport", "x3")].field == "subject"
    assert rejected[sub("submit", "x4")].field == "surprise"
    assert rejected[sub("submit", "x7")].field == "submitter"
    assert "unknown task" in rejected[ghost].reason
    assert str(MAX_INTAKE_BYTES) in rejected[sub("submit", "x6")].reason
    refused = [e.data for e in log if isinstance(e.data, TaskResultRejected)]
    assert len(refused) == 1 and refused[0].provider_id == "mallory"
    outcomes = intake_outcomes(log)
    assert set(outcomes.values()) == {1}
    assert sorted(outcomes) == list(range(1, max(outcomes) + 1))


async def test_a_lease_that_never_starts_expires_and_moves_on(net: Network) -> None:
    deaf = await net.provider("deaf", slots=1)
    deaf.deafen()  # it heartbeats but never hears of its leases
    await net.tenants.submit("alice", "j", sleep_job(1, 0.01))
    await wait_for(net.store, lambda w: any(t.status == "leased" for t in w.tasks.values()), timeout=10)
    await net.provider("ok", slots=1)
    w, log = await wait_for(net.store, all_jobs_ended(1), timeout=30)
    assert w.jobs["alice.j"].status == "completed"
    leases = [e.data.provider_id for e in log if isinstance(e.data, TaskLeased)]
    assert "deaf" in leases and leases[-1] == "ok"


async def test_drain_finishes_running_work_and_takes_nothing_new(net: Network) -> None:
    p = await net.provider("p1", slots=2)
    # Long enough to report their starts (a run reports it once it has gone on a second).
    await net.tenants.submit("alice", "j1", sleep_job(2, 3.0))
    await wait_for(net.store, lambda w: sum(t.status == "running" for t in w.tasks.values()) == 2, timeout=20)
    drained = asyncio.create_task(p.drain())
    await wait_for(net.store, lambda w: w.providers["p1"].status == "draining", timeout=10, poll=0.1)
    await net.tenants.submit("alice", "j2", sleep_job(1, 0.01))
    await drained
    w, log = await wait_for(net.store, lambda w: w.jobs["alice.j1"].status == "completed", timeout=20)
    assert w.providers["p1"].status == "left"
    assert [e.data.provider_id for e in log if isinstance(e.data, TaskLeased)] == ["p1", "p1"]
    assert w.jobs["alice.j2"].status == "accepted"  # nobody else to run it
    await net.provider("p2", slots=1)
    w, _ = await wait_for(net.store, all_jobs_ended(2), timeout=20)
    assert w.jobs["alice.j2"].status == "completed"


def _process(*args: str) -> subprocess.Popen[bytes]:
    """A gpufleet command as its own process (killed with SIGKILL, as a crash would)."""
    cmd = [sys.executable, "-m", "gpufleet", "--log-format", "json", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_sigkilled_orchestrator_nats_server_and_provider_lose_and_duplicate_nothing(
    own_nats_server: SecureServer,
) -> None:
    """Real processes, real SIGKILLs: the orchestrator mid-run, then nats-server while the next
    orchestrator runs, then a provider. Every job completes once, every intake message has one
    outcome, and the full audit of the log passes."""
    server = own_nats_server
    orchestrator = server.access("orchestrator")
    assert orchestrator.creds is not None
    orch_cmd = (
        "orchestrator",
        "run",
        "--nats",
        server.url,
        "--creds",
        str(orchestrator.creds),
        "--heartbeat-timeout",
        "2",
        "--lease-start-timeout",
        "3",
        "--lease-grace",
        "5",
        "--data-dir",
        str(server.root),
    )

    def provider(prefix: str) -> subprocess.Popen[bytes]:
        return _process(
            "provider", "simulate", "--nats", server.url, "--data-dir", str(server.root),
            "--count", "1", "--slots", "3", "--prefix", prefix,
        )  # fmt: skip

    procs = {"orch-1": _process(*orch_cmd), **{f"prov-{i}": provider(f"k{i}-") for i in range(4)}}
    tenants = Tenants(server)
    store = await JetStreamEventStore.connect(orchestrator)
    owner: dict[str, str] = {}
    try:
        await wait_for(store, lambda w: sum(p.status == "online" for p in w.providers.values()) >= 4, timeout=60)
        jobs = 40
        for j in range(jobs):
            owner[f"job{j}"] = await tenants.submit(f"u{j % 3}", f"job{j}", sleep_job(4, 0.1))
        await wait_for(store, lambda w: sum(j.status == "completed" for j in w.jobs.values()) >= 8, timeout=60)
        # 1. The orchestrator dies mid-run; more work arrives while none runs (the intake keeps it).
        procs["orch-1"].send_signal(signal.SIGKILL)
        procs["orch-1"].wait()
        for j in range(jobs, jobs + 10):
            owner[f"job{j}"] = await tenants.submit("alice", f"job{j}", sleep_job(2, 0.05))
        procs["orch-2"] = _process(*orch_cmd)
        await wait_for(store, lambda w: sum(j.status == "completed" for j in w.jobs.values()) >= 20, timeout=60)
        # 2. nats-server dies while the new orchestrator and the providers are mid-run, and comes back.
        server.kill()
        server.start()
        # 3. A provider dies holding leases; its work moves to the others.
        procs["prov-0"].send_signal(signal.SIGKILL)
        procs["prov-0"].wait()
        w, log = await wait_for(store, all_jobs_ended(jobs + 10), timeout=180, poll=1.0)
        assert {j.status for j in w.jobs.values()} == {"completed"}
        assert Counter(e.data.job_id for e in log if isinstance(e.data, JobCompleted)) == {
            owner[f"job{j}"]: 1 for j in range(jobs + 10)
        }
        await wait_for(store, lambda w: w.providers["k0-0"].status == "lost", timeout=30)
        # Stop the survivors (nothing more arrives), then every input sent must have its one outcome.
        for name, proc in procs.items():
            if name.startswith("prov-") and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        log = await every_input_has_its_outcome(store)
        assert_exactly_once(log)
        report, _ = await full_audit(store)
        assert report.ok, report.render()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await store.close()
        await tenants.close()


async def test_two_orchestrators_share_the_intake_under_provider_chaos_and_the_audit_passes(
    own_nats_server: SecureServer,
) -> None:
    """Two orchestrator processes' worth of orchestrators on one network: every intake message gets
    exactly one outcome (they share one durable consumer), nothing is leased or completed twice, the
    books balance, the audit of the whole log passes, and both did part of the work."""
    from dataclasses import replace

    server = own_nats_server
    orchs = [
        await Orchestrator.connect(server.access("orchestrator"), config=replace(FAST, source="gpufleet/orch-a")),
        await Orchestrator.connect(
            server.access("orchestrator", "orch-b"), config=replace(FAST, source="gpufleet/orch-b")
        ),
    ]
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    tenants = Tenants(server)
    providers: list[SimulatedProvider] = []
    rng = random.Random(11)

    async def join(pid: str) -> None:
        sim = await SimulatedProvider.connect(server.access("provider", pid), slots=3, heartbeat_s=0.2)
        providers.append(await sim.start())

    try:
        for i in range(6):
            await join(f"p{i}")
        jobs = 120
        for j in range(jobs):
            spec = sleep_job(rng.randint(1, 4), rng.choice([0.02, 0.05]), timeout_s=10.0)
            await tenants.submit(f"u{j % 4}", f"job{j}", spec)
        serial = 6

        async def chaos() -> None:
            nonlocal serial
            while True:
                await asyncio.sleep(0.8)
                busy = [p for p in providers if p.running]
                if busy:
                    victim = rng.choice(busy)
                    await victim.kill()
                    providers.remove(victim)
                serial += 1
                await join(f"p{serial}")

        monkey = asyncio.create_task(chaos())
        try:
            w, log = await wait_for(store, all_jobs_ended(jobs), timeout=90, poll=1.0)
        finally:
            monkey.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monkey
        for p in providers:
            await p.kill()  # nothing more arrives: every input sent so far must get its outcome
        log = await every_input_has_its_outcome(store)
        assert {j.status for j in w.jobs.values()} == {"completed"}
        assert_exactly_once(log)
        outcomes = intake_outcomes(log)
        assert set(outcomes.values()) == {1}, "an intake message got two outcomes"
        intake = await store.js.stream_info("GF_INTAKE")
        assert len(outcomes) == intake.state.last_seq, "an intake message got no outcome"
        by_source = Counter(e.source for e in log)
        assert by_source["gpufleet/orch-a"] > 0 and by_source["gpufleet/orch-b"] > 0, by_source
        # They shared the intake: each message went to one of them (a few again, after a redelivery).
        delivered = [o.intake_delivered for o in orchs]
        assert all(d > 0 for d in delivered) and sum(delivered) <= 1.1 * intake.state.last_seq, delivered
        report, _ = await full_audit(store)
        assert report.ok, report.render()
    finally:
        for p in providers:
            await p.kill()
        for o in orchs:
            await o.close()
        await store.close()
        await tenants.close()
