"""A bounded fair queue for intake: one sender's burst is never ahead of everyone else's next message.

Pure and synchronous (no I/O, no clock): the orchestrator's fetch loops ``offer`` what JetStream
delivers, and its workers ``take``. Service order:

- ``urgent`` identities (providers: their reports hold leases) strictly first, round-robin among
  themselves, one message each per round;
- then everyone else (submitters) by deficit round robin with a quantum of one message: each
  identity that has something waiting gets one message per round, so a burst of 3,000 from one
  identity is interleaved one-for-one with every other identity's, and an identity that arrives
  is served within one round (it joins the end of the round).

Each identity's own messages keep their order (a submitter's submit-then-cancel must stay in order).
Memory is bounded: at most ``max_items`` messages and ``max_bytes`` bytes (one message is always
let into an empty queue, so a message larger than ``max_bytes`` cannot wedge it); ``offer`` answers
False when full, and the caller then stops fetching (backpressure): nothing accepted is ever dropped.
An identity whose queue empties is forgotten.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T")


@dataclass(slots=True)
class _Lane(Generic[T]):
    """One identity's waiting messages, oldest first, with their sizes."""

    urgent: bool
    items: deque[tuple[T, int]] = field(default_factory=deque)


class FairQueue(Generic[T]):
    """Round-robin across identities, FIFO within one, urgent identities first; bounded."""

    def __init__(self, *, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError(f"a fair queue holds at least one item and one byte (got {max_items}, {max_bytes})")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lanes: dict[str, _Lane[T]] = {}
        #: Identities with something waiting, in the order they are served next (one per turn).
        self._urgent: deque[str] = deque()
        self._normal: deque[str] = deque()
        self._len = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._len

    @property
    def bytes(self) -> int:
        """Bytes of the messages waiting (as their sizes were offered)."""
        return self._bytes

    @property
    def identities(self) -> int:
        """Identities with something waiting."""
        return len(self._lanes)

    def room(self) -> int:
        """How many more items fit now (0 when full by count or by bytes)."""
        if self._len and self._bytes >= self.max_bytes:
            return 0
        return max(0, self.max_items - self._len)

    def offer(self, identity: str, item: T, size: int, *, urgent: bool = False) -> bool:
        """Queue ``item`` (of ``size`` bytes) from ``identity``: False, and nothing queued, when it does
        not fit. An identity's class (urgent or not) is the one it had when its queue was opened."""
        size = max(0, size)
        if self._len >= self.max_items or (self._len and self._bytes + size > self.max_bytes):
            return False
        lane = self._lanes.get(identity)
        if lane is None:
            lane = self._lanes[identity] = _Lane(urgent)
            (self._urgent if urgent else self._normal).append(identity)
        lane.items.append((item, size))
        self._len += 1
        self._bytes += size
        return True

    def take(self) -> T | None:
        """The next item in fair order, or None when empty."""
        ring = self._urgent or self._normal
        if not ring:
            return None
        identity = ring.popleft()
        lane = self._lanes[identity]
        item, size = lane.items.popleft()
        if lane.items:
            ring.append(identity)  # its next message waits for everyone else's turn
        else:
            del self._lanes[identity]
        self._len -= 1
        self._bytes -= size
        return item
