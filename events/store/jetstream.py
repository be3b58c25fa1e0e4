"""JetStream ``EventStore``: one subject per aggregate, optimistic concurrency, de-duplication.

- A single-event append is one JetStream publish with ``Nats-Expected-Last-Subject-Sequence``.
- A multi-event append is one atomic batch (ADR-50): all of it is stored, or none.
- Every message carries ``Nats-Msg-Id`` = its event id, so a retried publish is stored once.
- A publish that times out is sent again with the same ids. If the server then reports a conflict or
  a duplicate, the store reads the stream back to confirm whether its events are there: it never
  guesses the outcome.
- Streams are read with batched direct gets; the whole log with an ordered consumer, or, for a
  reader that may not create consumers (an auditor, from the edge account), with batched direct gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from events.codec import decode_message, encode
from events.envelope import Envelope, check_stream
from events.errors import (
    ConcurrencyError,
    InvalidPayload,
    LogRegressed,
    PayloadTooLarge,
    StoreError,
    StoreUnavailable,
    UnknownEventType,
    UnknownSchemaVersion,
)
from events.registry import DEFAULT_REGISTRY, MAX_EVENT_BYTES, EventRegistry
from events.stats import Histogram
from events.store.connection import Access, connect_nats
from events.store.protocol import AppendResult, InvalidHandler, log_invalid
from events.subjects import EVENT_PREFIX, EVENTS_STREAM

__all__ = ["JetStreamEventStore", "RawMessage", "Reads", "StreamSettings", "lost_events"]

#: How the whole log is read: an ordered consumer (fast; needs consumer permissions), or batched direct
#: gets (any reader allowed to direct-get, such as an auditor).
Reads = Literal["consumer", "direct"]

_log = structlog.get_logger("gpufleet.events.jetstream")

MAX_EVENTS_PER_APPEND = 1000  # the server's limit for one atomic batch
_WRONG_LAST_SEQUENCE = (10071, 10164)
_BATCH_DUPLICATE_ID = 10201
_MESSAGE_TOO_BIG = 10054
_HEADER_ALLOWANCE = 8 * 1024


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How the event stream is configured; created idempotently with exactly this."""

    name: str = EVENTS_STREAM
    prefix: str = EVENT_PREFIX
    replicas: int = 1
    duplicate_window_s: float = 120.0
    max_event_bytes: int = MAX_EVENT_BYTES

    def config(self) -> api.StreamConfig:
        """The JetStream configuration: file storage, no deletes or purges, atomic batches."""
        return api.StreamConfig(
            name=self.name,
            description="gpufleet domain events: one subject per aggregate",
            subjects=[f"{self.prefix}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window_s,
            max_msg_size=self.max_event_bytes + _HEADER_ALLOWANCE,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            allow_atomic=True,
        )


async def ensure_stream(js: Any, config: api.StreamConfig) -> None:
    """Create ``config``'s stream, or bring an existing one to it; idempotent."""
    try:
        await js.add_stream(config=config)
    except nats.js.errors.BadRequestError as e:
        if e.err_code != 10058:  # stream name already in use with a different configuration
            raise StoreError(f"cannot create stream {config.name}: {e.description}") from e
        await js.update_stream(config=config)
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as e:
        raise StoreUnavailable("JetStream is not enabled on this server (start nats-server with -js)") from e
    except nats.errors.TimeoutError as e:
        raise StoreUnavailable(f"JetStream did not answer creating stream {config.name}") from e


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A stored message as the server returns it: position, subject, body and headers."""

    sequence: int
    subject: str
    data: bytes
    headers: dict[str, str]


class _Inbox:
    """One wildcard inbox subscription shared by all direct-get requests of a store."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Any = None
        self._n = 0

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)

    async def _route(self, msg: Msg) -> None:
        q = self._queues.get(msg.subject)
        if q is not None:
            q.put_nowait(msg)

    def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        self._n += 1
        subject = f"{self._prefix}.{self._n}"
        q: asyncio.Queue[Msg] = asyncio.Queue()
        self._queues[subject] = q
        return subject, q

    def close(self, subject: str) -> None:
        self._queues.pop(subject, None)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


def lost_events(expected: int, position: int) -> LogRegressed:
    """A reader of the event stream, expecting position ``expected``, met ``position`` instead. The
    stream denies deletes and purges, so the positions between hold events lost to damage (a message
    the server could not read back and dropped on recovery, a block gone)."""
    missing = f"position {expected} holds" if position == expected + 1 else f"positions {expected}..{position - 1} hold"
    return LogRegressed(
        f"log lost events: {missing} nothing, though the log goes on at {position}: restore the store "
        "from a backup or a replica; nothing was written (`gpufleet replay --audit` names the loss)"
    )


class JetStreamEventStore:
    """``EventStore`` over a NATS JetStream stream.

    Build one with :meth:`connect`, or wrap an existing connection and call :meth:`ensure`.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        settings: StreamSettings | None = None,
        registry: EventRegistry = DEFAULT_REGISTRY,
        timeout: float = 5.0,
        retries: int = 3,
        max_inflight_batches: int = 32,
        on_invalid: InvalidHandler = log_invalid,
        owns_connection: bool = False,
        reads: Reads = "consumer",
    ) -> None:
        self.nc = nc
        self.reads: Reads = reads
        self.js = nc.jetstream(timeout=timeout)
        self.settings = settings or StreamSettings()
        self._registry = registry
        self._timeout = timeout
        self._retries = retries
        # The server accepts at most 50 atomic batches in flight per stream.
        self._batches = asyncio.Semaphore(min(max_inflight_batches, 50))
        #: Called for every stored message that does not decode (it is skipped); replaceable.
        self.on_invalid = on_invalid
        #: Cleared while the log may not be written to (``pause_writes``): appends wait.
        self._writable = asyncio.Event()
        self._writable.set()
        #: Incremented at each ``pause_writes``: an append begun before it is never sent again after.
        self._epoch = 0
        #: Set by the first ``pause_writes``: from then on, nothing is sent while disconnected (nats-py
        #: would buffer it and deliver it to whatever server answers next, before anyone checked it).
        self._guarded = False
        self._owns = owns_connection
        self._inbox = _Inbox(nc)
        self._started = False
        self._prefix_len = len(self.settings.prefix) + 1
        # Bound once, like the actor shell's logger: through the lazy module proxy, every call
        # re-binds a logger, which cost ~15-30 us of CPU per append even with debug filtered out.
        self._log = _log.bind(events_stream=self.settings.name)
        #: Seconds from sending an append to its acknowledgement (retries included): one event, and
        #: several at once (one stream's or an atomic batch across streams). Read by metrics.
        self.append_seconds = Histogram()
        self.batch_append_seconds = Histogram()

    @classmethod
    async def connect(
        cls,
        access: Access | str,
        *,
        settings: StreamSettings | None = None,
        name: str = "gpufleet",
        create: bool = False,
        **kw: Any,
    ) -> JetStreamEventStore:
        """Connect, make sure the stream exists (``create`` it, as the admin), and return a ready store."""
        nc = await connect_nats(access, name=name, timeout=float(kw.get("timeout", 5.0)))
        store = cls(nc, settings=settings, owns_connection=True, **kw)
        try:
            await store.ensure(create=create)
        except BaseException:
            await nc.close()
            raise
        return store

    async def ensure(self, *, create: bool = False) -> None:
        """Start the shared inbox; create or update the event stream if ``create`` (admin only), else
        check that it exists."""
        if create:
            await ensure_stream(self.js, self.settings.config())
        else:
            try:
                await self.js.stream_info(self.settings.name)
            except nats.js.errors.NotFoundError as e:
                raise StoreUnavailable(
                    f"stream {self.settings.name} does not exist: the network's admin creates it (`gpufleet up` does)"
                ) from e
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as e:
                raise StoreUnavailable("JetStream is not enabled on this server (start nats-server with -js)") from e
            except nats.errors.TimeoutError as e:
                raise StoreUnavailable(f"no answer from JetStream about stream {self.settings.name}") from e
        if not self._started:
            await self._inbox.start()
            self._started = True

    # ---- writing -------------------------------------------------------------------------------

    def pause_writes(self) -> None:
        """Hold every append until ``resume_writes``: while the log is not known to be the one we wrote.

        An append already under way is not sent again: its next try fails with ``StoreUnavailable``.
        """
        self._guarded = True
        self._epoch += 1
        self._writable.clear()

    def resume_writes(self) -> None:
        """Let appends go again."""
        self._writable.set()

    @property
    def write_epoch(self) -> int:
        """Changes at every ``pause_writes``."""
        return self._epoch

    def _guard(self, epoch: int) -> None:
        if self._guarded and (epoch != self._epoch or not self._writable.is_set() or not self.nc.is_connected):
            raise StoreUnavailable("the link to the log went down during this append; it is not sent again")

    async def append(self, stream: str, events: Sequence[Envelope], expected: int | None) -> AppendResult:
        """See ``EventStore.append``."""
        if not self._writable.is_set():
            await self._writable.wait()
        epoch = self._epoch
        check_stream(stream)
        if not events:
            current = await self.stream_position(stream)
            if expected is not None and expected != current:
                raise ConcurrencyError(stream, expected, current)
            return AppendResult(stream, 0, current)
        if len(events) > MAX_EVENTS_PER_APPEND:
            raise InvalidPayload(f"{len(events)} events in one append; the limit is {MAX_EVENTS_PER_APPEND}")
        messages: list[tuple[bytes, dict[str, str]]] = []
        ids: list[str] = []
        for env in events:
            if env.subject != stream:
                problem = f"event {env.id} belongs to {env.subject!r}, not {stream!r}"
                raise InvalidPayload(problem, field="subject")
            messages.append(encode(env, self._registry))
            ids.append(env.id)
        if len(set(ids)) != len(ids):
            raise InvalidPayload("the same event id twice in one append", field="id")
        if expected is not None:
            messages[0][1]["Nats-Expected-Last-Subject-Sequence"] = str(expected)
        subject = f"{self.settings.prefix}.{stream}"
        if len(messages) == 1:
            t0 = time.perf_counter()
            ack = await self._publish(subject, *messages[0], epoch=epoch)
            self.append_seconds.observe(time.perf_counter() - t0)
        else:
            async with self._batches:
                t0 = time.perf_counter()
                ack = await self._publish_batch(subject, messages, epoch=epoch)
                self.batch_append_seconds.observe(time.perf_counter() - t0)
        err = ack.get("error")
        if err is None:
            seq = int(ack["seq"])
            if ack.get("duplicate"):
                # The server de-duplicates ids across the whole stream, not per subject: confirm
                # that the id is stored in *this* aggregate stream before reporting a duplicate.
                if len(ids) == 1 and await self._stored_at(seq, subject, ids[0]):
                    return AppendResult(stream, seq, seq, duplicate=True)
                found = await self._find_stored(stream, ids) if len(ids) > 1 else None
                if found is None:
                    await self._refuse_stored_ids(stream, expected)
                return found
            result = AppendResult(stream, seq - len(messages) + 1, seq)
            self._log.debug("event.appended", stream=stream, ids=ids, first=result.first, last=seq)
            return result
        return await self._resolve_error(stream, ids, expected, err)

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str], *, epoch: int = 0) -> dict[str, Any]:
        for attempt in range(self._retries + 1):
            self._guard(epoch)
            try:
                msg = await self.nc.request(subject, body, timeout=self._timeout, headers=headers)
                return self._ack(msg)
            except nats.errors.TimeoutError:
                _log.warning("event.publish_timeout", subject=subject, attempt=attempt + 1)
            except nats.errors.NoRespondersError as e:
                raise StoreUnavailable(f"no JetStream stream listens on {subject}") from e
            except nats.errors.ConnectionClosedError as e:
                raise StoreUnavailable("the NATS connection is closed") from e
        raise StoreUnavailable(f"no acknowledgement for {subject} after {self._retries + 1} tries")

    async def _publish_batch(
        self, subject: str, messages: list[tuple[bytes, dict[str, str]]], *, epoch: int = 0
    ) -> dict[str, Any]:
        for attempt in range(self._retries + 1):
            self._guard(epoch)
            batch_id = self.nc._nuid.next().decode()
            last = len(messages)
            try:
                for i, (body, headers) in enumerate(messages[:-1], start=1):
                    h = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                    await self.nc.publish(subject, body, headers=h)
                body, headers = messages[-1]
                h = {
                    **headers,
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(last),
                    "Nats-Batch-Commit": "1",
                }
                msg = await self.nc.request(subject, body, timeout=self._timeout, headers=h)
                return self._ack(msg)
            except nats.errors.TimeoutError:
                _log.warning("event.batch_timeout", subject=subject, attempt=attempt + 1, size=last)
            except nats.errors.NoRespondersError as e:
                raise StoreUnavailable(f"no JetStream stream listens on {subject}") from e
            except nats.errors.ConnectionClosedError as e:
                raise StoreUnavailable("the NATS connection is closed") from e
        raise StoreUnavailable(f"no acknowledgement for a batch on {subject} after {self._retries + 1} tries")

    @staticmethod
    def _ack(msg: Msg) -> dict[str, Any]:
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            raise StoreUnavailable("JetStream is not available for this subject")
        resp: dict[str, Any] = json.loads(msg.data)
        return resp

    async def _resolve_error(
        self, stream: str, ids: list[str], expected: int | None, err: dict[str, Any]
    ) -> AppendResult:
        code = err.get("err_code")
        description = str(err.get("description", ""))
        if code in _WRONG_LAST_SEQUENCE or code == _BATCH_DUPLICATE_ID:
            # Either another writer got there first, or our own earlier try did: look, don't guess.
            found = await self._find_stored(stream, ids)
            if found is not None:
                return found
            if code == _BATCH_DUPLICATE_ID:
                await self._refuse_stored_ids(stream, expected)
            actual = _parse_actual(description)
            raise ConcurrencyError(stream, expected, actual)
        if code == _MESSAGE_TOO_BIG:
            raise PayloadTooLarge(self.settings.max_event_bytes + 1, self.settings.max_event_bytes, "data")
        raise StoreError(f"append to {stream} failed: {description} (code {code})")

    async def _stored_at(self, seq: int, subject: str, event_id: str) -> bool:
        """Whether the message at ``seq`` is event ``event_id`` on ``subject``: one direct get.

        Asked right after a publish timed out, when the server may still be slow: retried like one.
        """
        for attempt in range(self._retries + 1):
            try:
                async for msg in self._direct_get({"seq": seq}):
                    h = msg.headers or {}
                    if not msg.data and "Status" in h:
                        return False
                    return h.get("Nats-Subject") == subject and h.get("Nats-Msg-Id") == event_id
            except StoreUnavailable:
                _log.warning("event.confirm_timeout", seq=seq, attempt=attempt + 1)
        raise StoreUnavailable(f"no answer from JetStream confirming message {seq}")

    async def _refuse_stored_ids(self, stream: str, expected: int | None) -> NoReturn:
        # Some id of this append is stored, but not as this same append to this stream. The server
        # reports that before it checks the expected sequence; a stale writer must still get a
        # conflict, exactly as from the memory store.
        current = await self.stream_position(stream)
        if expected is not None and expected != current:
            raise ConcurrencyError(stream, expected, current)
        raise InvalidPayload("an event id of this append is already stored, in another append", field="id")

    async def append_many(self, appends: Sequence[tuple[str, Sequence[Envelope], int | None]]) -> list[AppendResult]:
        """See ``EventStore.append_many``: one atomic batch across subjects (ADR-50).

        Each stream's first message carries its expected position; the server checks them all when
        the batch commits, so a stale one rejects the whole batch.
        """
        if not self._writable.is_set():
            await self._writable.wait()
        epoch = self._epoch
        streams = [stream for stream, _, _ in appends]
        if len(set(streams)) != len(streams):
            raise InvalidPayload("a stream appears twice in one atomic append", field="subject")
        total = sum(len(events) for _, events, _ in appends)
        if total > MAX_EVENTS_PER_APPEND:
            raise InvalidPayload(f"{total} events in one atomic append; the limit is {MAX_EVENTS_PER_APPEND}")
        items: list[tuple[str, bytes, dict[str, str]]] = []
        for stream, events, expected in appends:
            check_stream(stream)
            subject = f"{self.settings.prefix}.{stream}"
            for i, env in enumerate(events):
                if env.subject != stream:
                    raise InvalidPayload(f"event {env.id} belongs to {env.subject!r}, not {stream!r}", field="subject")
                body, headers = encode(env, self._registry)
                if i == 0 and expected is not None:
                    headers["Nats-Expected-Last-Subject-Sequence"] = str(expected)
                items.append((subject, body, headers))
        if not items:
            return [await self.append(stream, [], expected) for stream, _, expected in appends]
        async with self._batches:
            t0 = time.perf_counter()
            ack = await self._publish_atomic(items, epoch=epoch)
            self.batch_append_seconds.observe(time.perf_counter() - t0)
        if ack.get("error") is None:
            seq = int(ack["seq"]) - total + 1
            out = []
            for stream, events, _ in appends:
                n = len(events)
                out.append(AppendResult(stream, seq if n else 0, seq + n - 1 if n else 0))
                seq += n
            return out
        err = ack["error"]
        code = err.get("err_code")
        if code not in (*_WRONG_LAST_SEQUENCE, _BATCH_DUPLICATE_ID):
            raise StoreError(f"atomic append failed: {err.get('description', '')} (code {code})")
        # Either our own earlier try landed (then all of it did) or some expectation is stale.
        found = [await self._find_stored(stream, [e.id for e in events]) for stream, events, _ in appends if events]
        if all(f is not None for f in found):
            return [f for f in found if f is not None]
        for stream, _, expected in appends:
            current = await self.stream_position(stream)
            if expected is not None and expected != current:
                raise ConcurrencyError(stream, expected, current)
        raise InvalidPayload("an event id of this append is already stored, in another append", field="id")

    async def _publish_atomic(
        self, items: list[tuple[str, bytes, dict[str, str]]], *, epoch: int = 0
    ) -> dict[str, Any]:
        """Publish ``(subject, body, headers)`` as one atomic batch; the commit's acknowledgement."""
        last = len(items)
        for attempt in range(self._retries + 1):
            self._guard(epoch)
            batch_id = self.nc._nuid.next().decode()
            try:
                for i, (subject, body, headers) in enumerate(items[:-1], start=1):
                    h = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                    await self.nc.publish(subject, body, headers=h)
                subject, body, headers = items[-1]
                h = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(last), "Nats-Batch-Commit": "1"}
                msg = await self.nc.request(subject, body, timeout=self._timeout, headers=h)
                return self._ack(msg)
            except nats.errors.TimeoutError:
                _log.warning("event.batch_timeout", size=last, attempt=attempt + 1)
            except nats.errors.NoRespondersError as e:
                raise StoreUnavailable("no JetStream stream listens on the event subjects") from e
            except nats.errors.ConnectionClosedError as e:
                raise StoreUnavailable("the NATS connection is closed") from e
        raise StoreUnavailable(f"no acknowledgement for an atomic batch after {self._retries + 1} tries")

    async def _find_stored(self, stream: str, ids: list[str]) -> AppendResult | None:
        stored = await self._read_back(stream)
        stored_ids = [e.id for e in stored]
        n = len(ids)
        for i in range(len(stored_ids) - n + 1):
            if stored_ids[i : i + n] == ids:
                return AppendResult(stream, stored[i].sequence, stored[i + n - 1].sequence, duplicate=True)
        return None

    async def _read_back(self, stream: str) -> list[Envelope]:
        """``read_stream``, retried like a publish: asked right after a timeout, the server may be slow."""
        for attempt in range(self._retries + 1):
            try:
                return await self.read_stream(stream)
            except StoreUnavailable:
                _log.warning("event.confirm_timeout", stream=stream, attempt=attempt + 1)
        raise StoreUnavailable(f"no answer from JetStream reading back {stream} to confirm an append")

    # ---- reading -------------------------------------------------------------------------------

    async def _direct_get(self, request: dict[str, Any], stream: str | None = None) -> AsyncIterator[Msg]:
        """Messages of one (batched) direct get, ending at the end-of-batch or not-found status."""
        reply, queue = self._inbox.open()
        name = stream or self.settings.name
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{name}", json.dumps(request).encode(), reply=reply)
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), self._timeout)
                except TimeoutError as e:
                    raise StoreUnavailable("no answer to a direct get from JetStream") from e
                status = msg.headers.get("Status") if msg.headers else None
                if status is not None and not msg.data:
                    if status in ("204", "404"):
                        yield msg  # end of batch, or no message: headers carry the pending count
                        return
                    raise StoreError(f"direct get failed: {status} {msg.headers}")
                yield msg
        finally:
            self._inbox.close(reply)

    async def read_stream(self, stream: str, after: int = 0) -> list[Envelope]:
        """See ``EventStore.read_stream``: batched direct gets, a round trip per 1,000 events."""
        subject = f"{self.settings.prefix}.{stream}"
        out: list[Envelope] = []
        seq = after + 1
        while True:
            pending = 0
            async for msg in self._direct_get({"seq": seq, "next_by_subj": subject, "batch": 1000}):
                h = msg.headers or {}
                if not msg.data and "Status" in h:
                    pending = int(h.get("Nats-Num-Pending", "0") or 0)
                    break
                position = int(h["Nats-Sequence"])
                seq = position + 1
                env = self._decode(subject, msg.data, h, position)
                if env is not None:
                    out.append(env)
            if pending == 0:
                return out

    async def stream_position(self, stream: str) -> int:
        """See ``EventStore.stream_position``."""
        subject = f"{self.settings.prefix}.{stream}"
        async for msg in self._direct_get({"last_by_subj": subject}):
            h = msg.headers or {}
            if "Status" in h and not msg.data:
                return 0
            return int(h["Nats-Sequence"])
        return 0

    async def head(self) -> int:
        """See ``EventStore.head``."""
        try:
            info = await self.js.stream_info(self.settings.name)
        except nats.errors.TimeoutError as e:
            raise StoreUnavailable("no answer from JetStream for stream info") from e
        return int(info.state.last_seq)

    async def unreadable_tail(self, stream: str, after: int) -> int:
        """See ``EventStore.unreadable_tail``."""
        last = 0
        subject = f"{self.settings.prefix}.{stream}"
        async for raw in self.read_raw(subject=subject, after=after):
            try:
                decode_message(stream, raw.data, raw.headers, raw.sequence, self._registry)
            except UnknownEventType:
                return 0  # perhaps a newer writer's: never skipped, the conflict stays (and is loud)
            except UnknownSchemaVersion as e:
                if isinstance(e.version, int) and not isinstance(e.version, bool) and e.version > 0:
                    return 0  # a version this reader does not know yet: never skipped
                last = raw.sequence  # no version, or not a number: malformed
                continue
            except InvalidPayload:
                last = raw.sequence
                continue
            return 0  # a valid event: the reader was behind, nothing to skip
        return last

    async def log_id(self) -> str:
        """See ``EventStore.log_id``: the event stream's name and creation time (kept by the server)."""
        try:
            info = await self.js.stream_info(self.settings.name)
        except nats.errors.TimeoutError as e:
            raise StoreUnavailable("no answer from JetStream for stream info") from e
        return f"{self.settings.name}@{info.created or ''}"

    async def missing(self) -> int:
        """See ``EventStore.missing``: from the server's count of the stream's messages against its last
        position (the server keeps both apart from the messages; a message it dropped on recovery
        leaves the last position as it was)."""
        try:
            info = await self.js.stream_info(self.settings.name)
        except nats.errors.TimeoutError as e:
            raise StoreUnavailable("no answer from JetStream for stream info") from e
        return max(0, int(info.state.last_seq) - int(info.state.messages))

    async def event_id_at(self, position: int) -> str | None:
        """See ``EventStore.event_id_at``: one direct get; the id from the headers, nothing decoded (an
        event of a type this version does not know is still there)."""
        if position < 1:
            return None
        async for msg in self._direct_get({"seq": position}):
            h = msg.headers or {}
            if not msg.data and "Status" in h:
                return None
            return h.get("ce-id") or h.get("Nats-Msg-Id") or ""
        return None

    async def read_raw(
        self,
        stream: str | None = None,
        *,
        subject: str | None = None,
        after: int = 0,
        end: int | None = None,
        batch: int = 1000,
        window: int = 4,
    ) -> AsyncIterator[RawMessage]:
        """Stored messages of ``stream`` (default: the event stream) after ``after``, raw, in order.

        ``subject`` filters (wildcards allowed); ``end`` stops at that position, else at the head as
        it is when each batch is asked for. Batched direct gets: it needs no consumer, so any identity
        allowed to direct-get the stream can read it, and a record that would not decode is still
        returned (its reader decides). Unfiltered and with an ``end``, up to ``window`` batches are
        asked for at once: a batch from position ``s`` holds the first ``batch`` messages at or after
        ``s``, so batches from ``s``, ``s + batch``, ... cover the stream whole (overlapping only where
        the stream has gaps, and what was already delivered is skipped).
        """
        name = stream or self.settings.name
        if subject is None and end is not None and window > 1:
            async for m in self._read_pipelined(name, after, end, batch, window):
                yield m
            return
        seq = after + 1
        while end is None or seq <= end:
            msgs, pending = await self._batch(name, seq, batch, subject)
            for m in msgs:
                if end is not None and m.sequence > end:
                    return
                seq = m.sequence + 1
                yield m
            if pending == 0 or not msgs:
                return

    async def _batch(self, name: str, seq: int, batch: int, subject: str | None = None) -> tuple[list[RawMessage], int]:
        """One batched direct get: the messages, and how many more the server says follow."""
        request: dict[str, Any] = {"seq": seq, "batch": batch}
        if subject is not None:
            request["next_by_subj"] = subject
        out: list[RawMessage] = []
        pending = 0
        async for msg in self._direct_get(request, name):
            h = dict(msg.headers or {})
            if not msg.data and "Status" in h:
                pending = int(h.get("Nats-Num-Pending", "0") or 0)
                break
            out.append(RawMessage(int(h["Nats-Sequence"]), h.get("Nats-Subject", ""), bytes(msg.data), h))
        return out, pending

    async def _read_pipelined(
        self, name: str, after: int, end: int, batch: int, window: int
    ) -> AsyncIterator[RawMessage]:
        starts = iter(range(after + 1, end + 1, batch))
        inflight: deque[asyncio.Task[tuple[list[RawMessage], int]]] = deque()
        delivered = after

        def launch() -> None:
            start = next(starts, None)
            if start is not None:
                inflight.append(asyncio.ensure_future(self._batch(name, start, batch)))

        try:
            for _ in range(window):
                launch()
            while inflight:
                msgs, _ = await inflight.popleft()
                launch()
                for m in msgs:
                    if m.sequence <= delivered:
                        continue  # an overlap (the stream has a gap before it)
                    if m.sequence > end:
                        return
                    delivered = m.sequence
                    yield m
                if delivered >= end:
                    return
        finally:
            for t in inflight:
                t.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def read_all(self, after: int = 0) -> AsyncIterator[Envelope]:
        """See ``EventStore.read_all``: an ordered consumer (or direct gets), stopped at the head seen on entry."""
        end = await self.head()
        if end <= after:
            return
        if self.reads == "direct":
            # The stream holds only the event subjects: no filter, so batches go out several at a time.
            expect = after + 1
            async for raw in self.read_raw(after=after, end=end):
                if raw.sequence > expect:
                    raise lost_events(expect, raw.sequence)
                expect = raw.sequence + 1
                env = self._decode(raw.subject, raw.data, raw.headers, raw.sequence)
                if env is not None:
                    yield env
            return
        async for env in self._ordered(after, stop_at=end):
            yield env

    async def subscribe(self, after: int = 0) -> AsyncIterator[Envelope]:
        """See ``EventStore.subscribe``: an ordered consumer that catches up and stays live (direct
        gets, polled, for a reader that may not create consumers)."""
        if self.reads == "direct":
            idle = 0.05
            while True:
                moved = False
                async for raw in self.read_raw(subject=f"{self.settings.prefix}.>", after=after):
                    if raw.sequence > after + 1:
                        raise lost_events(after + 1, raw.sequence)
                    after = raw.sequence
                    moved = True
                    env = self._decode(raw.subject, raw.data, raw.headers, raw.sequence)
                    if env is not None:
                        yield env
                idle = 0.05 if moved else min(1.0, idle * 2)
                await asyncio.sleep(idle)
        async for env in self._ordered(after, stop_at=None):
            yield env

    async def _ordered(self, after: int, stop_at: int | None) -> AsyncIterator[Envelope]:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        try:
            sub = await self.js.subscribe(
                f"{self.settings.prefix}.>",
                stream=self.settings.name,
                ordered_consumer=True,
                config=config,
                idle_heartbeat=2.0,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
        except nats.errors.TimeoutError as e:  # (a cluster electing a stream leader answers nothing)
            raise StoreUnavailable("no answer from JetStream for a consumer on the log") from e
        expect = after + 1
        try:
            async for msg in sub.messages:
                position = _stream_sequence(msg)
                if stop_at is not None and position > stop_at:
                    return
                if position > expect:
                    raise lost_events(expect, position)
                expect = position + 1
                env = self._decode(msg.subject, msg.data, msg.headers, position)
                if env is not None:
                    yield env
                if stop_at is not None and position >= stop_at:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error, AttributeError):
                await sub.unsubscribe()

    def decode_raw(self, raw: RawMessage) -> Envelope | None:
        """The event a raw message of the event stream holds; None (reported) if it does not decode."""
        return self._decode(raw.subject, raw.data, raw.headers, raw.sequence)

    def _decode(self, subject: str, body: bytes, headers: Any, position: int) -> Envelope | None:
        try:
            return decode_message(subject[self._prefix_len :], body, headers, position, self._registry)
        except InvalidPayload as e:
            self.on_invalid(position, e)
            return None

    async def close(self) -> None:
        """Stop the inbox; close the connection if this store opened it."""
        if self._started:
            with contextlib.suppress(nats.errors.Error):
                await self._inbox.stop()
        if self._owns and not self.nc.is_closed:
            await self.nc.close()


def _stream_sequence(msg: Msg) -> int:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the v2 form with
    # domain and account hash first; nats-py parses both.
    reply = msg.reply
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


def _parse_actual(description: str) -> int | None:
    tail = description.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None
