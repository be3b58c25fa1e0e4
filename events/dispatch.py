"""What the orchestrator tells a provider (leases, revocations) and what a provider's heartbeat says.

Dispatch messages travel on ``gf.dispatch.<provider_id>`` (a work-queue stream); they are
notifications derived from the domain log, not facts: the fact is ``TaskLeased`` in the log. A lost
dispatch costs a lease expiry and a re-queue, never correctness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
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

__all__ = [
    "MAX_DISPATCH_BATCH",
    "MAX_DISPATCH_BYTES",
    "START_REPORT_S",
    "Dispatch",
    "DispatchItem",
    "Heartbeat",
    "LeaseBatch",
    "LeaseGranted",
    "LeaseRevoked",
    "dispatch_messages",
    "start_report_delay",
]

#: Grants and revocations for one provider that travel in one dispatch message, at most...
MAX_DISPATCH_BATCH = 256
#: ...and the bytes of any dispatch message, at most: the dispatch stream's limit (``events.store.topology``).
MAX_DISPATCH_BYTES = 512 * 1024
#: A task still running this long after it began reports its start, which extends its lease to the
#: task's timeout. A shorter task's completion implies its start (the task decider takes a completion
#: from a leased task): one intake message and one durable event fewer per short task.
START_REPORT_S = 1.0


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


#: One grant or revocation.
DispatchItem = Annotated[LeaseGranted | LeaseRevoked, Field(discriminator="type")]


class LeaseBatch(EventModel):
    """Several grants and revocations for one provider, in one dispatch message, applied in order.

    The orchestrator sends one when a scheduling round leases several tasks to the same provider: one
    stream write and one delivery instead of one per task. Every item names the provider too; a
    provider ignores an item that names another (as it ignores a misrouted single message).
    """

    type: Literal["LeaseBatch"] = "LeaseBatch"
    provider_id: Id
    items: list[DispatchItem] = Field(min_length=1, max_length=MAX_DISPATCH_BATCH)


Dispatch = Annotated[LeaseGranted | LeaseRevoked | LeaseBatch, Field(discriminator="type")]


def dispatch_messages(items: Sequence[LeaseGranted | LeaseRevoked]) -> list[tuple[str, bytes, str]]:
    """``items`` as dispatch messages: ``(provider_id, body, Nats-Msg-Id)``, one per provider where it
    gets one item, else ``LeaseBatch``es of at most ``MAX_DISPATCH_BATCH`` items and
    ``MAX_DISPATCH_BYTES`` each, items in their given order.

    A single item's message id is its lease's (``<lease>.g`` or ``.r``), as it always was; a batch's is
    a digest of every item in it, so that a batch re-sent as it was is deduplicated by the stream and a
    differently grouped one (after a restart) is not.
    """
    by_provider: dict[str, list[tuple[LeaseGranted | LeaseRevoked, bytes]]] = {}
    for item in items:
        by_provider.setdefault(item.provider_id, []).append((item, item.model_dump_json().encode()))
    out: list[tuple[str, bytes, str]] = []
    for provider_id, encoded in by_provider.items():
        chunk: list[tuple[LeaseGranted | LeaseRevoked, bytes]] = []
        size = 0
        for item, body in encoded:
            if chunk and (len(chunk) == MAX_DISPATCH_BATCH or size + len(body) > _BATCH_ROOM):
                out.append(_message(provider_id, chunk))
                chunk, size = [], 0
            chunk.append((item, body))
            size += len(body) + 1
        out.append(_message(provider_id, chunk))
    return out


#: Room for a batch's items: its envelope (type, provider) is well under this margin.
_BATCH_ROOM = MAX_DISPATCH_BYTES - 1024


def _message(provider_id: str, chunk: list[tuple[LeaseGranted | LeaseRevoked, bytes]]) -> tuple[str, bytes, str]:
    if len(chunk) == 1:
        item, body = chunk[0]
        return provider_id, body, f"{item.lease_id}.{'g' if isinstance(item, LeaseGranted) else 'r'}"
    # The items as they were encoded, in one envelope (LeaseBatch's JSON, without encoding them again).
    body = b'{"type":"LeaseBatch","provider_id":%s,"items":[%s]}' % (
        json.dumps(provider_id).encode(),
        b",".join(b for _, b in chunk),
    )
    digest = hashlib.sha256(b"\n".join(b for _, b in chunk)).hexdigest()[:32]
    return provider_id, body, f"b.{digest}"


def start_report_delay(lease: LeaseGranted, now: datetime) -> float:
    """Seconds after it begins running ``lease`` that a provider reports the start, if the task is
    still running then: ``START_REPORT_S``, or sooner when the lease would expire unstarted before
    that (a quarter of the time it has left), so that a long task's lease is always extended."""
    left = (lease.expires_at - now).total_seconds()
    return max(0.0, min(START_REPORT_S, left / 4))


class Heartbeat(EventModel):
    """The value a provider puts in the heartbeat KV bucket, key = provider id, every interval."""

    provider_id: Id
    at: UtcDateTime
    running: int = Field(ge=0, le=1024)
    slots: int = Field(ge=1, le=1024)
    draining: bool = False
