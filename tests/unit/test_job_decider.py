"""The job decider: acceptance, metering, completion, failure, cancellation, deadline, settlement."""

from __future__ import annotations

from datetime import timedelta

import pytest

from actors.errors import DuplicateJob, UnknownAggregate
from actors.job import CancelJob, FailJob, MeterUsage, MissDeadline, SubmitJob, job_decider, metered_amount
from events.job import (
    CountSplit,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobSpec,
    JobSubmitted,
    ParamsSplit,
    ProviderCredited,
    SubmitterCharged,
    UsageMetered,
)
from events.types import Resources
from tests.factories import at
from tests.unit.decider_spec import given

J = job_decider
SPEC = JobSpec(workload="sleep", params={"seconds": 1.0}, split=CountSplit(count=2), submitter="alice")


def submitted(spec: JobSpec = SPEC) -> JobSubmitted:
    return JobSubmitted(at=at(0), job_id="j1", spec=spec)


def accepted(n: int = 2) -> JobAccepted:
    return JobAccepted(at=at(0), job_id="j1", task_count=n, predicted_s=2.0)


def metered(task: str, provider: str, gpu_ms: int = 1500, price: int = 1000) -> UsageMetered:
    return UsageMetered(
        at=at(5),
        job_id="j1",
        task_id=task,
        provider_id=provider,
        submitter="alice",
        gpu_ms=gpu_ms,
        price_micros=price,
        amount_micros=metered_amount(gpu_ms, price),
    )


def meter(task: str, provider: str, gpu_ms: int = 1500, price: int = 1000) -> MeterUsage:
    return MeterUsage(
        command_id=f"m-{task}",
        at=at(5),
        task_id=task,
        provider_id=provider,
        gpu_ms=gpu_ms,
        price_micros=price,
    )


def test_metered_amount_rounds_up_to_a_micro() -> None:
    assert metered_amount(1000, 7) == 7
    assert metered_amount(1, 7) == 1
    assert metered_amount(0, 7) == 0
    assert metered_amount(1500, 1000) == 1500


def test_valid_job_is_accepted_with_its_task_count() -> None:
    cmd = SubmitJob(command_id="s", at=at(0), job_id="j1", spec=SPEC, predicted_s=2.0)
    state = given(J).when(cmd).then(submitted(), accepted())
    assert state.status == "accepted" and state.task_count == 2


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec(workload="warp_drive"), "workload"),
        (JobSpec(workload="matmul", params={"n": -1}), "params.n"),
        (JobSpec(workload="matmul", params={"dtype": "int4"}), "params.dtype"),
        (
            JobSpec(workload="sleep", split=ParamsSplit(params=[{"seconds": 1.0}, {"seconds": "x"}])),
            "params.seconds",
        ),
        (
            JobSpec(workload="custom_kernel", params={"source": "k", "name": "k", "grid": [1], "block": [1]}),
            "resources.backend",
        ),
        (JobSpec(workload="noop", deadline=at(-1)), "deadline"),
    ],
)
def test_invalid_job_is_rejected_naming_the_field(spec: JobSpec, field: str) -> None:
    cmd = SubmitJob(command_id="s", at=at(0), job_id="j1", spec=spec)
    _, rejected = given(J).when(cmd).then_types("JobSubmitted", "JobRejected")
    assert rejected.field == field, rejected  # type: ignore[attr-defined]


def test_custom_kernel_with_cuda_requirement_is_accepted() -> None:
    spec = JobSpec(
        workload="custom_kernel",
        params={"source": "k", "name": "k", "grid": [1], "block": [1]},
        resources=Resources(backend="cuda"),
    )
    given(J).when(SubmitJob(command_id="s", at=at(0), job_id="j1", spec=spec)).then_types("JobSubmitted", "JobAccepted")


def test_resubmission_is_idempotent_but_a_different_spec_is_refused() -> None:
    given(J, submitted(), accepted()).when(SubmitJob(command_id="s2", at=at(1), job_id="j1", spec=SPEC)).then()
    other = SPEC.model_copy(update={"priority": 9})
    given(J, submitted(), accepted()).when(SubmitJob(command_id="s2", at=at(1), job_id="j1", spec=other)).then_raises(
        DuplicateJob
    )


def test_commands_on_a_missing_job_are_refused() -> None:
    given(J).when(CancelJob(command_id="c", at=at(1))).then_raises(UnknownAggregate)


def test_last_metered_task_completes_the_job_and_settles_exactly() -> None:
    events = (
        given(J, submitted(), accepted(), metered("j1-0", "p1"))
        .when(meter("j1-1", "p2", 500, 2000))
        .then_types("UsageMetered", "JobCompleted", "SubmitterCharged", "ProviderCredited", "ProviderCredited")
    )
    _usage, done, charged, c1, c2 = events
    assert isinstance(done, JobCompleted) and done.cost_micros == 1500 + 1000 and done.gpu_ms == 2000
    assert isinstance(charged, SubmitterCharged) and charged.amount_micros == 2500 and charged.submitter == "alice"
    assert isinstance(c1, ProviderCredited) and (c1.provider_id, c1.amount_micros) == ("p1", 1500)
    assert isinstance(c2, ProviderCredited) and (c2.provider_id, c2.amount_micros) == ("p2", 1000)
    assert charged.amount_micros == c1.amount_micros + c2.amount_micros


def test_metering_a_task_twice_changes_nothing() -> None:
    given(J, submitted(), accepted(), metered("j1-0", "p1")).when(meter("j1-0", "p1")).then()


def test_a_dead_task_fails_the_job_and_settles_what_ran() -> None:
    cmd = FailJob(command_id="f", at=at(6), task_id="j1-1", reason="boom")
    _, charged, credited = (
        given(J, submitted(), accepted(), metered("j1-0", "p1"))
        .when(cmd)
        .then_types("JobFailed", "SubmitterCharged", "ProviderCredited")
    )
    assert charged.amount_micros == credited.amount_micros == 1500  # type: ignore[attr-defined]


def test_cancel_with_nothing_metered_has_no_settlement() -> None:
    cmd = CancelJob(command_id="c", at=at(1), reason="changed my mind")
    given(J, submitted(), accepted()).when(cmd).then(JobCancelled(at=at(1), job_id="j1", reason="changed my mind"))
    given(J, submitted(), accepted(), JobCancelled(at=at(1), job_id="j1")).when(cmd).then()


def test_usage_metered_after_the_end_is_settled_as_a_delta() -> None:
    history = (
        submitted(),
        accepted(),
        metered("j1-0", "p1"),
        JobCancelled(at=at(6), job_id="j1"),
        SubmitterCharged(at=at(6), job_id="j1", submitter="alice", amount_micros=1500, gpu_ms=1500),
        ProviderCredited(at=at(6), job_id="j1", provider_id="p1", amount_micros=1500, gpu_ms=1500),
    )
    _, charged, credited = (
        given(J, *history)
        .when(meter("j1-1", "p1", 1000, 1000))
        .then_types("UsageMetered", "SubmitterCharged", "ProviderCredited")
    )
    assert charged.amount_micros == credited.amount_micros == 1000  # type: ignore[attr-defined]
    assert credited.gpu_ms == 1000  # type: ignore[attr-defined]


def test_deadline_cancel_or_fail_per_spec() -> None:
    spec = SPEC.model_copy(update={"deadline": at(60)})
    history = (submitted(spec), accepted())
    given(J, *history).when(MissDeadline(command_id="d", at=at(59))).then()
    given(J, *history).when(MissDeadline(command_id="d", at=at(60))).then_types("JobDeadlineMissed", "JobCancelled")
    fail = SPEC.model_copy(update={"deadline": at(60), "on_deadline": "fail"})
    missed, _ = (
        given(J, submitted(fail), accepted())
        .when(MissDeadline(command_id="d", at=at(61)))
        .then_types("JobDeadlineMissed", "JobFailed")
    )
    assert missed.unfinished == 2 and missed.deadline == at(0) + timedelta(seconds=60)  # type: ignore[attr-defined]
