"""The attack review of result verification, as tests: each finding, and that it stays fixed.

- A result held for verification never reaches the submitter through the event feed (a submitter
  who saw it could cancel and have the work for nothing, and a wrong one would reach it); auditors
  still read it.
- Quorum 1 cannot be asked for under ``replicate``: one result agreeing with itself would build its
  provider's trust for free.
- The canonical result is the one most results agree with (agreement within a tolerance is not
  transitive: the result in the middle of a chain is the one to deliver), not merely the first.
- ``exact`` compares numbers, not their spelling: 7 and 7.0 agree.
- A report whose result names an object of another digest or size is refused.
- The orchestrator never fetches more than it compares, whatever size a report claims.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from actors.task import LeaseTask, ReportCompleted, task_decider
from events.subjects import OBJECTS_STREAM
from events.task import TaskResultJudged, TaskResultRejected, TaskResultReturned
from events.types import ObjectRef, ResultRef
from events.verification import Tolerance, VerifyPolicy, agree, inline_sha256
from gpufleet.client import Client
from tests.integration.orchestra import orchestrated, wait_for
from tests.integration.test_verification import HONEST, Fleet, montecarlo_job
from tests.secure import SecureServer
from tests.unit.test_verification import created

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def _ref(value: Any) -> ResultRef:
    return ResultRef(sha256=inline_sha256(value), size=len(json.dumps(value)), inline=value)


def _task(policy: VerifyPolicy, workload: str = "reduction") -> Any:
    return task_decider.fold([created(workload, policy, task_id="alice.j.0")])


def _run(s: Any, lease: str, provider: str, value: Any, t: float) -> tuple[Any, list[Any]]:
    lease_cmd = LeaseTask(
        command_id=f"l-{lease}", at=at(t), lease_id=lease, provider_id=provider, expires_at=at(t + 30), price_micros=100
    )
    s = task_decider.fold(task_decider.decide(lease_cmd, s), s)
    done = ReportCompleted(
        command_id=f"c-{lease}", at=at(t + 1), lease_id=lease, provider_id=provider, result=_ref(value), gpu_ms=500
    )
    out = task_decider.decide(done, s)
    return task_decider.fold(out, s), out


def test_quorum_one_cannot_be_asked_for_under_replicate() -> None:
    with pytest.raises(ValidationError, match="quorum must be at least 2"):
        VerifyPolicy(mode="replicate", replicas=1, quorum=1, max_replicas=1)
    with pytest.raises(ValidationError, match="quorum must be at least 2"):
        VerifyPolicy(mode="replicate", replicas=3, quorum=1, max_replicas=3)


def test_the_canonical_result_is_the_one_most_results_agree_with() -> None:
    # A ~ B and B ~ C within the tolerance, A !~ C: B has the most support (3 with itself) and is
    # canonical; A and C agree with it and are valid, never invalid.
    policy = VerifyPolicy(mode="replicate", replicas=3, quorum=2, max_replicas=3, tolerance=Tolerance(rtol=0, atol=1.0))
    assert agree(10.0, 10.9, "tolerance", policy.tolerance) and not agree(10.0, 11.8, "tolerance", policy.tolerance)
    s = _task(policy)
    s, _ = _run(s, "LA", "pa", {"value": 10.0}, 1)
    s, _ = _run(s, "LC", "pc", {"value": 11.8}, 5)
    s, out = _run(s, "LB", "pb", {"value": 10.9}, 9)
    verdicts = {e.lease_id: (e.verdict, e.canonical) for e in out if isinstance(e, TaskResultJudged)}
    assert verdicts == {"LA": ("valid", "LB"), "LB": ("valid", "LB"), "LC": ("valid", "LB")}
    assert s.status == "completed" and s.completed_lease == "LB"


def test_a_result_within_tolerance_of_the_canonical_one_is_valid_and_only_a_stranger_is_invalid() -> None:
    # A = B, C within tolerance of both (A and C tie on support: the earliest, A, is canonical), D far.
    policy = VerifyPolicy(mode="replicate", replicas=4, quorum=2, max_replicas=4, tolerance=Tolerance(rtol=0, atol=1.0))
    s = _task(policy)
    s, _ = _run(s, "LA", "pa", {"value": 10.0}, 1)
    s, _ = _run(s, "LB", "pb", {"value": 10.0}, 5)
    s, _ = _run(s, "LC", "pc", {"value": 10.9}, 9)
    s, out = _run(s, "LD", "pd", {"value": 13.0}, 13)
    verdicts = {e.lease_id: (e.verdict, e.canonical) for e in out if isinstance(e, TaskResultJudged)}
    assert verdicts == {
        "LA": ("valid", "LA"),
        "LB": ("valid", "LA"),
        "LC": ("valid", "LA"),
        "LD": ("invalid", "LA"),
    }


def test_exact_results_agree_whatever_the_spelling_of_their_numbers() -> None:
    assert agree({"hits": 7, "pi": 2.0}, {"hits": 7.0, "pi": 2}, "exact")
    assert not agree({"hits": 7}, {"hits": 8}, "exact")
    assert not agree(True, 1, "exact")


def test_a_result_whose_object_has_another_digest_or_size_is_refused() -> None:
    s = _task(VerifyPolicy(mode="replicate"))
    lease = LeaseTask(command_id="l", at=at(1), lease_id="L1", provider_id="p1", expires_at=at(30), price_micros=100)
    s = task_decider.fold(task_decider.decide(lease, s), s)
    name = f"provider.p1.result.alice.{'a' * 64}"
    obj = ObjectRef(bucket=OBJECTS_STREAM, name=name, sha256="a" * 64, size=10)
    for ref in (
        ResultRef(sha256="b" * 64, size=10, object=obj),  # another digest than the object's
        ResultRef(sha256="a" * 64, size=1, object=obj),  # a size under the comparison limit, a huge object
    ):
        cmd = ReportCompleted(command_id="c", at=at(2), lease_id="L1", provider_id="p1", result=ref, gpu_ms=5)
        (e,) = task_decider.decide(cmd, s)
        assert isinstance(e, TaskResultRejected) and "not its object's" in e.reason


async def test_a_held_result_never_reaches_the_submitter_but_auditors_read_it(own_nats_server: SecureServer) -> None:
    from tests.integration.orchestra import Tenants

    async with orchestrated(own_nats_server) as store:
        fleet = Fleet(own_nats_server, store, Tenants(own_nats_server))
        try:
            for pid in HONEST[:2]:
                await fleet.join(pid)
            await fleet.tenants.submit("alice", "pi", montecarlo_job(range(2), "replicate"))
            _, log = await wait_for(store, lambda w: "alice.pi" in w.jobs and w.jobs["alice.pi"].status == "completed")
            assert any(isinstance(e.data, TaskResultReturned) for e in log)
            streams = ["task.alice.pi.*"]
            alice = own_nats_server.access("submitter", "alice")
            async with await Client.connect(alice.url, creds=alice.creds, tls_ca=alice.tls_ca) as client:
                seen, _, _ = await client.feed(streams, 0)
            types = {e.type for e in seen}
            assert "TaskCompleted" in types and "TaskResultJudged" in types
            assert "TaskResultReturned" not in types, "a held result reached the submitter"
            auditor = own_nats_server.access("auditor")
            async with await Client.connect(auditor.url, creds=auditor.creds, tls_ca=auditor.tls_ca) as client:
                audited, _, _ = await client.feed(streams, 0)
            assert "TaskResultReturned" in {e.type for e in audited}
        finally:
            for sim in fleet.providers.values():
                await sim.kill()
            await fleet.tenants.close()


def test_a_provider_cannot_declare_a_task_unverifiable() -> None:
    from actors.intake import intake_command
    from events.errors import InvalidPayload
    from events.intake import decode_intake
    from events.subjects import report_subject

    body = json.dumps({"report": "failed", "lease_id": "L1", "reason": "unverifiable"}).encode()
    im = decode_intake(report_subject("p1", "alice.j.0"), body)
    with pytest.raises(InvalidPayload) as refused:
        intake_command(im, "in-1", T0, 30.0)
    assert refused.value.field == "reason" and "only verification" in str(refused.value)
    honest = json.dumps({"report": "failed", "lease_id": "L1", "reason": "kernel_error"}).encode()
    intake_command(decode_intake(report_subject("p1", "alice.j.0"), honest), "in-2", T0, 30.0)


def test_a_task_holding_results_waits_for_a_replica_only_as_long_as_its_policy_says() -> None:
    from actors.task import ExpireVerification

    policy = VerifyPolicy(mode="replicate", wait_s=60.0)
    s = _task(policy)
    s, out = _run(s, "L1", "p1", {"value": 1.0}, 1)
    assert [type(e).__name__ for e in out] == ["TaskResultReturned"]
    assert s.status == "queued" and s.waiting_since == at(2)
    early = ExpireVerification(command_id="x1", at=at(61))
    assert task_decider.decide(early, s) == []
    late = ExpireVerification(command_id="x2", at=at(62))
    out = task_decider.decide(late, s)
    assert [type(e).__name__ for e in out] == ["TaskResultJudged", "TaskFailed"]
    assert out[0].verdict == "inconclusive" and out[1].reason == "unverifiable" and out[1].terminal  # type: ignore[attr-defined]
    # A replica leased in time ends the wait: the timer, firing late, changes nothing.
    lease = LeaseTask(command_id="l2", at=at(30), lease_id="L2", provider_id="p2", expires_at=at(90), price_micros=1)
    leased = task_decider.fold(task_decider.decide(lease, s), s)
    assert leased.waiting_since is None and task_decider.decide(late, leased) == []


async def test_a_replica_no_other_provider_can_take_fails_the_task_instead_of_waiting_forever(
    own_nats_server: SecureServer,
) -> None:
    from events.job import UsageMetered
    from events.task import TaskFailed
    from tests.integration.audited import assert_audit_passes
    from tests.integration.orchestra import Tenants

    async with orchestrated(own_nats_server) as store:
        fleet = Fleet(own_nats_server, store, Tenants(own_nats_server))
        try:
            await fleet.join("only")  # the one provider that runs it: no second owner to check with
            job = {**montecarlo_job(range(1), "replicate"), "verify": {"mode": "replicate", "wait_s": 1.5}}
            await fleet.tenants.submit("alice", "alone", job)
            w, log = await wait_for(
                store, lambda w: "alice.alone" in w.jobs and w.jobs["alice.alone"].status == "failed"
            )
            failed = [e.data for e in log if isinstance(e.data, TaskFailed)]
            assert [(f.reason, f.terminal) for f in failed] == [("unverifiable", True)]
            assert "within 1.5 s" in failed[0].message
            judged = [e.data for e in log if isinstance(e.data, TaskResultJudged)]
            assert [(j.provider_id, j.verdict) for j in judged] == [("only", "inconclusive")]
            assert not [e for e in log if isinstance(e.data, UsageMetered)]  # held, then forfeited
            assert w.reputation["only"].invalid == 0  # nothing against it: nobody could check it
            await assert_audit_passes(store)
        finally:
            for sim in fleet.providers.values():
                await sim.kill()
            await fleet.tenants.close()
