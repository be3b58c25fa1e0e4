"""Attack review of the verifiable history (1f59571): the provenance replayer against forged logs.

Each forgery is what someone writing into ``GF_EVENTS`` with the orchestrator's or admin's
credentials could leave there; the replayer must name it, and must never crash on it. The defects
found are plain tests now that they are fixed; the one left open is a strict xfail naming it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from actors.ids import derive_id
from actors.provenance import IntakeRecord, ProvenanceReport, intake_from, replay
from actors.reactions import Intent
from events import Envelope
from events.task import TaskLeased, TaskLeaseExpired
from tests.golden import history

LOG = history.read_log()
INTAKE = [IntakeRecord(r.seq, r.subject, r.body) for r in history.read_intake()]
GRACE = json.loads(history.META.read_text())["orchestrator"]["lease_grace_s"]


def _on(stream: str, intents: list[Intent]) -> list[str]:
    """The commands owed to ``stream``, comparable."""
    return sorted(repr(i.command) for i in intents if f"{i.kind}.{i.aggregate_id}" == stream)


async def _run(log: list[Envelope]) -> ProvenanceReport:
    return await replay([e.at_position(i) for i, e in enumerate(log, start=1)], intake_from(INTAKE))


def _edit(log: list[Envelope], position: int, new_id: str | None = None, **changes: object) -> None:
    env = log[position - 1]
    data = type(env.data).model_validate({**env.data.model_dump(), **changes})
    log[position - 1] = replace(env, id=new_id or env.id, data=data)


async def test_the_recorded_log_still_passes() -> None:
    report = await _run(list(LOG))
    assert report.ok, report.problems[:3]


async def test_a_meter_owed_under_its_own_id_cannot_be_replaced_by_an_inflated_one_under_another_id() -> None:
    """Job alice.mm's task 0 ran 3 ms (position 22 meters it, 15 micros). Rewritten: the meter names
    another command id and 3000 ms, and the job's completion and charges (reactions, which the
    replayer re-decides from the state) follow it: a 1000x bill. The replayer accepted it as owed
    "under another id" (a MeterUsage was owed on that job), rebuilding the command from the forged
    record instead of taking the owed one."""
    assert LOG[21].id.startswith("mu-") and LOG[21].data.gpu_ms == 3  # type: ignore[attr-defined]
    log = list(LOG)
    _edit(log, 22, "mu-forged.0", gpu_ms=3000, amount_micros=15000)
    _edit(log, 31, gpu_ms=3002, cost_micros=15010)
    _edit(log, 32, gpu_ms=3002, amount_micros=15010)
    _edit(log, 33, gpu_ms=3002, amount_micros=15010)
    report = await _run(log)
    assert not report.ok
    assert report.problems[0].position == 22 and "no cause" in report.problems[0].message, report.problems[:3]


async def test_a_meter_for_a_task_not_yet_done_under_another_id_is_flagged() -> None:
    """While a meter is owed for task 0, one for task 1 (still running) under another id."""
    log = list(LOG)
    forged = replace(LOG[21], id="mu-other.0")
    forged = replace(
        forged, data=type(forged.data).model_validate({**forged.data.model_dump(), "task_id": "alice.mm.1"})
    )
    log.insert(21, forged)
    report = await _run(log)
    assert report.problems and report.problems[0].position == 22, report.problems[:3]


@pytest.mark.parametrize("event_id", ["in-\u00b2.0", "in-\u00b2", "in-\u2460.1"])
async def test_an_event_id_with_a_unicode_digit_is_a_finding_not_a_crash(event_id: str) -> None:
    """``'²'.isdigit()`` is True and ``int('²')`` raises: the world's intake bookkeeping crashed the
    replayer (and the orchestrator's core) on an event outside the aggregates with such an id."""
    assert not event_id[3:].split(".", maxsplit=1)[0].isascii()
    log = list(LOG)
    log.insert(40, replace(LOG[40], subject="zzz.x", id=event_id))  # a copy of the audit checkpoint
    await _run(log)  # no exception
    log = list(LOG)
    log.insert(12, replace(LOG[11], id=event_id))  # a copy of a progress report, in its task stream
    report = await _run(log)
    assert report.problems and report.problems[0].position == 13, report.problems[:3]


@pytest.mark.xfail(
    strict=True,
    reason="open: the replayer does not check that decision times move forward, so an expiry dated "
    "at the lease's due time but written before the provider's reports passes as a due timer and the "
    "legitimate reports after it are blamed instead (needs a clock-skew tolerance: a design choice)",
)
async def test_a_timer_decision_dated_in_the_future_is_flagged_at_its_own_position() -> None:
    lease = LOG[7].data
    assert isinstance(lease, TaskLeased)
    due = lease.expires_at
    forged = Envelope(
        id=derive_id("ex-", lease.lease_id, due.isoformat()) + ".0",
        source="gpufleet/orchestrator",
        subject="task.alice.st.0",
        data=TaskLeaseExpired(
            at=due + timedelta(milliseconds=1),
            task_id="alice.st.0",
            lease_id=lease.lease_id,
            provider_id="rt-a",
            reason="expired",
        ),
    )
    report = await _run([*LOG[:8], forged, *LOG[8:]])
    assert report.problems, "nothing flagged"
    assert report.problems[0].position == 9, report.problems[:3]


async def test_a_forged_acceptance_of_100000_tasks_makes_the_replayer_plan_none_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two forged events (a submission and an acceptance of 100,000 tasks) and a few more forged ones
    of that job: the replayer owed the acceptance's 100,000 creations (about 400 MB) and, for every
    later decision that asked what a restarted orchestrator would owe, planned the missing tasks of
    the whole world again (seconds each). A flagged decision owes nothing now, and reconciling looks
    at the decision's own aggregate only."""
    import actors.reactions

    planned = 0
    plan = actors.reactions.plan_task

    def counting(*args: object, **kw: object) -> object:
        nonlocal planned
        planned += 1
        return plan(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(actors.reactions, "plan_task", counting)
    sub, acc = LOG[4], LOG[5]
    assert type(sub.data).__name__ == "JobSubmitted" and type(acc.data).__name__ == "JobAccepted"
    jid = "alice.big"

    def moved(env: Envelope, cid: str, **changes: object) -> Envelope:
        data = type(env.data).model_validate({**env.data.model_dump(), "job_id": jid, **changes})
        return replace(env, subject=f"job.{jid}", id=cid, data=data)

    forged = [moved(sub, "op-1.0"), moved(acc, "op-2.0", task_count=100_000)]
    forged += [moved(acc, f"op-{3 + i}.0", task_count=100_000) for i in range(3)]
    report = await _run([*LOG[:6], *forged, *LOG[6:]])
    assert [p.position for p in report.problems[:5]] == [7, 8, 9, 10, 11], report.problems[:6]
    assert planned < 1000, f"{planned} tasks planned"


@pytest.mark.parametrize("which", ["decided", "recorded"])
async def test_reconciling_near_an_aggregate_owes_it_what_reconciling_the_world_owes_it(which: str) -> None:
    """The replayer reconciles only the decision's aggregate (its job, its task, the providers of its
    lease): at every decision of a log the deciders made, and of the recorded one (a provider lost
    while it held a lease), the same commands as the whole world's."""
    from actors.ids import split_event_id
    from actors.provenance import DECIDERS, Replayer, _Decision, _near
    from actors.reactions import reconcile
    from tests.golden.decided import decided_log

    if which == "decided":
        made = decided_log(400, providers=4, seed=11)
        log, intake = made.log, made.intake
    else:
        log, intake = LOG, INTAKE
    r = Replayer(intake_from(intake))
    compared = owed = 0
    for env in log:
        if env.subject.split(".")[0] in DECIDERS:
            d = _Decision(env.subject, split_event_id(env.id), [env])
            core = r.core
            whole = reconcile(core.world, d.at, core.predict_job, core.default_verify)
            near = reconcile(_near(core.world, d), d.at, core.predict_job, core.default_verify)

            assert _on(d.stream, near) == _on(d.stream, whole), f"at {env.sequence} on {d.stream}"
            compared += 1
            owed += bool(_on(d.stream, whole))
        await r.feed(env)
    # (Tasks are created by the core's windows, not owed by reconciliation: what is owed is the rest.)
    assert compared > 150 and owed > 30, (compared, owed)


async def test_a_lease_that_expires_as_it_is_made_is_flagged() -> None:
    lease = LOG[7]
    assert isinstance(lease.data, TaskLeased)
    made = lease.data.at
    short = replace(lease, data=lease.data.model_copy(update={"expires_at": made + timedelta(milliseconds=1)}))
    expiry = Envelope(
        id=derive_id("ex-", lease.data.lease_id, short.data.expires_at.isoformat()) + ".0",  # type: ignore[attr-defined]
        source="gpufleet/orchestrator",
        subject="task.alice.st.0",
        data=TaskLeaseExpired(
            at=made + timedelta(milliseconds=2),
            task_id="alice.st.0",
            lease_id=lease.data.lease_id,
            provider_id="rt-a",
            reason="expired",
        ),
    )
    report = await _run([*LOG[:7], short, expiry])  # the log as it stands right after
    assert report.problems, "a lease of 1 ms and its expiry pass"
    first = report.problems[0]
    assert first.position == 8 and "0.001 s to start, under the least an orchestrator gives (1 s)" in first.message


def test_no_orchestrator_makes_a_lease_shorter_than_the_least() -> None:
    from actors.core import MIN_LEASE_START_S, Core
    from actors.orchestrator import OrchestratorConfig

    with pytest.raises(ValueError, match="at least 1 s"):
        OrchestratorConfig(lease_start_timeout_s=MIN_LEASE_START_S / 2)
    with pytest.raises(ValueError, match="at least 1 s to start"):
        Core().plan_leases(LOG[0].time, 0.001, lambda: "l1")
