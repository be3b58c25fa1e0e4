"""The intake service (``actors.intake_service``) on its own, on a real nats-server: real outsiders
publish with their own credentials; the service, with a real runner, shells and core (no
orchestrator around it), gives every message exactly one outcome in the log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from actors.admission import Admission
from actors.core import Core
from actors.dispatcher import Dispatcher
from actors.intake_service import IntakeService
from actors.job import job_decider
from actors.provider import provider_decider
from actors.runner import Runner
from actors.shell import ActorShell
from actors.task import task_decider
from events.aio import cancel_and_wait
from events.intake import InputAccepted, InputRejected
from events.job import JobSubmitted
from events.provider import ProviderRegistered
from events.quotas import QuotaConfig
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.store.topology import Topology
from events.subjects import dispatch_consumer, intake_subject, report_subject
from tests.integration.orchestra import Tenants, intake_outcomes, wait_for
from tests.secure import SecureServer

CAPS = {"backend": "cpu", "gpu_model": "cpu", "vram_mb": 0, "slots": 1}
JOB = {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 1}}


@dataclass
class Intake:
    server: SecureServer
    topology: Topology
    nc: NATS
    store: JetStreamEventStore
    service: IntakeService
    runner: Runner
    tenants: Tenants

    async def send(self, role: str, name: str, verb: str, target: str, body: Any) -> int:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        ack = await self.tenants.publish(role, name, intake_subject(role, name, verb, target), data)
        return int(ack.seq)

    async def outcomes(self, seqs: list[int]) -> list[Any]:
        """The log, once every message in ``seqs`` has its outcome."""
        _, log = await wait_for(self.store, lambda w: all(w.intake_done(s) for s in seqs), timeout=20, poll=0.1)
        return log


async def started(server: SecureServer, quotas: QuotaConfig) -> AsyncIterator[Intake]:
    topology = await server.ensure_topology()
    nc = await connect_nats(server.access("orchestrator"), name="test-intake")
    store = JetStreamEventStore(nc, settings=topology.events)
    await store.ensure()
    core = Core()
    jobs, tasks, providers = (
        ActorShell(store, d, source="test") for d in (job_decider, task_decider, provider_decider)
    )  # type: ignore[arg-type]
    runner = Runner(jobs, tasks, providers)
    dispatcher = Dispatcher(
        nc.jetstream(), topology, core, tasks, runner, leading=lambda: False, lease_start_timeout_s=30
    )
    service = IntakeService(
        nc,
        nc.jetstream(),
        topology,
        store,
        core,
        Admission(quotas),
        runner,
        open_dispatch=dispatcher.open_dispatch,
        source="test",
        lease_grace_s=5.0,
        concurrency=4,
        ack_wait_s=5.0,
    )
    running = asyncio.create_task(service.run())
    tenants = Tenants(server)
    try:
        yield Intake(server, topology, nc, store, service, runner, tenants)
    finally:
        await cancel_and_wait([running])
        if runner.inflight:
            await asyncio.wait(list(runner.inflight), timeout=5)
        await tenants.close()
        await nc.close()


@pytest.fixture
async def intake(own_nats_server: SecureServer) -> AsyncIterator[Intake]:
    async for i in started(own_nats_server, QuotaConfig()):
        yield i


async def test_every_message_gets_exactly_one_outcome_facts_or_a_recorded_refusal(intake: Intake) -> None:
    submitted = await intake.send("submitter", "alice", "submit", "j1", JOB)
    malformed = await intake.send("submitter", "alice", "submit", "j2", b"{not json")
    unknown_job = await intake.send("submitter", "bob", "cancel", "nope", {"reason": "why not"})
    registered = await intake.send("provider", "p1", "register", "", {"name": "box", "capabilities": CAPS})
    no_task = await intake.send("provider", "p1", "report", "alice.j1.9", {"lease_id": "l1", "report": "started"})
    seqs = [submitted, malformed, unknown_job, registered, no_task]
    log = await intake.outcomes(seqs)
    assert intake_outcomes(log) == dict.fromkeys(seqs, 1)
    # Accepted with facts: their ids are in-<seq>.<n>, so the facts are the record.
    facts = {e.id: e.data for e in log if e.id.startswith("in-")}
    assert isinstance(facts[f"in-{submitted}.0"], JobSubmitted) and facts[f"in-{submitted}.0"].job_id == "alice.j1"
    assert any(isinstance(d, ProviderRegistered) and i.startswith(f"in-{registered}.") for i, d in facts.items())
    # Refused: one recorded rejection each, naming why, on the sender's outcomes stream.
    rejected = {e.data.intake_seq: (e.stream, e.data) for e in log if isinstance(e.data, InputRejected)}
    assert set(rejected) == {malformed, unknown_job, no_task}
    assert rejected[malformed][0] == "intake.submitter.alice" and rejected[malformed][1].field == "body"
    assert rejected[unknown_job][0] == "intake.submitter.bob" and "nope" in rejected[unknown_job][1].reason
    assert rejected[no_task][0] == "intake.provider.p1"
    # A registering provider gets its dispatch consumer (before the registration lands).
    info = await intake.nc.jetstream().consumer_info(intake.topology.dispatch_stream, dispatch_consumer("p1"))
    assert info.config.filter_subject == f"{intake.topology.dispatch_prefix}.p1"
    assert intake.service.delivered == len(seqs)


async def test_a_message_the_table_translates_is_run_on_its_aggregate_with_the_sender_as_its_owner(
    intake: Intake,
) -> None:
    # p2 reports on a task under p1's name: the table makes it p2's report, which the task refuses.
    await intake.send("provider", "p2", "register", "", {"name": "box", "capabilities": CAPS})
    named = await intake.tenants.publish(
        "provider",
        "p2",
        report_subject("p2", "alice.j1.0"),
        json.dumps({"lease_id": "l1", "provider_id": "p1", "report": "started"}).encode(),
    )
    log = await intake.outcomes([int(named.seq)])
    refusal = next(e.data for e in log if isinstance(e.data, InputRejected) and e.data.intake_seq == named.seq)
    assert refusal.field == "provider_id" and "p2" in refusal.reason


async def test_a_message_that_changes_nothing_is_recorded_as_accepted_without_facts(intake: Intake) -> None:
    await intake.outcomes([await intake.send("provider", "p1", "register", "", {"name": "box", "capabilities": CAPS})])
    first = await intake.send("provider", "p1", "drain", "", {"reason": "maintenance"})
    await intake.outcomes([first])
    again = await intake.send("provider", "p1", "drain", "", {"reason": "maintenance"})  # draining already
    log = await intake.outcomes([again])
    accepted = [e for e in log if isinstance(e.data, InputAccepted)]
    assert [(e.id, e.stream, e.data.intake_seq, e.data.facts) for e in accepted] == [
        (f"in-{again}", "intake.provider.p1", again, 0)
    ]
    assert not any(e.id.startswith(f"in-{again}.") for e in log)


@pytest.fixture
async def slow_intake(own_nats_server: SecureServer) -> AsyncIterator[Intake]:
    quotas = QuotaConfig.parse(["intake_per_s=0.01", "intake_burst=2"])
    async for i in started(own_nats_server, quotas):
        yield i


async def test_a_submitter_past_its_rate_is_refused_at_once_and_nobody_else_is(slow_intake: Intake) -> None:
    alice = [await slow_intake.send("submitter", "alice", "submit", f"j{i}", JOB) for i in range(5)]
    bob = [await slow_intake.send("submitter", "bob", "submit", "j0", JOB)]
    p1 = [
        await slow_intake.send("provider", "p1", "register", "", {"name": "box", "capabilities": CAPS})
        for _ in range(3)
    ]
    log = await slow_intake.outcomes(alice + bob + p1)
    assert intake_outcomes(log) == dict.fromkeys(alice + bob + p1, 1)
    refused = {e.data.intake_seq: e.data for e in log if isinstance(e.data, InputRejected)}
    # Alice's burst of 2 went through; the rest of hers were refused for the rate, and only hers.
    assert sorted(refused) == alice[2:]
    assert all("faster than" in r.reason and r.field is not None for r in refused.values())
    accepted = {e.data.job_id for e in log if isinstance(e.data, JobSubmitted)}
    assert accepted == {"alice.j0", "alice.j1", "bob.j0"}
