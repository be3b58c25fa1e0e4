"""Reading the log in batches for catch-up and rebuilds, as fast as the client can parse it.

On JetStream the batches come from an ephemeral pull consumer (no acks, in-memory state) that this
reader drives itself: a few pull requests of ``batch`` messages each are in flight at once, the
messages land through one callback subscription (no task per message, unlike an async iterator),
and memory stays bounded by the window. Each message carries only the event's own headers; its
position comes from the reply subject. Any other ``EventStore``, and a JetStream store that reads
with direct gets (an auditor may not create consumers), is read through ``read_all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from events.codec import decode_message
from events.envelope import Envelope
from events.errors import InvalidPayload, StoreUnavailable
from events.store.jetstream import JetStreamEventStore, lost_events
from events.store.protocol import EventStore, InvalidHandler, log_invalid

__all__ = ["read_batches"]


async def read_batches(
    events: EventStore,
    after: int = 0,
    *,
    batch: int = 2000,
    window: int = 3,
    timeout: float = 10.0,
    on_invalid: InvalidHandler = log_invalid,
) -> AsyncIterator[list[Envelope]]:
    """Every event after position ``after`` up to the head as it is now, in order, in lists."""
    if isinstance(events, JetStreamEventStore) and events.reads == "consumer":
        async for envs in _jetstream_batches(
            events, after, size=batch, depth=window, timeout=timeout, on_invalid=on_invalid
        ):
            yield envs
        return
    chunk: list[Envelope] = []
    async for env in events.read_all(after):
        chunk.append(env)
        if len(chunk) >= batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Pulls:
    """Messages of all pull requests, in arrival order (the server serves pulls first in, first out)."""

    def __init__(self) -> None:
        self.buf: list[Msg] = []
        self.total = 0
        #: Pull requests that ended early (a status reply), with ``total`` at that moment.
        self.ended: dict[str, int] = {}
        self.need = 0
        self.wake = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        h = msg.headers
        if not msg.data and h is not None and "Status" in h:
            if h["Status"] != "100":  # not an idle heartbeat: this request is over
                self.ended[msg.subject] = self.total
                self.wake.set()
            return
        self.buf.append(msg)
        self.total += 1
        if self.total >= self.need:
            self.wake.set()


def _position(msg: Msg) -> int:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the v2 form.
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


async def _jetstream_batches(
    store: JetStreamEventStore,
    after: int,
    *,
    size: int,
    depth: int,
    timeout: float,
    on_invalid: InvalidHandler,
) -> AsyncIterator[list[Envelope]]:
    end = await store.head()
    if end <= after:
        return
    nc: Any = store.nc
    js: Any = store.js
    settings = store.settings
    cut = len(settings.prefix) + 1
    info = await js.add_consumer(
        settings.name,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=f"{settings.prefix}.>",
            inactive_threshold=max(timeout * 3, 30.0),
            mem_storage=True,
            num_replicas=1,
            max_waiting=max(depth, 8),
        ),
    )
    consumer = info.name
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{settings.name}.{consumer}"
    pulls = _Pulls()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*", cb=pulls.on_msg)
    pending: deque[tuple[str, int]] = deque()
    requested = after
    taken = 0  # messages handed out so far (``pulls.total`` counts those received)
    counter = 0
    try:
        delivered = after
        while True:
            while len(pending) < depth and requested < end:
                n = min(size, end - requested)
                counter += 1
                subject = f"{inbox}.{counter}"
                body = {"batch": n, "expires": int(timeout * 1e9)}
                await nc.publish(next_subject, json.dumps(body).encode(), reply=subject)
                pending.append((subject, n))
                requested += n
            if not pending:
                return
            subject, n = pending.popleft()
            pulls.need = taken + n
            while pulls.total < taken + n and subject not in pulls.ended:
                pulls.wake.clear()
                try:
                    await asyncio.wait_for(pulls.wake.wait(), timeout + 5.0)
                except TimeoutError as e:
                    raise StoreUnavailable("JetStream did not deliver a pull request in time") from e
            got = min(n, pulls.ended.pop(subject, taken + n) - taken)
            msgs = pulls.buf[:got]
            del pulls.buf[:got]
            taken += got
            out: list[Envelope] = []
            for msg in msgs:
                position = _position(msg)
                if delivered < position <= end and position > delivered + 1:
                    raise lost_events(delivered + 1, position)
                if position <= delivered or position > end:
                    continue
                delivered = position
                try:
                    out.append(decode_message(msg.subject[cut:], msg.data, msg.headers, position))
                except InvalidPayload as e:
                    on_invalid(position, e)
            if out:
                yield out
            if delivered >= end or got < n:
                return
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()
            await js.delete_consumer(settings.name, consumer)
