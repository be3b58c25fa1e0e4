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
    TERMINAL_TASK_STATES,
    LeaseEndReason,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskProgressed,
    TaskQueued,
    TaskResultJudged,
    TaskResultRejected,
    TaskResultReturned,
    TaskRetried,
    TaskStarted,
)
from events.types import MAX_SECONDS, EventModel, FailureReason, JsonValue, ObjectRef, ResultRef, recorded_seconds
from events.verification import (
    MAX_REPLICAS,
    SpotDraw,
    effective_mode,
    quorum_of,
    results_agree,
    spot_probability,
)
from events.workloads import WORKLOADS

__all__ = [
    "NON_RETRYABLE",
    "TERMINAL",
    "CancelTask",
    "CreateTask",
    "ExpireLease",
    "ExpireVerification",
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
TERMINAL = TERMINAL_TASK_STATES
#: Failures that would repeat on any provider: retrying them wastes the submitter's money. A
#: submitted function that raised (``function_error``) would raise again on the same arguments.
NON_RETRYABLE: frozenset[str] = frozenset({"invalid_params", "unsupported", "function_error"})


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
class Candidate:
    """A result returned under verification, held until it is judged."""

    lease_id: str
    provider_id: str
    result: ResultRef
    gpu_ms: int
    price_micros: int
    metrics: dict[str, float]
    #: Earlier candidates (by lease) this one agrees with.
    agrees_with: frozenset[str] = frozenset()
    verdict: str | None = None


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
    #: Results returned under verification, in order; and what settles it (results, agreeing).
    candidates: tuple[Candidate, ...] = ()
    verify_replicas: int = 0
    verify_quorum: int = 0
    spot: SpotDraw | None = None
    #: Since when the task, holding results, has waited for a provider to take its next replica
    #: (None while a replica is leased, or when nothing is held).
    waiting_since: datetime | None = None

    @property
    def verifying(self) -> bool:
        """Results are held and the verdict is not in."""
        return any(c.verdict is None for c in self.candidates)

    @property
    def excluded(self) -> frozenset[str]:
        """Providers that already returned a result for this task: a replica goes to someone else."""
        return frozenset(c.provider_id for c in self.candidates)


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
    #: The prediction's interval; None: none (leases recorded before intervals existed).
    predicted_low_s: float | None = None
    predicted_high_s: float | None = None
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
    #: Verification inputs, supplied by the orchestrator when the report arrives: a uniform draw in
    #: [0, 1) for the spot check (0 checks always), the sender's consecutive valid results, and the
    #: content of results stored as objects (by object name), so they compare element by element.
    draw: float = 0.0
    trust: int = 0
    loaded: dict[str, JsonValue] = field(default_factory=dict)


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
class ExpireVerification(_Command):
    """The task has held results for its policy's ``wait_s`` and no provider took its next replica."""


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
    | ExpireVerification
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
    if terminal:
        out = _release_held(s, at, f"the task failed: {reason}") + out
    else:
        delay = s.spec.retry.delay_after(failures)
        out.append(
            TaskRetried(at=at, task_id=s.spec.task_id, failures=failures, not_before=at + timedelta(seconds=delay))
        )
    return out


def _release_held(s: TaskState, at: datetime, why: str) -> list[EventModel]:
    """Every result still held is judged inconclusive: the task ended before it was verified."""
    assert s.spec is not None
    return [
        TaskResultJudged(
            at=at,
            task_id=s.spec.task_id,
            lease_id=c.lease_id,
            provider_id=c.provider_id,
            verdict="inconclusive",
            gpu_ms=c.gpu_ms,
            reason=why[:500],
        )
        for c in s.candidates
        if c.verdict is None
    ]


def _agrees(s: TaskState, result: ResultRef, loaded: dict[str, JsonValue]) -> list[str]:
    """The earlier candidates (leases) that ``result`` agrees with (``events.verification``)."""
    assert s.spec is not None
    c = WORKLOADS.get(s.spec.workload)
    policy = s.spec.verify
    if c is None or policy is None:
        return []
    return [
        other.lease_id
        for other in s.candidates
        if results_agree(result, other.result, c.compare, policy.tolerance, c.ignore, loaded)
    ]


def _verified(s: TaskState, returned: TaskResultReturned) -> list[EventModel]:
    """The verdict once ``returned`` is in: judged results and the canonical completion, the task
    failed as unverifiable, or nothing yet (another replica is needed)."""
    assert s.spec is not None
    cands = [*s.candidates, _candidate(returned)]
    adjacent: dict[str, set[str]] = {c.lease_id: set() for c in cands}
    for c in cands:
        for other in c.agrees_with:
            if other in adjacent:
                adjacent[c.lease_id].add(other)
                adjacent[other].add(c.lease_id)
    at, task_id = returned.at, s.spec.task_id
    if len(cands) >= returned.replicas:
        # The canonical result is the one most results agree with (the earliest among equals).
        support_of = {c.lease_id: 1 + len(adjacent[c.lease_id]) for c in cands}
        canon = max(cands, key=lambda c: support_of[c.lease_id])
        support = support_of[canon.lease_id]
        if support >= returned.quorum:
            valid_ids = {canon.lease_id} | adjacent[canon.lease_id]
            judged: list[EventModel] = []
            for c in cands:
                valid = c.lease_id in valid_ids
                # Invalid only when it agrees with none of the valid results, and a quorum of two or
                # more outvoted it: within tolerance of a valid result (agreement is not transitive),
                # or outvoted by one result alone, proves nothing against it.
                verdict: Literal["valid", "invalid", "inconclusive"] = (
                    "valid"
                    if valid
                    else "invalid"
                    if support >= 2 and not (adjacent[c.lease_id] & valid_ids)
                    else "inconclusive"
                )
                judged.append(
                    TaskResultJudged(
                        at=at,
                        task_id=task_id,
                        lease_id=c.lease_id,
                        provider_id=c.provider_id,
                        verdict=verdict,
                        canonical=canon.lease_id,
                        gpu_ms=c.gpu_ms,
                        reason=""
                        if valid
                        else f"disagrees with the {support} results that agree"
                        if verdict == "invalid"
                        else "agrees with a valid result, not with the canonical one, or outvoted by one",
                    )
                )
            done = TaskCompleted(
                at=at,
                task_id=task_id,
                lease_id=canon.lease_id,
                provider_id=canon.provider_id,
                result=canon.result,
                gpu_ms=canon.gpu_ms,
                metrics=canon.metrics,
                verified_by=support,
            )
            return [*judged, done]
    policy = s.spec.verify
    bound = max(returned.replicas, policy.max_replicas if policy is not None else returned.replicas, 2)
    if len(cands) >= min(bound, MAX_REPLICAS):
        why = f"no {returned.quorum} of {len(cands)} results agree"
        after = replace(s, candidates=tuple(cands))
        return [
            *_release_held(after, at, why),
            TaskFailed(at=at, task_id=task_id, reason="unverifiable", message=why, attempt=s.attempt, terminal=True),
        ]
    return []


def _candidate(e: TaskResultReturned) -> Candidate:
    return Candidate(
        e.lease_id, e.provider_id, e.result, e.gpu_ms, e.price_micros, dict(e.metrics), frozenset(e.agrees_with)
    )


def _completed(cmd: ReportCompleted, s: TaskState) -> list[EventModel]:
    """A valid completion: the task's result, or a result held for verification."""
    assert s.spec is not None and s.lease is not None
    task_id = s.spec.task_id
    billed = _billed_ms(cmd, s)
    metrics = {k: v for k, v in cmd.metrics.items() if math.isfinite(v)}
    spot: SpotDraw | None = None
    if s.candidates:
        replicas, quorum = s.verify_replicas, s.verify_quorum
    else:
        c = WORKLOADS.get(s.spec.workload)
        mode = effective_mode(s.spec.verify, s.lease.price_micros, c.compare if c is not None else "none")
        if mode == "spot":
            trust = max(0, cmd.trust)
            p = spot_probability(trust)
            draw = min(1.0, max(0.0, cmd.draw)) if math.isfinite(cmd.draw) else 0.0
            spot = SpotDraw(p=p, draw=draw, consecutive_valid=trust, checked=p >= 1.0 or draw < p)
        if mode == "none" or (spot is not None and not spot.checked):
            return [
                TaskCompleted(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=cmd.lease_id,
                    provider_id=cmd.provider_id,
                    result=cmd.result,
                    gpu_ms=billed,
                    metrics=metrics,
                    spot=spot,
                )
            ]
        replicas, quorum = quorum_of(s.spec.verify, mode)
    returned = TaskResultReturned(
        at=cmd.at,
        task_id=task_id,
        lease_id=cmd.lease_id,
        provider_id=cmd.provider_id,
        result=cmd.result,
        gpu_ms=billed,
        price_micros=s.lease.price_micros,
        metrics=metrics,
        replica=len(s.candidates) + 1,
        agrees_with=_agrees(s, cmd.result, cmd.loaded),
        replicas=replicas,
        quorum=quorum,
        spot=spot,
    )
    return [returned, *_verified(s, returned)]


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
            if cmd.provider_id in s.excluded:
                raise InvalidTransition(f"task {task_id}", "verifying", f"lease a replica to {cmd.provider_id} again")
            return [
                TaskLeased(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=cmd.lease_id,
                    provider_id=cmd.provider_id,
                    attempt=s.attempt + 1,
                    expires_at=cmd.expires_at,
                    predicted_s=min(MAX_SECONDS, max(0.0, cmd.predicted_s)),
                    predicted_low_s=recorded_seconds(cmd.predicted_low_s),
                    predicted_high_s=recorded_seconds(cmd.predicted_high_s),
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
            if any(
                c.lease_id == cmd.lease_id and c.provider_id == cmd.provider_id and c.result == cmd.result
                for c in s.candidates
            ):
                return []  # a duplicate of a result already returned for verification
            owner = job_owner(s.spec.job_id)
            obj = cmd.result.object
            if why := _lease_problem(cmd, s) or (
                "the result's digest and size are not its object's"
                if obj is not None and (obj.sha256, obj.size) != (cmd.result.sha256, cmd.result.size)
                else None
            ):
                return _refuse(cmd, s, why)
            if why := _foreign_object(cmd.result.object, cmd.provider_id, "result", owner):
                # The lease holder passed off another identity's object as its result: a forgery, not a
                # race. Its lease ends now (it would otherwise hold the task until the timeout, and cost
                # the task an attempt), and the task goes to another provider.
                assert s.lease is not None
                forged = TaskLeaseExpired(
                    at=cmd.at,
                    task_id=task_id,
                    lease_id=s.lease.lease_id,
                    provider_id=s.lease.provider_id,
                    reason="expired",
                )
                return [*_refuse(cmd, s, why), forged]
            return _completed(cmd, s)
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
                    *_release_held(s, cmd.at, "the task failed: its lease was lost too often"),
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
        case ExpireVerification():
            policy = s.spec.verify
            since = s.waiting_since
            if s.status != "queued" or not s.verifying or since is None or policy is None:
                return []  # a replica was leased since, or the task ended: a stale timer
            if cmd.at < since + timedelta(seconds=policy.wait_s):
                return []
            why = f"no other provider took a replica within {policy.wait_s:g} s"
            return [
                *_release_held(s, cmd.at, why),
                TaskFailed(
                    at=cmd.at, task_id=task_id, reason="unverifiable", message=why, attempt=s.attempt, terminal=True
                ),
            ]
        case CancelTask():
            if s.status in TERMINAL:
                return []
            lease = s.lease
            return [
                *_release_held(s, cmd.at, f"the task was cancelled: {cmd.reason}"),
                TaskCancelled(
                    at=cmd.at,
                    task_id=task_id,
                    reason=cmd.reason,
                    lease_id=lease.lease_id if lease else None,
                    provider_id=lease.provider_id if lease else None,
                ),
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
                waiting_since=None,
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
            waiting = e.at if s.verifying else None
            return replace(s, status="queued", not_before=None, waiting_since=waiting)
        case TaskLeaseExpired():
            waiting = e.at if s.verifying else None
            return replace(s, status="queued", lease=None, lost_leases=s.lost_leases + 1, waiting_since=waiting)
        case TaskCancelled():
            return replace(s, status="cancelled", lease=None)
        case TaskResultReturned():
            # A replica computes from scratch: resuming from the checked provider's checkpoint would
            # make the check depend on the very work it checks.
            return replace(
                s,
                status="queued",
                lease=None,
                waiting_since=e.at,
                checkpoint=None,
                checkpoint_step=0,
                candidates=(*s.candidates, _candidate(e)),
                verify_replicas=e.replicas,
                verify_quorum=e.quorum,
                spot=e.spot if e.spot is not None else s.spot,
            )
        case TaskResultJudged():
            return replace(
                s,
                candidates=tuple(
                    replace(c, verdict=e.verdict) if c.lease_id == e.lease_id else c for c in s.candidates
                ),
            )
        case TaskResultRejected():
            return s
    return s


def _decide(cmd: object, s: TaskState) -> list[EventModel]:
    return decide(cmd, s)  # type: ignore[arg-type]


task_decider: Decider[TaskCommand, TaskState] = Decider(
    "task", initial_state, _decide, evolve, lambda c: isinstance(c, CreateTask)
)
