"""What the orchestrator tells a provider (leases, revocations) and what a provider's heartbeat says.

Dispatch messages travel on ``gf.dispatch.<provider_id>`` (a work-queue stream); they are
notifications derived from the domain log, not facts: the fact is ``TaskLeased`` in the log. A lost
dispatch costs a lease expiry and a re-queue, never correctness.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from events.types import (
    MAX_COUNT,
    MAX_TIMEOUT_S,
    Count,
    EventModel,
    Id,
    JobId,
    JsonObject,
    ObjectRef,
    Seconds,
    TaskId,
    UtcDateTime,
)

__all__ = ["Dispatch", "Heartbeat", "LeaseGranted", "LeaseRevoked"]


class LeaseGranted(EventModel):
    """Run this task under this lease; report with ``lease_id`` to ``gf.in.task.<task_id>.report``."""

    type: Literal["LeaseGranted"] = "LeaseGranted"
    task_id: TaskId
    job_id: JobId
    lease_id: Id
    provider_id: Id
    attempt: int = Field(ge=1, le=MAX_COUNT)
    workload: str
    params: JsonObject
    timeout_s: float = Field(gt=0.0, le=MAX_TIMEOUT_S)
    expires_at: UtcDateTime
    predicted_s: Seconds = 0.0
    input: ObjectRef | None = None
    shard: tuple[Count, Count] | None = None
    #: Resume from this checkpoint (written by an earlier attempt) at this step.
    resume_from: ObjectRef | None = None
    resume_step: Count = 0


class LeaseRevoked(EventModel):
    """Stop this task: it was cancelled, or the lease ended. Report nothing more for it."""

    type: Literal["LeaseRevoked"] = "LeaseRevoked"
    task_id: TaskId
    lease_id: Id
    provider_id: Id
    reason: str = Field(default="", max_length=500)


Dispatch = Annotated[LeaseGranted | LeaseRevoked, Field(discriminator="type")]


class Heartbeat(EventModel):
    """The value a provider puts in the heartbeat KV bucket, key = provider id, every interval."""

    provider_id: Id
    at: UtcDateTime
    running: int = Field(ge=0, le=1024)
    slots: int = Field(ge=1, le=1024)
    draining: bool = False
