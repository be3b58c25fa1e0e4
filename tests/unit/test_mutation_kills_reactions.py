"""Reactions and reconciliation, pure: what is owed, and under which command id.

Mutation testing (bench/mutation.py) found that the fast tests leave ``reconcile`` (and parts of
``react``) almost unchecked: they run it, but nothing looks at what it returns. Each test here builds
a world from events, asks what is owed, and compares the whole intent: the aggregate, the command
with its fields, the cause and the correlation. Where a reaction and a reconciliation can both issue
a command, the two must carry the same command id, so the command is applied once.
"""

from __future__ import annotations

import itertools

from actors.ids import derive_id
from actors.job import CompleteJob, DecideJob, FailJob, MeterUsage, SettleJob
from actors.reactions import Intent, create_task, plan_task, react, reconcile
from actors.task import CancelTask, CreateTask, ExpireLease
from actors.world import Change, World
from events import new_envelope
from events.estimates import Prediction
from events.job import (
    CountSplit,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobSpec,
    JobSubmitted,
    UsageMetered,
)
from events.provider import ProviderLeft, ProviderLost, ProviderOnline, ProviderRegistered
from events.task import TaskCompleted, TaskFailed, TaskLeased, TaskStarted
from events.types import Capabilities, EventModel, ResultRef
from tests.factories import at

JOB = "alice.j1"
T0, T1 = f"{JOB}.0", f"{JOB}.1"
SPEC = JobSpec(workload="sleep", params={"seconds": 1.0}, split=CountSplit(count=2), submitter="alice")
RESULT = ResultRef(sha256="a" * 64, size=2, inline=1)
CAPS = Capabilities(backend="cpu", gpu_model="cpu", vram_mb=0, slots=2)
NOW = at(100)
_ids = itertools.count(1)


class Log:
    """A world built event by event, as the orchestrator folds the log."""

    def __init__(self) -> None:
        self.world = World()

    def add(self, kind: str, aggregate: str, *events: EventModel) -> Change:
        change = None
        for e in events:
            env = new_envelope(f"{kind}.{aggregate}", e, id=f"ev-{next(_ids)}", source="tests")
            change = self.world.apply(env)
        assert change is not None
        return change


def accepted_job(log: Log) -> Change:
    log.add("job", JOB, JobSubmitted(at=at(0), job_id=JOB, spec=SPEC))
    return log.add("job", JOB, JobAccepted(at=at(1), job_id=JOB, task_count=2, predicted_s=3.0))


def create(log: Log, index: int) -> None:
    log.add("task", f"{JOB}.{index}", plan_task(JOB, SPEC, index, at(1)))


def lease_of(task_id: str) -> str:
    return "L-" + task_id.replace(".", "-")


def lease(log: Log, task_id: str, provider: str = "p1", *, started: bool = True) -> None:
    leased = TaskLeased(
        at=at(2),
        task_id=task_id,
        lease_id=lease_of(task_id),
        provider_id=provider,
        attempt=1,
        expires_at=at(32),
        price_micros=700,
    )
    log.add("task", task_id, leased)
    if started:
        log.add(
            "task",
            task_id,
            TaskStarted(at=at(3), task_id=task_id, lease_id=lease_of(task_id), provider_id=provider, expires_at=at(90)),
        )


def complete(log: Log, task_id: str, provider: str = "p1") -> Change:
    done = TaskCompleted(
        at=at(4), task_id=task_id, lease_id=lease_of(task_id), provider_id=provider, result=RESULT, gpu_ms=1500
    )
    return log.add("task", task_id, done)


def metered(log: Log, task_id: str) -> Change:
    usage = UsageMetered(
        at=at(5),
        job_id=JOB,
        task_id=task_id,
        provider_id="p1",
        submitter="alice",
        gpu_ms=1500,
        price_micros=700,
        amount_micros=1050,
    )
    return log.add("job", JOB, usage)


def online(log: Log, provider: str = "p1") -> None:
    log.add(
        "provider",
        provider,
        ProviderRegistered(at=at(0), provider_id=provider, name=provider, capabilities=CAPS),
        ProviderOnline(at=at(0), provider_id=provider),
    )


def commands(intents: list[Intent]) -> list[object]:
    return [i.command for i in intents]


# ---- a submitted job is decided --------------------------------------------------------------------


def test_a_submitted_job_is_decided_with_the_schedulers_eta_once_whoever_asks() -> None:
    log = Log()
    submitted = log.add("job", JOB, JobSubmitted(at=at(0), job_id=JOB, spec=SPEC))
    decide = DecideJob(
        command_id=derive_id("dj-", JOB), at=NOW, predicted_s=42.0, predicted_low_s=30.0, predicted_high_s=60.0
    )
    eta = Prediction(42.0, 30.0, 60.0, "fit")
    assert reconcile(log.world, NOW, lambda spec, at, job_id: eta) == [Intent("job", JOB, decide, None, JOB)]
    (reacted,) = react(submitted, log.world, lambda spec, at, job_id: eta)
    assert reacted.command.command_id == decide.command_id
    assert (reacted.kind, reacted.aggregate_id, reacted.causation) == ("job", JOB, submitted.envelope.id)


def test_without_a_scheduler_the_eta_is_zero() -> None:
    log = Log()
    log.add("job", JOB, JobSubmitted(at=at(0), job_id=JOB, spec=SPEC))
    (intent,) = reconcile(log.world, NOW)
    assert isinstance(intent.command, DecideJob) and intent.command.predicted_s == 0.0


# ---- an accepted job gets its tasks, and completes ---------------------------------------------------


def test_an_accepted_job_owes_no_task_by_reaction_its_window_creates_them() -> None:
    """Creating a job's tasks is the windows' (``actors.window``, tested in tests/unit/test_window.py):
    neither the acceptance's reaction nor reconciliation may owe them, or a 10,000,000-task job would
    cost 10,000,000 intents at once."""
    log = Log()
    accepted = accepted_job(log)
    assert react(accepted, log.world) == []
    assert [i for i in reconcile(log.world, NOW) if isinstance(i.command, CreateTask)] == []
    want = CreateTask(command_id=derive_id("ct-", JOB, 1), at=NOW, created=plan_task(JOB, SPEC, 1, NOW))
    assert create_task(JOB, SPEC, 1, NOW, None) == Intent("task", T1, want, None, JOB)


def test_a_job_with_every_task_metered_is_completed() -> None:
    log = Log()
    accepted_job(log)
    for tid in (T0, T1):
        create(log, int(tid[-1]))
        lease(log, tid)
        complete(log, tid)
    metered(log, T0)
    # Not complete while a task is not metered: only that task's metering is owed
    assert [type(c).__name__ for c in commands(reconcile(log.world, NOW))] == ["MeterUsage"]
    last = metered(log, T1)
    complete_job = CompleteJob(command_id=derive_id("cj-", JOB), at=NOW)
    assert reconcile(log.world, NOW) == [Intent("job", JOB, complete_job, None, JOB)]
    (reacted,) = react(last, log.world)
    assert (reacted.command.command_id, reacted.causation) == (complete_job.command_id, last.envelope.id)


def test_a_completed_task_that_is_not_metered_is_metered_at_its_leases_price() -> None:
    log = Log()
    accepted_job(log)
    create(log, 0)
    lease(log, T0)
    done = complete(log, T0)
    meter = MeterUsage(
        command_id=derive_id("mu-", T0), at=NOW, task_id=T0, provider_id="p1", gpu_ms=1500, price_micros=700
    )
    assert Intent("job", JOB, meter, None, JOB) in reconcile(log.world, NOW)
    (reacted,) = react(done, log.world)
    assert reacted.aggregate_id == JOB and reacted.command.command_id == meter.command_id


# ---- an ended job is settled, and its tasks cancelled ------------------------------------------------


def test_an_ended_job_is_settled_and_its_unfinished_tasks_cancelled() -> None:
    log = Log()
    accepted_job(log)
    create(log, 0)
    create(log, 1)
    lease(log, T0)
    complete(log, T0)
    metered(log, T0)
    ended = log.add("job", JOB, JobCancelled(at=at(6), job_id=JOB, reason="changed my mind"))
    settle = SettleJob(command_id=derive_id("st-", JOB, 1), at=NOW)
    cancel = CancelTask(command_id=derive_id("cx-", T1), at=NOW, reason="job cancelled")
    assert reconcile(log.world, NOW) == [Intent("job", JOB, settle, None, JOB), Intent("task", T1, cancel, None, JOB)]
    reacted = react(ended, log.world)
    assert [(i.aggregate_id, i.command.command_id) for i in reacted] == [
        (JOB, settle.command_id),
        (T1, cancel.command_id),
    ]
    assert isinstance(reacted[1].command, CancelTask) and reacted[1].command.reason == "job cancelled"


def test_a_task_created_after_its_job_ended_is_cancelled() -> None:
    log = Log()
    accepted_job(log)
    log.add("job", JOB, JobCompleted(at=at(6), job_id=JOB, tasks=2, gpu_ms=0, cost_micros=0))
    late = log.add("task", T0, plan_task(JOB, SPEC, 0, at(7)))
    (reacted,) = react(late, log.world)
    assert reacted.aggregate_id == T0 and isinstance(reacted.command, CancelTask)
    assert reacted.command.reason == "job completed" and reacted.command.command_id == derive_id("cx-", T0)


def test_a_late_metering_after_the_end_is_settled_for_its_delta() -> None:
    log = Log()
    accepted_job(log)
    log.add("job", JOB, JobCancelled(at=at(6), job_id=JOB))
    late = metered(log, T0)
    (reacted,) = react(late, log.world)
    assert reacted.command == SettleJob(command_id=derive_id("st-", JOB, 1), at=at(5))


# ---- dead tasks fail their job ----------------------------------------------------------------------


def test_a_dead_task_fails_its_accepted_job() -> None:
    log = Log()
    accepted_job(log)
    create(log, 0)
    dead = log.add(
        "task", T0, TaskFailed(at=at(4), task_id=T0, reason="invalid_params", message="n < 0", attempt=1, terminal=True)
    )
    fail = FailJob(command_id=derive_id("fj-", T0), at=NOW, task_id=T0, reason=f"task {T0} died")
    assert Intent("job", JOB, fail, None, JOB) in reconcile(log.world, NOW)
    (reacted,) = react(dead, log.world)
    assert reacted.command == FailJob(
        command_id=fail.command_id, at=at(4), task_id=T0, reason=f"task {T0} failed: invalid_params: n < 0"
    )


# ---- leases of lost and departed providers end ---------------------------------------------------------


def test_the_live_leases_of_a_lost_or_departed_provider_end_and_no_others() -> None:
    log = Log()
    online(log, "p1")
    online(log, "p2")
    accepted_job(log)
    create(log, 0)
    create(log, 1)
    lease(log, T0, "p1")
    lease(log, T1, "p2", started=False)
    lost = log.add("provider", "p1", ProviderLost(at=at(10), provider_id="p1"))
    expire = ExpireLease(
        command_id=derive_id("pl-", lease_of(T0), "provider_lost"),
        at=NOW,
        lease_id=lease_of(T0),
        reason="provider_lost",
    )
    assert reconcile(log.world, NOW) == [Intent("task", T0, expire, None, JOB)]
    (reacted,) = react(lost, log.world)
    assert (reacted.aggregate_id, reacted.command.command_id) == (T0, expire.command_id)
    left = log.add("provider", "p2", ProviderLeft(at=at(11), provider_id="p2"))
    (gone,) = react(left, log.world)
    assert gone.command == ExpireLease(
        command_id=derive_id("pl-", lease_of(T1), "provider_left"),
        at=at(11),
        lease_id=lease_of(T1),
        reason="provider_left",
    )


def test_a_world_with_nothing_owed_owes_nothing() -> None:
    log = Log()
    online(log)
    accepted_job(log)
    create(log, 0)
    create(log, 1)
    lease(log, T0)
    assert reconcile(log.world, NOW) == []
