"""The event feed: each identity reads the log streams it may read, and nothing else.

Strangers (submitters, providers) live in an account without JetStream, so they cannot open a
consumer on the domain log: a consumer would let them read anything and deliver it anywhere. They
ask the network instead, on ``gf.api.<role>.<name>.events``; only that identity may publish there,
so the subject says who asks. The feed checks every requested stream filter against
``events.subjects.readable`` and answers with the matching events after a position, in log order,
as structured CloudEvents. A request with ``wait_s`` waits (long polling) for something new.

Request body: ``{"streams": ["job.alice.j1", "task.alice.j1.*"], "after": 0, "limit": 500, "wait_s": 0}``.
Answer: ``{"events": [...], "last": <position the reader has now seen everything up to>, "head": ...}``
or ``{"error": "...", "field": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg

from events.aio import cancel_and_wait
from events.codec import to_structured
from events.errors import GpufleetError
from events.store.jetstream import JetStreamEventStore
from events.subjects import API_PREFIX, readable

__all__ = ["FEED_OPERATION", "WITHHELD", "EventFeed"]

FEED_OPERATION = "events"
#: Events only auditors read: a result held for verification is not the submitter's until it is
#: verified (a submitter who saw it could cancel and have the work for nothing, and a wrong result
#: would reach it). The verdict, and the verified result in ``TaskCompleted``, are sent.
WITHHELD = frozenset({"TaskResultReturned"})
_log = structlog.get_logger("gpufleet.feed")


class _Refused(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class EventFeed:
    """Answers ``gf.api.*.*.events`` from ``store`` (a connection with read access to the whole log)."""

    def __init__(
        self,
        store: JetStreamEventStore,
        *,
        queue: str = "gf-feed",
        max_events: int = 1000,
        max_bytes: int = 600 * 1024,
        max_wait_s: float = 25.0,
        max_streams: int = 8,
        concurrency: int = 64,
    ) -> None:
        self.store = store
        self.queue = queue
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self.max_streams = max_streams
        self._sub: Any = None
        self._head = 0
        self._moved = asyncio.Condition()
        self._poller: asyncio.Task[None] | None = None
        self._waiters = 0
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Subscribe (in a queue group, so several network processes share the load)."""
        self._head = await self.store.head()
        self._sub = await self.store.nc.subscribe(f"{API_PREFIX}.*.*.{FEED_OPERATION}", queue=self.queue, cb=self._on)
        self._poller = asyncio.create_task(self._poll_head(), name="feed-head")

    async def stop(self) -> None:
        """Stop answering; requests in progress are cancelled."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        # Cancelled again until done: a cancellation can be lost under a JetStream read (``events.aio``);
        # the head poller once swallowed its only one, and the network's shutdown hung for good.
        await cancel_and_wait([self._poller, *self._tasks])

    async def _poll_head(self) -> None:
        """One poller for every long-polling request: wake them when the log grows."""
        while True:
            await asyncio.sleep(0.05 if self._waiters else 0.5)
            if not self._waiters:
                continue
            with contextlib.suppress(GpufleetError, nats.errors.Error, OSError):
                head = await self.store.head()
                if head > self._head:
                    self._head = head
                    async with self._moved:
                        self._moved.notify_all()

    async def _on(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        async with self._sem:
            try:
                body = await self._serve(msg.subject, msg.data)
            except _Refused as e:
                body = {"error": str(e), "field": e.field}
            except GpufleetError as e:
                body = {"error": f"the log is not readable now: {e}", "field": None}
            with contextlib.suppress(nats.errors.Error):
                await self.store.nc.publish(msg.reply, json.dumps(body, separators=(",", ":")).encode())

    async def _serve(self, subject: str, data: bytes) -> dict[str, Any]:
        parts = subject.split(".")
        role, name = parts[2], parts[3]
        try:
            req = json.loads(data or b"{}")
        except ValueError as e:
            raise _Refused("the request is not JSON", "body") from e
        if not isinstance(req, dict):
            raise _Refused("the request must be a JSON object", "body")
        streams = req.get("streams")
        if not isinstance(streams, list) or not streams or not all(isinstance(s, str) for s in streams):
            raise _Refused("a non-empty list of stream filters is required", "streams")
        if len(streams) > self.max_streams:
            raise _Refused(f"at most {self.max_streams} stream filters", "streams")
        for s in streams:
            if not readable(role, name, s):
                _log.info("feed.refused", role=role, name=name, stream=s)
                raise _Refused(f"{role} {name} may not read {s!r}", "streams")
        withheld = frozenset() if role == "auditor" else WITHHELD
        after, limit, wait_s = req.get("after", 0), req.get("limit", self.max_events), req.get("wait_s", 0)
        if type(after) is not int or after < 0:
            raise _Refused("must be a position, an integer >= 0", "after")
        if type(limit) is not int or not 1 <= limit <= self.max_events:
            raise _Refused(f"must be an integer from 1 to {self.max_events}", "limit")
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool) or not 0 <= wait_s <= self.max_wait_s:
            raise _Refused(f"must be seconds from 0 to {self.max_wait_s:g}", "wait_s")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(wait_s)
        while True:
            head = await self.store.head()
            self._head = max(self._head, head)
            events, last = await self._read(streams, after, head, limit, withheld)
            if events or loop.time() >= deadline:
                return {"events": events, "last": last, "head": head}
            after = last
            await self._wait_past(head, max(0.0, deadline - loop.time()))

    async def _wait_past(self, head: int, timeout: float) -> None:
        """Wait until the log grows past ``head``, or ``timeout`` seconds."""

        def moved() -> bool:
            return self._head > head

        self._waiters += 1
        try:
            async with self._moved:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait_for(moved), timeout)
        finally:
            self._waiters -= 1

    async def _read(
        self, streams: list[str], after: int, head: int, limit: int, withheld: frozenset[str] = frozenset()
    ) -> tuple[list[dict[str, Any]], int]:
        """Matching events in (after, head], in log order, and the position read up to; events of the
        ``withheld`` types are passed over (read past, never sent)."""
        prefix = self.store.settings.prefix
        found: list[tuple[int, Any]] = []
        cut = head
        for s in streams:
            got = 0
            async for raw in self.store.read_raw(subject=f"{prefix}.{s}", after=after, end=head, batch=limit):
                got += 1
                found.append((raw.sequence, raw))
                if got >= limit:
                    cut = min(cut, raw.sequence)  # this filter may have more after here
                    break
        found.sort(key=lambda x: x[0])
        out: list[dict[str, Any]] = []
        size = 0
        out_last = after
        last = cut  # everything up to ``cut`` is in ``found``, unless the answer fills up first
        for seq, raw in found:
            if seq > cut:
                break
            env = self.store.decode_raw(raw)
            if env is not None and env.type not in withheld:
                doc = to_structured(env)
                size += len(json.dumps(doc, separators=(",", ":")))
                if out and (size > self.max_bytes or len(out) >= limit):
                    last = out_last
                    break
                out.append(doc)
            out_last = seq
        return out, last
