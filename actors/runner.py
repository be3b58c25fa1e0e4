"""The runner: intents and commands against the actor shells, with retries, batching and pipelining.

Every command the orchestrator issues runs here, in the background: one intent at a time per
aggregate (the shell's FIFO lock keeps the order), many aggregates at once, and groups for many
aggregates of one kind as atomic batches. A store failure is retried with backoff; a refusal by the
decider is final (the log says why nothing happened). What is in flight is tracked, so that
``stop`` and ``settle`` can wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

import structlog

from actors.errors import DomainError
from actors.reactions import Intent
from actors.shell import ActorShell
from events import GpufleetError

__all__ = ["BATCH", "MIN_BATCH", "Runner", "batches"]

#: Commands for many aggregates go to the store as atomic batches of at most this many...
BATCH = 500
#: ...but only from this many on: an atomic batch costs the server a few milliseconds on a file-backed
#: stream, so small groups go out as concurrent single-event appends (lower latency).
MIN_BATCH = 16
#: Tries of one intent before it is given up (logged; the reactions re-issue it at the next start).
_TRIES = 20


def batches(n: int) -> Iterable[tuple[int, int]]:
    """Slices ``[start, end)`` of ``n`` items sent together: one each below ``MIN_BATCH``, else up to ``BATCH``."""
    step = 1 if n < MIN_BATCH else BATCH
    return ((start, min(n, start + step)) for start in range(0, n, step))


class Runner:
    """Runs intents on the shells of the three aggregates, in the background, and tracks them."""

    def __init__(
        self,
        jobs: ActorShell[Any, Any],
        tasks: ActorShell[Any, Any],
        providers: ActorShell[Any, Any],
        *,
        log: Any = None,
    ) -> None:
        self.shells: dict[str, ActorShell[Any, Any]] = {"job": jobs, "task": tasks, "provider": providers}
        #: Background work not finished yet (commands, dispatches, intake messages in hand).
        self.inflight: set[asyncio.Task[Any]] = set()
        self.log = log if log is not None else structlog.get_logger("gpufleet.runner")

    def shell(self, kind: str) -> ActorShell[Any, Any]:
        """The shell of aggregate kind ``kind`` (``job``, ``task``, ``provider``)."""
        return self.shells[kind]

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, tracked until it is done."""
        t = asyncio.ensure_future(coro)
        self.inflight.add(t)
        t.add_done_callback(self.inflight.discard)
        return t

    def submit(self, intent: Intent) -> None:
        """Run an intent in the background; per-aggregate order is kept by the shell's FIFO lock."""
        self.spawn(self.run(intent))

    def submit_many(self, intents: list[Intent]) -> None:
        """Intents for many aggregates of one kind (a job's tasks) go out as atomic batches."""
        by_kind: dict[str, list[Intent]] = {}
        for i in intents:
            by_kind.setdefault(i.kind, []).append(i)
        for group in by_kind.values():
            if len(group) < MIN_BATCH or len({i.aggregate_id for i in group}) != len(group):
                for i in group:
                    self.submit(i)
                continue
            for start, end in batches(len(group)):
                self.spawn(self.run_many(group[start:end]))

    async def run_many(self, intents: list[Intent]) -> None:
        """One atomic batch; if the batch itself fails, each intent again on its own, with its retries."""
        first = intents[0]
        try:
            results = await self.shell(first.kind).handle_many(
                [(i.aggregate_id, i.command) for i in intents],
                causationid=first.causation,
                correlationid=first.correlation,
            )
        except Exception as e:
            self.log.warning("command.batch_failed", kind=first.kind, size=len(intents), error=repr(e))
            for intent in intents:
                self.submit(intent)  # one by one, each with its own retries
            return
        for intent, r in zip(intents, results, strict=True):
            if isinstance(r, DomainError):
                self.log.debug("command.refused", kind=intent.kind, id=intent.aggregate_id, reason=str(r))
            elif isinstance(r, GpufleetError):
                self.submit(intent)  # the store failed: retry on its own, with backoff

    async def run(self, intent: Intent) -> None:
        """One intent, retried with backoff while the store fails; a refusal ends it."""
        shell = self.shell(intent.kind)
        for attempt in range(_TRIES):
            try:
                await shell.handle(
                    intent.aggregate_id,
                    intent.command,
                    causationid=intent.causation,
                    correlationid=intent.correlation,
                )
                return
            except DomainError as e:
                self.log.debug("command.refused", kind=intent.kind, id=intent.aggregate_id, reason=str(e))
                return
            except GpufleetError as e:
                self.log.warning("command.retry", kind=intent.kind, id=intent.aggregate_id, error=str(e))
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        self.log.error("command.gave_up", kind=intent.kind, id=intent.aggregate_id)
