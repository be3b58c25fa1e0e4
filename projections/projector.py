"""The projector: runs views over the log, catching up then following, or rebuilt from position 0.

It folds events into every view in memory and, once per batch, writes each view's dirty rows and its
checkpoint in ONE transaction, off the event loop; the next batch folds while the last one commits.
A crash loses at most the uncommitted batch, which is folded again on restart from the checkpoint;
an event at or below a view's checkpoint is never applied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from events.audit import AuditCheckpointed
from events.envelope import Envelope, new_envelope
from events.errors import ConcurrencyError, InvalidPayload, StoreError
from events.store.jetstream import JetStreamEventStore
from events.store.protocol import EventStore
from events.store.watermark import Watermark, check_watermark
from projections.chain import CHAIN_STREAM, ChainView
from projections.eta import EtaView
from projections.fleet import FleetView
from projections.jobs import JobsView
from projections.ledger import LedgerView
from projections.quarantine import ALL_VIEWS, QuarantineView
from projections.source import read_batches
from projections.storage import Checkpoint, ReadModelError, ReadModelStore, Table, Value
from projections.view import Changes, Handler, View

__all__ = ["ChainHead", "Projector", "default_views"]

_log = structlog.get_logger("gpufleet.projections")


def default_views() -> list[View]:
    """One of each view: jobs (and tasks), fleet, ledger, ETA, the audit chain, and the quarantine."""
    return [JobsView(), FleetView(), LedgerView(), EtaView(), ChainView(), QuarantineView()]


@dataclass(slots=True)
class WatermarkRow:
    """The last event the projector applied (committed with the views' rows): see ``events.store.watermark``."""

    name: str
    position: int
    event_id: str
    log: str


WATERMARK = Table.of("log_watermark", WatermarkRow, key=("name",))


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The audit chain as it was when a batch was taken for commit."""

    position: int
    digest: str
    events: int
    at: datetime | None


class Projector:
    """Keeps a set of views up to date from an ``EventStore`` in a ``ReadModelStore``.

    ``batch_size``: events folded per commit while catching up (live, a commit also happens after
    ``flush_interval`` seconds without one). ``read_batch``: events per read request.

    ``checkpoint_every``: when following live, append an ``AuditCheckpointed`` to ``audit.chain``
    every that many events (None: never). ``in_transaction`` is a test hook called inside each
    commit's transaction, after the rows and before COMMIT, with the batch's position.

    ``on_commit``: called on the event loop with the position once each commit is durable (the
    dashboard's push); it must be cheap and must not raise. It may be set after construction.
    """

    def __init__(
        self,
        events: EventStore,
        db: ReadModelStore,
        views: Sequence[View] | None = None,
        *,
        batch_size: int = 5000,
        read_batch: int = 2000,
        flush_interval: float = 0.05,
        checkpoint_every: int | None = None,
        source: str = "gpufleet.projections",
        in_transaction: Callable[[int], None] | None = None,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.events = events
        self.db = db
        self.views: list[View] = list(views) if views is not None else default_views()
        self.batch_size = batch_size
        self.read_batch = read_batch
        self.flush_interval = flush_interval
        self.checkpoint_every = checkpoint_every
        self.source = source
        self.in_transaction = in_transaction
        self.on_commit = on_commit
        self._position = 0
        self._view_pos: dict[str, int] = {}
        self._routes: dict[str, list[tuple[int, Handler, str]]] = {}
        self._all: list[tuple[int, View]] = []
        self._uncommitted = 0
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[None] | None = None
        #: A write that failed: its batch is lost from memory, so nothing after it may be written.
        self._failed: BaseException | None = None
        #: The task in ``run``: a failed write stops it at once, idle or not (``_write_done``).
        self._main: asyncio.Task[Any] | None = None
        #: Cancellations of ``run``'s task made from inside (a failed write, a failed ticker).
        self._inner_cancels = 0
        self._chain: ChainView | None = next((v for v in self.views if isinstance(v, ChainView)), None)
        self._quarantine: QuarantineView | None = next((v for v in self.views if isinstance(v, QuarantineView)), None)
        self.quarantined = 0
        if isinstance(events, JetStreamEventStore):
            # Live reads decode in the store: what does not decode is quarantined here too.
            events.on_invalid = self.quarantine_invalid
        self._appended_events = 0
        self._live_from = 0
        self.applied = 0
        self.batches = 0
        self._opened = False
        self._last_id = ""
        self._log_id = ""
        self._checked = False

    @property
    def position(self) -> int:
        """The global position of the last event folded (committed or not)."""
        return self._position

    # ---- opening -------------------------------------------------------------------------------

    def open(self) -> int:
        """Create tables, reset views whose version changed, load every view's rows; the position."""
        tables = [t for v in self.views for t in v.tables]
        self.db.ensure([*tables, WATERMARK])
        stale = [v for v in self.views if self.db.checkpoint(v.name).version not in (0, v.version)]
        if stale:
            with self.db.transaction() as tx:
                for v in stale:
                    _log.info("projection.reset", view=v.name, version=v.version)
                    for t in v.tables:
                        tx.clear(t)
                    tx.set_checkpoint(v.name, Checkpoint(0, v.version))
        for v in self.views:
            try:
                v.load(self.db)
            except (sqlite3.Error, ReadModelError):
                raise  # the database itself (locked, damaged, gone): not this view's rows; nothing is cleared
            except Exception as e:
                # Stored rows this view cannot take back (a fold that failed half-way, once, and was
                # quarantined; or a bug): read models are disposable, so this one view starts over
                # from position 0 rather than stopping every view at every start.
                _log.error("projection.load_failed", view=v.name, error=f"{type(e).__name__}: {e}")
                with self.db.transaction() as tx:
                    for t in v.tables:
                        tx.clear(t)
                    tx.set_checkpoint(v.name, Checkpoint(0, v.version))
                v.load(self.db)
            self._view_pos[v.name] = self.db.checkpoint(v.name).position
        self._position = min(self._view_pos.values(), default=0)
        self._route()
        self._opened = True
        return self._position

    def recover(self) -> int:
        """After a failed write (``run`` raised it): forget what was folded but not written, and take
        every view back to what the store committed; the position to follow from again."""
        self._failed = None
        self._inflight = None
        self._uncommitted = 0
        self._opened = False
        position = self.open()
        mark = self.watermark()
        self._last_id = mark.event_id if mark is not None and mark.position == position else ""
        return position

    def reset(self) -> None:
        """Empty every view and its checkpoint: the next catch-up rebuilds from position 0."""
        self.db.ensure([*(t for v in self.views for t in v.tables), WATERMARK])
        with self.db.transaction() as tx:
            tx.clear(WATERMARK)
            for v in self.views:
                for t in v.tables:
                    tx.clear(t)
                tx.set_checkpoint(v.name, Checkpoint(0, v.version))
        self._opened = False
        self.open()

    def _route(self) -> None:
        self._routes = {}
        self._all = []
        for v in self.views:
            start = self._view_pos[v.name]
            if v.all_events:
                self._all.append((start, v))
                continue
            for type_name, handler in v.handlers.items():
                self._routes.setdefault(type_name, []).append((start, handler, v.name))

    def dump(self) -> dict[str, list[tuple[Value, ...]]]:
        """Every table of every view as stored, rows ordered by key: to compare read models."""
        return {t.name: self.db.scan(t) for v in self.views for t in v.tables}

    # ---- folding and committing ----------------------------------------------------------------

    def fold(self, env: Envelope) -> None:
        """Fold one event into every view that has not applied it yet."""
        seq = env.sequence
        if seq <= self._position:
            return  # already applied (a redelivery)
        for start, handler, name in self._routes.get(env.type, ()):
            if seq > start:
                try:
                    handler(env.data, env)
                except Exception as e:  # one bad event never stops the read models
                    self._quarantine_event(seq, name, env.type, "", f"{type(e).__name__}: {e}")
        for start, view in self._all:
            if seq > start:
                try:
                    view.evolve(env)
                except Exception as e:
                    self._quarantine_event(seq, view.name, env.type, "", f"{type(e).__name__}: {e}")
        self._position = seq
        self._last_id = env.id
        self._uncommitted += 1
        self.applied += 1

    def quarantine_invalid(self, position: int, error: InvalidPayload) -> None:
        """A stored event at ``position`` does not decode: every view skips it, and it is recorded."""
        if position <= self._position:
            return  # behind the checkpoint: recorded when it was first read
        # The position does not move here: a batch is decoded before its earlier events are folded.
        # The next event folded moves it past; a log that ends with such an event shows it again,
        # as the same row, after a restart.
        self._quarantine_event(position, ALL_VIEWS, "", error.field or "", error.problem)
        self._uncommitted += 1

    def _quarantine_event(self, position: int, view: str, type_name: str, field: str, reason: str) -> None:
        self.quarantined += 1
        _log.error("projection.quarantined", position=position, view=view, type=type_name, field=field, reason=reason)
        if self._quarantine is not None:
            self._quarantine.record(position, view, type_name, field, reason)

    def watermark(self) -> Watermark | None:
        """The last event applied, as committed (None before the first commit)."""
        rows = self.db.select(WATERMARK, {"name": "projector"})
        if not rows:
            return None
        row = WATERMARK.make(rows[0])
        return Watermark(row.position, row.event_id, row.log)

    async def _check_log(self) -> None:
        """Before the first read: stop if the log lost what the read models hold; rebuild for a new log."""
        if self._checked:
            return
        self._log_id = await self.events.log_id()
        if not await check_watermark(self.events, self.watermark(), "projector", reset_hint="gpufleet replay --db"):
            _log.warning("projection.new_log", log=self._log_id)
            self.reset()
        self._checked = True

    def _write(self, changes: list[tuple[View, Changes]], position: int, mark: Watermark | None = None) -> None:
        with self.db.transaction() as tx:
            if mark is not None:
                tx.upsert(WATERMARK, [("projector", mark.position, mark.event_id, mark.log)])
            for view, table_changes in changes:
                for tc in table_changes:
                    tx.delete(tc.table, tc.deletes)
                    tx.upsert(tc.table, tc.upserts)
                tx.set_checkpoint(view.name, Checkpoint(max(position, self._view_pos[view.name]), view.version))
            if self.in_transaction is not None:
                self.in_transaction(position)

    async def commit(self) -> ChainHead | None:
        """Start writing what was folded since the last commit; the previous write is awaited first.

        Cancelling the caller does not cancel the commit: the batch it took is written regardless.
        """
        return await asyncio.shield(self._commit())

    async def _commit(self) -> ChainHead | None:
        async with self._lock:
            if self._failed is not None:
                # A failed batch is gone: a later one committed with its checkpoint would hide the gap.
                raise self._failed
            if self._uncommitted == 0:
                return None
            position = self._position
            changes = [(v, v.changes()) for v in self.views]
            chain = self._chain
            head = (
                ChainHead(position, chain.digest.hex(), chain.head.events, chain.last_at) if chain is not None else None
            )
            self._uncommitted = 0
            mark = Watermark(position, self._last_id, self._log_id) if self._last_id else None
            await self._await_inflight()
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write, changes, position, mark))
            self._inflight.add_done_callback(self._write_done)
            if self.on_commit is not None:
                self._inflight.add_done_callback(functools.partial(self._committed, position))
            self.batches += 1
            return head

    def _write_done(self, done: asyncio.Future[None]) -> None:
        if done.cancelled() or done.exception() is None or self._failed is not None:
            return
        self._failed = done.exception()
        self._stop_main()  # ``run`` raises the failure, even while it waits for the next event

    def _stop_main(self) -> None:
        main = self._main
        if main is not None and not main.done():
            self._inner_cancels += 1
            main.cancel()

    def _committed(self, position: int, done: asyncio.Future[None]) -> None:
        on_commit = self.on_commit
        if on_commit is not None and not done.cancelled() and done.exception() is None:
            on_commit(position)

    async def _await_inflight(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await asyncio.shield(inflight)

    async def flush(self) -> int:
        """Commit everything folded so far and wait until it is durable; the position."""
        await self.commit()
        async with self._lock:
            await self._await_inflight()
        return self._position

    # ---- running -------------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Fold every event after the checkpoint up to the current head, then commit; the position."""
        if not self._opened:
            self.open()
        await self._check_log()
        fold = self.fold
        async for envs in read_batches(
            self.events, self._position, batch=self.read_batch, on_invalid=self.quarantine_invalid
        ):
            for env in envs:
                fold(env)
            if self._uncommitted >= self.batch_size:
                await self.commit()
        return await self.flush()

    async def rebuild(self) -> int:
        """Empty every view and fold the whole log again from position 0."""
        self.reset()
        return await self.catch_up()

    async def run(self) -> None:
        """Catch up, then follow live appends until cancelled; what was folded is committed on exit.

        A cancellation at any point, during the catch-up too, still commits what was folded.
        """
        ticker: asyncio.Task[None] | None = None
        self._main = asyncio.current_task()
        self._inner_cancels = 0
        try:
            await self.catch_up()
            self._live_from = self._position
            ticker = asyncio.create_task(self._tick())
            # Whatever stops the ticker (a log that regressed) stops the projector: never a stuck one.
            ticker.add_done_callback(lambda t: self._stop_main() if not t.cancelled() and t.exception() else None)
            async for env in self.events.subscribe(self._position):
                self.fold(env)
                if self._uncommitted >= self.batch_size:
                    await self._checkpoint_chain(await self.commit())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cause = self._failed
            if cause is None and ticker is not None and ticker.done() and not ticker.cancelled():
                cause = ticker.exception()
            if cause is None or task is None or task.cancelling() > self._inner_cancels:
                raise  # stopped from outside
            for _ in range(self._inner_cancels):
                task.uncancel()  # cancelled from inside alone: the failure is why it stops
            raise cause from None
        finally:
            self._main = None
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            await asyncio.shield(self.flush())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            if self._uncommitted:
                await self._checkpoint_chain(await self.commit())

    async def _checkpoint_chain(self, head: ChainHead | None) -> None:
        """Append the chain's digest to the log every ``checkpoint_every`` events, once caught up."""
        chain = self._chain
        if head is None or chain is None or self.checkpoint_every is None or head.at is None:
            return
        if head.position < self._live_from:
            return  # still replaying history: its checkpoints are in the log already
        last = max(chain.head.checkpoint_events, self._appended_events)
        if head.events - last < self.checkpoint_every:
            return
        event = AuditCheckpointed(at=head.at, position=head.position, digest=head.digest, events=head.events)
        env = new_envelope(CHAIN_STREAM, event, id=f"audit-{head.position}", source=self.source)
        # The projector writes too: never a checkpoint on top of a log that lost what it applied (the
        # check raises ``LogRegressed``, which stops the projector).
        if self._last_id:
            await check_watermark(self.events, Watermark(self._position, self._last_id, self._log_id), "projector")
        try:
            expected = await self.events.stream_position(CHAIN_STREAM)
            await self.events.append(CHAIN_STREAM, [env], expected=expected)
            self._appended_events = head.events
            _log.info("audit.checkpointed", position=head.position, digest=head.digest)
        except (ConcurrencyError, InvalidPayload) as e:
            # Another projector checkpointed first; the next batch tries again.
            _log.info("audit.checkpoint_skipped", position=head.position, error=str(e))
        except StoreError as e:
            _log.warning("audit.checkpoint_failed", position=head.position, error=str(e))
