"""The task aggregate: queued, leased to one provider, started, progressing, and one terminal state.

Reports (started, progress, completed, failed) are valid only from the provider holding the current
lease. Any other report is refused, and the refusal is recorded as ``TaskResultRejected``. The first
valid completion wins; the same completion again changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from actors.decider import Decider
from actors.errors import InvalidTransition, UnknownAggregate
from events.metering import billable_ms
from events.subjects import OBJECTS_STREAM, job_owner, object_owner, object_reader
from events.task import (
    LeaseEndReason,
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
from events.types import MAX_SECONDS, EventModel, FailureReason, ObjectRef, ResultRef

__all__ = [
    "NON_RETRYABLE",
    "TERMINAL",
    "CancelTask",
    "CreateTask",
    "ExpireLease",
    "LeaseTask",
    "QueueTask",
    "ReportCompleted",
    "ReportFailed",
    "ReportProgress",
    "ReportStarted",
    "TaskCommand",
    "TaskState",
    "TaskStatus",
    "task_decider",
]

TaskStatus = Literal["none", "queued", "leased", "running", "waiting", "completed", "dead", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "dead", "cancelled"})
#: Failures that would repeat on any provider: retrying them wastes the submitter's money.
NON_RETRYABLE: frozenset[str] = frozenset({"invalid_params", "unsupported"})


@dataclass(frozen=True, slots=True)
class Lease:
    """The current lease: who holds it and until when."""

    lease_id: str
    provider_id: str
    expires_at: datetime
    started_at: datetime | None = None
    price_micros: int = 0
    predicted_s: float = 0.0
    #: When the lease was granted (the orchestrator's clock): metering starts here.
    leased_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskState:
    """Everything the task decider needs, folded from the task's events."""

    status: TaskStatus = "none"
    spec: TaskCreated | None = None
    attempt: int = 0
    failures: int = 0
    lost_leases: int = 0
    lease: Lease | None = None
    not_before: datetime | None = None
    checkpoint: ObjectRef | None = None
    checkpoint_step: int = 0
    progress: float = 0.0
    result: ResultRef | None = None
    completed_lease: str | None = None
    gpu_ms: int = 0
    completed_at: datetime | None = None
    #: Every lease this task was given, as (lease id, provider id): a refused report that names one
    #: of the sender's own ended leases is a late report (a race), not a forgery.
    held: frozenset[tuple[str, str]] = frozenset()


# ---- commands --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Command:
    command_id: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateTask(_Command):
    """Create the task from its job's plan (idempotent)."""

    created: TaskCreated


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTask(_Command):
    """The scheduler's decision: this provider, this lease, until ``expires_at`` unless started."""

    lease_id: str
    provider_id: str
    expires_at: datetime
    predicted_s: float = 0.0
    price_micros: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportStarted(_Command):
    """The provider says it started; the lease then lasts the timeout plus ``grace_s``."""

    lease_id: str
    provider_id: str
    grace_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportProgress(_Command):
    """Fraction done, rate, perhaps a checkpoint."""

    lease_id: str
    provider_id: str
    fraction: float
    rate: float = 0.0
    unit: str = "steps"
    message: str = ""
    checkpoint: ObjectRef | None = None
    checkpoint_step: int = 0
    grace_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportCompleted(_Command):
    """The provider finished and reports the result's digest and reference."""

    lease_id: str
    provider_id: str
    result: ResultRef
    gpu_ms: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportFailed(_Command):
    """The attempt failed, with a classified reason."""

    lease_id: str
    provider_id: str
    reason: FailureReason
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireLease(_Command):
    """A lease timer fired, or the provider holding it was lost or left."""

    lease_id: str
    reason: LeaseEndReason


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueTask(_Command):
    """The retry backoff is over."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTask(_Command):
    """The job was cancelled, failed or missed its deadline: the task will not run again."""

    reason: str = ""


TaskCommand = (
    CreateTask
    | LeaseTask
    | ReportStarted
    | ReportProgress
    | ReportCompleted
    | ReportFailed
    | ExpireLease
    | QueueTask
    | CancelTask
)


# ---- decide ----------------------------------------------------------------------------------------


def initial_state() -> TaskState:
    """A task that does not exist yet."""
    return TaskState()


def _refuse(
    cmd: ReportStarted | ReportProgress | ReportCompleted | ReportFailed, s: TaskState, why: str
) -> list[EventModel]:
    kind: Literal["started", "progress", "completed", "failed"] = {
        ReportStarted: "started",
        ReportProgress: "progress",
        ReportCompleted: "completed",
        ReportFailed: "failed",
    }[type(cmd)]  # type: ignore[assignment]
    assert s.spec is not None
    current = s.lease is not None and s.lease.lease_id == cmd.lease_id and s.status not in TERMINAL
    return [
        TaskResultRejected(
            at=cmd.at,
            task_id=s.spec.task_id,
            lease_id=cmd.lease_id[:64],
            provider_id=cmd.provider_id[:64],
            report=kind,
            reason=why,
            late=not current and (cmd.lease_id, cmd.provider_id) in s.held,
        )
    ]


def _lease_problem(cmd: ReportStarted | ReportProgress | ReportCompleted | ReportFailed, s: TaskState) -> str | None:
    """Why this report does not come from the current lease holder, or None if it does."""
    if s.status in TERMINAL:
        return f"task is already {s.status}"
    if s.lease is None:
        return "no lease is current (it expired or was revoked)"
    if cmd.lease_id != s.lease.lease_id:
        return "lease is not the current one (late report after expiry, or forged)"
    if cmd.provider_id != s.lease.provider_id:
        return "provider does not hold this lease (forged report)"
    return None


def _foreign_object(ref: ObjectRef | None, provider_id: str, what: str, for_submitter: str | None) -> str | None:
    """Why a provider may not report object ``ref`` as its own work, or None.

    Objects are named by who wrote them (``provider.<id>.<sha256>``) and, for a result, for whom
    (``result.<submitter>.<id>.<sha256>``): an object stored under another identity's name is
    someone else's data, and a result written for another submitter would not reach this one.
    """
    if ref is None or ref.bucket != OBJECTS_STREAM:
        return None
    if object_owner(ref.name) != ("provider", provider_id):
        return f"{what} {ref.name} is not stored under provider {provider_id}'s name"
    reader = object_reader(ref.name)
    if reader is not None and reader != for_submitter:
        return f"{what} {ref.name} is written for {reader}, not for this job's submitter"
    return None


def _failure(s: TaskState, at: datetime, reason: FailureReason, message: str) -> list[EventModel]:
    assert s.spec is not None
    failures = s.failures + 1
    lease = s.lease
    terminal = reason in NON_RETRYABLE or failures >= s.spec.retry.max_attempts
    out: list[EventModel] = [
        TaskFailed(
            at=at,
            task_id=s.spec.task_id,
            lease_id=lease.lease_id if lease else None,
            provider_id=lease.provider_id if lease else None,
            reason=reason,
            message=message[:2000],
            attempt=s.attempt,
            terminal=terminal,
        )
    ]
    if not terminal:
        delay = s.spec.retry.delay_after(failures)
        out.append(
            TaskRetried(at=at, task_id=s.spec.task_id, failures=failures, not_before=at + timedelta(seconds=delay))
        )
    return out


def _billed_ms(cmd: ReportCompleted, s: TaskState) -> int:
    """The GPU time billed for this completion: what the provider says, capped by what was observed."""
    assert s.spec is not None and s.lease is not None
    leased_at = s.lease.leased_at
    if leased_at is None:  # not reachable from a log: every lease starts with a TaskLeased
        return 0
    return billable_ms(cmd.gpu_ms, leased_at, cmd.at, s.spec.timeout_s)


def decide(cmd: TaskCommand, s: TaskState) -> list[EventModel]:
    """The events that ``cmd`` causes in state ``s``; raises a ``DomainError`` to refuse."""
    if isinstance(cmd, CreateTask):
        return [] if s.status != "none" else [cmd.created]
    if s.spec is None:
        raise UnknownAggregate("task", getattr(cmd, "task_id", "?"))
    task_id = s.spec.task_id
    match cmd:
        case LeaseTask():
            if s.status != "queued":
                raise InvalidTransition(f"task {task_id}", s.status, "lease it")
            return [
                TaskLeased(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=cmd.lease_id,
                    provider_id=cmd.provider_id,
                    attempt=s.attempt + 1,
                    expires_at=cmd.expires_at,
                    predicted_s=min(MAX_SECONDS, max(0.0, cmd.predicted_s)),
                    price_micros=cmd.price_micros,
                    resume_from=s.checkpoint,
                    resume_step=s.checkpoint_step if s.checkpoint else 0,
                )
            ]
        case ReportStarted():
            if (why := _lease_problem(cmd, s)) is not None:
                return _refuse(cmd, s, why)
            if s.status == "running":
                return []  # the same report again
            expires = cmd.at + timedelta(seconds=s.spec.timeout_s + cmd.grace_s)
            return [
                TaskStarted(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=cmd.lease_id,
                    provider_id=cmd.provider_id,
                    expires_at=expires,
                )
            ]
        case ReportProgress():
            owner = job_owner(s.spec.job_id)
            if why := _lease_problem(cmd, s) or _foreign_object(cmd.checkpoint, cmd.provider_id, "checkpoint", owner):
                return _refuse(cmd, s, why)
            out: list[EventModel] = []
            if s.status == "leased":  # the started report was lost or overtaken
                expires = cmd.at + timedelta(seconds=s.spec.timeout_s + cmd.grace_s)
                out.append(
                    TaskStarted(
                        at=cmd.at,
                        task_id=task_id,
                        lease_id=cmd.lease_id,
                        provider_id=cmd.provider_id,
                        expires_at=expires,
                    )
                )
            out.append(
                TaskProgressed(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=cmd.lease_id,
                    provider_id=cmd.provider_id,
                    fraction=min(1.0, max(0.0, cmd.fraction)),
                    rate=max(0.0, cmd.rate),
                    unit=cmd.unit,
                    message=cmd.message,
                    checkpoint=cmd.checkpoint,
                    checkpoint_step=cmd.checkpoint_step,
                )
            )
            return out
        case ReportCompleted():
            if s.status == "completed" and s.completed_lease == cmd.lease_id and s.result == cmd.result:
                return []  # a duplicate of the winning completion: idempotent
            owner = job_owner(s.spec.job_id)
            if why := _lease_problem(cmd, s) or _foreign_object(cmd.result.object, cmd.provider_id, "result", owner):
                return _refuse(cmd, s, why)
            return [
                TaskCompleted(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=cmd.lease_id,
                    provider_id=cmd.provider_id,
                    result=cmd.result,
                    gpu_ms=_billed_ms(cmd, s),
                    metrics={k: v for k, v in cmd.metrics.items() if math.isfinite(v)},
                )
            ]
        case ReportFailed():
            if (why := _lease_problem(cmd, s)) is not None:
                return _refuse(cmd, s, why)
            return _failure(s, cmd.at, cmd.reason, cmd.message)
        case ExpireLease():
            lease = s.lease
            if lease is None or lease.lease_id != cmd.lease_id or s.status in TERMINAL:
                return []  # a stale timer: that lease already ended
            if cmd.reason == "expired" and cmd.at < lease.expires_at:
                return []  # fired early (clock skew between processes): the timer comes again
            ended: list[EventModel] = [
                TaskLeaseExpired(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=lease.lease_id,
                    provider_id=lease.provider_id,
                    reason=cmd.reason,
                )
            ]
            if cmd.reason == "expired" and s.status == "running":
                # Alive but still running past its timeout: the attempt fails. The expiry above already
                # names the lease and counts once against the provider; the failure is the task's.
                failed = replace(s, status="queued", lease=None)
                return ended + _failure(failed, cmd.at, "timeout", "lease expired while running")
            if s.lost_leases + 1 > s.spec.retry.max_lost_leases:
                return [
                    *ended,
                    TaskFailed(
                        at=cmd.at,
                        task_id=task_id,
                        reason="provider_error",
                        message=f"lease lost {s.lost_leases + 1} times",
                        attempt=s.attempt,
                        terminal=True,
                    ),
                ]
            return ended
        case QueueTask():
            if s.status != "waiting":
                return []
            if s.not_before is not None and cmd.at < s.not_before:
                return []
            return [TaskQueued(at=cmd.at, task_id=task_id)]
        case CancelTask():
            if s.status in TERMINAL:
                return []
            lease = s.lease
            return [
                TaskCancelled(
                    at=cmd.at,
                    task_id=task_id,
                    reason=cmd.reason,
                    lease_id=lease.lease_id if lease else None,
                    provider_id=lease.provider_id if lease else None,
                )
            ]
    raise TypeError(f"not a task command: {cmd!r}")


# ---- evolve ----------------------------------------------------------------------------------------


def evolve(s: TaskState, e: EventModel) -> TaskState:
    """The state after event ``e``."""
    match e:
        case TaskCreated():
            return TaskState(status="queued", spec=e)
        case TaskLeased():
            return replace(
                s,
                status="leased",
                attempt=e.attempt,
                lease=Lease(e.lease_id, e.provider_id, e.expires_at, None, e.price_micros, e.predicted_s, e.at),
                progress=0.0,
                held=s.held | {(e.lease_id, e.provider_id)},
            )
        case TaskStarted():
            lease = s.lease
            if lease is None:
                return s
            return replace(s, status="running", lease=replace(lease, expires_at=e.expires_at, started_at=e.at))
        case TaskProgressed():
            if e.checkpoint is not None:
                return replace(
                    s,
                    status="running",
                    progress=e.fraction,
                    checkpoint=e.checkpoint,
                    checkpoint_step=e.checkpoint_step,
                )
            return replace(s, status="running", progress=e.fraction)
        case TaskCompleted():
            # The lease stays on record: its provider and price are what the job meters.
            return replace(
                s,
                status="completed",
                result=e.result,
                completed_lease=e.lease_id,
                progress=1.0,
                gpu_ms=e.gpu_ms,
                completed_at=e.at,
            )
        case TaskFailed():
            if e.terminal:
                return replace(s, status="dead", failures=s.failures + 1, lease=None)
            return replace(s, failures=s.failures + 1, lease=None)
        case TaskRetried():
            return replace(s, status="waiting", not_before=e.not_before, lease=None)
        case TaskQueued():
            return replace(s, status="queued", not_before=None)
        case TaskLeaseExpired():
            return replace(s, status="queued", lease=None, lost_leases=s.lost_leases + 1)
        case TaskCancelled():
            return replace(s, status="cancelled", lease=None)
        case TaskResultRejected():
            return s
    return s


def _decide(cmd: object, s: TaskState) -> list[EventModel]:
    return decide(cmd, s)  # type: ignore[arg-type]


task_decider: Decider[TaskCommand, TaskState] = Decider(
    "task", initial_state, _decide, evolve, lambda c: isinstance(c, CreateTask)
)
