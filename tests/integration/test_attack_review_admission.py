"""Attack review of fair admission (issue 12), on a real secured nats-server with real credentials.

A message charged to its sender's intake rate once must never be charged again when JetStream hands
it over a second time: a burst within the sender's quota waits in the orchestrator's fair queue, and
past the consumer's ack wait each waiting message is delivered again. Charged again, the burst's
later messages find the bucket empty and are refused for a rate their sender never exceeded: valid
submissions lost, recorded as ``quota.intake_per_s``.
"""

from __future__ import annotations

import json

import pytest

from actors.orchestrator import OrchestratorConfig
from events.intake import InputRejected
from events.job import JobSubmitted
from events.quotas import QuotaConfig
from tests.integration.orchestra import Tenants, every_input_has_its_outcome, intake_outcomes, orchestrated
from tests.integration.test_intake_fairness import burst
from tests.secure import SecureServer

pytestmark = pytest.mark.asyncio

#: A burst the quota allows (the bucket holds all of it, and hardly refills), handled one message at a
#: time with a short ack wait: the burst outlasts the ack wait in the queue, so JetStream delivers its
#: waiting messages again.
N = 600
REDELIVERED = OrchestratorConfig(
    intake_concurrency=1,
    intake_ack_wait_s=0.5,
    task_window=1,
    quotas=QuotaConfig.parse([f"intake_burst={N}", "intake_per_s=0.001", "jobs_in_flight=1000000"]),
)


async def test_a_burst_within_the_intake_quota_is_never_refused_when_delivered_again(
    own_nats_server: SecureServer,
) -> None:
    tenants = Tenants(own_nats_server)
    body = json.dumps({"workload": "noop", "timeout_s": 5.0}).encode()
    try:
        async with orchestrated(own_nats_server, REDELIVERED) as store:
            seqs = await burst(tenants, "alice", [(f"submit.j{i}", body) for i in range(N)])
            log = await every_input_has_its_outcome(store, timeout=120)
            outcomes = intake_outcomes(log)
            twice = sum(1 for s in seqs if outcomes[s] != 1)
            mine = set(seqs)
            refused = [e.data for e in log if isinstance(e.data, InputRejected) and e.data.intake_seq in mine]
            assert twice == 0, f"{twice} of {N} messages got two outcomes ({len(refused)} refusals among them)"
            assert not refused, (
                f"{len(refused)} of a burst of {N} within its quota (burst {N}) refused on redelivery: "
                f"{refused[0].field}: {refused[0].reason}"
            )
            submitted = {e.data.job_id for e in log if isinstance(e.data, JobSubmitted)}
            assert submitted == {f"alice.j{i}" for i in range(N)}
    finally:
        await tenants.close()
