"""Live progress: what a running task's provider says of it on core NATS, never stored, never an event.

Durable are only what recovery and billing need (leases, checkpoints, completions, failures). A
fraction done and a rate are worth only until the next one, like a heartbeat, so a provider publishes
them on ``gf.live.<submitter>.<job>.<index>.<provider>`` (``events.subjects.live_subject``) and the
job's watchers subscribe there. Losing one costs nothing: a resumed task starts from its last durable
checkpoint, which still goes through intake as a ``ProgressReport``.

The subject is the proof of who sent it (the server lets a provider publish only on subjects that
end in its own name) and of whose job it is about (only that submitter may subscribe). It is not
proof that the provider holds the task: a reader trusts a message only if its provider and lease are
the task's current lease as the log shows it (:func:`is_current`), and treats anything else as noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import Field, ValidationError

from events.envelope import Envelope
from events.errors import InvalidPayload, PayloadTooLarge, first_error
from events.subjects import live_sender
from events.task import TaskProgressed
from events.types import MAX_MEASURE, EventModel, Id, UtcDateTime

__all__ = [
    "LIVE_SOURCE",
    "MAX_LIVE_BYTES",
    "LiveProgress",
    "LiveUpdate",
    "decode_live",
    "is_current",
    "is_live",
    "live_envelope",
]

#: The largest live message a reader looks at; anything longer is dropped unread.
MAX_LIVE_BYTES = 1024
#: The CloudEvents ``source`` of the envelopes a reader makes of live progress (never of a stored event).
LIVE_SOURCE = "gf.live"
#: The task states in which a lease is current (its provider may be running it).
_HELD = frozenset({"leased", "running"})


class LiveProgress(EventModel):
    """Body of ``gf.live.<submitter>.<job>.<index>.<provider>``: how far the lease's run has got."""

    lease_id: Id
    fraction: float = Field(ge=0.0, le=1.0)
    rate: float = Field(default=0.0, ge=0.0, le=MAX_MEASURE)
    unit: str = Field(default="steps", max_length=32)
    message: str = Field(default="", max_length=200)
    #: The provider's clock: informative only (readers time a report by when it reached them).
    at: UtcDateTime


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    """A decoded live message: the task and provider its subject names, and what it says."""

    task_id: str
    provider_id: str
    progress: LiveProgress


def decode_live(subject: str, data: bytes) -> LiveUpdate:
    """Validate one live message; any problem raises ``InvalidPayload`` naming the field."""
    if len(data) > MAX_LIVE_BYTES:
        raise PayloadTooLarge(len(data), MAX_LIVE_BYTES, "body")
    sender = live_sender(subject)
    if sender is None:
        raise InvalidPayload(f"not a live progress subject: {subject[:200]!r}", field="subject")
    try:
        body = LiveProgress.model_validate_json(data)
    except ValidationError as e:
        raise first_error(e) from e
    return LiveUpdate(task_id=sender[0], provider_id=sender[1], progress=body)


def is_current(update: LiveUpdate, *, status: str, lease_id: str | None, provider_id: str | None) -> bool:
    """May a reader show ``update``? Only if it comes from the task's current lease (``lease_id`` and
    ``provider_id`` as the log shows them) while the task holds one (``status`` leased or running)."""
    return (
        status in _HELD
        and lease_id is not None
        and update.progress.lease_id == lease_id
        and update.provider_id == provider_id
    )


def live_envelope(update: LiveUpdate, *, received_at: datetime, position: int) -> Envelope:
    """``update`` as the ``TaskProgressed`` a watcher folds (no checkpoint: live progress never carries
    one), timed by ``received_at`` (the reader's clock, not the provider's), at log ``position`` (the
    last stored event the reader has seen: it is not itself in the log; ``source`` says so)."""
    p = update.progress
    event = TaskProgressed(
        at=received_at,
        task_id=update.task_id,
        lease_id=p.lease_id,
        provider_id=update.provider_id,
        fraction=p.fraction,
        rate=p.rate,
        unit=p.unit,
        message=p.message,
    )
    return Envelope(
        id=f"live.{p.lease_id}",
        source=LIVE_SOURCE,
        subject=f"task.{update.task_id}",
        data=event,
        sequence=position,
    )


def is_live(env: Envelope) -> bool:
    """True for an envelope a reader made of live progress (:func:`live_envelope`): not a stored event."""
    return env.source == LIVE_SOURCE
