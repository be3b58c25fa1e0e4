"""ActorShell's concurrency paths, over a real in-memory store that injects faults on demand.

``FaultyStore`` wraps ``MemoryEventStore`` (as strict as JetStream: conflicts on a stale expected
position, de-duplication by event id). On demand it lets another writer append first (so the real
store raises the conflict), raises ``ConcurrencyError`` itself, lands an append and then says so
only as a duplicate, lands an append and loses the acknowledgement, or is unavailable. Every test
reads the real log back to say what happened; the real task decider decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from actors.errors import InvalidTransition
from actors.shell import ActorShell, Handled
from actors.task import (
    CancelTask,
    CreateTask,
    ExpireLease,
    LeaseTask,
    ReportProgress,
    ReportStarted,
    TaskState,
    task_decider,
)
from events import (
    ANY,
    AppendResult,
    ConcurrencyError,
    Envelope,
    EventStore,
    GpufleetError,
    MemoryEventStore,
    StoreUnavailable,
    new_envelope,
)
from events.task import TaskCreated, TaskProgressed, TaskStarted
from events.types import Estimate, Resources
from tests.factories import T0, at

HOLDER = {"lease_id": "l1", "provider_id": "p1"}


@dataclass
class FaultyStore:
    """A ``MemoryEventStore`` with faults injected into the next appends (single or atomic batch)."""

    inner: MemoryEventStore = field(default_factory=MemoryEventStore)
    #: Before each of the next appends, another writer really appends these (stream -> events).
    rivals: list[dict[str, list[Envelope]]] = field(default_factory=list)
    #: The next this-many appends raise ``ConcurrencyError`` without touching the log.
    conflicts: int = 0
    #: The next this-many appends land, but the store answers as for a retry: ``duplicate=True``.
    duplicates: int = 0
    #: The next this-many appends land, but their acknowledgement is lost (``StoreUnavailable``).
    lost_acks: int = 0
    #: The next this-many appends fail before anything is written (``StoreUnavailable``).
    down: int = 0
    #: Atomic batches wait for this gate (set by the test) before going on.
    gate: asyncio.Event | None = None
    #: Set when an atomic batch reaches the gate.
    at_gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: Appends wait for the event loop to run something else first (I/O latency): concurrent
    #: commands really interleave.
    latency: bool = False
    #: Every append tried: (streams, event ids, expected positions).
    tried: list[tuple[list[str], list[str], list[int | None]]] = field(default_factory=list)

    async def _faults(self) -> None:
        if self.latency:
            await asyncio.sleep(0)  # a suspension point, as a network round trip has; not a wait for anything
        if self.rivals:
            for stream, events in self.rivals.pop(0).items():
                await self.inner.append(stream, events, ANY)
        if self.down:
            self.down -= 1
            raise StoreUnavailable("injected: the store is down")
        if self.conflicts:
            self.conflicts -= 1
            raise ConcurrencyError("injected", None)

    async def append(self, stream: str, events: Sequence[Envelope], expected: int | None) -> AppendResult:
        self.tried.append(([stream], [e.id for e in events], [expected]))
        await self._faults()
        result = await self.inner.append(stream, events, expected)
        if self.duplicates:
            self.duplicates -= 1
            return await self.inner.append(stream, events, expected)
        if self.lost_acks:
            self.lost_acks -= 1
            raise StoreUnavailable("injected: the acknowledgement was lost")
        return result

    async def append_many(self, appends: Sequence[tuple[str, Sequence[Envelope], int | None]]) -> list[AppendResult]:
        self.tried.append(
            ([s for s, _, _ in appends], [e.id for _, es, _ in appends for e in es], [x for *_, x in appends])
        )
        if self.gate is not None:
            self.at_gate.set()
            await self.gate.wait()
        await self._faults()
        results = await self.inner.append_many(appends)
        if self.lost_acks:
            self.lost_acks -= 1
            raise StoreUnavailable("injected: the acknowledgement was lost")
        return results

    async def read_stream(self, stream: str, after: int = 0) -> list[Envelope]:
        return await self.inner.read_stream(stream, after)

    async def unreadable_tail(self, stream: str, after: int) -> int:
        return await self.inner.unreadable_tail(stream, after)

    def read_all(self, after: int = 0):  # type: ignore[no-untyped-def]
        return self.inner.read_all(after)

    def subscribe(self, after: int = 0):  # type: ignore[no-untyped-def]
        return self.inner.subscribe(after)

    async def head(self) -> int:
        return await self.inner.head()

    async def stream_position(self, stream: str) -> int:
        return await self.inner.stream_position(stream)

    async def close(self) -> None:
        await self.inner.close()

    async def log(self) -> list[Envelope]:
        return [e async for e in self.inner.read_all()]

    async def types(self, task_id: str) -> list[str]:
        return [e.type for e in await self.inner.read_stream(f"task.{task_id}")]


# ---- builders --------------------------------------------------------------------------------------


def created(task_id: str) -> TaskCreated:
    job_id = task_id.rsplit(".", 1)[0]
    return TaskCreated(
        at=T0,
        task_id=task_id,
        job_id=job_id,
        index=int(task_id.rsplit(".", 1)[1]),
        submitter=job_id.split(".")[0],
        workload="noop",
        params={},
        resources=Resources(),
        estimate=Estimate(),
        timeout_s=60.0,
    )


def progress(cmd_id: str, fraction: float, **kw: object) -> ReportProgress:
    return ReportProgress(command_id=cmd_id, at=at(10 + fraction), fraction=fraction, message=cmd_id, **HOLDER, **kw)  # type: ignore[arg-type]


def rival_progress(task_id: str, event_id: str, fraction: float) -> dict[str, list[Envelope]]:
    """Another writer (another orchestrator incarnation) records progress on the task."""
    event = TaskProgressed(at=at(5), task_id=task_id, fraction=fraction, message=event_id, **HOLDER)
    return {f"task.{task_id}": [new_envelope(f"task.{task_id}", event, id=event_id, source="rival")]}


async def leased(shell: ActorShell[object, TaskState], task_id: str, *, started: bool = False) -> None:
    """Create the task and lease it to p1 (and start it) through ``shell``; its cache now holds it."""
    await shell.handle(task_id, CreateTask(command_id=f"ct-{task_id}", at=T0, created=created(task_id)))
    lease = LeaseTask(command_id=f"ls-{task_id}", at=at(1), expires_at=at(100), **HOLDER)  # type: ignore[arg-type]
    await shell.handle(task_id, lease)
    if started:
        await shell.handle(task_id, ReportStarted(command_id=f"st-{task_id}", at=at(2), **HOLDER))  # type: ignore[arg-type]


def shell_over(store: EventStore, max_retries: int = 5) -> ActorShell[object, TaskState]:
    return ActorShell(store, task_decider, source="test", max_retries=max_retries)  # type: ignore[arg-type]


def own(log: list[Envelope], command_id: str) -> list[Envelope]:
    """The events a command caused (ids ``<command id>.<n>``)."""
    return [e for e in log if e.id.rsplit(".", 1)[0] == command_id]


# ---- conflicts -------------------------------------------------------------------------------------


async def test_a_conflict_reloads_the_stream_and_decides_again() -> None:
    # Given our shell holds a leased task in its cache
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0")
    # And another writer records that the task started and progressed, just before our append
    store.rivals.append(rival_progress("ann.j.0", "other.0", 0.2))
    # When our first progress report arrives (from a stale cache it would also start the task)
    handled = await shell.handle("ann.j.0", progress("pr-1", 0.5))
    # Then the shell conflicted, reloaded, and decided on the log as it is: progress only, after theirs
    assert shell.conflicts == 1
    assert await store.types("ann.j.0") == ["TaskCreated", "TaskLeased", "TaskProgressed", "TaskProgressed"]
    stream = await store.inner.read_stream("task.ann.j.0")
    assert [e.id for e in stream[2:]] == ["other.0", "pr-1.0"]
    assert [e.sequence for e in stream] == sorted(e.sequence for e in stream)
    assert [e.id for e in handled.events] == ["pr-1.0"] and handled.events[0].sequence == stream[-1].sequence
    assert handled.state.progress == 0.5
    # And the second try was made with the position the rival left
    assert store.tried[-1][2] == [stream[2].sequence]


async def test_a_conflict_can_turn_a_command_into_a_refusal() -> None:
    # Given our shell holds a queued task in its cache
    store = FaultyStore()
    shell = shell_over(store)
    await shell.handle("ann.j.0", CreateTask(command_id="ct", at=T0, created=created("ann.j.0")))
    # And another writer cancels it just before our lease lands
    cancel = new_envelope(
        "task.ann.j.0",
        task_decider.decide(CancelTask(command_id="cx", at=at(1)), task_decider.fold([created("ann.j.0")]))[0],
        id="cx.0",
        source="rival",
    )
    store.rivals.append({"task.ann.j.0": [cancel]})
    # When we lease it, the decision made again on the reloaded stream refuses
    lease = LeaseTask(command_id="ls", at=at(2), expires_at=at(100), **HOLDER)  # type: ignore[arg-type]
    with pytest.raises(InvalidTransition):
        await shell.handle("ann.j.0", lease)
    # Then the log has the cancellation and no lease
    assert await store.types("ann.j.0") == ["TaskCreated", "TaskCancelled"]


async def test_a_conflict_storm_beyond_the_retries_gives_up_typed_and_appends_nothing_of_ours() -> None:
    # Given a shell allowed 3 retries, and another writer that wins every race, four times over
    store = FaultyStore()
    shell = shell_over(store, max_retries=3)
    await leased(shell, "ann.j.0", started=True)
    before = len(await store.log())
    store.rivals += [rival_progress("ann.j.0", f"other.{i}", i / 10) for i in range(4)]
    # When we report progress
    with pytest.raises(ConcurrencyError) as err:
        await shell.handle("ann.j.0", progress("pr-1", 0.9))
    # Then it gave up after 1 + 3 tries with the typed error, and none of our events is in the log
    assert isinstance(err.value, GpufleetError) and err.value.stream == "task.ann.j.0"
    assert sum(ids == ["pr-1.0"] for _, ids, _ in store.tried) == 4
    log = await store.log()
    assert own(log, "pr-1") == []
    assert len(log) == before + 4  # the rival's four wins
    assert not store.rivals
    # And once the storm is over the same command goes through, once
    await shell.handle("ann.j.0", progress("pr-1", 0.9))
    assert len(own(await store.log(), "pr-1")) == 1


async def test_injected_conflicts_within_the_retries_still_append_exactly_once() -> None:
    # Given a store that refuses the next five appends with a conflict
    store = FaultyStore()
    shell = shell_over(store, max_retries=5)
    await leased(shell, "ann.j.0", started=True)
    store.conflicts = 5
    # When we report progress
    handled = await shell.handle("ann.j.0", progress("pr-1", 0.5))
    # Then the sixth try lands, once
    assert len(handled.events) == 1
    assert len(own(await store.log(), "pr-1")) == 1
    assert shell.conflicts == 5


# ---- our append already landed ---------------------------------------------------------------------


async def test_an_append_the_store_reports_as_a_duplicate_changes_nothing_and_says_so() -> None:
    # Given a store that lands the next append but answers as for a retry of it
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0")
    store.duplicates = 1
    # When the holder reports progress
    handled = await shell.handle("ann.j.0", progress("pr-1", 0.5))
    # Then the shell says duplicate, with the state the log has, and the events are there once
    assert handled.duplicate and handled.events == []
    assert handled.state.status == "running" and handled.state.progress == 0.5
    assert [e.id for e in own(await store.log(), "pr-1")] == ["pr-1.0", "pr-1.1"]  # started, progressed
    # And the next command is decided on that state (no second TaskStarted)
    nxt = await shell.handle("ann.j.0", progress("pr-2", 0.7))
    assert [e.type for e in nxt.events] == ["TaskProgressed"]


async def test_a_lost_acknowledgement_then_a_retry_of_the_command_is_a_duplicate() -> None:
    # Given a store that lands the next append but loses its acknowledgement
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0", started=True)
    store.lost_acks = 1
    with pytest.raises(StoreUnavailable):
        await shell.handle("ann.j.0", progress("pr-1", 0.5))
    # When the caller retries the same command (as the orchestrator's _run does)
    handled = await shell.handle("ann.j.0", progress("pr-1", 0.5))
    # Then nothing is appended again and the result says duplicate, with the log's state
    assert handled.duplicate and handled.events == []
    assert handled.state.progress == 0.5
    assert len(own(await store.log(), "pr-1")) == 1


@pytest.mark.parametrize("batched", [False, True])
async def test_after_a_lost_acknowledgement_another_command_decides_on_what_the_log_holds(batched: bool) -> None:
    """A lease lands but its acknowledgement is lost (nats-server killed mid-append). The lease's
    timer then fires: its expiry must be decided on the log's state (a lease, to expire), not on the
    cache's (no lease: refused, the timer spent, and the task leased to nobody forever). This was
    the stuck task of test_sigkilled_orchestrator_nats_server_and_provider_lose_and_duplicate_nothing."""
    store = FaultyStore()
    shell = shell_over(store)
    ids = ["ann.j.0", "ann.j.1"]
    for t in ids:
        await shell.handle(t, CreateTask(command_id=f"ct-{t}", at=T0, created=created(t)))
    leases = [
        (t, LeaseTask(command_id=f"ls-{n}", at=at(1), expires_at=at(4), lease_id=f"l{n}", provider_id="p1"))
        for n, t in enumerate(ids)
    ]
    store.lost_acks = 1
    with pytest.raises(StoreUnavailable):
        if batched:
            await shell.handle_many(leases)  # type: ignore[arg-type]
        else:
            await shell.handle(*leases[0])
    assert own(await store.log(), "ls-0"), "the lease landed"
    expiry = ExpireLease(command_id="ex-1", at=at(5), lease_id="l0", reason="expired")
    handled = await shell.handle("ann.j.0", expiry)
    assert [e.type for e in handled.events] == ["TaskLeaseExpired"]
    assert "TaskLeaseExpired" in await store.types("ann.j.0")


async def test_a_store_that_is_down_fails_typed_and_a_retry_appends_once() -> None:
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0", started=True)
    store.down = 1
    with pytest.raises(StoreUnavailable):
        await shell.handle("ann.j.0", progress("pr-1", 0.5))
    assert own(await store.log(), "pr-1") == []
    handled = await shell.handle("ann.j.0", progress("pr-1", 0.5))
    assert not handled.duplicate and len(handled.events) == 1
    assert len(own(await store.log(), "pr-1")) == 1


async def test_the_same_command_id_twice_is_applied_once_without_touching_the_store() -> None:
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0", started=True)
    first = await shell.handle("ann.j.0", progress("pr-1", 0.5))
    tries = len(store.tried)
    second = await shell.handle("ann.j.0", progress("pr-1", 0.5))
    assert not first.duplicate and len(first.events) == 1
    assert second.duplicate and second.events == [] and second.state == first.state
    assert len(store.tried) == tries
    assert len(own(await store.log(), "pr-1")) == 1


async def test_a_command_already_in_the_stream_is_recognised_by_a_fresh_shell_after_a_restart() -> None:
    # Given one shell applied a command
    store = FaultyStore()
    first = shell_over(store)
    await leased(first, "ann.j.0", started=True)
    await first.handle("ann.j.0", progress("pr-1", 0.5))
    # When a new shell (a restarted orchestrator, nothing cached) gets the same command again
    tries = len(store.tried)
    again = await shell_over(store).handle("ann.j.0", progress("pr-1", 0.5))
    # Then it recognises it from the stream, appends nothing, and says duplicate
    assert again.duplicate and again.events == [] and again.state.progress == 0.5
    assert len(store.tried) == tries
    assert len(own(await store.log(), "pr-1")) == 1


async def test_a_stale_shell_retrying_a_command_another_shell_applied_appends_nothing() -> None:
    # Given two shells (two incarnations) both holding the task in their caches
    store = FaultyStore()
    old = shell_over(store)
    await leased(old, "ann.j.0", started=True)
    new = shell_over(store)
    await new.state("ann.j.0")
    # When the new one applies a command, then the stale one applies the same command
    await new.handle("ann.j.0", progress("pr-1", 0.5))
    handled = await old.handle("ann.j.0", progress("pr-1", 0.5))
    # Then its events are in the log once, and the stale shell says duplicate
    assert handled.duplicate
    assert len(own(await store.log(), "pr-1")) == 1


async def test_a_creation_that_already_exists_reloads_and_changes_nothing() -> None:
    # Given a task created by another shell (the creating shell skips the read and appends blind)
    store = FaultyStore()
    await shell_over(store).handle("ann.j.0", CreateTask(command_id="ct-a", at=T0, created=created("ann.j.0")))
    # When another shell creates it again under another command id
    handled = await shell_over(store).handle(
        "ann.j.0", CreateTask(command_id="ct-b", at=T0, created=created("ann.j.0"))
    )
    # Then the blind append conflicted, the reload found the task, and nothing was added
    assert handled.events == [] and handled.state.status == "queued"
    assert await store.types("ann.j.0") == ["TaskCreated"]


# ---- handle_many -----------------------------------------------------------------------------------


async def test_handle_many_appends_atomically_when_nothing_conflicts() -> None:
    store = FaultyStore()
    shell = shell_over(store)
    ids = [f"ann.j.{i}" for i in range(3)]
    for t in ids:
        await leased(shell, t, started=True)
    out = await shell.handle_many([(t, progress(f"pr-{t}", 0.5)) for t in ids])
    assert all(isinstance(h, Handled) and len(h.events) == 1 for h in out)
    assert [len(streams) for streams, _, _ in store.tried[-1:]] == [3]  # one atomic batch
    assert sum(len(streams) > 1 for streams, _, _ in store.tried) == 1


async def test_handle_many_falls_back_to_one_by_one_on_a_conflict() -> None:
    # Given three leased tasks in the shell's cache, and a rival that writes to the second first
    store = FaultyStore()
    shell = shell_over(store)
    ids = [f"ann.j.{i}" for i in range(3)]
    for t in ids:
        await leased(shell, t)
    store.rivals.append(rival_progress(ids[1], "other.0", 0.2))
    # When the three first progress reports go out as one batch
    out = await shell.handle_many([(t, progress(f"pr-{t}", 0.5)) for t in ids])
    # Then the batch conflicted and wrote nothing, and each was then handled on its own
    batches = [streams for streams, _, _ in store.tried if len(streams) > 1]
    assert len(batches) == 1 and shell.conflicts == 1
    assert all(isinstance(h, Handled) and h.events for h in out), out
    # The conflicting one was decided again on the rival's event: no second TaskStarted
    assert await store.types(ids[1]) == ["TaskCreated", "TaskLeased", "TaskProgressed", "TaskProgressed"]
    for t in (ids[0], ids[2]):
        assert await store.types(t) == ["TaskCreated", "TaskLeased", "TaskStarted", "TaskProgressed"]
    log = await store.log()
    assert [len(own(log, f"pr-{t}")) for t in ids] == [2, 1, 2]  # started and progressed; progressed
    assert len({e.id for e in log}) == len(log)


async def test_handle_many_yields_a_refusal_in_place_and_applies_the_rest() -> None:
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0", started=True)
    await leased(shell, "ann.j.1", started=True)
    lease = LeaseTask(command_id="ls-again", at=at(3), expires_at=at(100), **HOLDER)  # type: ignore[arg-type]
    out = await shell.handle_many([("ann.j.0", lease), ("ann.j.1", progress("pr-1", 0.5))])
    assert isinstance(out[0], InvalidTransition)
    assert isinstance(out[1], Handled) and [e.type for e in out[1].events] == ["TaskProgressed"]


async def test_handle_many_keeps_per_aggregate_order_when_it_falls_back() -> None:
    # Given two tasks in the cache, a batch that will conflict (a rival writes to the second), and a
    # gate that holds the batch at the store
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0", started=True)
    await leased(shell, "ann.j.1", started=True)
    store.gate = asyncio.Event()
    store.rivals.append(rival_progress("ann.j.1", "other.0", 0.2))
    batch = asyncio.create_task(
        shell.handle_many([("ann.j.0", progress("first", 0.3)), ("ann.j.1", progress("first-b", 0.3))])
    )
    await store.at_gate.wait()
    # When, while the batch holds the first task's lock, a later command for it arrives
    queued = asyncio.Event()

    async def later() -> Handled[TaskState]:
        queued.set()
        return await shell.handle("ann.j.0", progress("second", 0.6))

    second = asyncio.create_task(later())
    await queued.wait()  # set just before it queues on the lock, within the same step
    store.gate.set()
    await asyncio.gather(batch, second)
    # Then the first task's stream has the batch's command before the later one
    stream = await store.inner.read_stream("task.ann.j.0")
    assert [e.id for e in stream if e.type == "TaskProgressed"] == ["first.0", "second.0"]


async def test_handle_many_answers_a_duplicate_with_the_state_in_the_log() -> None:
    # Given a batch that lands but whose acknowledgement is lost
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0", started=True)
    await leased(shell, "ann.j.1", started=True)
    commands = [("ann.j.0", progress("pr-a", 0.5)), ("ann.j.1", progress("pr-b", 0.5))]
    store.lost_acks = 1
    with pytest.raises(StoreUnavailable):
        await shell.handle_many(commands)
    # When the caller sends the same batch again
    out = await shell.handle_many(commands)
    # Then nothing is appended twice, each says duplicate, with the state after the command
    log = await store.log()
    assert len(own(log, "pr-a")) == 1 and len(own(log, "pr-b")) == 1
    assert all(isinstance(h, Handled) and h.duplicate for h in out)
    assert [h.state.progress for h in out] == [0.5, 0.5]  # type: ignore[union-attr]


async def test_handle_many_after_a_lost_acknowledgement_appends_nothing_twice() -> None:
    store = FaultyStore()
    shell = shell_over(store)
    await leased(shell, "ann.j.0", started=True)
    await leased(shell, "ann.j.1", started=True)
    commands = [("ann.j.0", progress("pr-a", 0.5)), ("ann.j.1", progress("pr-b", 0.5))]
    store.lost_acks = 1
    with pytest.raises(StoreUnavailable):
        await shell.handle_many(commands)
    out = await shell.handle_many(commands)
    log = await store.log()
    assert len(own(log, "pr-a")) == 1 and len(own(log, "pr-b")) == 1
    assert all(isinstance(h, Handled) and h.duplicate and not h.events for h in out)


# ---- FIFO per id -----------------------------------------------------------------------------------


async def test_concurrent_commands_for_one_id_apply_in_arrival_order() -> None:
    # Given a store with latency (appends suspend, so commands really interleave)
    store = FaultyStore(latency=True)
    shell = shell_over(store, max_retries=1)
    ids = ["ann.j.0", "ann.j.1"]
    for t in ids:
        await leased(shell, t, started=True)
    # When 40 progress reports for each of two tasks are handled concurrently, interleaved
    commands = [(t, progress(f"pr-{t[-1]}-{i}", i / 40)) for i in range(40) for t in ids]
    results = await asyncio.gather(*(shell.handle(t, c) for t, c in commands))
    # Then each one appended its event, with no conflict, and each stream has them in arrival order
    assert all(len(r.events) == 1 for r in results)
    assert shell.conflicts == 0
    for t in ids:
        stream = await store.inner.read_stream(f"task.{t}")
        got = [e.id for e in stream if e.type == "TaskProgressed"]
        assert got == [f"pr-{t[-1]}-{i}.0" for i in range(40)]
    # And the positions each handle returned are where its events are
    log = {e.id: e.sequence for e in await store.log()}
    assert all(log[r.events[0].id] == r.events[0].sequence for r in results)


async def test_concurrent_commands_on_a_cold_cache_activate_once_and_stay_in_order() -> None:
    # Given a task written by one shell, and a fresh shell with nothing cached
    store = FaultyStore(latency=True)
    await leased(shell_over(store), "ann.j.0", started=True)
    shell = shell_over(store, max_retries=0)
    # When ten reports arrive at once
    results = await asyncio.gather(*(shell.handle("ann.j.0", progress(f"pr-{i}", i / 10)) for i in range(10)))
    # Then all land (no retries were allowed, so none conflicted) in arrival order
    assert [r.events[0].id for r in results] == [f"pr-{i}.0" for i in range(10)]
    stream = await store.inner.read_stream("task.ann.j.0")
    assert [e.id for e in stream if isinstance(e.data, TaskProgressed)] == [f"pr-{i}.0" for i in range(10)]
    assert not any(isinstance(e.data, TaskStarted) and e.id.startswith("pr-") for e in stream)
