"""Stopping background tasks for sure, one rule for every part that runs them.

Python 3.11's ``asyncio.wait_for`` (under every nats-py request, so under every JetStream read) can
swallow a cancellation that lands just as its inner wait completes: the task then goes on as if never
cancelled. A ``stop`` that cancels once and awaits the task hung for good whenever that happened (seen
in CI for the notary, then for the event feed's head poller: a shutdown that never returned).
:func:`cancel_and_wait` cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any] | None], *, every_s: float = 0.5, timeout_s: float | None = None
) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` (None entries are skipped) and wait until they have all ended, cancelling those
    still running again every ``every_s`` seconds. With ``timeout_s``, give up after that long and
    return the tasks still running (else: the empty set). Their exceptions are retrieved: whoever
    needs one reads it from the task; none is reported as "never retrieved"."""
    every = [t for t in tasks if t is not None]
    pending = {t for t in every if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while pending:
        for t in pending:
            t.cancel()
        wait = every_s if deadline is None else max(0.0, min(every_s, deadline - loop.time()))
        _, pending = await asyncio.wait(pending, timeout=wait)
        if deadline is not None and loop.time() >= deadline:
            break
    for t in every:
        if t.done() and not t.cancelled():
            t.exception()
    return pending
