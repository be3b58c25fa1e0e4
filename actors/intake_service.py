"""Intake: the messages outsiders send, taken fairly from the shared consumers, each to one outcome.

Two durable pull consumers on the intake stream, one per sender role, feed a bounded fair queue
(``actors.intake_queue``); workers take one message each, translate it into a command through the one
table (``actors.intake.INTAKE_COMMANDS``), run it on its aggregate's shell, and record its outcome: its
facts, or an ``InputAccepted``/``InputRejected`` on the sender's outcomes stream. A submitter's message
past its intake rate is refused at once, never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from actors.admission import Admission
from actors.core import Core
from actors.errors import DomainError
from actors.intake import intake_command
from actors.intake_queue import FairQueue
from actors.job import SubmitJob
from actors.runner import Runner
from actors.task import ReportCompleted
from events import ANY, GpufleetError, InvalidPayload, StoreUnavailable, new_envelope
from events.aio import cancel_and_wait
from events.intake import InputAccepted, InputRejected, ProviderRegistration, decode_intake
from events.store import JetStreamEventStore
from events.store.blobs import BlobStore
from events.store.topology import Topology
from events.subjects import outcomes_stream_of
from events.verification import objects_to_compare

__all__ = ["INTAKE_CONSUMER", "INTAKE_CONSUMERS", "IntakeService", "intake_room", "sender_of"]

#: The one durable consumer on the intake stream that orchestrators shared before intake was split by
#: role (deleted at start-up where it still exists; ``actors.metrics`` still reads it on such a network).
INTAKE_CONSUMER = "orchestrators"
#: The durable consumers on the intake stream that every orchestrator of a network shares, one per
#: sender role, so that providers' reports never wait behind submissions.
INTAKE_CONSUMERS: dict[str, str] = {
    "provider": "orchestrators-providers",
    "submitter": "orchestrators-submitters",
}
#: Intake messages fetched at once, at most.
_INTAKE_FETCH = 256
#: Seconds one pull request for intake messages waits on the server when there are none.
_INTAKE_PULL_S = 1.0
#: Intake messages waiting in the fair queue, at most (or 2 x intake_concurrency, if more): how far
#: past one sender's burst the orchestrator looks for everyone else's next message...
_INTAKE_QUEUE_ITEMS = 4096
#: ...and their bytes, at most.
_INTAKE_QUEUE_BYTES = 64 * 1024 * 1024
#: Refusals for the intake rate being recorded at once, at most (a flood waits on these).
_RATE_REFUSALS_IN_FLIGHT = 64
#: An intake message as it waits for a worker: the message, its intake sequence, its arrival time.
_Delivery = tuple[Msg, int, datetime]


def sender_of(subject: str, prefix: str) -> tuple[str, str]:
    """The role and name an intake subject names (``<prefix>.<role>.<name>.<verb>…``); ``""`` for what
    it lacks (the message is then refused by ``decode_intake``, not here)."""
    parts = subject.split(".")
    n = prefix.count(".") + 1
    return (parts[n] if len(parts) > n else "", parts[n + 1] if len(parts) > n + 1 else "")


def intake_room(role: str, queue: FairQueue[Any]) -> int:
    """Room in the fair queue for ``role``'s messages: submitters leave one fetch's worth for
    providers, so that a queue full of submissions never keeps a provider's report out."""
    return queue.room() - (0 if role == "provider" else _INTAKE_FETCH)


class IntakeService:
    """The orchestrator's intake: consumers, fair queue, rate refusals, translation and outcomes."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        topology: Topology,
        store: JetStreamEventStore,
        core: Core,
        admission: Admission,
        runner: Runner,
        *,
        open_dispatch: Callable[[str], Awaitable[None]],
        source: str,
        lease_grace_s: float,
        concurrency: int,
        ack_wait_s: float,
        log: Any = None,
    ) -> None:
        self.nc = nc
        self.js = js
        #: The network's names (the orchestrator sets the checked one at start).
        self.topology = topology
        self.store = store
        self.core = core
        self.world = core.world
        self.admission = admission
        self.runner = runner
        #: Creates a provider's dispatch consumer (``Dispatcher.open_dispatch``), before it registers.
        self.open_dispatch = open_dispatch
        self.source = source
        self.lease_grace_s = lease_grace_s
        self.concurrency = concurrency
        self.ack_wait_s = ack_wait_s
        self.log = log if log is not None else structlog.get_logger("gpufleet.intake")
        #: Intake sequences this process holds (queued, being handled, or being refused): a copy that
        #: JetStream delivers again meanwhile is left alone.
        self._in_hand: set[int] = set()
        #: Intake sequences this process handled whose outcome its world does not show yet (it follows
        #: the log a moment behind): a copy delivered again meanwhile is left alone too, or it would be
        #: charged to its sender's rate a second time, and could be refused after it was applied.
        self._settling: set[int] = set()
        #: Intake messages JetStream delivered to this orchestrator (with others, each gets a share).
        self.delivered = 0
        self._blob_store: BlobStore | None = None
        #: Spot-check draws: unpredictable to providers (``events.verification``).
        self._random = random.SystemRandom()

    # ---- intake ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take intake messages from the consumers every orchestrator of the network shares, fairly.

        Two durable pull consumers, one per sender role (``INTAKE_CONSUMERS``), each with its own
        fetch loop: providers' reports never wait behind submissions. JetStream hands each message to
        one orchestrator at a time, and hands it again (to whichever asks) if it is not acknowledged
        in time, so with several orchestrators each message still gets exactly one outcome. A message
        is acknowledged once its outcome (its facts, or an ``InputAccepted``/``InputRejected``) is in
        the log.

        Between fetching and processing, a bounded ``FairQueue``: providers first, then submitters
        round-robin, one message each per round, so one identity's burst is not ahead of everyone
        else's next message. A full queue stops the fetching (backpressure). A submitter's message
        past its intake rate (``Admission.arrival``) is not queued: its refusal is recorded at once.
        """
        n = self.concurrency
        self._in_hand.clear()
        queue: FairQueue[_Delivery] = FairQueue(max_items=self._intake_queue_items(), max_bytes=_INTAKE_QUEUE_BYTES)
        ready = asyncio.Semaphore(0)  # released once per queued message
        room = asyncio.Event()  # set when a worker took a message (the queue may have room again)
        refusals = asyncio.Semaphore(_RATE_REFUSALS_IN_FLIGHT)
        await self._drop_legacy_intake_consumer()
        running = [
            asyncio.create_task(self._fetch_loop(role, queue, ready, room, refusals), name=f"intake-{role}")
            for role in INTAKE_CONSUMERS
        ]
        running += [asyncio.create_task(self._intake_worker(queue, ready, room)) for _ in range(n)]
        try:
            await asyncio.gather(*running)
        finally:
            await cancel_and_wait(running)

    async def _drop_legacy_intake_consumer(self) -> None:
        """Delete the single consumer orchestrators shared before intake was split by role: left in
        place, it would hold every message it ever delivered, unacknowledged, forever."""
        for attempt in range(5):
            try:
                await self.js.delete_consumer(self.topology.intake_stream, INTAKE_CONSUMER)
                self.log.info("intake.legacy_consumer_deleted", consumer=INTAKE_CONSUMER)
                return
            except nats.js.errors.NotFoundError:
                return
            except (nats.errors.Error, OSError) as e:
                self.log.warning("intake.legacy_consumer_retry", error=str(e) or type(e).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))

    async def _fetch_loop(
        self,
        role: str,
        queue: FairQueue[_Delivery],
        ready: asyncio.Semaphore,
        room: asyncio.Event,
        refusals: asyncio.Semaphore,
    ) -> None:
        """Pull ``role``'s intake messages into the fair queue while it has room.

        A pull request (``CONSUMER.MSG.NEXT``, at most as many as fit) answered into a subscription
        whose callback only collects: a whole batch is then queued at once. (nats-py's ``fetch`` takes
        its messages one await at a time; on a busy event loop the workers then drain the queue faster
        than it fills, and the intake is served in stream order again.)"""
        loop = asyncio.get_running_loop()
        arrived: deque[Msg] = deque()  # at most one request's worth (and the rest of a lost one)
        got = asyncio.Event()

        async def collect(msg: Msg) -> None:
            arrived.append(msg)
            got.set()

        while True:
            sub = None
            try:
                name = await self._intake_consumer(role)
                inbox = self.nc.new_inbox()
                sub = await self.nc.subscribe(inbox, cb=collect)
                pull = f"$JS.API.CONSUMER.MSG.NEXT.{self.topology.intake_stream}.{name}"
                while True:
                    while intake_room(role, queue) <= 0:
                        room.clear()
                        await room.wait()
                    want = min(_INTAKE_FETCH, intake_room(role, queue))
                    request = {"batch": want, "expires": int(_INTAKE_PULL_S * 1e9)}
                    await self.nc.publish(pull, json.dumps(request).encode(), reply=inbox)
                    deadline = loop.time() + _INTAKE_PULL_S + 1.0
                    over = False
                    while want > 0 and not over:
                        if not arrived:
                            got.clear()
                            try:
                                await asyncio.wait_for(got.wait(), max(0.0, deadline - loop.time()))
                            except TimeoutError:
                                break  # the request was lost (a reconnect): ask again
                        msgs: list[Msg] = []
                        while arrived:
                            msg = arrived.popleft()
                            status = msg.headers.get(api.Header.STATUS) if msg.headers else None
                            if not status:
                                msgs.append(msg)
                            elif status != "100":  # 404, 408: nothing more for now; 409: see below
                                over = True
                                if status == "409" and "deleted" in (msg.headers or {}).get("Description", "").lower():
                                    raise StoreUnavailable(f"intake consumer {name} was deleted")
                        want -= len(msgs)
                        await self._enqueue(msgs, queue, ready, room, refusals)
            except (nats.errors.Error, OSError, GpufleetError) as e:
                self.log.warning("intake.interrupted", role=role, error=str(e) or type(e).__name__)
                await asyncio.sleep(0.5)
            finally:
                if sub is not None:
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await sub.unsubscribe()
                arrived.clear()

    async def _enqueue(
        self,
        msgs: list[Msg],
        queue: FairQueue[_Delivery],
        ready: asyncio.Semaphore,
        room: asyncio.Event,
        refusals: asyncio.Semaphore,
    ) -> None:
        """Delivered intake messages into the fair queue, or acknowledged (an outcome exists), or
        refused for their sender's rate (recorded at once, never queued)."""
        self.delivered += len(msgs)
        if self._settling:
            self._settling = {s for s in self._settling if not self.world.intake_done(s)}
        for msg in msgs:
            meta = msg.metadata
            seq = meta.sequence.stream
            if self.world.intake_done(seq):
                self.runner.spawn(self._ack(msg))
                continue
            if seq in self._in_hand or seq in self._settling:
                # Delivered again (past the ack wait) while this process still holds it, queued or
                # being handled, or has just handled it: that copy gives its one outcome, and it was
                # charged to the rate once.
                continue
            sender, name = sender_of(msg.subject, self.topology.intake_prefix)
            refusal = self.admission.arrival(sender, name)
            if refusal is not None:
                # Past its rate: one recorded refusal, and nothing queued. A flood waits here for a
                # free slot (bounded), not in memory.
                await refusals.acquire()
                self._in_hand.add(seq)
                self.runner.spawn(self._refuse(msg, seq, meta.timestamp, refusal, refusals))
                continue
            item = (msg, seq, meta.timestamp)
            size = len(msg.data) + len(msg.subject)
            while intake_room(sender, queue) <= 0 or not queue.offer(
                f"{sender}.{name}", item, size, urgent=sender == "provider"
            ):
                room.clear()
                await room.wait()
            self._in_hand.add(seq)
            ready.release()

    async def _intake_worker(self, queue: FairQueue[_Delivery], ready: asyncio.Semaphore, room: asyncio.Event) -> None:
        """Take intake messages from the fair queue, one at a time, and see each to its outcome."""
        while True:
            await ready.acquire()
            item = queue.take()
            room.set()
            if item is None:  # pragma: no cover - one release per queued message
                continue
            msg, seq, at = item
            try:
                if self.world.intake_done(seq):  # recorded meanwhile, by another orchestrator
                    await self._ack(msg)
                    continue
                # Shielded: a stopping orchestrator lets the message in hand finish (``stop`` waits for
                # what is in flight), as it cancels the workers.
                await asyncio.shield(self.runner.spawn(self._intake_one(msg, seq, at)))
            finally:
                self._out_of_hand(seq)

    async def _intake_consumer(self, role: str) -> str:
        """The shared durable consumer of ``role``'s intake messages (created by the first
        orchestrator, from the first message without an outcome): its name."""
        t = self.topology
        name = INTAKE_CONSUMERS[role]
        config = api.ConsumerConfig(
            durable_name=name,
            filter_subject=f"{t.intake_prefix}.{role}.>",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,
            # What one orchestrator holds at most: its queue, its workers' messages, a fetch, refusals.
            max_ack_pending=self._intake_queue_items() + self.concurrency + _INTAKE_FETCH + _RATE_REFUSALS_IN_FLIGHT,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.world.intake_low,
        )
        try:
            await self.js.consumer_info(t.intake_stream, name)
        except nats.js.errors.NotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):  # another orchestrator made it first
                await self.js.add_consumer(t.intake_stream, config=config)
        return name

    def _intake_queue_items(self) -> int:
        return max(_INTAKE_QUEUE_ITEMS, 2 * self.concurrency)

    async def _ack(self, msg: Msg) -> None:
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.ack()

    async def _refuse(self, msg: Msg, seq: int, at: datetime, refusal: InvalidPayload, slot: asyncio.Semaphore) -> None:
        """Record the refusal of a message past its sender's intake rate, then acknowledge it."""
        try:
            self.log.debug("intake.rate_refused", seq=seq, subject=msg.subject, reason=str(refusal))
            outcome = InputRejected(
                at=at.astimezone(UTC),
                intake_seq=seq,
                subject=msg.subject[:256],
                reason=str(refusal)[:2000],
                field=refusal.field,
                excerpt=msg.data[:300].decode("utf-8", errors="replace")[:300],
            )
            await self._record_outcome(msg, seq, outcome)
        finally:
            self._out_of_hand(seq)
            slot.release()

    def _out_of_hand(self, seq: int) -> None:
        """``seq`` was handled: until this process's world shows its outcome, it is still settling."""
        self._in_hand.discard(seq)
        if not self.world.intake_done(seq):
            self._settling.add(seq)

    async def _intake_one(self, msg: Msg, seq: int, at: datetime) -> None:
        bugs = 0
        for attempt in range(1_000_000):
            try:
                outcome = await self.accept(msg, seq, at.astimezone(UTC))
                if outcome is None:
                    await self._ack(msg)
                    return  # its facts (ids in-<seq>.<n>) are the record that it was accepted
                break
            except GpufleetError as e:
                # Not the input's fault (the store, a conflict storm): keep it and try again; never
                # record a false outcome. Tell JetStream we are still on it.
                self.log.warning("intake.retry", seq=seq, error=str(e))
                with contextlib.suppress(nats.errors.Error, OSError):
                    await msg.in_progress()
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(attempt, 6)))
            except Exception as e:
                bugs += 1
                self.log.exception("intake.internal_error", seq=seq, subject=msg.subject)
                if bugs >= 3:
                    # Record it rather than loop forever on a message that trips a bug.
                    outcome = InputRejected(
                        at=at.astimezone(UTC),
                        intake_seq=seq,
                        subject=msg.subject[:256],
                        reason=f"internal error: {e!r}"[:2000],
                        excerpt=msg.data[:300].decode("utf-8", errors="replace")[:300],
                    )
                    break
                await asyncio.sleep(0.2)
        else:  # pragma: no cover
            return
        await self._record_outcome(msg, seq, outcome)

    async def _record_outcome(self, msg: Msg, seq: int, outcome: InputAccepted | InputRejected) -> None:
        """Append a message's outcome to its sender's outcomes stream (once: its id is ``in-<seq>``),
        then acknowledge the message."""
        stream = outcomes_stream_of(msg.subject)
        env = new_envelope(stream, outcome, id=f"in-{seq}", source=self.source)
        for attempt in range(100):
            try:
                if not self.world.intake_done(seq):  # another orchestrator may have recorded it
                    await self.store.append(stream, [env], ANY)
                await self._ack(msg)
                return
            except GpufleetError as e:
                self.log.warning("intake.outcome_retry", seq=seq, error=str(e))
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(attempt, 6)))

    async def accept(self, msg: Msg, seq: int, at: datetime) -> InputAccepted | InputRejected | None:
        """Validate and apply one intake message; the outcome to record, or None when its facts are."""
        subject = msg.subject
        try:
            # The subject names the sender, and only the sender's credentials may publish on it.
            im = decode_intake(subject, msg.data)
            cmd_id = f"in-{seq}"
            body, kind, target = im.body, im.kind, im.target_id
            command = intake_command(im, cmd_id, at, self.lease_grace_s)
            if isinstance(command, ReportCompleted):
                command = await self._verification_inputs(target, command)
            if isinstance(body, ProviderRegistration):
                # Before the registration lands, so that no lease is dispatched to a provider with no
                # consumer; a refused registration leaves an idle consumer that expires by itself.
                await self.open_dispatch(target)
            admitted = isinstance(command, SubmitJob) and self._admit(command)
            try:
                handled = await self.runner.shell(kind).handle(target, command, causationid=cmd_id)
            except BaseException:
                if admitted and isinstance(command, SubmitJob):
                    self.admission.release(command.submitter or command.spec.submitter, command.job_id)
                raise
            if admitted and isinstance(command, SubmitJob) and not handled.events:
                # The same submission again, of a job this process no longer holds (it was over and
                # left memory): it holds nothing new.
                self.admission.release(command.submitter or command.spec.submitter, command.job_id)
        except (InvalidPayload, DomainError) as e:
            field_name = getattr(e, "field", None)
            self.log.info("intake.rejected", seq=seq, subject=subject, reason=str(e))
            return InputRejected(
                at=at,
                intake_seq=seq,
                subject=subject[:256],
                reason=str(e)[:2000],
                field=field_name,
                excerpt=msg.data[:300].decode("utf-8", errors="replace")[:300],
            )
        if handled.events or handled.duplicate:
            # Its facts are the record (a duplicate: this very message was applied before, by us or
            # another orchestrator, and its facts are already in the log).
            return None
        note = "no change"
        return InputAccepted(at=at, intake_seq=seq, subject=subject[:256], facts=0, note=note)

    def _admit(self, cmd: SubmitJob) -> bool:
        """Check a submission against its sender's quotas (``actors.admission``): raises the refusal
        (``QuotaExceeded``, recorded as the message's outcome), or returns True (admitted)."""
        who = cmd.submitter or cmd.spec.submitter
        refusal = self.admission.admit_job(
            who, cmd.job_id, cmd.spec.task_count(), self.core.windows.usage(who), self.world.jobs.__contains__
        )
        if refusal is not None:
            raise refusal
        return True

    async def _verification_inputs(self, task_id: str, cmd: ReportCompleted) -> ReportCompleted:
        """What the task decider needs to verify a result, which only the orchestrator can supply.

        A fresh draw for the spot check (made now, when the result is in, so a provider cannot know
        beforehand whether it will be checked); the sender's trust; and, for results stored as
        objects, their content (digest checked), so they compare element by element. The decider
        records all of it in the log.
        """
        # The world may lag the log by a moment: a result it does not know yet is not loaded, agrees
        # with nothing, and costs one more replica; a task it does not know yet keeps the draw 0,
        # which checks it.
        t = self.world.tasks.get(task_id)
        if t is None or t.spec is None or t.spec.verify is None:
            return cmd
        rec = self.world.reputation.get(cmd.provider_id)
        loaded: dict[str, Any] = {}
        # By name, never by digest alone: a reference to an object that was never stored must not read
        # another provider's object that has the same digest.
        for obj in objects_to_compare([c.result for c in t.candidates], cmd.result, cmd.provider_id):
            try:
                data = await self._blobs().get(obj)
                loaded[obj.name] = json.loads(data)
            except (GpufleetError, ValueError, RecursionError, MemoryError, nats.errors.Error, OSError) as e:
                # Not comparable: it agrees with nothing, so verification asks for another replica.
                self.log.warning("verify.unreadable_result", task_id=task_id, object=obj.name, error=str(e))
        return replace(
            cmd,
            draw=self._random.random(),
            trust=rec.consecutive_valid if rec is not None else 0,
            loaded=loaded,
        )

    def _blobs(self) -> BlobStore:
        if self._blob_store is None:
            self._blob_store = BlobStore(self.nc, "orchestrator", "orchestrator", self.topology)
        return self._blob_store
