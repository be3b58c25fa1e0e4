"""The task decider, transition by transition and refusal by refusal."""

from __future__ import annotations

from datetime import timedelta

from actors.errors import InvalidTransition, UnknownAggregate
from actors.task import (
    CancelTask,
    CreateTask,
    ExpireLease,
    LeaseTask,
    QueueTask,
    ReportCompleted,
    ReportFailed,
    ReportProgress,
    ReportStarted,
    task_decider,
)
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskProgressed,
    TaskQueued,
    TaskResultRejected,
    TaskRetried,
    TaskStarted,
)
from events.types import MAX_SECONDS, Estimate, ObjectRef, Resources, ResultRef, RetryPolicy
from tests.factories import at
from tests.unit.decider_spec import given

RESULT = ResultRef(sha256="a" * 64, size=2, inline=1)
OTHER = ResultRef(sha256="b" * 64, size=2, inline=2)
CKPT = ObjectRef(bucket="gf_objects", name="checkpoints/t1/50", sha256="c" * 64, size=10)


def created(max_attempts: int = 3, max_lost: int = 20) -> TaskCreated:
    return TaskCreated(
        at=at(0),
        task_id="t1",
        job_id="j1",
        index=0,
        submitter="alice",
        workload="sleep",
        params={"seconds": 1.0},
        resources=Resources(),
        estimate=Estimate(fixed_seconds=1.0),
        retry=RetryPolicy(max_attempts=max_attempts, backoff_s=2.0, max_lost_leases=max_lost),
        timeout_s=60.0,
    )


def leased(lease: str = "L1", provider: str = "p1", attempt: int = 1, t: float = 1) -> TaskLeased:
    return TaskLeased(
        at=at(t),
        task_id="t1",
        lease_id=lease,
        provider_id=provider,
        attempt=attempt,
        expires_at=at(t + 30),
        predicted_s=1.0,
        price_micros=100,
    )


def started(lease: str = "L1", provider: str = "p1", t: float = 2) -> TaskStarted:
    return TaskStarted(at=at(t), task_id="t1", lease_id=lease, provider_id=provider, expires_at=at(t + 90))


def completed(lease: str = "L1", provider: str = "p1", result: ResultRef = RESULT) -> TaskCompleted:
    return TaskCompleted(at=at(3), task_id="t1", lease_id=lease, provider_id=provider, result=result, gpu_ms=1000)


T = task_decider


def test_create_is_idempotent() -> None:
    given(T).when(CreateTask(command_id="c", at=at(0), created=created())).then(created())
    given(T, created()).when(CreateTask(command_id="c2", at=at(0), created=created())).then()


def test_commands_on_a_missing_task_are_refused() -> None:
    given(T).when(QueueTask(command_id="q", at=at(0))).then_raises(UnknownAggregate)


def test_lease_a_queued_task() -> None:
    cmd = LeaseTask(
        command_id="l",
        at=at(1),
        lease_id="L1",
        provider_id="p1",
        expires_at=at(31),
        predicted_s=1.0,
        price_micros=100,
    )
    state = given(T, created()).when(cmd).then(leased())
    assert state.status == "leased" and state.attempt == 1


def test_a_task_has_at_most_one_live_lease() -> None:
    cmd = LeaseTask(command_id="l", at=at(1), lease_id="L2", provider_id="p2", expires_at=at(31))
    err = given(T, created(), leased()).when(cmd).then_raises(InvalidTransition)
    assert "leased" in str(err)


def test_started_by_the_lease_holder_extends_the_lease_to_the_timeout() -> None:
    cmd = ReportStarted(command_id="s", at=at(2), lease_id="L1", provider_id="p1", grace_s=30.0)
    given(T, created(), leased()).when(cmd).then(started())


def test_started_again_changes_nothing() -> None:
    cmd = ReportStarted(command_id="s2", at=at(3), lease_id="L1", provider_id="p1")
    given(T, created(), leased(), started()).when(cmd).then()


def test_forged_report_is_refused_and_recorded() -> None:
    cmd = ReportCompleted(command_id="x", at=at(3), lease_id="L1", provider_id="mallory", result=RESULT, gpu_ms=5)
    (e,) = given(T, created(), leased(), started()).when(cmd).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and e.provider_id == "mallory" and "forged" in e.reason


def test_report_with_a_stale_lease_is_refused() -> None:
    history = (
        created(),
        leased(),
        TaskLeaseExpired(at=at(40), task_id="t1", lease_id="L1", provider_id="p1", reason="expired"),
        leased("L2", "p2", 2, 41),
    )
    cmd = ReportCompleted(command_id="x", at=at(42), lease_id="L1", provider_id="p1", result=RESULT, gpu_ms=5)
    (e,) = given(T, *history).when(cmd).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and "not the current" in e.reason


def test_late_report_after_expiry_is_refused() -> None:
    history = (
        created(),
        leased(),
        started(),
        TaskLeaseExpired(at=at(100), task_id="t1", lease_id="L1", provider_id="p1", reason="provider_lost"),
    )
    cmd = ReportProgress(command_id="x", at=at(101), lease_id="L1", provider_id="p1", fraction=0.5)
    (e,) = given(T, *history).when(cmd).then_types("TaskResultRejected")
    assert "no lease" in e.reason  # type: ignore[attr-defined]


def test_progress_records_checkpoint_and_implies_started() -> None:
    cmd = ReportProgress(
        command_id="p",
        at=at(2),
        lease_id="L1",
        provider_id="p1",
        fraction=0.5,
        rate=10.0,
        checkpoint=CKPT,
        checkpoint_step=50,
    )
    events = given(T, created(), leased()).when(cmd).then_types("TaskStarted", "TaskProgressed")
    state = T.fold([created(), leased(), *events])
    assert state.status == "running" and state.checkpoint == CKPT and state.checkpoint_step == 50


def test_a_new_lease_resumes_from_the_last_checkpoint() -> None:
    prog = TaskProgressed(
        at=at(2),
        task_id="t1",
        lease_id="L1",
        provider_id="p1",
        fraction=0.5,
        checkpoint=CKPT,
        checkpoint_step=50,
    )
    lost = TaskLeaseExpired(at=at(3), task_id="t1", lease_id="L1", provider_id="p1", reason="provider_lost")
    cmd = LeaseTask(command_id="l2", at=at(4), lease_id="L2", provider_id="p2", expires_at=at(34))
    (e,) = given(T, created(), leased(), started(), prog, lost).when(cmd).then_types("TaskLeased")
    assert isinstance(e, TaskLeased) and e.resume_from == CKPT and e.resume_step == 50 and e.attempt == 2


def test_first_valid_completion_wins_and_a_duplicate_changes_nothing() -> None:
    cmd = ReportCompleted(command_id="c", at=at(3), lease_id="L1", provider_id="p1", result=RESULT, gpu_ms=1000)
    state = given(T, created(), leased(), started()).when(cmd).then(completed())
    assert state.status == "completed"
    given(T, created(), leased(), started(), completed()).when(cmd).then()


def test_a_different_second_completion_is_refused() -> None:
    cmd = ReportCompleted(command_id="c2", at=at(4), lease_id="L1", provider_id="p1", result=OTHER, gpu_ms=1)
    (e,) = given(T, created(), leased(), started(), completed()).when(cmd).then_types("TaskResultRejected")
    assert "already completed" in e.reason  # type: ignore[attr-defined]


def test_failure_is_retried_with_backoff() -> None:
    cmd = ReportFailed(
        command_id="f", at=at(3), lease_id="L1", provider_id="p1", reason="worker_crashed", message="boom"
    )
    failed, retried = given(T, created(), leased(), started()).when(cmd).then_types("TaskFailed", "TaskRetried")
    assert isinstance(failed, TaskFailed) and not failed.terminal and failed.attempt == 1
    assert isinstance(retried, TaskRetried) and retried.not_before == at(3) + timedelta(seconds=2.0)


def test_retry_backoff_grows() -> None:
    history = (
        created(),
        leased(),
        started(),
        TaskFailed(
            at=at(3),
            task_id="t1",
            lease_id="L1",
            provider_id="p1",
            reason="timeout",
            attempt=1,
            terminal=False,
        ),
        TaskRetried(at=at(3), task_id="t1", failures=1, not_before=at(5)),
        TaskQueued(at=at(5), task_id="t1"),
        leased("L2", "p1", 2, 6),
        started("L2", "p1", 7),
    )
    cmd = ReportFailed(command_id="f2", at=at(8), lease_id="L2", provider_id="p1", reason="worker_crashed")
    _, retried = given(T, *history).when(cmd).then_types("TaskFailed", "TaskRetried")
    assert retried.not_before == at(8) + timedelta(seconds=4.0)  # type: ignore[attr-defined]


def test_last_attempt_failure_makes_the_task_dead() -> None:
    cmd = ReportFailed(command_id="f", at=at(3), lease_id="L1", provider_id="p1", reason="worker_crashed")
    (e,) = given(T, created(max_attempts=1), leased(), started()).when(cmd).then_types("TaskFailed")
    assert e.terminal  # type: ignore[attr-defined]
    assert T.fold([created(max_attempts=1), leased(), started(), e]).status == "dead"


def test_invalid_params_are_not_retried() -> None:
    cmd = ReportFailed(command_id="f", at=at(3), lease_id="L1", provider_id="p1", reason="invalid_params")
    (e,) = given(T, created(), leased(), started()).when(cmd).then_types("TaskFailed")
    assert e.terminal  # type: ignore[attr-defined]


def test_queue_after_backoff_only_when_due() -> None:
    history = (
        created(),
        leased(),
        TaskFailed(
            at=at(3),
            task_id="t1",
            lease_id="L1",
            provider_id="p1",
            reason="timeout",
            attempt=1,
            terminal=False,
        ),
        TaskRetried(at=at(3), task_id="t1", failures=1, not_before=at(5)),
    )
    given(T, *history).when(QueueTask(command_id="q", at=at(4))).then()
    given(T, *history).when(QueueTask(command_id="q", at=at(5))).then(TaskQueued(at=at(5), task_id="t1"))
    given(T, created()).when(QueueTask(command_id="q", at=at(5))).then()


def test_lease_expiry_before_start_requeues() -> None:
    cmd = ExpireLease(command_id="e", at=at(31), lease_id="L1", reason="expired")
    state = (
        given(T, created(), leased())
        .when(cmd)
        .then(TaskLeaseExpired(at=at(31), task_id="t1", lease_id="L1", provider_id="p1", reason="expired"))
    )
    assert state.status == "queued" and state.lease is None


def test_early_or_stale_expiry_timers_change_nothing() -> None:
    given(T, created(), leased()).when(ExpireLease(command_id="e", at=at(10), lease_id="L1", reason="expired")).then()
    given(T, created(), leased()).when(ExpireLease(command_id="e", at=at(99), lease_id="OLD", reason="expired")).then()


def test_silent_past_the_timeout_is_a_timeout_failure() -> None:
    cmd = ExpireLease(command_id="e", at=at(200), lease_id="L1", reason="expired")
    expired, failed, _ = (
        given(T, created(), leased(), started()).when(cmd).then_types("TaskLeaseExpired", "TaskFailed", "TaskRetried")
    )
    assert isinstance(expired, TaskLeaseExpired) and (expired.lease_id, expired.provider_id) == ("L1", "p1")
    # The expiry names the lease (and counts against the provider once); the failure is the task's.
    assert isinstance(failed, TaskFailed) and failed.reason == "timeout"
    assert failed.lease_id is None and failed.provider_id is None


def test_a_late_report_for_an_own_ended_lease_is_a_race_and_a_stranger_s_is_not() -> None:
    history = (
        created(),
        leased(),
        started(),
        TaskLeaseExpired(at=at(100), task_id="t1", lease_id="L1", provider_id="p1", reason="provider_lost"),
        leased("L2", "p2", 2, 101),
    )

    def report(lease: str, provider: str) -> TaskResultRejected:
        cmd = ReportCompleted(command_id="x", at=at(102), lease_id=lease, provider_id=provider, result=RESULT, gpu_ms=5)
        (e,) = given(T, *history).when(cmd).then_types("TaskResultRejected")
        assert isinstance(e, TaskResultRejected)
        return e

    assert report("L1", "p1").late  # its own lease, which ended: an honest race
    assert not report("L1", "p3").late  # a lease it never held
    assert not report("L2", "p1").late  # someone else's current lease
    assert not report("L9", "p1").late  # a lease that never existed
    # After the end, the winner's late duplicate with another result is a race too; a stranger's is not.
    done = (*history, completed("L2", "p2"))
    cmd = ReportProgress(command_id="y", at=at(103), lease_id="L2", provider_id="p2", fraction=1.0)
    (e,) = given(T, *done).when(cmd).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and e.late
    cmd = ReportProgress(command_id="y", at=at(103), lease_id="L2", provider_id="p3", fraction=1.0)
    (e,) = given(T, *done).when(cmd).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and not e.late


def test_a_foreign_object_from_the_lease_holder_is_not_late() -> None:
    cmd = ReportProgress(
        command_id="x",
        at=at(4),
        lease_id="L1",
        provider_id="p1",
        fraction=0.5,
        checkpoint=ObjectRef(bucket="GF_OBJECTS", name=f"provider.p2.{'c' * 64}", sha256="c" * 64, size=10),
        checkpoint_step=5,
    )
    (e,) = given(T, created(), leased(), started()).when(cmd).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and not e.late


def test_provider_loss_requeues_without_counting_a_failure() -> None:
    cmd = ExpireLease(command_id="e", at=at(5), lease_id="L1", reason="provider_lost")
    (e,) = given(T, created(), leased(), started()).when(cmd).then_types("TaskLeaseExpired")
    state = T.fold([created(), leased(), started(), e])
    assert state.status == "queued" and state.failures == 0 and state.lost_leases == 1


def test_too_many_lost_leases_kill_the_task() -> None:
    cmd = ExpireLease(command_id="e", at=at(5), lease_id="L1", reason="provider_lost")
    _, dead = given(T, created(max_lost=0), leased()).when(cmd).then_types("TaskLeaseExpired", "TaskFailed")
    assert dead.terminal  # type: ignore[attr-defined]


def test_cancel_reaches_the_lease_holder_and_is_terminal() -> None:
    cmd = CancelTask(command_id="x", at=at(5), reason="job cancelled")
    state = (
        given(T, created(), leased(), started())
        .when(cmd)
        .then(TaskCancelled(at=at(5), task_id="t1", reason="job cancelled", lease_id="L1", provider_id="p1"))
    )
    assert state.status == "cancelled"
    given(T, created(), leased(), started(), completed()).when(cmd).then()
    # Nothing more is accepted from the former lease holder.
    late = ReportCompleted(command_id="c", at=at(6), lease_id="L1", provider_id="p1", result=RESULT, gpu_ms=1)
    given(T, created(), leased(), TaskCancelled(at=at(5), task_id="t1", lease_id="L1", provider_id="p1")).when(
        late
    ).then_types("TaskResultRejected")


# ---- objects a provider reports must be its own, and results must be for the job's submitter ---------


def created_for(owner: str) -> TaskCreated:
    return created().model_copy(update={"task_id": f"{owner}.j1.0", "job_id": f"{owner}.j1", "submitter": owner})


def _obj(name: str) -> ObjectRef:
    return ObjectRef(bucket="GF_OBJECTS", name=name, sha256="c" * 64, size=10)


STORY = (created_for("ann"), leased(), started())


def test_a_checkpoint_stored_under_another_identity_is_refused() -> None:
    def progress(name: str) -> ReportProgress:
        return ReportProgress(
            command_id="x",
            at=at(4),
            lease_id="L1",
            provider_id="p1",
            fraction=0.5,
            checkpoint=_obj(name),
            checkpoint_step=5,
        )

    (e,) = given(T, *STORY).when(progress(f"provider.p2.{'c' * 64}")).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and "not stored under provider p1" in e.reason
    (e,) = given(T, *STORY).when(progress(f"submitter.ann.{'c' * 64}")).then_types("TaskResultRejected")
    given(T, *STORY).when(progress(f"provider.p1.{'c' * 64}")).then_types("TaskProgressed")


def test_a_result_must_be_the_provider_s_and_written_for_the_job_s_submitter() -> None:
    def done(name: str) -> ReportCompleted:
        result = ResultRef(sha256="c" * 64, size=10, object=_obj(name))
        return ReportCompleted(command_id="x", at=at(5), lease_id="L1", provider_id="p1", result=result, gpu_ms=5)

    # A forgery by the lease holder ends its lease at once: the task goes to another provider.
    e, ended = (
        given(T, *STORY).when(done(f"result.bob.p1.{'c' * 64}")).then_types("TaskResultRejected", "TaskLeaseExpired")
    )
    assert isinstance(e, TaskResultRejected) and "written for bob" in e.reason and not e.late
    assert isinstance(ended, TaskLeaseExpired) and ended.lease_id == "L1" and ended.provider_id == "p1"
    e, _ = given(T, *STORY).when(done(f"result.ann.p2.{'c' * 64}")).then_types("TaskResultRejected", "TaskLeaseExpired")
    assert isinstance(e, TaskResultRejected) and "not stored under provider p1" in e.reason
    given(T, *STORY).when(done(f"result.ann.p1.{'c' * 64}")).then_types("TaskCompleted")
    # An old object-store reference (from before identities) is not judged by these names.
    legacy = ResultRef(sha256="c" * 64, size=10, object=CKPT)
    cmd = ReportCompleted(command_id="x", at=at(5), lease_id="L1", provider_id="p1", result=legacy, gpu_ms=5)
    given(T, *STORY).when(cmd).then_types("TaskCompleted")


# ---- metering: the bill is what the network observed --------------------------------------------


def _done(gpu_ms: int, t: float) -> ReportCompleted:
    return ReportCompleted(command_id="c", at=at(t), lease_id="L1", provider_id="p1", result=RESULT, gpu_ms=gpu_ms)


def test_an_over_claimed_time_is_billed_as_observed_from_lease_to_completion() -> None:
    # Leased at t=1, completed at t=3.25: 2,250 ms observed, whatever the provider claims.
    (e,) = given(T, created(), leased(), started()).when(_done(10**8, 3.25)).then_types("TaskCompleted")
    assert e.gpu_ms == 2250  # type: ignore[attr-defined]


def test_a_provider_s_lower_figure_lowers_the_bill() -> None:
    (e,) = given(T, created(), leased(), started()).when(_done(700, 3.25)).then_types("TaskCompleted")
    assert e.gpu_ms == 700  # type: ignore[attr-defined]


def test_the_bill_never_exceeds_the_task_s_timeout() -> None:
    # Timeout 60 s; the completion arrives 100 s after the lease (inside the grace), claiming 10^8 ms.
    (e,) = given(T, created(), leased(), started()).when(_done(10**8, 101)).then_types("TaskCompleted")
    assert e.gpu_ms == 60_000  # type: ignore[attr-defined]


def test_a_completion_stamped_before_its_lease_is_billed_nothing() -> None:
    (e,) = given(T, created(), leased(t=5), started(t=6)).when(_done(500, 4)).then_types("TaskCompleted")
    assert e.gpu_ms == 0  # type: ignore[attr-defined]


def test_the_observed_time_counts_from_the_current_lease_not_the_first() -> None:
    first = leased(lease="L0", t=1)
    expired = TaskLeaseExpired(at=at(40), task_id="t1", lease_id="L0", provider_id="p1", reason="expired")
    second = leased(lease="L1", attempt=2, t=50)
    cmd = ReportCompleted(command_id="c", at=at(52), lease_id="L1", provider_id="p1", result=RESULT, gpu_ms=10**7)
    (e,) = given(T, created(), first, expired, second).when(cmd).then_types("TaskCompleted")
    assert e.gpu_ms == 2000  # type: ignore[attr-defined]


def test_a_prediction_past_the_catalogue_s_bound_is_clamped_not_a_crash() -> None:
    cmd = LeaseTask(command_id="l", at=at(1), lease_id="L1", provider_id="p1", expires_at=at(31), predicted_s=1e30)
    (e,) = given(T, created()).when(cmd).then_types("TaskLeased")
    assert e.predicted_s == MAX_SECONDS  # type: ignore[attr-defined]
