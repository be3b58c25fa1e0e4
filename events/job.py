"""Job events, the job spec, and the ledger events that settle a job's bill."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from events.types import (
    MAX_TIMEOUT_S,
    EventModel,
    GpuMs,
    Id,
    JobId,
    JsonObject,
    JsonValue,
    Micros,
    ObjectRef,
    PriceMicros,
    Resources,
    RetryPolicy,
    Seconds,
    StrMap,
    TaskId,
    TotalGpuMs,
    UtcDateTime,
)
from events.verification import VerifyPolicy

__all__ = [
    "ENDED_JOB_STATES",
    "MAX_JOB_GPU_S",
    "MAX_PARAM_SETS",
    "MAX_TASKS_PER_JOB",
    "UNBOUNDED_TASKS",
    "CountSplit",
    "JobAccepted",
    "JobCancelled",
    "JobCompleted",
    "JobDeadlineMissed",
    "JobFailed",
    "JobRejected",
    "JobSpec",
    "JobSubmitted",
    "ParamsSplit",
    "ProviderCredited",
    "ShardSplit",
    "Split",
    "SubmitterCharged",
    "UsageMetered",
]

#: The most tasks one job may have. Accepting a job costs the same whatever its count: its tasks are
#: created in windows as capacity frees up (``actors.window``).
MAX_TASKS_PER_JOB = 10_000_000
#: The most parameter sets a ``params`` split may list (each is in the submission itself).
MAX_PARAM_SETS = 100_000
#: Jobs of more tasks than this must also bound their worst-case total GPU time (``JobSpec.worst_gpu_s``)
#: by ``MAX_JOB_GPU_S``, so that no bill can overflow (jobs up to it were accepted before that rule).
UNBOUNDED_TASKS = 100_000
#: The most GPU-seconds a job of more than ``UNBOUNDED_TASKS`` tasks may be billed, at worst.
MAX_JOB_GPU_S = 10**11


class CountSplit(EventModel):
    """``count`` tasks with the same parameters; each task also gets its ``index``."""

    kind: Literal["count"] = "count"
    count: int = Field(default=1, ge=1, le=MAX_TASKS_PER_JOB)


class ParamsSplit(EventModel):
    """One task per parameter set; each set is merged over the job's ``params``."""

    kind: Literal["params"] = "params"
    params: list[JsonObject] = Field(min_length=1, max_length=MAX_PARAM_SETS)


class ShardSplit(EventModel):
    """``shards`` tasks over one input in the object store; task i gets shard i of n."""

    kind: Literal["shards"] = "shards"
    input: ObjectRef
    shards: int = Field(ge=1, le=MAX_TASKS_PER_JOB)


Split = Annotated[CountSplit | ParamsSplit | ShardSplit, Field(discriminator="kind")]


class JobSpec(EventModel):
    """Everything a submitter says about a job, written once for any GPU."""

    workload: str = Field(min_length=1, max_length=64)
    params: JsonObject = Field(default_factory=dict)
    split: Split = Field(default_factory=CountSplit)
    resources: Resources = Field(default_factory=Resources)
    #: Price ceiling in micro-credits per GPU-second; None accepts any price.
    max_price_micros: PriceMicros | None = None
    deadline: UtcDateTime | None = None
    #: What a missed deadline does to the unfinished tasks: fail the job, or cancel it.
    on_deadline: Literal["fail", "cancel"] = "cancel"
    priority: int = Field(default=5, ge=0, le=9)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    #: Per-attempt limit on a task's runtime, seconds.
    timeout_s: float = Field(default=600.0, gt=0.0, le=MAX_TIMEOUT_S)
    #: Who submitted it: set by the network from the sender's credentials. A body may leave it out
    #: (or repeat the sender's own name); naming anyone else is refused.
    submitter: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.@-]{0,127})?$")
    labels: StrMap = Field(default_factory=dict, max_length=32)
    #: How results are verified (``events.verification``); left out, the network's default applies.
    #: Stored only when given, so a log written before verification existed encodes as it did.
    verify: VerifyPolicy | None = Field(default=None, exclude_if=lambda v: v is None)

    def task_count(self) -> int:
        """How many tasks this job splits into."""
        if isinstance(self.split, CountSplit):
            return self.split.count
        if isinstance(self.split, ParamsSplit):
            return len(self.split.params)
        return self.split.shards

    def worst_gpu_s(self, replicas: int = 1) -> float:
        """The most GPU-seconds its tasks could be billed: each at most its timeout, per valid result."""
        return self.task_count() * self.timeout_s * replicas

    def task_params(self, index: int) -> dict[str, JsonValue]:
        """The parameters of task ``index``: deterministic, so task creation can be replayed."""
        if isinstance(self.split, ParamsSplit):
            return {**self.params, **self.split.params[index]}
        return dict(self.params)


#: The states in which a job has ended (the one definition: deciders, reactions, client and read models).
ENDED_JOB_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class JobSubmitted(EventModel):
    """A submitter asked for a job; not yet validated against the workload catalogue."""

    type: Literal["JobSubmitted"] = "JobSubmitted"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    spec: JobSpec


class JobAccepted(EventModel):
    """The job is valid; it splits into ``task_count`` tasks, ids ``<job_id>.<index>`` (see ``task_id_of``)."""

    type: Literal["JobAccepted"] = "JobAccepted"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    task_count: int = Field(ge=1, le=MAX_TASKS_PER_JOB)
    #: Seconds from acceptance until the whole job should be done: the queue ahead of it, then its
    #: tasks on the slots that can run them (``events.estimates.forecast``).
    predicted_s: Seconds = 0.0
    #: That prediction's interval (p10 to p90): absent in acceptances before intervals existed.
    predicted_low_s: Seconds | None = Field(default=None, exclude_if=lambda v: v is None)
    predicted_high_s: Seconds | None = Field(default=None, exclude_if=lambda v: v is None)
    #: The verification policy its tasks run under: the spec's, or the network's default at the time.
    #: None (and absent from the log) means none, as for every job accepted before it existed.
    verify: VerifyPolicy | None = Field(default=None, exclude_if=lambda v: v is None)


class JobRejected(EventModel):
    """The job was refused; ``field`` names what was wrong with it."""

    type: Literal["JobRejected"] = "JobRejected"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    reason: str = Field(max_length=2000)
    field: str | None = None


class UsageMetered(EventModel):
    """One task of the job completed: its GPU time, its price, and what it cost."""

    type: Literal["UsageMetered"] = "UsageMetered"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    task_id: TaskId
    provider_id: Id
    submitter: str
    gpu_ms: GpuMs
    price_micros: PriceMicros
    amount_micros: Micros
    #: For a verified task, which of its valid results this pays (one ``UsageMetered`` each); absent
    #: for an unverified task, whose one completion is the only thing to pay.
    lease_id: Id | None = Field(default=None, exclude_if=lambda v: v is None)


class JobCompleted(EventModel):
    """Every task completed."""

    type: Literal["JobCompleted"] = "JobCompleted"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    tasks: int = Field(ge=0, le=MAX_TASKS_PER_JOB)
    gpu_ms: TotalGpuMs
    cost_micros: Micros


class JobFailed(EventModel):
    """A task is dead, so the job failed; the remaining tasks were cancelled."""

    type: Literal["JobFailed"] = "JobFailed"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    reason: str = Field(max_length=2000)
    task_id: TaskId | None = None


class JobCancelled(EventModel):
    """The submitter cancelled the job, or its deadline passed under the cancel policy."""

    type: Literal["JobCancelled"] = "JobCancelled"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    reason: str = Field(default="", max_length=2000)


class JobDeadlineMissed(EventModel):
    """The deadline passed before the job finished; unfinished tasks are cancelled."""

    type: Literal["JobDeadlineMissed"] = "JobDeadlineMissed"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    deadline: UtcDateTime
    unfinished: int = Field(ge=0, le=MAX_TASKS_PER_JOB)


class SubmitterCharged(EventModel):
    """The ledger's debit: the submitter pays for the job's metered usage."""

    type: Literal["SubmitterCharged"] = "SubmitterCharged"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    submitter: str
    amount_micros: Micros
    gpu_ms: TotalGpuMs


class ProviderCredited(EventModel):
    """The ledger's credit: a provider earns what its share of the job's usage cost."""

    type: Literal["ProviderCredited"] = "ProviderCredited"
    v: Literal[1] = 1
    at: UtcDateTime
    job_id: JobId
    provider_id: Id
    amount_micros: Micros
    gpu_ms: TotalGpuMs
