"""The provenance replayer on the golden history recorded from a real run: the real log passes, and
every kind of forged or edited event is flagged at its own position, naming what is wrong.

Each forgery is what someone holding the admin credentials could write into ``GF_EVENTS`` (the server
lets them in; only the replayer can tell that no legitimate cause makes them). The log after a forgery
is renumbered, as the server would number it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from actors.ids import derive_id
from actors.provenance import (
    CAUSES,
    IntakeRecord,
    ProvenanceReport,
    intake_from,
    intake_stream_source,
    replay,
)
from events import Envelope
from events.intake import InputRejected
from events.job import JobCancelled, JobCompleted
from events.provider import ProviderLost, ProviderRegistered
from events.task import TaskCompleted, TaskCreated, TaskLeased, TaskLeaseExpired
from events.types import EventModel
from tests.golden import history

LOG = history.read_log()
INTAKE = [IntakeRecord(r.seq, r.subject, r.body) for r in history.read_intake()]
GRACE = json.loads(history.META.read_text())["orchestrator"]["lease_grace_s"]


def at(position: int) -> Envelope:
    """The recorded event at ``position``."""
    env = LOG[position - 1]
    assert env.sequence == position
    return env


def when(position: int, plus_ms: float = 1.0) -> datetime:
    t: datetime = at(position).data.at  # type: ignore[attr-defined]
    return t + timedelta(milliseconds=plus_ms)


def forged(subject: str, event_id: str, data: EventModel) -> Envelope:
    return Envelope(id=event_id, source="gpufleet/orchestrator", subject=subject, data=data)


def inserted(after: int, *envs: Envelope) -> tuple[list[Envelope], int]:
    """The log with ``envs`` written right after ``after``, renumbered; the first forged position."""
    out = [*LOG[:after], *envs, *LOG[after:]]
    return [e.at_position(i) for i, e in enumerate(out, start=1)], after + 1


def edited(position: int, **changes: object) -> tuple[list[Envelope], int]:
    """The log with the event at ``position`` edited in place."""
    env = at(position)
    data = type(env.data).model_validate({**env.data.model_dump(), **changes})
    out = list(LOG)
    out[position - 1] = replace(env, data=data)
    return out, position


async def run(log: list[Envelope], **kw: object) -> ProvenanceReport:
    return await replay(log, intake_from(INTAKE), **kw)  # type: ignore[arg-type]


async def test_the_recorded_log_has_a_cause_for_every_decision_and_each_cause_makes_it() -> None:
    report = await run(LOG, idempotence=True)
    assert report.ok, "\n".join(map(str, report.problems))
    assert report.grace_s == GRACE  # inferred from the first started report
    # Every kind of cause occurs in the recording, so each path of the replayer is taken.
    assert all(report.causes[c] > 0 for c in CAUSES), report.causes
    assert report.decisions == sum(report.causes.values()) and report.events == len(LOG)
    assert report.on_trust == report.causes["liveness"]


async def test_the_intake_stream_read_in_order_gives_the_same_report() -> None:
    async def messages() -> AsyncIterator[IntakeRecord]:
        for r in INTAKE:
            yield r

    streamed = await replay(LOG, intake_stream_source(messages()))
    assert streamed.ok and streamed.causes == (await run(LOG)).causes


def cancel(event_id: str) -> Envelope:
    """A cancellation of the running job alice.st, after position 12."""
    return forged("job.alice.st", event_id, JobCancelled(at=when(12), job_id="alice.st", reason="forged"))


def _mm_lease() -> TaskLeased:
    e = at(8).data
    assert isinstance(e, TaskLeased)
    return e


FORGERIES: dict[str, tuple[Callable[[], tuple[list[Envelope], int]], str]] = {
    # A cancellation that no submitter asked for (the first example).
    "a job cancelled with no request": (
        lambda: inserted(
            12, forged("job.alice.st", "op-1.0", JobCancelled(at=when(12), job_id="alice.st", reason="x"))
        ),
        "no cause",
    ),
    "a cancellation claiming an intake message that caused something else": (
        lambda: inserted(
            12, forged("job.alice.st", "in-3.0", JobCancelled(at=when(12), job_id="alice.st", reason="x"))
        ),
        "intake message 3 already caused the decision at position 5",
    ),
    "a cancellation claiming an intake message that was never sent": (
        lambda: inserted(12, cancel("in-9999.0")),
        "intake message 9999, which the intake stream does not hold",
    ),
    "a lease to a provider that never registered": (
        lambda: inserted(
            16,
            forged(
                "task.alice.mm.0",
                "ls-lforged.0",
                TaskLeased(
                    at=when(16),
                    task_id="alice.mm.0",
                    lease_id="lforged",
                    provider_id="mallory",
                    attempt=1,
                    expires_at=when(16, 2000),
                    predicted_s=1.0,
                    price_micros=0,
                ),
            ),
        ),
        "provider mallory never registered",
    ),
    "a lease to a provider that was lost": (
        lambda: inserted(
            35,
            forged(
                "task.alice.st.0",
                "ls-lforged.0",
                TaskLeased(
                    at=when(35),
                    task_id="alice.st.0",
                    lease_id="lforged",
                    provider_id="rt-a",
                    attempt=2,
                    expires_at=when(35, 2000),
                    predicted_s=1.0,
                    price_micros=5000,
                ),
            ),
        ),
        "provider rt-a is lost",
    ),
    "a lease at another price than the provider's": (
        lambda: inserted(
            16,
            forged(
                "task.alice.mm.0",
                "ls-lforged.0",
                TaskLeased(
                    at=when(16),
                    task_id="alice.mm.0",
                    lease_id="lforged",
                    provider_id="rt-b",
                    attempt=1,
                    expires_at=when(16, 2000),
                    predicted_s=1.0,
                    price_micros=1,
                ),
            ),
        ),
        "price 1 is not the provider's 5000",
    ),
    "a lease expired before it was due, under the timer's own id": (
        lambda: inserted(
            8,
            forged(
                "task.alice.st.0",
                derive_id("ex-", _mm_lease().lease_id, _mm_lease().expires_at.isoformat()) + ".0",
                TaskLeaseExpired(
                    at=when(8),
                    task_id="alice.st.0",
                    lease_id=_mm_lease().lease_id,
                    provider_id="rt-a",
                    reason="expired",
                ),
            ),
        ),
        "no cause",
    ),
    "a job completed before its tasks, under the reaction's own id": (
        lambda: inserted(
            14,
            forged(
                "job.alice.mm",
                derive_id("cj-", "alice.mm") + ".0",
                JobCompleted(at=when(14), job_id="alice.mm", tasks=2, gpu_ms=0, cost_micros=0),
            ),
        ),
        "no cause",
    ),
    "a task beyond the job's count": (
        lambda: inserted(
            16,
            forged(
                "task.alice.mm.5",
                derive_id("ct-", "alice.mm", 5) + ".0",
                TaskCreated.model_validate(
                    {**at(16).data.model_dump(), "task_id": "alice.mm.5", "index": 5, "at": when(16)}
                ),
            ),
        ),
        "task index 5 is outside job alice.mm's 2 task(s)",
    ),
    "a provider registered without asking": (
        lambda: inserted(
            4,
            forged(
                "provider.ghost",
                "in-9998.0",
                ProviderRegistered.model_validate(
                    {**at(3).data.model_dump(), "provider_id": "ghost", "name": "ghost", "at": when(4)}
                ),
            ),
        ),
        "intake message 9998, which the intake stream does not hold",
    ),
    "a completion made of a progress report's message": (
        lambda: inserted(
            21,
            forged(
                "task.alice.mm.0",
                "in-10.0",
                TaskCompleted.model_validate({**at(21).data.model_dump(), "at": when(21)}),
            ),
        ),
        "intake message 10 already caused the decision at position 19",
    ),
    "a completion appended to a progress report's decision": (
        lambda: inserted(
            20,
            forged(
                "task.alice.mm.0",
                "in-11.1",
                TaskCompleted.model_validate({**at(21).data.model_dump(), "at": when(20)}),
            ),
        ),
        "decides differently: events ['TaskProgressed'] instead of the recorded ['TaskProgressed', 'TaskCompleted']",
    ),
    "a second outcome for a message that already had its facts": (
        lambda: inserted(
            25,
            forged(
                "intake.submitter.alice",
                "in-3",
                InputRejected(
                    at=when(25),
                    intake_seq=3,
                    subject="gf.in.submitter.alice.submit.st",
                    reason="forged",
                    field="body",
                ),
            ),
        ),
        "intake message 3 already had its outcome at 5",
    ),
    "a provider lost who was lost already": (
        lambda: inserted(
            34, forged("provider.rt-a", "hl-forged.0", ProviderLost(at=when(34), provider_id="rt-a", reason="x"))
        ),
        "decides differently: events [] instead of the recorded ['ProviderLost']",
    ),
    # Edits of recorded events, keeping their ids: the cause no longer makes them.
    "metered time edited": (lambda: edited(22, gpu_ms=3000, amount_micros=15000), "decides differently"),
    "a charge edited": (lambda: edited(32, amount_micros=1), "decides differently"),
    "a progress report's fraction edited": (lambda: edited(19, fraction=0.99), "decides differently"),
    "a lease moved to a provider with no free slot": (lambda: edited(17, provider_id="rt-a"), "no free slot"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
async def test_a_forged_or_edited_event_is_flagged_at_its_position(name: str) -> None:
    make, expect = FORGERIES[name]
    log, position = make()
    report = await run(log)
    assert report.problems, f"{name}: the replayer found nothing"
    first = report.problems[0]
    assert first.position == position, f"{name}: first problem {first}, expected at {position}"
    assert expect in first.message, f"{name}: {first}"
    assert not report.ok


async def test_a_log_with_no_decisions_is_not_a_pass() -> None:
    only_checkpoints = [e for e in LOG if e.subject.startswith("audit.")]
    report = await run(only_checkpoints)
    assert not report.ok and "no decision was re-decided" in str(report.problems[0])


async def test_a_result_object_the_replayer_cannot_read_is_counted_not_passed() -> None:
    # The golden log's verified results are inline; with none stored as objects nothing is unchecked.
    report = await run(LOG)
    assert report.unchecked == 0
