"""The actor shell around a decider: ordering, activation, optimistic appends, exactly-once commands.

- Commands for one id run one at a time, in the order they arrived (a FIFO lock per id).
- An actor is activated by reading its stream from the store; its state is cached (LRU eviction).
- Events are appended with the expected position; a ``ConcurrencyError`` reloads and retries, a
  bounded number of times.
- Event ids are ``<command_id>.<n>``: a command that was already applied (a redelivered intake
  message, a reaction replayed after a restart) is recognised from the stream and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from actors.decider import Decider
from actors.errors import UnknownAggregate
from actors.ids import event_id, split_event_id
from events import ConcurrencyError, Envelope, EventStore, GpufleetError, InvalidPayload, new_envelope
from events.types import EventModel

__all__ = ["ActorShell", "Handled"]

C = TypeVar("C")
S = TypeVar("S")

_log = structlog.get_logger("gpufleet.actors")


@dataclass(slots=True)
class _Entry(Generic[S]):
    state: S
    version: int
    applied: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Handled(Generic[S]):
    """What a command did: the events it appended (with positions) and the state after."""

    events: list[Envelope]
    state: S
    duplicate: bool = False


class ActorShell(Generic[C, S]):
    """Runs commands against one kind of aggregate (``decider.kind``) stored in ``store``."""

    def __init__(
        self,
        store: EventStore,
        decider: Decider[C, S],
        *,
        source: str = "gpufleet/orchestrator",
        cache_size: int = 50_000,
        max_retries: int = 5,
    ) -> None:
        self.store = store
        self.decider = decider
        self.kind = decider.kind
        self._source = source
        self._cache: OrderedDict[str, _Entry[S]] = OrderedDict()
        self._cache_size = cache_size
        self._max_retries = max_retries
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.conflicts = 0
        self.log = _log.bind(kind=self.kind)

    def stream(self, aggregate_id: str) -> str:
        """The aggregate's stream name."""
        return f"{self.kind}.{aggregate_id}"

    def _lock(self, aggregate_id: str) -> asyncio.Lock:
        lock, users = self._locks.get(aggregate_id) or (asyncio.Lock(), 0)
        self._locks[aggregate_id] = (lock, users + 1)
        return lock

    def _unlock(self, aggregate_id: str) -> None:
        lock, users = self._locks[aggregate_id]
        if users <= 1:
            del self._locks[aggregate_id]
        else:
            self._locks[aggregate_id] = (lock, users - 1)

    async def handle(
        self,
        aggregate_id: str,
        command: C,
        *,
        correlationid: str | None = None,
        causationid: str | None = None,
    ) -> Handled[S]:
        """Decide and append; raises the decider's ``DomainError`` when the command is refused."""
        lock = self._lock(aggregate_id)
        try:
            async with lock:
                return await self._handle(aggregate_id, command, correlationid, causationid)
        finally:
            self._unlock(aggregate_id)

    async def handle_many(
        self, commands: list[tuple[str, C]], *, correlationid: str | None = None, causationid: str | None = None
    ) -> list[Handled[S] | GpufleetError]:
        """One command for each of several aggregates, appended as one atomic unit when possible.

        Each aggregate keeps its FIFO order and optimistic concurrency; if any of them conflicts,
        each command is handled on its own instead. A refused command yields its error in place.
        """
        ids = [a for a, _ in commands]
        if len(commands) < 2 or len(set(ids)) != len(ids):
            return [await self._one(a, c, correlationid, causationid) for a, c in commands]
        locks = [(a, self._lock(a)) for a in sorted(ids)]
        held: list[str] = []
        out: list[Handled[S] | GpufleetError] = []
        plans: list[tuple[int, str, _Entry[S], list[EventModel], list[Envelope]]] = []
        try:
            for a, lock in locks:
                await lock.acquire()
                held.append(a)
            for i, (a, cmd) in enumerate(commands):
                command_id: str = cmd.command_id  # type: ignore[attr-defined]
                if self.decider.creates(cmd) and a not in self._cache:
                    entry: _Entry[S] = _Entry(self.decider.initial_state(), 0)
                else:
                    entry = await self._load(a)
                if command_id in entry.applied:
                    out.append(Handled([], entry.state, duplicate=True))
                    continue
                try:
                    events = self.decider.decide(cmd, entry.state)
                except UnknownAggregate:
                    out.append(UnknownAggregate(self.kind, a))
                    continue
                except GpufleetError as e:
                    out.append(e)
                    continue
                envs = [
                    new_envelope(
                        self.stream(a),
                        e,
                        id=event_id(command_id, n),
                        source=self._source,
                        correlationid=correlationid,
                        causationid=causationid,
                    )
                    for n, e in enumerate(events)
                ]
                out.append(Handled([], entry.state))
                if events:
                    plans.append((i, a, entry, events, envs))
            if plans:
                try:
                    results = await self.store.append_many(
                        [(self.stream(a), envs, entry.version) for _, a, entry, _, envs in plans]
                    )
                except (ConcurrencyError, InvalidPayload):
                    self.conflicts += 1
                    for _, a, _, _, _ in plans:
                        self._cache.pop(a, None)
                    results = None
                except BaseException:
                    # Outcome unknown (the acknowledgement lost with the connection, say): it may have
                    # landed. The log, not the cache, says what these aggregates are now.
                    for _, a, _, _, _ in plans:
                        self._cache.pop(a, None)
                    raise
                if results is not None:
                    for (i, a, entry, events, envs), r in zip(plans, results, strict=True):
                        if r.duplicate:
                            # Applied before (by us, or a retry of ours): answer with the state in the log.
                            self._cache.pop(a, None)
                            out[i] = Handled([], (await self._load(a)).state, duplicate=True)
                            continue
                        state = self.decider.fold(events, entry.state)
                        entry.state, entry.version = state, r.last
                        entry.applied.add(commands[i][1].command_id)  # type: ignore[attr-defined]
                        self._remember(a, entry)
                        out[i] = Handled([env.at_position(r.first + n) for n, env in enumerate(envs)], state)
                    plans = []
            # Conflicts: settle the planned ones one by one (each reloads and decides again), still
            # holding the locks, so that no command that arrived meanwhile overtakes them.
            for i, a, _, _, _ in plans:
                try:
                    out[i] = await self._handle(a, commands[i][1], correlationid, causationid)
                except GpufleetError as e:
                    out[i] = e
        finally:
            for a in held:
                self._locks[a][0].release()
            for a, _ in locks:
                self._unlock(a)
        return out

    async def _one(
        self, aggregate_id: str, command: C, correlationid: str | None, causationid: str | None
    ) -> Handled[S] | GpufleetError:
        try:
            return await self.handle(aggregate_id, command, correlationid=correlationid, causationid=causationid)
        except GpufleetError as e:
            return e

    async def _handle(
        self, aggregate_id: str, command: C, correlationid: str | None, causationid: str | None
    ) -> Handled[S]:
        command_id: str = command.command_id  # type: ignore[attr-defined]
        stream = self.stream(aggregate_id)
        fresh = self.decider.creates(command) and aggregate_id not in self._cache
        for _ in range(self._max_retries + 1):
            loaded = not fresh
            if fresh:
                # Most likely new: skip the read. If the stream exists, the append conflicts and
                # the next round loads it.
                entry = _Entry(self.decider.initial_state(), 0)
                fresh = False
            else:
                entry = await self._load(aggregate_id)
            if command_id in entry.applied:
                return Handled([], entry.state, duplicate=True)
            try:
                events = self.decider.decide(command, entry.state)
            except UnknownAggregate as e:
                raise UnknownAggregate(self.kind, aggregate_id) from e
            if not events:
                return Handled([], entry.state)
            envs = [
                new_envelope(
                    stream,
                    e,
                    id=event_id(command_id, i),
                    source=self._source,
                    correlationid=correlationid,
                    causationid=causationid,
                )
                for i, e in enumerate(events)
            ]
            try:
                result = await self.store.append(stream, envs, entry.version)
            except ConcurrencyError:
                self.conflicts += 1
                self._cache.pop(aggregate_id, None)
                self.log.info("actor.conflict", id=aggregate_id, command=command_id)
                if loaded:
                    await self._skip_unreadable(aggregate_id, entry.version)
                continue
            except BaseException:
                # Outcome unknown (the acknowledgement lost with the connection, say): the append may
                # have landed. Deciding the next command on the cached state could refuse it on a
                # state the log no longer holds (a lease timer's expiry, refused as "no such lease",
                # left a task leased to nobody for good): that aggregate is read from the log again.
                self._cache.pop(aggregate_id, None)
                raise
            if result.duplicate:
                # Our own earlier try landed (its acknowledgement was lost): the log decides.
                self._cache.pop(aggregate_id, None)
                entry = await self._load(aggregate_id)
                return Handled([], entry.state, duplicate=True)
            state = self.decider.fold(events, entry.state)
            entry.state, entry.version = state, result.last
            entry.applied.add(command_id)
            self._remember(aggregate_id, entry)
            stored = [env.at_position(result.first + i) for i, env in enumerate(envs)]
            self.log.debug("actor.appended", id=aggregate_id, command=command_id, events=[e.type for e in stored])
            return Handled(stored, state)
        raise ConcurrencyError(stream, None)

    async def _skip_unreadable(self, aggregate_id: str, version: int) -> None:
        """After a conflict on a stream just read: if reading it again ends at the same event and every
        stored message after it is permanently unreadable (the store says so from the messages
        themselves), those are quarantined and the aggregate goes on after them, instead of conflicting
        forever. A lagging read, or an event of a type or version not known yet, is never skipped."""
        entry = await self._load(aggregate_id)
        if entry.version != version:
            return  # a real conflict: another writer appended, and the reload has it
        last = await self.store.unreadable_tail(self.stream(aggregate_id), version)
        if last > version:
            self.log.error(
                "actor.unreadable_events_skipped",
                id=aggregate_id,
                after=version,
                last=last,
                hint="the stream holds events that do not decode: see the audit's schema findings",
            )
            entry.version = last

    async def _load(self, aggregate_id: str) -> _Entry[S]:
        entry = self._cache.get(aggregate_id)
        if entry is not None:
            self._cache.move_to_end(aggregate_id)
            return entry
        stored = await self.store.read_stream(self.stream(aggregate_id))
        state = self.decider.fold(e.data for e in stored)
        entry = _Entry(state, stored[-1].sequence if stored else 0, {split_event_id(e.id) for e in stored})
        self._remember(aggregate_id, entry)
        return entry

    def _remember(self, aggregate_id: str, entry: _Entry[S]) -> None:
        self._cache[aggregate_id] = entry
        self._cache.move_to_end(aggregate_id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def state(self, aggregate_id: str) -> tuple[S, int]:
        """The aggregate's current state and stream position (activating it if needed)."""
        entry = await self._load(aggregate_id)
        return entry.state, entry.version
