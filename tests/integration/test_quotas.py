"""Quotas and windows on a real secured server, with real credentials.

- Over a quota, a submission is refused once, recorded with the limit's name, and nothing valid is lost.
- A job of 10,000,000 tasks is accepted with a constant number of appends, and only a window of its
  tasks exists; cancelling it ends them, and the audit (which re-decides every decision) passes.
- A submitter and an auditor are told the quotas and usage; a provider is not.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest

from actors.orchestrator import OrchestratorConfig
from events.errors import InvalidPayload
from events.intake import InputRejected
from events.job import MAX_TASKS_PER_JOB, JobAccepted, JobSubmitted
from events.quotas import QuotaConfig
from events.store import JetStreamEventStore
from events.store.blobs import BlobStore
from events.store.connection import denied_subjects
from events.task import TaskCreated
from gpufleet.client import Client
from tests.integration.audited import assert_audit_passes, eventually
from tests.integration.orchestra import Tenants, every_input_has_its_outcome, intake_outcomes, orchestrated, wait_for
from tests.secure import SecureServer

pytestmark = pytest.mark.asyncio

NOOP = {"workload": "noop", "timeout_s": 5.0}


def config(*quotas: str, window: int = 16) -> OrchestratorConfig:
    return OrchestratorConfig(
        heartbeat_timeout_s=1.0,
        lease_start_timeout_s=2.0,
        lease_grace_s=5.0,
        quotas=QuotaConfig.parse(list(quotas)),
        task_window=window,
    )


def refusals(log: list[Any], field: str) -> list[InputRejected]:
    return [e.data for e in log if isinstance(e.data, InputRejected) and e.data.field == field]


async def test_jobs_in_flight_and_tasks_queued_refuse_once_naming_the_limit(own_nats_server: SecureServer) -> None:
    server = own_nats_server
    tenants = Tenants(server)
    async with orchestrated(server, config("jobs_in_flight=2", "tasks_queued=1000", "bob.jobs_in_flight=5")) as store:
        try:
            await tenants.submit("alice", "a1", {**NOOP, "split": {"kind": "count", "count": 500}})
            await tenants.submit("alice", "a2", {**NOOP, "split": {"kind": "count", "count": 400}})
            await tenants.submit("alice", "a3", NOOP)  # a third job in flight
            await tenants.submit("bob", "big", {**NOOP, "split": {"kind": "count", "count": 1001}})
            for i in range(3):
                await tenants.submit("bob", f"b{i}", NOOP)  # bob's own quota: 5 jobs
            log = await every_input_has_its_outcome(store)
            assert set(intake_outcomes(log).values()) == {1}, "one outcome per message"
            (jobs,) = refusals(log, "quota.jobs_in_flight")
            assert jobs.subject.endswith(".a3") and "2 jobs in flight" in jobs.reason
            (tasks,) = refusals(log, "quota.tasks_queued")
            assert tasks.subject.endswith(".big") and "1,000" in tasks.reason
            # (A submission's outcome is its JobSubmitted; the acceptance follows as a reaction.)
            want = {"alice.a1", "alice.a2", "bob.b0", "bob.b1", "bob.b2"}
            _, log = await wait_for(store, lambda w: all(j in w.jobs and w.jobs[j].status != "submitted" for j in want))
            accepted = {e.data.job_id for e in log if isinstance(e.data, JobAccepted)}
            assert accepted == want
            # A job that ends makes room: the same submission, sent again, is accepted now.
            await tenants.cancel("alice", "a1")
            await wait_for(store, lambda w: w.jobs["alice.a1"].status == "cancelled", timeout=30)
            # Once the orchestrator has applied the cancellation too (its usage says so):
            async with await Client.connect(server.url, creds=server.access("submitter", "alice").creds) as alice:

                async def freed() -> bool:
                    return bool((await alice.quota())["usage"]["jobs_in_flight"] < 2)

                await eventually(freed, "the orchestrator counts alice's cancelled job out", poll=0.2)
            await tenants.submit("alice", "a3", {**NOOP, "workload": "noop", "timeout_s": 6.0})
            await wait_for(store, lambda w: w.jobs.get("alice.a3") is not None, timeout=30)
            await assert_audit_passes(store)
        finally:
            await tenants.close()


async def test_a_ten_million_task_job_costs_constant_appends_and_a_window(own_nats_server: SecureServer) -> None:
    server = own_nats_server
    tenants = Tenants(server)
    async with orchestrated(server, config(window=16)) as store:
        try:
            huge = {**NOOP, "split": {"kind": "count", "count": MAX_TASKS_PER_JOB}}
            job = await tenants.submit("alice", "huge", huge)
            await wait_for(store, lambda w: len(w.tasks_by_job.get(job, ())) >= 16, timeout=30)
            await asyncio.sleep(0.5)  # anything more it would write, it writes now
            _, log = await wait_for(store, lambda w: True)
            kinds = [type(e.data).__name__ for e in log if e.subject.startswith(("job.", "task."))]
            assert kinds.count("JobSubmitted") == 1 and kinds.count("JobAccepted") == 1
            assert kinds.count("TaskCreated") == 16, "one window of tasks, not ten million"
            accepted = next(e.data for e in log if isinstance(e.data, JobAccepted))
            assert accepted.task_count == MAX_TASKS_PER_JOB
            # The client's status counts every task: the ones created, and the ones still to be.
            async with await Client.connect(server.url, creds=server.access("submitter", "alice").creds) as client:
                st = await client.job(job).status()
                assert st.task_count == MAX_TASKS_PER_JOB and len(st.tasks) == 16
                assert st.not_created == MAX_TASKS_PER_JOB - 16
                mine = await client.quota()
            assert mine["usage"]["jobs_in_flight"] == 1 and mine["usage"]["tasks_queued"] == MAX_TASKS_PER_JOB
            await tenants.cancel("alice", "huge")
            _, log = await wait_for(
                store, lambda w: all(w.tasks[t].status == "cancelled" for t in w.tasks_by_job[job]), timeout=30
            )
            assert sum(isinstance(e.data, TaskCreated) for e in log) == 16
            assert sum(isinstance(e.data, JobSubmitted) for e in log) == 1
            await assert_audit_passes(store)
        finally:
            await tenants.close()


async def test_quotas_are_told_to_their_submitter_and_to_auditors_only(own_nats_server: SecureServer) -> None:
    server = own_nats_server
    async with orchestrated(server, config("tasks_running=7", "carol.tasks_running=3", "object_bytes=300000")):
        async with await Client.connect(server.url, creds=server.access("submitter", "carol").creds) as carol:
            mine = await carol.quota()
            assert mine["submitter"] == "carol" and mine["limits"]["tasks_running"] == 3
            # Asking is rate-limited per identity (10 a second, 20 at once): a flood of asks is refused.
            answers = await asyncio.gather(*(carol.quota() for _ in range(40)), return_exceptions=True)
            refused = [a for a in answers if isinstance(a, InvalidPayload)]
            assert refused and all("too many quota requests" in str(a) for a in refused), answers[:3]
            # Nobody may ask for another submitter's usage: the server refuses the subject itself.
            other = "gf.api.submitter.alice.quota"
            with pytest.raises(nats.errors.TimeoutError):
                await carol.nc.request(other, b"", timeout=1.0)
            assert other in denied_subjects(carol.nc)
            # Inputs past the object quota: the next submission is refused, naming it.
            blobs = BlobStore(carol.nc, "submitter", "carol")
            for i in range(2):
                await blobs.put(bytes([i]) * 200_000)
        async with await Client.connect(server.url, creds=server.access("auditor", "audit").creds) as auditor:
            everyone = await auditor.quota()
            assert everyone["default"]["tasks_running"] == 7
        tenants = Tenants(server)
        store = await JetStreamEventStore.connect(server.access("orchestrator"))
        try:
            found: list[InputRejected] = []
            for n in range(50):  # the tally follows the object store: a submission may come before it
                await tenants.submit("carol", f"j{n}", NOOP)
                found = refusals(await every_input_has_its_outcome(store), "quota.object_bytes")
                if found:
                    break
                await asyncio.sleep(0.1)
            assert found and "carol's inputs" in found[0].reason and "300,000" in found[0].reason
        finally:
            await store.close()
            await tenants.close()
        async with await Client.connect(server.url, creds=server.access("provider", "p1").creds) as provider:
            with pytest.raises(Exception, match="submitters and auditors"):
                await provider.quota()
