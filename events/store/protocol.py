"""The ``EventStore`` protocol that every backend implements, and what an append returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog

from events.envelope import Envelope
from events.errors import InvalidPayload

__all__ = ["ANY", "NO_STREAM", "AppendResult", "EventStore", "InvalidHandler", "log_invalid"]

#: ``expected=ANY`` appends without a concurrency check.
ANY: int | None = None
#: ``expected=NO_STREAM`` appends only if the stream does not exist yet (create once).
NO_STREAM = 0

#: Called with (global position, error) for a stored message that does not decode; reading goes on.
InvalidHandler = Callable[[int, InvalidPayload], None]

_log = structlog.get_logger("gpufleet.events")


def log_invalid(position: int, error: InvalidPayload) -> None:
    """Default ``InvalidHandler``: log the malformed record and skip it."""
    _log.warning("event.invalid", position=position, field=error.field, problem=error.problem)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed.

    ``last`` is the stream's position after the append: the ``expected`` of the next one.
    ``duplicate`` means every event was already stored (a retried append) and nothing was written.
    """

    stream: str
    first: int
    last: int
    duplicate: bool = False


@runtime_checkable
class EventStore(Protocol):
    """An append-only log of aggregate streams with one global order.

    Positions are global sequence numbers: they increase within a stream but are not contiguous.
    """

    async def append(self, stream: str, events: Sequence[Envelope], expected: int | None) -> AppendResult:
        """Append ``events`` to ``stream`` atomically.

        ``expected`` is the position of the stream's last event (``NO_STREAM`` for a new stream, ``ANY``
        for no check). A stale ``expected`` raises ``ConcurrencyError``. Re-appending events whose ids
        are already stored in the stream returns their positions with ``duplicate=True``.
        """
        ...

    async def append_many(self, appends: Sequence[tuple[str, Sequence[Envelope], int | None]]) -> list[AppendResult]:
        """Several appends (stream, events, expected) as one atomic unit: all are stored, or none.

        Any stale expectation raises ``ConcurrencyError`` and nothing is written. At most 1,000
        events in all.
        """
        ...

    async def read_stream(self, stream: str, after: int = 0) -> list[Envelope]:
        """Every event of ``stream`` after global position ``after``, in order."""
        ...

    def read_all(self, after: int = 0) -> AsyncIterator[Envelope]:
        """Every event after ``after`` up to the head as it was when reading began."""
        ...

    def subscribe(self, after: int = 0) -> AsyncIterator[Envelope]:
        """Every event after ``after``: catches up, then follows live appends until closed."""
        ...

    async def head(self) -> int:
        """The global position of the last event, 0 for an empty log."""
        ...

    async def stream_position(self, stream: str) -> int:
        """The position of ``stream``'s last event, 0 if it has none."""
        ...

    async def event_id_at(self, position: int) -> str | None:
        """The id of the message stored at global ``position``, without decoding it; None if none."""
        ...

    async def unreadable_tail(self, stream: str, after: int) -> int:
        """If every stored message of ``stream`` after ``after`` is permanently unreadable (malformed,
        out of range: not merely of a type or version this reader does not know yet), the position of
        the last one; else 0. Positive evidence, read from the messages themselves: a reader that
        lags behind the stream sees no messages there, and gets 0."""
        ...

    async def log_id(self) -> str:
        """Which log this is: the same for as long as the log exists, different for a new one."""
        ...

    async def missing(self) -> int:
        """How many positions up to the head hold no event (0 when none).

        The log denies deletes and purges, so a missing position is history lost to damage: a message
        the server could not read back and dropped, or a whole block gone."""
        ...

    async def close(self) -> None:
        """Release connections; subscriptions end."""
        ...
