"""The audit of a task timing out while running, as logs write it now and as they wrote it before."""

from __future__ import annotations

from dataclasses import replace

from events import Envelope
from events.task import TaskFailed, TaskLeaseExpired
from projections.audit import audit_events
from tests.golden import history


def _timeout(log: list[Envelope]) -> tuple[int, TaskLeaseExpired, TaskFailed]:
    for i, env in enumerate(log):
        if isinstance(env.data, TaskFailed) and env.data.reason == "timeout":
            before = log[i - 1].data
            assert isinstance(before, TaskLeaseExpired) and before.task_id == env.data.task_id
            return i, before, env.data
    raise AssertionError("the recorded history has no running timeout: re-record it")


async def test_a_timeout_names_no_lease_and_an_older_log_naming_the_expired_one_still_passes() -> None:
    log = history.read_log()
    intake = {r.seq: r.subject for r in history.read_intake()}
    i, expired, failed = _timeout(log)
    assert failed.lease_id is None and failed.provider_id is None
    assert (await audit_events(log, intake)).ok

    def naming(lease_id: str, provider_id: str) -> list[Envelope]:
        old = failed.model_copy(update={"lease_id": lease_id, "provider_id": provider_id})
        return [*log[:i], replace(log[i], data=old), *log[i + 1 :]]

    # Before 2026-11 the timeout failure named the lease that had just expired: a valid story. (The
    # edit itself rewrites recorded history, which the chain rightly reports, and only the chain.)
    report = await audit_events(naming(expired.lease_id, expired.provider_id), intake)
    assert {f.check for f in report.findings} == {"chain"}, report.render()
    # Naming any other lease is a failure by someone who does not hold the task.
    report = await audit_events(naming("l-other", expired.provider_id), intake)
    sequence = [f for f in report.findings if f.check == "sequence"]
    assert len(sequence) == 1 and "not the lease" in sequence[0].message, report.render()
