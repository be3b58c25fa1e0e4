"""Task events: one task's life from creation to exactly one terminal state."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.types import (
    MAX_COUNT,
    MAX_MEASURE,
    MAX_TIMEOUT_S,
    Count,
    Estimate,
    EventModel,
    FailureReason,
    FloatMap,
    GpuMs,
    Id,
    JobId,
    JsonObject,
    ObjectRef,
    PriceMicros,
    Resources,
    ResultRef,
    RetryPolicy,
    Seconds,
    TaskId,
    UtcDateTime,
)
from events.verification import MAX_REPLICAS, SpotDraw, VerifyPolicy

__all__ = [
    "TERMINAL_TASK_STATES",
    "LeaseEndReason",
    "TaskCancelled",
    "TaskCompleted",
    "TaskCreated",
    "TaskFailed",
    "TaskLeaseExpired",
    "TaskLeased",
    "TaskProgressed",
    "TaskQueued",
    "TaskResultJudged",
    "TaskResultRejected",
    "TaskResultReturned",
    "TaskRetried",
    "TaskStarted",
]

LeaseEndReason = Literal["expired", "provider_lost", "provider_left"]


#: The states a task never leaves (the one definition: deciders, reactions, read models and audit).
TERMINAL_TASK_STATES: frozenset[str] = frozenset({"completed", "dead", "cancelled"})


class TaskCreated(EventModel):
    """A job's task exists and is queued for its first attempt."""

    type: Literal["TaskCreated"] = "TaskCreated"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    job_id: JobId
    index: int = Field(ge=0, le=MAX_COUNT)
    submitter: str
    workload: str
    params: JsonObject
    resources: Resources
    estimate: Estimate
    max_price_micros: PriceMicros | None = None
    priority: int = Field(default=5, ge=0, le=9)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_s: float = Field(gt=0.0, le=MAX_TIMEOUT_S)
    deadline: UtcDateTime | None = None
    #: For sharded jobs: the input and which shard of how many this task reads.
    input: ObjectRef | None = None
    shard: tuple[Count, Count] | None = None
    #: How its results are verified (``events.verification``); absent means none.
    verify: VerifyPolicy | None = Field(default=None, exclude_if=lambda v: v is None)


class TaskLeased(EventModel):
    """The scheduler gave the task to one provider until ``expires_at`` unless it starts."""

    type: Literal["TaskLeased"] = "TaskLeased"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    attempt: int = Field(ge=1, le=MAX_COUNT)
    expires_at: UtcDateTime
    predicted_s: Seconds = 0.0
    #: The prediction's interval (p10 to p90): absent in leases made before intervals existed.
    predicted_low_s: Seconds | None = Field(default=None, exclude_if=lambda v: v is None)
    predicted_high_s: Seconds | None = Field(default=None, exclude_if=lambda v: v is None)
    price_micros: PriceMicros = 0
    #: The last checkpoint of an earlier attempt: the provider resumes from it, not from zero.
    resume_from: ObjectRef | None = None
    resume_step: Count = 0


class TaskStarted(EventModel):
    """The lease holder started running the task; the lease now lasts the task's timeout."""

    type: Literal["TaskStarted"] = "TaskStarted"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    expires_at: UtcDateTime


class TaskProgressed(EventModel):
    """The lease holder reported progress, and perhaps a checkpoint to resume from."""

    type: Literal["TaskProgressed"] = "TaskProgressed"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    fraction: float = Field(ge=0.0, le=1.0)
    rate: float = Field(default=0.0, ge=0.0, le=MAX_MEASURE)
    unit: str = Field(default="steps", max_length=32)
    message: str = Field(default="", max_length=500)
    checkpoint: ObjectRef | None = None
    checkpoint_step: Count = 0


class TaskCompleted(EventModel):
    """The lease holder finished the task; the first valid completion wins."""

    type: Literal["TaskCompleted"] = "TaskCompleted"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    result: ResultRef
    gpu_ms: GpuMs
    metrics: FloatMap = Field(default_factory=dict)
    #: For a verified task: how many results agreed with this (the canonical) one. The lease named is
    #: the canonical result's; every replica is paid by its own ``TaskResultJudged``. Absent (0) when
    #: the result was not checked.
    verified_by: int = Field(default=0, ge=0, le=MAX_REPLICAS, exclude_if=lambda n: n == 0)
    #: The spot-check draw that let this result through unchecked, when the task was under ``spot``.
    spot: SpotDraw | None = Field(default=None, exclude_if=lambda v: v is None)


class TaskResultReturned(EventModel):
    """A lease holder's result, held in escrow until verification settles; it is not yet the task's.

    ``agrees_with`` names the earlier results of this task (by lease) that this one agrees with,
    compared element by element (``events.verification.agree``). The task is queued again for
    another provider unless this result settles the verification (then ``TaskResultJudged`` for
    every result follows at once).
    """

    type: Literal["TaskResultReturned"] = "TaskResultReturned"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    result: ResultRef
    #: Billed as a completion would be (``events.metering``), at the lease's price: held, not paid.
    gpu_ms: GpuMs
    price_micros: PriceMicros = 0
    metrics: FloatMap = Field(default_factory=dict)
    replica: int = Field(ge=1, le=MAX_REPLICAS)
    agrees_with: list[Id] = Field(default_factory=list, max_length=MAX_REPLICAS)
    #: What settles it: at least ``replicas`` results, ``quorum`` of them agreeing.
    replicas: int = Field(ge=1, le=MAX_REPLICAS)
    quorum: int = Field(ge=1, le=MAX_REPLICAS)
    #: The spot-check draw that sent this result to be checked (for the first result under ``spot``).
    spot: SpotDraw | None = None


class TaskResultJudged(EventModel):
    """The verdict on one returned result: ``valid`` is paid, ``invalid`` earns nothing and costs its
    provider trust and reputation, ``inconclusive`` (no quorum, or the task ended first) earns nothing
    and costs nothing."""

    type: Literal["TaskResultJudged"] = "TaskResultJudged"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    verdict: Literal["valid", "invalid", "inconclusive"]
    #: The lease of the canonical result it was judged against (None when there is none).
    canonical: Id | None = None
    #: The result's billed GPU time (as returned): paid when valid, forfeited otherwise.
    gpu_ms: GpuMs = 0
    reason: str = Field(default="", max_length=500)


class TaskFailed(EventModel):
    """An attempt failed; ``terminal`` means no retry is left and the task is dead."""

    type: Literal["TaskFailed"] = "TaskFailed"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id | None = None
    provider_id: Id | None = None
    reason: FailureReason
    message: str = Field(default="", max_length=2000)
    attempt: int = Field(ge=0, le=MAX_COUNT)
    terminal: bool


class TaskRetried(EventModel):
    """After a failure the task waits until ``not_before`` and is then queued again."""

    type: Literal["TaskRetried"] = "TaskRetried"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    failures: int = Field(ge=1, le=MAX_COUNT)
    not_before: UtcDateTime


class TaskQueued(EventModel):
    """The task waits for a provider again (after a retry backoff)."""

    type: Literal["TaskQueued"] = "TaskQueued"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId


class TaskLeaseExpired(EventModel):
    """The lease ended without a result; the task is queued again."""

    type: Literal["TaskLeaseExpired"] = "TaskLeaseExpired"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    reason: LeaseEndReason


class TaskCancelled(EventModel):
    """The task will not run (again): its job was cancelled, failed, or missed its deadline."""

    type: Literal["TaskCancelled"] = "TaskCancelled"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    reason: str = Field(default="", max_length=2000)
    lease_id: Id | None = None
    provider_id: Id | None = None


class TaskResultRejected(EventModel):
    """A report was refused: it came from a provider without the current lease, or too late."""

    type: Literal["TaskResultRejected"] = "TaskResultRejected"
    v: Literal[1] = 1
    at: UtcDateTime
    task_id: TaskId
    lease_id: str = Field(max_length=64)
    provider_id: str = Field(max_length=64)
    report: Literal["started", "progress", "completed", "failed"]
    reason: str = Field(max_length=500)
    #: The report names a lease this provider was given for this task, which has since ended (expired,
    #: revoked, cancelled, or another report won): a race, not a fault. A report that is not late
    #: names a lease the sender never held, or carries another identity's object: it costs the
    #: sender reputation (``events.reputation``). Added after v1 shipped, so it is stored only when
    #: true: a log written before it encodes (and chains) byte for byte as it did.
    late: bool = Field(default=False, exclude_if=lambda late: not late)
