"""The audit compares inline results again: a record of agreement the results do not bear out is a finding."""

from __future__ import annotations

from dataclasses import replace

from events import Envelope
from events.task import TaskResultReturned
from projections.audit import audit_events
from tests.golden import history


def _edited(log: list[Envelope], i: int, **update: object) -> list[Envelope]:
    e = log[i].data
    return [*log[:i], replace(log[i], data=e.model_copy(update=update)), *log[i + 1 :]]


async def test_a_recorded_agreement_that_comparing_again_denies_is_a_finding() -> None:
    log = history.read_log()
    intake = {r.seq: r.subject for r in history.read_intake()}
    assert (await audit_events(log, intake)).ok
    # The recording's replicated task: the liar's result first, then two honest results that agree.
    held = [(i, env.data) for i, env in enumerate(log) if isinstance(env.data, TaskResultReturned)]
    agreeing = [(i, e) for i, e in held if e.agrees_with and e.result.object is None]
    assert agreeing, "the recording has no agreeing inline results: re-record it"
    i, e = agreeing[0]
    # Denied: the log says they disagree, comparing says they agree.
    report = await audit_events(_edited(log, i, agrees_with=[]), intake)
    found = [f for f in report.findings if "compared again it does not" in f.message]
    assert len(found) == 1 and found[0].position == log[i].sequence and found[0].check == "completions"
    assert f"{e.lease_id} disagrees with {e.agrees_with[0]}" in found[0].message
    # Invented: the log says the liar's result agrees with nothing... make it agree with an honest one.
    liar = next((j, x) for j, x in held if x.task_id == e.task_id and x.provider_id == "liar")
    first_honest = next(x for _, x in held if x.task_id == e.task_id and x.provider_id != "liar")
    later = next(j for j, x in held if x.task_id == e.task_id and x.lease_id == first_honest.lease_id)
    assert later > liar[0]
    report = await audit_events(_edited(log, later, agrees_with=[liar[1].lease_id]), intake)
    found = [f for f in report.findings if "compared again it does not" in f.message]
    assert len(found) == 1 and f"agrees with {liar[1].lease_id}" in found[0].message
