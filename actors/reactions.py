"""Reactions (process managers): the events of one aggregate become commands for another.

``react`` answers one new event; ``reconcile`` looks at the whole world after a restart and issues
whatever is still owed. Both derive command ids from the cause, so a command issued twice (by a
reaction and again by reconciliation, or by two restarts) is applied once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.ids import derive_id
from actors.job import ENDED, CompleteJob, DecideJob, FailJob, MeterUsage, SettleJob, Share, unsettled
from actors.task import TERMINAL, CancelTask, CreateTask, ExpireLease, TaskState
from actors.world import LIVE_LEASE, Change, World
from events.estimates import Prediction
from events.job import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSpec,
    JobSubmitted,
    ShardSplit,
    UsageMetered,
)
from events.provider import ProviderLeft, ProviderLost
from events.subjects import task_id_of
from events.task import LeaseEndReason, TaskCompleted, TaskCreated, TaskFailed
from events.verification import VerifyPolicy
from events.workloads import contract, validate_params

__all__ = ["Intent", "create_task", "plan_task", "react", "reconcile", "task_id_of"]


@dataclass(frozen=True, slots=True)
class Intent:
    """Run ``command`` on aggregate ``kind.aggregate_id``, caused by event ``causation``."""

    kind: str
    aggregate_id: str
    command: Any
    causation: str | None = None
    correlation: str | None = None


def plan_task(job_id: str, spec: JobSpec, index: int, at: datetime, verify: VerifyPolicy | None = None) -> TaskCreated:
    """The ``TaskCreated`` of task ``index`` of a job: parameters, estimate, input shard."""
    params = spec.task_params(index)
    estimate = contract(spec.workload).estimate(validate_params(spec.workload, params))
    shard = None
    input_ref = None
    if isinstance(spec.split, ShardSplit):
        input_ref = spec.split.input
        shard = (index, spec.split.shards)
    return TaskCreated(
        at=at,
        task_id=task_id_of(job_id, index),
        job_id=job_id,
        index=index,
        submitter=spec.submitter,
        workload=spec.workload,
        params=params,
        resources=spec.resources,
        estimate=estimate,
        max_price_micros=spec.max_price_micros,
        priority=spec.priority,
        retry=spec.retry,
        timeout_s=spec.timeout_s,
        deadline=spec.deadline,
        input=input_ref,
        shard=shard,
        verify=verify,
    )


def create_task(
    job_id: str, spec: JobSpec, index: int, at: datetime, cause: str | None, verify: VerifyPolicy | None = None
) -> Intent:
    """The command that creates task ``index`` of a job (its id is derived: creating twice is a no-op).

    A job's tasks are created as its submitter's window frees up (``actors.window``), not all at once
    when it is accepted.
    """
    created = plan_task(job_id, spec, index, at, verify)
    cmd = CreateTask(command_id=derive_id("ct-", job_id, index), at=at, created=created)
    return Intent("task", created.task_id, cmd, cause, job_id)


def _meter(task_id: str, t: TaskState, at: datetime, cause: str | None) -> Intent | None:
    if t.spec is None:
        return None
    if t.candidates:
        # A verified task: every valid result is paid, at its own lease's price; none other is.
        shares = tuple(
            Share(c.lease_id, c.provider_id, c.gpu_ms, c.price_micros) for c in t.candidates if c.verdict == "valid"
        )
        canon = next((c for c in t.candidates if c.lease_id == t.completed_lease), None)
        if not shares or canon is None:
            return None
        cmd = MeterUsage(
            command_id=derive_id("mu-", task_id),
            at=at,
            task_id=task_id,
            provider_id=canon.provider_id,
            gpu_ms=canon.gpu_ms,
            price_micros=canon.price_micros,
            shares=shares,
        )
        return Intent("job", t.spec.job_id, cmd, cause, t.spec.job_id)
    if t.lease is None:
        return None
    cmd = MeterUsage(
        command_id=derive_id("mu-", task_id),
        at=at,
        task_id=task_id,
        provider_id=t.lease.provider_id,
        gpu_ms=t.gpu_ms,
        price_micros=t.lease.price_micros,
    )
    return Intent("job", t.spec.job_id, cmd, cause, t.spec.job_id)


def _cancel(task_id: str, job_id: str, at: datetime, why: str, cause: str | None) -> Intent:
    return Intent("task", task_id, CancelTask(command_id=derive_id("cx-", task_id), at=at, reason=why), cause, job_id)


def _expire(task_id: str, t: TaskState, reason: LeaseEndReason, at: datetime, cause: str | None) -> Intent | None:
    if t.lease is None:
        return None
    lease_id = t.lease.lease_id
    cmd = ExpireLease(command_id=derive_id("pl-", lease_id, reason), at=at, lease_id=lease_id, reason=reason)
    return Intent("task", task_id, cmd, cause, t.spec.job_id if t.spec else None)


#: The scheduler's ETA for a job (its spec, the time, its id), recorded in ``JobAccepted`` (None: no
#: prediction).
Predict = Callable[[JobSpec, datetime, str], Prediction | None]


def _no_prediction(spec: JobSpec, at: datetime, job_id: str) -> Prediction | None:
    return None


def _decide(
    job_id: str, at: datetime, predict: Predict, spec: JobSpec, cause: str | None, verify: VerifyPolicy | None
) -> Intent:
    eta = predict(spec, at, job_id)
    cmd = DecideJob(
        command_id=derive_id("dj-", job_id),
        at=at,
        predicted_s=eta.seconds if eta is not None else 0.0,
        predicted_low_s=eta.low if eta is not None else None,
        predicted_high_s=eta.high if eta is not None else None,
        default_verify=verify,
    )
    return Intent("job", job_id, cmd, cause, job_id)


def _settle(job_id: str, metered: int, at: datetime, cause: str | None) -> Intent:
    return Intent("job", job_id, SettleJob(command_id=derive_id("st-", job_id, metered), at=at), cause, job_id)


def _complete(job_id: str, at: datetime, cause: str | None) -> Intent:
    return Intent("job", job_id, CompleteJob(command_id=derive_id("cj-", job_id), at=at), cause, job_id)


def react(
    change: Change, world: World, predict: Predict = _no_prediction, default_verify: VerifyPolicy | None = None
) -> list[Intent]:
    """Commands owed because of one event (already applied to ``world``); ``default_verify`` is the
    network's verification policy for jobs that name none."""
    e = change.event
    cause = change.envelope.id
    out: list[Intent] = []
    match e:
        case JobSubmitted():
            out.append(_decide(e.job_id, e.at, predict, e.spec, cause, default_verify))
        case UsageMetered():
            job = world.jobs[e.job_id]
            if job.status == "accepted" and len(job.done) >= job.task_count:
                out.append(_complete(e.job_id, e.at, cause))
            elif job.status in ENDED:
                out.append(_settle(e.job_id, len(job.metered), e.at, cause))  # a late completion
        case TaskCompleted():
            t = world.tasks[change.aggregate_id]
            if (m := _meter(change.aggregate_id, t, e.at, cause)) is not None:
                out.append(m)
        case TaskFailed() if e.terminal:
            t = world.tasks[change.aggregate_id]
            if t.spec is not None:
                cmd = FailJob(
                    command_id=derive_id("fj-", change.aggregate_id),
                    at=e.at,
                    task_id=change.aggregate_id,
                    reason=f"task {change.aggregate_id} failed: {e.reason}: {e.message}"[:2000],
                )
                out.append(Intent("job", t.spec.job_id, cmd, cause, t.spec.job_id))
        case TaskCreated():
            owner = world.jobs.get(e.job_id)
            if owner is not None and owner.status in ("completed", "failed", "cancelled"):
                out.append(_cancel(e.task_id, e.job_id, e.at, f"job {owner.status}", cause))
        case JobCompleted() | JobFailed() | JobCancelled():
            ended = world.jobs[change.aggregate_id]
            if unsettled(ended):
                out.append(_settle(change.aggregate_id, len(ended.metered), e.at, cause))
            why = f"job {ended.status}"
            for task_id in world.job_tasks(change.aggregate_id):
                if world.tasks[task_id].status not in TERMINAL:
                    out.append(_cancel(task_id, change.aggregate_id, e.at, why, cause))
        case ProviderLost() | ProviderLeft():
            reason: LeaseEndReason = "provider_lost" if isinstance(e, ProviderLost) else "provider_left"
            for task_id in sorted(world.active.get(change.aggregate_id, ())):
                if (x := _expire(task_id, world.tasks[task_id], reason, e.at, cause)) is not None:
                    out.append(x)
    return out


def reconcile(
    world: World, at: datetime, predict: Predict = _no_prediction, default_verify: VerifyPolicy | None = None
) -> list[Intent]:
    """Everything owed in ``world`` as it stands: what reactions would have issued, had none been lost."""
    out: list[Intent] = []
    for job_id, job in world.jobs.items():
        if job.status == "submitted" and job.spec is not None:
            out.append(_decide(job_id, at, predict, job.spec, None, default_verify))
        if job.status == "accepted" and len(job.done) >= job.task_count > 0:
            out.append(_complete(job_id, at, None))
        if job.status in ENDED and unsettled(job):
            out.append(_settle(job_id, len(job.metered), at, None))
        if job.status in ("completed", "failed", "cancelled"):
            for task_id in world.job_tasks(job_id):
                if world.tasks[task_id].status not in TERMINAL:
                    out.append(_cancel(task_id, job_id, at, f"job {job.status}", None))
    for task_id, t in world.tasks.items():
        if t.spec is None:
            continue
        owner = world.jobs.get(t.spec.job_id)
        if t.status == "completed" and owner is not None and task_id not in owner.done:
            if (m := _meter(task_id, t, at, None)) is not None:
                out.append(m)
        elif t.status == "dead" and owner is not None and owner.status == "accepted":
            cmd = FailJob(command_id=derive_id("fj-", task_id), at=at, task_id=task_id, reason=f"task {task_id} died")
            out.append(Intent("job", t.spec.job_id, cmd, None, t.spec.job_id))
    for provider_id, p in world.providers.items():
        if p.status in ("lost", "left"):
            reason: LeaseEndReason = "provider_lost" if p.status == "lost" else "provider_left"
            for task_id in sorted(world.active.get(provider_id, ())):
                t = world.tasks[task_id]
                if t.status in LIVE_LEASE and (x := _expire(task_id, t, reason, at, None)) is not None:
                    out.append(x)
    return out
