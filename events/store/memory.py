"""In-memory ``EventStore``: as strict as JetStream (global sequence, conflicts, de-duplication)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from events.envelope import Envelope, check_stream
from events.errors import ConcurrencyError, InvalidPayload, StoreUnavailable
from events.registry import DEFAULT_REGISTRY, EventRegistry
from events.store.protocol import AppendResult

__all__ = ["MemoryEventStore"]

MAX_EVENTS_PER_APPEND = 1000


class MemoryEventStore:
    """A complete event store in one process: for tests, examples and single-process embedding."""

    def __init__(self, registry: EventRegistry = DEFAULT_REGISTRY) -> None:
        self._registry = registry
        self._log: list[Envelope] = []
        self._streams: dict[str, list[int]] = {}
        self._ids: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._closed = False

    async def append(self, stream: str, events: Sequence[Envelope], expected: int | None) -> AppendResult:
        """See ``EventStore.append``."""
        self._check_open()
        check_stream(stream)
        positions = self._streams.get(stream, [])
        current = positions[-1] if positions else 0
        if not events:
            if expected is not None and expected != current:
                raise ConcurrencyError(stream, expected, current)
            return AppendResult(stream, 0, current)
        if len(events) > MAX_EVENTS_PER_APPEND:
            raise InvalidPayload(f"{len(events)} events in one append; the limit is {MAX_EVENTS_PER_APPEND}")
        for env in events:
            if env.subject != stream:
                problem = f"event {env.id} belongs to {env.subject!r}, not {stream!r}"
                raise InvalidPayload(problem, field="subject")
            # Same validation and size limit as on the wire.
            self._registry.encode(env.data)
        ids = [env.id for env in events]
        if len(set(ids)) != len(ids):
            raise InvalidPayload("the same event id twice in one append", field="id")
        stored = [self._ids.get(i) for i in ids]
        if any(p is not None for p in stored):
            return self._redelivery(stream, ids, stored, expected, current)
        if expected is not None and expected != current:
            raise ConcurrencyError(stream, expected, current)
        first = len(self._log) + 1
        new_positions = self._streams.setdefault(stream, [])
        for env in events:
            pos = len(self._log) + 1
            self._log.append(env.at_position(pos))
            new_positions.append(pos)
            self._ids[env.id] = pos
        self._changed.set()
        self._changed = asyncio.Event()
        return AppendResult(stream, first, len(self._log))

    async def append_many(self, appends: Sequence[tuple[str, Sequence[Envelope], int | None]]) -> list[AppendResult]:
        """See ``EventStore.append_many``: every expectation is checked before anything is written."""
        self._check_open()
        streams = [stream for stream, _, _ in appends]
        if len(set(streams)) != len(streams):
            raise InvalidPayload("a stream appears twice in one atomic append", field="subject")
        if sum(len(events) for _, events, _ in appends) > MAX_EVENTS_PER_APPEND:
            raise InvalidPayload(f"more than {MAX_EVENTS_PER_APPEND} events in one atomic append")
        for stream, events, expected in appends:
            check_stream(stream)
            positions = self._streams.get(stream, [])
            current = positions[-1] if positions else 0
            if not any(env.id in self._ids for env in events) and expected is not None and expected != current:
                raise ConcurrencyError(stream, expected, current)
            for env in events:
                if env.subject != stream:
                    raise InvalidPayload(f"event {env.id} belongs to {env.subject!r}, not {stream!r}", field="subject")
                self._registry.encode(env.data)
        # Checked: the appends below cannot fail (no await suspends between them), so it is atomic.
        # When ids were already stored (a retry of an append that landed) each settles on its own.
        return [await self.append(stream, events, expected) for stream, events, expected in appends]

    def _redelivery(
        self, stream: str, ids: list[str], stored: list[int | None], expected: int | None, current: int
    ) -> AppendResult:
        # Every id stored, in this stream, consecutively: the same append again; otherwise refuse.
        if all(p is not None for p in stored):
            found = [p for p in stored if p is not None]
            positions = self._streams.get(stream, [])
            if all(self._log[p - 1].subject == stream for p in found):
                idx = positions.index(found[0])
                if positions[idx : idx + len(found)] == found:
                    return AppendResult(stream, found[0], found[-1], duplicate=True)
        if expected is not None and expected != current:
            raise ConcurrencyError(stream, expected, current)
        dup = next(i for i, p in zip(ids, stored, strict=True) if p is not None)
        raise InvalidPayload(f"event id {dup!r} is already stored, in another append", field="id")

    async def read_stream(self, stream: str, after: int = 0) -> list[Envelope]:
        """See ``EventStore.read_stream``."""
        self._check_open()
        return [self._log[p - 1] for p in self._streams.get(stream, []) if p > after]

    async def read_all(self, after: int = 0) -> AsyncIterator[Envelope]:
        """See ``EventStore.read_all``."""
        self._check_open()
        end = len(self._log)
        for pos in range(after + 1, end + 1):
            yield self._log[pos - 1]

    async def subscribe(self, after: int = 0) -> AsyncIterator[Envelope]:
        """See ``EventStore.subscribe``."""
        pos = after
        while not self._closed:
            while pos < len(self._log):
                pos += 1
                yield self._log[pos - 1]
            changed = self._changed
            if pos >= len(self._log):
                await changed.wait()

    async def head(self) -> int:
        """See ``EventStore.head``."""
        return len(self._log)

    async def unreadable_tail(self, stream: str, after: int) -> int:
        """See ``EventStore.unreadable_tail``: this store holds only valid events."""
        return 0

    async def log_id(self) -> str:
        """See ``EventStore.log_id``: this object's identity."""
        return f"memory-{id(self):x}"

    async def missing(self) -> int:
        """See ``EventStore.missing``: this store never loses an event."""
        return 0

    async def event_id_at(self, position: int) -> str | None:
        """See ``EventStore.event_id_at``."""
        self._check_open()
        return self._log[position - 1].id if 1 <= position <= len(self._log) else None

    async def stream_position(self, stream: str) -> int:
        """See ``EventStore.stream_position``."""
        positions = self._streams.get(stream)
        return positions[-1] if positions else 0

    async def close(self) -> None:
        """Subscriptions end after they drain what was appended."""
        self._closed = True
        self._changed.set()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the in-memory store is closed")
