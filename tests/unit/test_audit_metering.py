"""The audit refuses a bill larger than what the network observed: lease to completion, within the timeout."""

from __future__ import annotations

from dataclasses import replace

from events import Envelope
from events.metering import observed_ms
from events.task import TaskCompleted, TaskLeased
from projections.audit import audit_events
from tests.golden import history


def _completion(log: list[Envelope]) -> tuple[int, TaskCompleted, int]:
    """The first completion in the recorded history, and the ms from its lease to it."""
    leased: dict[str, TaskLeased] = {}
    for i, env in enumerate(log):
        if isinstance(env.data, TaskLeased):
            leased[env.data.task_id] = env.data
        if isinstance(env.data, TaskCompleted):
            lease = leased[env.data.task_id]
            return i, env.data, observed_ms(lease.at, env.data.at)
    raise AssertionError("the recorded history has no completion: re-record it")


async def test_a_completion_billed_past_its_observed_time_is_a_finding() -> None:
    log = history.read_log()
    intake = {r.seq: r.subject for r in history.read_intake()}
    assert (await audit_events(log, intake)).ok
    i, done, observed = _completion(log)
    assert done.gpu_ms <= observed

    def billed(gpu_ms: int) -> list[Envelope]:
        return [*log[:i], replace(log[i], data=done.model_copy(update={"gpu_ms": gpu_ms})), *log[i + 1 :]]

    report = await audit_events(billed(observed + 1), intake)
    over = [f for f in report.findings if "more than the" in f.message]
    assert len(over) == 1 and over[0].position == log[i].sequence, report.render()
    assert over[0].check == "ledger" and done.task_id in over[0].message
    # Exactly the observed time is a valid bill (the edit itself is still a rewrite of recorded
    # history, and the metering that follows no longer matches it).
    report = await audit_events(billed(observed), intake)
    assert not [f for f in report.findings if "more than the" in f.message], report.render()
