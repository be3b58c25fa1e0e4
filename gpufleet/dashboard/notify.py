"""Changes: how the dashboard learns that the read models moved, without polling them."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Changes"]


class Changes:
    """A counter of read-model commits that wakes whoever waits for the next one.

    ``notify`` is what a ``Projector``'s ``on_commit`` calls (on the event loop, once per durable
    commit): it costs a counter increment and an event set, and never waits.
    """

    def __init__(self) -> None:
        self.version = 0
        self.position = 0
        self.closed = False
        self._moved = asyncio.Event()

    def notify(self, position: int = 0) -> None:
        """The read models moved (up to ``position``): wake every waiter."""
        self.version += 1
        self.position = max(self.position, position)
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    def close(self) -> None:
        """No more changes will come (the dashboard stops): every waiter returns now, and at once after."""
        self.closed = True
        self._moved.set()

    async def wait(self, seen: int, timeout: float) -> int:
        """Wait until the version differs from ``seen`` (or ``timeout`` seconds, or close); the version."""
        if self.version != seen or self.closed:
            return self.version
        moved = self._moved
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(moved.wait(), timeout)
        return self.version
