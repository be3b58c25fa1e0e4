"""Builders of valid events and envelopes for tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from events import Envelope, new_envelope
from events.task import TaskCreated, TaskProgressed, TaskQueued
from events.types import Estimate, JsonValue, Resources

_ids = itertools.count(1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def queued(stream: str, *, event_id: str | None = None, n: int = 0) -> Envelope:
    """A small valid event for ``stream`` (a ``task.<id>`` stream)."""
    task_id = stream.split(".", 1)[1]
    return new_envelope(
        stream,
        TaskQueued(at=at(n), task_id=task_id),
        id=event_id or f"ev-{next(_ids)}",
        source="tests",
    )


def progressed(stream: str, fraction: float, message: str = "", *, event_id: str | None = None) -> Envelope:
    """A progress event, whose ``message`` can be made as large as a test needs."""
    task_id = stream.split(".", 1)[1]
    return new_envelope(
        stream,
        TaskProgressed(
            at=at(fraction),
            task_id=task_id,
            lease_id="l1",
            provider_id="p1",
            fraction=fraction,
            message=message,
        ),
        id=event_id or f"ev-{next(_ids)}",
        source="tests",
    )


def created(stream: str, *, params: dict[str, JsonValue] | None = None, event_id: str | None = None) -> Envelope:
    """A ``TaskCreated`` event; ``params`` can be made as large as a test needs."""
    task_id = stream.split(".", 1)[1]
    return new_envelope(
        stream,
        TaskCreated(
            at=T0,
            task_id=task_id,
            job_id="job1",
            index=0,
            submitter="alice",
            workload="noop",
            params=params or {},
            resources=Resources(),
            estimate=Estimate(),
            timeout_s=60.0,
        ),
        id=event_id or f"ev-{next(_ids)}",
        source="tests",
    )
