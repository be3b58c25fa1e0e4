"""Durable timers: lease expiries, retry backoffs and deadlines, derived from the log.

Nothing here is stored: after a restart the orchestrator arms every timer again from the world it
rebuilt from the log. Arming a key again replaces its earlier due time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from datetime import datetime
from typing import Any

__all__ = ["Timers"]


class Timers:
    """A heap of (due, key); each key has one live due time and an intent factory."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, str]] = []
        self._live: dict[str, tuple[datetime, int, Callable[[datetime], Any]]] = {}
        self._seq = itertools.count()

    def arm(self, key: str, due: datetime, make: Callable[[datetime], Any]) -> None:
        """Call ``make(now)`` once ``now >= due``; re-arming ``key`` replaces the earlier timer."""
        n = next(self._seq)
        self._live[key] = (due, n, make)
        heapq.heappush(self._heap, (due, n, key))

    def cancel(self, key: str) -> None:
        """Forget ``key``'s timer."""
        self._live.pop(key, None)

    def next_due(self) -> datetime | None:
        """When the earliest live timer is due."""
        while self._heap:
            due, n, key = self._heap[0]
            live = self._live.get(key)
            if live is not None and live[1] == n:
                return due
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: datetime) -> list[Any]:
        """The intents of every timer due at ``now``, in due order; they are disarmed."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _due, n, key = heapq.heappop(self._heap)
            live = self._live.get(key)
            if live is None or live[1] != n:
                continue
            del self._live[key]
            out.append(live[2](now))
        return out

    def __len__(self) -> int:
        return len(self._live)
