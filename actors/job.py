"""The job aggregate: submitted, accepted or rejected, metered task by task, ended, and settled.

Every hot step is one event (one JetStream publish): submitted, then a decision (accepted or
rejected), then one ``UsageMetered`` per completed task, then completed. Only settlement writes
several events at once, atomically, after the job ended: the ledger is double-entry, and each
``SubmitterCharged`` is appended together with the ``ProviderCredited`` events it pays for. A late
completion metered after the end is settled the same way, for its delta.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from pyrsistent import PMap, PSet, pmap, pset

from actors.decider import Decider
from actors.errors import DuplicateJob, NotYours, UnknownAggregate
from events.errors import InvalidPayload
from events.job import (
    ENDED_JOB_STATES,
    MAX_JOB_GPU_S,
    UNBOUNDED_TASKS,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadlineMissed,
    JobFailed,
    JobRejected,
    JobSpec,
    JobSubmitted,
    ParamsSplit,
    ProviderCredited,
    ShardSplit,
    SubmitterCharged,
    UsageMetered,
)
from events.metering import metered_amount
from events.placement import bad_specifier
from events.subjects import OBJECTS_STREAM, job_owner, object_owner
from events.types import MAX_SECONDS, EventModel, recorded_seconds
from events.verification import MAX_REPLICAS, VerifyPolicy
from events.workloads import WORKLOADS, contract, validate_params

__all__ = [
    "ENDED",
    "CancelJob",
    "CompleteJob",
    "DecideJob",
    "FailJob",
    "JobCommand",
    "JobState",
    "JobStatus",
    "MeterUsage",
    "MissDeadline",
    "SettleJob",
    "SubmitJob",
    "job_decider",
    "metered_amount",
    "owned_spec",
    "unsettled",
    "validate_spec",
]

JobStatus = Literal["none", "submitted", "accepted", "rejected", "completed", "failed", "cancelled"]
ACTIVE = "accepted"
ENDED = ENDED_JOB_STATES


@dataclass(frozen=True, slots=True)
class JobState:
    """The job as its decider sees it."""

    status: JobStatus = "none"
    job_id: str = ""
    spec: JobSpec | None = None
    task_count: int = 0
    #: Every ``UsageMetered``, keyed by task (and lease, for a verified task's results). Persistent
    #: (``pyrsistent``): each metering shares the rest, so folding a job of n tasks costs n log n, not
    #: the n^2 of copying a dict per task.
    metered: PMap[str, UsageMetered] = field(default_factory=pmap)
    #: The tasks metered so far (persistent, as ``metered``).
    done: PSet[str] = field(default_factory=pset)
    #: The verification policy its tasks run under (from ``JobAccepted``).
    verify: VerifyPolicy | None = None
    #: (micros, gpu_ms) already charged and credited per provider: a settlement charges only the delta.
    settled: dict[str, tuple[int, int]] = field(default_factory=dict)
    deadline_missed: bool = False
    submitted_at: datetime | None = None
    predicted_s: float = 0.0


# ---- commands --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Command:
    command_id: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitJob(_Command):
    """A submitter's job, as received; ``submitter`` is who sent it (their credentials), if known."""

    job_id: str
    spec: JobSpec
    submitter: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DecideJob(_Command):
    """Accept the submitted job, or reject it naming the field; ``predicted_s`` is the scheduler's ETA.

    ``default_verify`` is the network's verification policy for a spec that names none (its
    configuration at the time, recorded in ``JobAccepted``).
    """

    predicted_s: float = 0.0
    #: The prediction's interval; None: none.
    predicted_low_s: float | None = None
    predicted_high_s: float | None = None
    default_verify: VerifyPolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompleteJob(_Command):
    """Every task is metered: the job is complete."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SettleJob(_Command):
    """The job ended: charge the submitter and credit the providers for what is not settled yet."""


@dataclass(frozen=True, slots=True)
class Share:
    """One valid result of a verified task, to be paid: its lease, provider, billed time and price."""

    lease_id: str
    provider_id: str
    gpu_ms: int
    price_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterUsage(_Command):
    """A task of this job completed on a provider, at the lease's price.

    For a verified task, ``shares`` lists every valid result, each metered (and later paid) on its
    own; the single provider fields are then the canonical result's.
    """

    task_id: str
    provider_id: str
    gpu_ms: int
    price_micros: int
    shares: tuple[Share, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FailJob(_Command):
    """A task of this job is dead."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelJob(_Command):
    """The submitter cancels; ``requester`` is who asked (their credentials), if known."""

    reason: str = ""
    requester: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MissDeadline(_Command):
    """The deadline timer fired."""


JobCommand = SubmitJob | DecideJob | MeterUsage | CompleteJob | SettleJob | FailJob | CancelJob | MissDeadline


# ---- validation ------------------------------------------------------------------------------------


def validate_spec(spec: JobSpec, at: datetime) -> InvalidPayload | None:
    """What is wrong with the spec beyond its schema, or None: the workload, its params, the split."""
    try:
        c = contract(spec.workload)
        # Every task's parameters when they differ per task; once when they are all the same.
        for i in range(spec.task_count() if spec.split.kind == "params" else 1):
            validate_params(spec.workload, spec.task_params(i))
    except InvalidPayload as e:
        return e
    if c.requires_cuda and spec.resources.backend != "cuda":
        return InvalidPayload(
            f"workload {spec.workload} runs only on CUDA providers: set resources.backend to 'cuda'",
            field="resources.backend",
        )
    for name, specifier in sorted(spec.resources.packages.items()):
        problem = bad_specifier(specifier)
        if problem is not None:
            return InvalidPayload(problem, field=f"resources.packages.{name}")
    if isinstance(spec.split, ShardSplit) and spec.split.shards > max(1, spec.split.input.size):
        return InvalidPayload("more shards than input bytes", field="split.shards")
    if spec.task_count() > UNBOUNDED_TASKS:
        # Every bill stays within 64 bits: a huge job bounds its worst case (each task billed at most
        # its timeout, for each result verification may pay).
        if spec.verify is None:
            replicas = MAX_REPLICAS  # the network's default policy applies, whatever it is
        else:
            replicas = 1 if spec.verify.mode == "none" else spec.verify.max_replicas
        if spec.worst_gpu_s(replicas) > MAX_JOB_GPU_S:
            return InvalidPayload(
                f"{spec.task_count():,} tasks of up to {spec.timeout_s:g} s each (x{replicas} results) could "
                f"bill {spec.worst_gpu_s(replicas):.3g} GPU-seconds, over the {MAX_JOB_GPU_S:.0e} a job may: "
                "lower timeout_s, or split the job",
                field="timeout_s",
            )
    if spec.deadline is not None and spec.deadline <= at:
        return InvalidPayload("deadline is already past", field="deadline")
    if spec.verify is not None and spec.verify.mode in ("replicate", "spot") and c.compare == "none":
        return InvalidPayload(
            f"workload {spec.workload}'s results cannot be compared, so they cannot be verified: "
            "set verify.mode to none (or auto)",
            field="verify.mode",
        )
    return None


# ---- decide ----------------------------------------------------------------------------------------


def initial_state() -> JobState:
    """A job that does not exist yet."""
    return JobState()


def unsettled(s: JobState) -> bool:
    """True when some metered usage is not yet charged and credited."""
    return any(_deltas(s).values())


def _deltas(s: JobState) -> dict[str, tuple[int, int]]:
    owed: dict[str, tuple[int, int]] = {}
    for m in s.metered.values():
        amount, gpu = owed.get(m.provider_id, (0, 0))
        owed[m.provider_id] = (amount + m.amount_micros, gpu + m.gpu_ms)
    deltas: dict[str, tuple[int, int]] = {}
    for p in sorted(owed):
        done_amount, done_gpu = s.settled.get(p, (0, 0))
        d = (owed[p][0] - done_amount, owed[p][1] - done_gpu)
        if d[0] > 0 or d[1] > 0:
            deltas[p] = d
    return deltas


def _settle(s: JobState, at: datetime) -> list[EventModel]:
    """Charge the submitter and credit each provider for whatever is metered but not yet settled."""
    deltas = _deltas(s)
    if not deltas or s.spec is None:
        return []
    out: list[EventModel] = [
        SubmitterCharged(
            at=at,
            job_id=s.job_id,
            submitter=s.spec.submitter,
            amount_micros=sum(d[0] for d in deltas.values()),
            gpu_ms=sum(d[1] for d in deltas.values()),
        )
    ]
    out += [
        ProviderCredited(at=at, job_id=s.job_id, provider_id=p, amount_micros=d[0], gpu_ms=d[1])
        for p, d in deltas.items()
    ]
    return out


def _policy(spec: JobSpec, default: VerifyPolicy | None) -> VerifyPolicy | None:
    """The policy the job's tasks run under: the spec's, else the network's; None when it is none."""
    policy = spec.verify if spec.verify is not None else default
    if policy is None or policy.mode == "none":
        return None
    c = WORKLOADS.get(spec.workload)
    if c is not None and c.compare == "none":
        return None  # nothing to compare: validate_spec refused an explicit request already
    return policy


def _usage(
    s: JobState,
    spec: JobSpec,
    task_id: str,
    provider_id: str,
    gpu_ms: int,
    price_micros: int,
    lease_id: str | None,
    at: datetime,
) -> UsageMetered:
    return UsageMetered(
        at=at,
        job_id=s.job_id,
        task_id=task_id,
        provider_id=provider_id,
        submitter=spec.submitter,
        gpu_ms=gpu_ms,
        price_micros=price_micros,
        amount_micros=metered_amount(gpu_ms, price_micros),
        lease_id=lease_id,
    )


def owned_spec(cmd: SubmitJob) -> JobSpec:
    """The spec as the log records it: its ``submitter`` is the sender's identity, never the body's word.

    A body may leave ``submitter`` out or repeat the sender's name; naming anyone else is refused,
    and so is a job id whose owner part is not the sender.
    """
    who = cmd.submitter
    if who is None:
        return cmd.spec
    if cmd.spec.submitter not in ("", who):
        raise NotYours(f"names {cmd.spec.submitter!r}, but these credentials are {who!r}", field="submitter")
    owner = job_owner(cmd.job_id)
    if owner is not None and owner != who:
        raise NotYours(f"job {cmd.job_id!r} belongs to {owner!r}, not {who!r}", field="job_id")
    for path, name in _object_names(cmd.spec):
        if object_owner(name) != ("submitter", who):
            raise NotYours(f"object {name} is not one of {who!r}'s inputs", field=path)
    return cmd.spec.model_copy(update={"submitter": who})


def _object_names(spec: JobSpec) -> list[tuple[str, str]]:
    """(field path, name) of every object of this network's objects stream that the spec names."""
    found: list[tuple[str, str]] = []
    if isinstance(spec.split, ShardSplit) and spec.split.input.bucket == OBJECTS_STREAM:
        found.append(("split.input", spec.split.input.name))

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            if value.get("bucket") == OBJECTS_STREAM and isinstance(value.get("name"), str):
                found.append((path, value["name"]))
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}.{i}")

    walk(spec.params, "params")
    if isinstance(spec.split, ParamsSplit):
        walk(spec.split.params, "split.params")
    return found


def decide(cmd: JobCommand, s: JobState) -> list[EventModel]:
    """The events that ``cmd`` causes in state ``s``; raises a ``DomainError`` to refuse."""
    if isinstance(cmd, SubmitJob):
        owned = owned_spec(cmd)
        if s.spec is not None:
            if s.spec == owned:
                return []  # the same submission again
            raise DuplicateJob(cmd.job_id)
        return [JobSubmitted(at=cmd.at, job_id=cmd.job_id, spec=owned)]
    spec = s.spec
    if spec is None:
        raise UnknownAggregate("job", "")
    match cmd:
        case DecideJob():
            if s.status != "submitted":
                return []
            problem = validate_spec(spec, s.submitted_at or cmd.at)
            if problem is not None:
                return [JobRejected(at=cmd.at, job_id=s.job_id, reason=problem.problem, field=problem.field)]
            return [
                JobAccepted(
                    at=cmd.at,
                    job_id=s.job_id,
                    task_count=spec.task_count(),
                    predicted_s=min(MAX_SECONDS, max(0.0, cmd.predicted_s)),
                    predicted_low_s=recorded_seconds(cmd.predicted_low_s),
                    predicted_high_s=recorded_seconds(cmd.predicted_high_s),
                    verify=_policy(spec, cmd.default_verify),
                )
            ]
        case MeterUsage():
            if cmd.task_id in s.done or s.status in ("submitted", "rejected"):
                return []
            if not cmd.shares:
                return [_usage(s, spec, cmd.task_id, cmd.provider_id, cmd.gpu_ms, cmd.price_micros, None, cmd.at)]
            return [
                _usage(s, spec, cmd.task_id, x.provider_id, x.gpu_ms, x.price_micros, x.lease_id, cmd.at)
                for x in cmd.shares
            ]
        case CompleteJob():
            if s.status != ACTIVE or len(s.done) < s.task_count:
                return []
            total_ms = sum(m.gpu_ms for m in s.metered.values())
            total = sum(m.amount_micros for m in s.metered.values())
            return [JobCompleted(at=cmd.at, job_id=s.job_id, tasks=s.task_count, gpu_ms=total_ms, cost_micros=total)]
        case SettleJob():
            return _settle(s, cmd.at) if s.status in ENDED else []
        case FailJob():
            if s.status != ACTIVE:
                return []
            return [JobFailed(at=cmd.at, job_id=s.job_id, reason=cmd.reason[:2000], task_id=cmd.task_id)]
        case CancelJob():
            if cmd.requester is not None and cmd.requester != spec.submitter:
                raise NotYours(f"job {s.job_id!r} is not {cmd.requester!r}'s to cancel")
            if s.status not in (ACTIVE, "submitted"):
                return []
            return [JobCancelled(at=cmd.at, job_id=s.job_id, reason=cmd.reason[:2000])]
        case MissDeadline():
            if s.status != ACTIVE or spec.deadline is None or cmd.at < spec.deadline:
                return []
            missed = JobDeadlineMissed(
                at=cmd.at, job_id=s.job_id, deadline=spec.deadline, unfinished=s.task_count - len(s.done)
            )
            ending: EventModel
            if spec.on_deadline == "fail":
                ending = JobFailed(at=cmd.at, job_id=s.job_id, reason="deadline missed")
            else:
                ending = JobCancelled(at=cmd.at, job_id=s.job_id, reason="deadline missed")
            return [missed, ending]
    raise TypeError(f"not a job command: {cmd!r}")


# ---- evolve ----------------------------------------------------------------------------------------


def evolve(s: JobState, e: EventModel) -> JobState:
    """The state after event ``e``."""
    match e:
        case JobSubmitted():
            return JobState(status="submitted", job_id=e.job_id, spec=e.spec, submitted_at=e.at)
        case JobAccepted():
            return replace(s, status="accepted", task_count=e.task_count, predicted_s=e.predicted_s, verify=e.verify)
        case JobRejected():
            return replace(s, status="rejected")
        case UsageMetered():
            key = e.task_id if e.lease_id is None else f"{e.task_id}@{e.lease_id}"
            return replace(s, metered=s.metered.set(key, e), done=s.done.add(e.task_id))
        case JobCompleted():
            return replace(s, status="completed")
        case JobFailed():
            return replace(s, status="failed")
        case JobCancelled():
            return replace(s, status="cancelled")
        case JobDeadlineMissed():
            return replace(s, deadline_missed=True)
        case ProviderCredited():
            amount, gpu = s.settled.get(e.provider_id, (0, 0))
            return replace(s, settled={**s.settled, e.provider_id: (amount + e.amount_micros, gpu + e.gpu_ms)})
    return s


def _decide(cmd: object, s: JobState) -> list[EventModel]:
    return decide(cmd, s)  # type: ignore[arg-type]


job_decider: Decider[JobCommand, JobState] = Decider(
    "job", initial_state, _decide, evolve, lambda c: isinstance(c, SubmitJob)
)
