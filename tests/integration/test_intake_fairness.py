"""Fair intake on a real, secured nats-server: one submitter's burst is not ahead of everyone else.

The burst is in the intake stream before the orchestrator starts (as after a restart, or whenever it
is behind): in stream order, every message of it would come first. With fair intake, another
submitter's job and a provider's report are served within a round of arriving in the queue.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from actors.metrics import intake_backlog
from actors.orchestrator import INTAKE_CONSUMERS, OrchestratorConfig
from events.intake import InputAccepted, InputRejected
from events.job import JobSubmitted
from events.quotas import QuotaConfig
from events.store.connection import connect_nats
from events.store.topology import Topology
from events.subjects import intake_subject, report_subject
from tests.conftest import unique
from tests.integration.orchestra import Tenants, every_input_has_its_outcome, intake_outcomes, orchestrated
from tests.secure import SecureServer

#: Rates no test here reaches, so that fairness is the queue's alone; and few messages processed at
#: once, so that processing is slower than fetching: the burst waits in the orchestrator's queue (with
#: the default 512 workers, one client's cheap burst is processed about as fast as it is fetched).
SLOW = OrchestratorConfig(
    intake_concurrency=8,
    quotas=QuotaConfig.parse(["intake_per_s=1000000", "intake_burst=10000000", "jobs_in_flight=1000000"]),
)


def one_task_job() -> bytes:
    return json.dumps(
        {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 1}}
    ).encode()


async def burst(tenants: Tenants, who: str, bodies: list[tuple[str, bytes]]) -> list[int]:
    """Publish ``bodies`` (verb.target, body) as submitter ``who``, many at once; their intake sequences."""
    seqs: list[int] = []
    for start in range(0, len(bodies), 200):
        acks = await asyncio.gather(
            *(
                tenants.publish("submitter", who, intake_subject("submitter", who, *vt.split(".", 1)), body)
                for vt, body in bodies[start : start + 200]
            )
        )
        seqs += [a.seq for a in acks]
    return seqs


def outcome_order(log: list[Any]) -> list[int]:
    """The intake sequences in the order their outcomes (facts, or an explicit one) reached the log."""
    order: list[int] = []
    seen: set[int] = set()
    for e in log:
        if isinstance(e.data, InputAccepted | InputRejected):
            seq = e.data.intake_seq
        elif e.id.startswith("in-"):
            seq = int(e.id[3:].split(".", 1)[0])
        else:
            continue
        if seq not in seen:
            seen.add(seq)
            order.append(seq)
    return order


async def test_a_burst_is_not_ahead_of_another_submitters_job_nor_of_a_providers_report(
    own_nats_server: SecureServer,
) -> None:
    tenants = Tenants(own_nats_server)
    try:
        a = await burst(tenants, "flood", [(f"submit.m{i}", one_task_job()) for i in range(2_000)])
        b = (
            await tenants.publish(
                "submitter", "victim", intake_subject("submitter", "victim", "submit", "j"), one_task_job()
            )
        ).seq
        p = (await tenants.publish("provider", "p1", report_subject("p1", "ghost.j.0"), b"{not json")).seq
        assert b > max(a) and p > b  # in stream order, both are behind the whole burst
        async with orchestrated(own_nats_server, SLOW) as store:
            log = await every_input_has_its_outcome(store, timeout=90)
            assert set(intake_outcomes(log).values()) == {1}  # one outcome per message, none lost
            order = outcome_order(log)
            burst_seqs = set(a)
            ahead_of_b = sum(1 for s in order[: order.index(b)] if s in burst_seqs)
            ahead_of_p = sum(1 for s in order[: order.index(p)] if s in burst_seqs)
            # Fair: the victim waits for what was already in the orchestrator's hands (its queue of
            # 2 x 512 and its 512 workers' messages) when its job was fetched, not for the whole
            # burst; the provider's report has a consumer of its own and goes first.
            assert ahead_of_b < 500, f"the victim's job came after {ahead_of_b} of the burst's 2,000"
            assert ahead_of_p < 100, f"the provider's report came after {ahead_of_p} of the burst's 2,000"
            assert any(isinstance(e.data, JobSubmitted) and e.data.job_id == "victim.j" for e in log)

            # Every message has its outcome and is acknowledged: the backlog (both consumers) is empty.
            for _ in range(100):
                backlog = await intake_backlog(store.js, Topology())
                if backlog == (0, 0.0):
                    break
                await asyncio.sleep(0.2)
            assert backlog == (0, 0.0), f"the intake backlog stayed at {backlog}"
    finally:
        await tenants.close()


async def test_a_burst_past_the_intake_rate_gets_one_refusal_per_message_and_others_are_unaffected(
    own_nats_server: SecureServer,
) -> None:
    quotas = QuotaConfig.parse(["intake_per_s=50", "intake_burst=100"])
    tenants = Tenants(own_nats_server)
    try:
        a = await burst(tenants, "flood", [(f"submit.j{i}", one_task_job()) for i in range(300)])
        b = (
            await tenants.publish(
                "submitter", "victim", intake_subject("submitter", "victim", "submit", "j"), one_task_job()
            )
        ).seq
        async with orchestrated(own_nats_server, OrchestratorConfig(quotas=quotas)) as store:
            log = await every_input_has_its_outcome(store, timeout=60)
            outcomes = intake_outcomes(log)
            assert all(outcomes[s] == 1 for s in [*a, b]), "each message has exactly one outcome"
            refused = {e.data.intake_seq: e.data for e in log if isinstance(e.data, InputRejected) and e.data.field}
            assert {r.field for r in refused.values()} == {"quota.intake_per_s"}
            assert all(r.subject.startswith("gf.in.submitter.flood.") for r in refused.values())
            assert "50 messages a second" in next(iter(refused.values())).reason
            submitted = {e.data.job_id for e in log if isinstance(e.data, JobSubmitted)}
            # Its burst of 100 got through, and at most a few seconds' worth of 50 a second more; the
            # rest were refused, each on its own. Nothing valid under the rate was lost.
            admitted = [s for s in a if s not in refused]
            assert 100 <= len(admitted) <= 100 + 50 * 5 and len(refused) == len(a) - len(admitted)
            assert {f"flood.j{a.index(s)}" for s in admitted} <= submitted
            assert not {f"flood.j{a.index(s)}" for s in refused} & submitted
            assert b not in refused and "victim.j" in submitted  # another submitter is unaffected
    finally:
        await tenants.close()


async def test_the_intake_backlog_sums_both_role_consumers_and_ages_from_the_oldest(nats_server: SecureServer) -> None:
    from nats.js import api

    name = unique("IN").upper()
    prefix = f"{name.lower()}.in"
    topology = Topology(intake_stream=name, intake_prefix=prefix)
    nc = await connect_nats(nats_server.superuser(), name="test-intake-backlog")
    js = nc.jetstream()
    try:
        await js.add_stream(topology.intake_config())
        for role, durable in INTAKE_CONSUMERS.items():
            config = api.ConsumerConfig(
                durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, filter_subject=f"{prefix}.{role}.>"
            )
            await js.add_consumer(name, config=config)
        assert await intake_backlog(js, topology) == (0, 0.0)
        await js.publish(f"{prefix}.provider.p1.report.t", b"{}")
        await asyncio.sleep(1.0)
        await js.publish(f"{prefix}.submitter.alice.submit.j0", b"{}")
        await js.publish(f"{prefix}.submitter.alice.submit.j1", b"{}")
        behind, age = await intake_backlog(js, topology)
        assert behind == 3 and 1.0 <= age < 60  # the oldest is the provider's report
        providers = await js.pull_subscribe_bind(INTAKE_CONSUMERS["provider"], name)
        (report,) = await providers.fetch(1, timeout=5.0)
        await report.ack_sync()
        behind, age = await intake_backlog(js, topology)
        assert behind == 2 and 0 <= age < 1.0  # the submissions, sent a second later
        submitters = await js.pull_subscribe_bind(INTAKE_CONSUMERS["submitter"], name)
        for msg in await submitters.fetch(2, timeout=5.0):
            await msg.ack_sync()
        assert await intake_backlog(js, topology) == (0, 0.0)
    finally:
        await nc.close()
