"""The job decider: acceptance, metering, completion, failure, cancellation, deadline, settlement."""

from __future__ import annotations

from datetime import timedelta

import pytest

from actors.errors import DuplicateJob, NotYours, UnknownAggregate
from actors.job import (
    CancelJob,
    CompleteJob,
    DecideJob,
    FailJob,
    MeterUsage,
    MissDeadline,
    SettleJob,
    SubmitJob,
    job_decider,
    metered_amount,
)
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


def test_submission_is_recorded_then_decided() -> None:
    given(J).when(SubmitJob(command_id="s", at=at(0), job_id="j1", spec=SPEC)).then(submitted())
    state = given(J, submitted()).when(DecideJob(command_id="d", at=at(0), predicted_s=2.0)).then(accepted())
    assert state.status == "accepted" and state.task_count == 2
    given(J, submitted(), accepted()).when(DecideJob(command_id="d2", at=at(1))).then()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec(workload="warp_drive"), "workload"),
        (JobSpec(workload="matmul", params={"n": -1}), "params.n"),
        (JobSpec(workload="matmul", params={"dtype": "int4"}), "params.dtype"),
        (JobSpec(workload="sleep", split=ParamsSplit(params=[{"seconds": 1.0}, {"seconds": "x"}])), "params.seconds"),
        (
            JobSpec(workload="custom_kernel", params={"source": "k", "name": "k", "grid": [1], "block": [1]}),
            "resources.backend",
        ),
        (JobSpec(workload="noop", deadline=at(-1)), "deadline"),
    ],
)
def test_invalid_job_is_rejected_naming_the_field(spec: JobSpec, field: str) -> None:
    (rejected,) = given(J, submitted(spec)).when(DecideJob(command_id="d", at=at(0))).then_types("JobRejected")
    assert rejected.field == field, rejected  # type: ignore[attr-defined]


def test_custom_kernel_with_cuda_requirement_is_accepted() -> None:
    spec = JobSpec(
        workload="custom_kernel",
        params={"source": "k", "name": "k", "grid": [1], "block": [1]},
        resources=Resources(backend="cuda"),
    )
    given(J, submitted(spec)).when(DecideJob(command_id="d", at=at(0))).then_types("JobAccepted")


def test_resubmission_is_idempotent_but_a_different_spec_is_refused() -> None:
    given(J, submitted(), accepted()).when(SubmitJob(command_id="s2", at=at(1), job_id="j1", spec=SPEC)).then()
    other = SPEC.model_copy(update={"priority": 9})
    cmd = SubmitJob(command_id="s2", at=at(1), job_id="j1", spec=other)
    given(J, submitted(), accepted()).when(cmd).then_raises(DuplicateJob)


def test_commands_on_a_missing_job_are_refused() -> None:
    given(J).when(CancelJob(command_id="c", at=at(1))).then_raises(UnknownAggregate)


def test_metering_then_completing_then_settling_exactly() -> None:
    history = (submitted(), accepted(), metered("j1-0", "p1"))
    (usage,) = given(J, *history).when(meter("j1-1", "p2", 500, 2000)).then_types("UsageMetered")
    assert usage.amount_micros == 1000  # type: ignore[attr-defined]
    # Not complete until every task is metered.
    given(J, submitted(), accepted(), metered("j1-0", "p1")).when(CompleteJob(command_id="c", at=at(6))).then()
    (done,) = given(J, *history, usage).when(CompleteJob(command_id="c", at=at(6))).then_types("JobCompleted")
    assert isinstance(done, JobCompleted) and done.cost_micros == 1500 + 1000 and done.gpu_ms == 2000
    # Nothing to settle before the end; after it, the charge equals the credits, provider by provider.
    given(J, *history, usage).when(SettleJob(command_id="s", at=at(6))).then()
    charged, c1, c2 = (
        given(J, *history, usage, done)
        .when(SettleJob(command_id="s", at=at(7)))
        .then_types("SubmitterCharged", "ProviderCredited", "ProviderCredited")
    )
    assert isinstance(charged, SubmitterCharged) and charged.amount_micros == 2500 and charged.submitter == "alice"
    assert isinstance(c1, ProviderCredited) and (c1.provider_id, c1.amount_micros) == ("p1", 1500)
    assert isinstance(c2, ProviderCredited) and (c2.provider_id, c2.amount_micros) == ("p2", 1000)
    # Settled once: settling again changes nothing.
    given(J, *history, usage, done, charged, c1, c2).when(SettleJob(command_id="s2", at=at(8))).then()


def test_metering_a_task_twice_changes_nothing() -> None:
    given(J, submitted(), accepted(), metered("j1-0", "p1")).when(meter("j1-0", "p1")).then()


def test_a_dead_task_fails_the_job_then_what_ran_is_settled() -> None:
    cmd = FailJob(command_id="f", at=at(6), task_id="j1-1", reason="boom")
    (failed,) = given(J, submitted(), accepted(), metered("j1-0", "p1")).when(cmd).then_types("JobFailed")
    history = (submitted(), accepted(), metered("j1-0", "p1"), failed)
    charged, credited = (
        given(J, *history).when(SettleJob(command_id="s", at=at(7))).then_types("SubmitterCharged", "ProviderCredited")
    )
    assert charged.amount_micros == credited.amount_micros == 1500  # type: ignore[attr-defined]


def test_cancel_with_nothing_metered_has_nothing_to_settle() -> None:
    cmd = CancelJob(command_id="c", at=at(1), reason="changed my mind")
    given(J, submitted(), accepted()).when(cmd).then(JobCancelled(at=at(1), job_id="j1", reason="changed my mind"))
    given(J, submitted(), accepted(), JobCancelled(at=at(1), job_id="j1")).when(cmd).then()
    given(J, submitted(), accepted(), JobCancelled(at=at(1), job_id="j1")).when(
        SettleJob(command_id="s", at=at(2))
    ).then()
    # A job can be cancelled before it is even decided.
    given(J, submitted()).when(cmd).then_types("JobCancelled")


def test_usage_metered_after_the_end_is_settled_as_a_delta() -> None:
    history = (
        submitted(),
        accepted(),
        metered("j1-0", "p1"),
        JobCancelled(at=at(6), job_id="j1"),
        SubmitterCharged(at=at(6), job_id="j1", submitter="alice", amount_micros=1500, gpu_ms=1500),
        ProviderCredited(at=at(6), job_id="j1", provider_id="p1", amount_micros=1500, gpu_ms=1500),
    )
    (late,) = given(J, *history).when(meter("j1-1", "p1", 1000, 1000)).then_types("UsageMetered")
    charged, credited = (
        given(J, *history, late)
        .when(SettleJob(command_id="s", at=at(9)))
        .then_types("SubmitterCharged", "ProviderCredited")
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


# ---- identity: the submitter is the credential, never the body -------------------------------------

MINE = JobSpec(workload="sleep", params={"seconds": 1.0}, split=CountSplit(count=2))


def test_the_sender_becomes_the_submitter_of_a_spec_that_names_nobody() -> None:
    cmd = SubmitJob(command_id="c1", at=at(0), job_id="ann.j1", spec=MINE, submitter="ann")
    given(J).when(cmd).then(JobSubmitted(at=at(0), job_id="ann.j1", spec=MINE.model_copy(update={"submitter": "ann"})))
    # Repeating one's own name in the body is the same submission.
    named = MINE.model_copy(update={"submitter": "ann"})
    given(J).when(SubmitJob(command_id="c1", at=at(0), job_id="ann.j1", spec=named, submitter="ann")).then(
        JobSubmitted(at=at(0), job_id="ann.j1", spec=named)
    )


def test_a_body_naming_another_submitter_is_refused_naming_the_field() -> None:
    spec = MINE.model_copy(update={"submitter": "bob"})
    err = (
        given(J)
        .when(SubmitJob(command_id="c1", at=at(0), job_id="ann.j1", spec=spec, submitter="ann"))
        .then_raises(NotYours)
    )
    assert err.field == "submitter" and "bob" in str(err) and "ann" in str(err)  # type: ignore[attr-defined]


def test_a_job_id_owned_by_someone_else_is_refused() -> None:
    err = (
        given(J)
        .when(SubmitJob(command_id="c1", at=at(0), job_id="bob.j1", spec=MINE, submitter="ann"))
        .then_raises(NotYours)
    )
    assert err.field == "job_id"  # type: ignore[attr-defined]


def _ref(name: str) -> dict[str, object]:
    return {"bucket": "GF_OBJECTS", "name": name, "sha256": "c" * 64, "size": 10}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            JobSpec(workload="noop", params={"input": _ref(f"submitter.bob.{'c' * 64}")}),
            "params.input",
        ),
        (
            JobSpec(
                workload="noop",
                split=ParamsSplit(params=[{"a": 1}, {"deep": [{"ref": _ref(f"result.bob.gpu.{'c' * 64}")}]}]),
            ),
            "split.params.1.deep.0.ref",
        ),
    ],
)
def test_a_job_may_name_only_its_submitter_s_own_objects(spec: JobSpec, field: str) -> None:
    cmd = SubmitJob(command_id="c1", at=at(0), job_id="ann.j1", spec=spec, submitter="ann")
    err = given(J).when(cmd).then_raises(NotYours)
    assert err.field == field  # type: ignore[attr-defined]
    mine = spec.model_copy(update={"params": {"input": _ref(f"submitter.ann.{'c' * 64}")}, "split": CountSplit()})
    given(J).when(SubmitJob(command_id="c1", at=at(0), job_id="ann.j1", spec=mine, submitter="ann")).then_types(
        "JobSubmitted"
    )


def test_only_the_submitter_may_cancel() -> None:
    spec = MINE.model_copy(update={"submitter": "ann"})
    story = (JobSubmitted(at=at(0), job_id="ann.j1", spec=spec), accepted())
    given(J, *story).when(CancelJob(command_id="c2", at=at(1), requester="bob")).then_raises(NotYours)
    given(J, *story).when(CancelJob(command_id="c2", at=at(1), requester="ann", reason="mine")).then_types(
        "JobCancelled"
    )
