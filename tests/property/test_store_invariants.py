"""Log invariants under random appends, for each event store (hypothesis stateful testing).

Whatever the writers do (fresh appends, retries of earlier appends, stale or absent expectations),
the log keeps these: global positions strictly increase; each stream's positions increase; no id is
stored twice; every acknowledged append is in its stream, contiguous and in order; folding the log
in two parts (a prefix, then the tail from its position) gives the same state as folding it whole.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from events import ANY, NO_STREAM, ConcurrencyError, Envelope, EventStore
from events.store import JetStreamEventStore, MemoryEventStore
from gpufleet.natsserver import NatsServer
from tests.conftest import isolated_settings
from tests.factories import progressed

STREAMS = ("task.a", "task.b", "task.c")
T = TypeVar("T")

State = dict[str, tuple[int, float, int]]  # stream -> (events, last fraction, last position)


def fold(events: list[Envelope], state: State | None = None) -> State:
    """A tiny read model: per stream, how many events, the last progress fraction and position."""
    out = dict(state or {})
    for e in events:
        n, _, _ = out.get(e.subject, (0, 0.0, 0))
        out[e.subject] = (n + 1, e.data.fraction, e.sequence)  # type: ignore[attr-defined]
    return out


class LogMachine(RuleBasedStateMachine):
    """Drives one store; ``backend`` and ``url`` are set by the test that runs it."""

    backend: ClassVar[str] = "memory"
    url: ClassVar[Any] = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: EventStore = self.run(self._open())
        self.ids = itertools.count(1)
        self.acked: dict[str, list[str]] = {s: [] for s in STREAMS}  # what the store said it stored
        self.appends: list[tuple[str, list[Envelope]]] = []

    async def _open(self) -> EventStore:
        if self.backend == "memory":
            return MemoryEventStore()
        return await JetStreamEventStore.connect(self.url, settings=isolated_settings(), create=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    def _append(self, stream: str, events: list[Envelope], expected: int | None) -> None:
        before = self.run(self.store.stream_position(stream))
        try:
            r = self.run(self.store.append(stream, events, expected))
        except ConcurrencyError:
            assert expected is not None and expected != before
            assert self.run(self.store.stream_position(stream)) == before, "a conflict writes nothing"
            return
        assert r.stream == stream
        if not events:
            assert (r.first, r.last, r.duplicate) == (0, before, False)
            return
        stored = self.run(self.store.read_stream(stream, after=r.first - 1))
        got = [e for e in stored if e.sequence <= r.last]
        assert [e.id for e in got] == [e.id for e in events], "the acknowledged events, in order"
        if r.duplicate:
            assert self.run(self.store.stream_position(stream)) == before, "a duplicate writes nothing"
            return
        assert [e.sequence for e in got] == list(range(r.first, r.last + 1)), "an append is contiguous"
        assert expected is None or expected == before
        assert r.last == self.run(self.store.stream_position(stream)) > before
        self.acked[stream] += [e.id for e in events]
        self.appends.append((stream, events))

    @rule(
        stream=st.sampled_from(STREAMS),
        n=st.integers(0, 4),
        how=st.sampled_from(["current", "any", "no_stream", "stale"]),
    )
    def append_new(self, stream: str, n: int, how: str) -> None:
        events = [progressed(stream, (i % 10) / 10, event_id=f"i{next(self.ids)}") for i in range(n)]
        current = self.run(self.store.stream_position(stream))
        expected = {"current": current, "any": ANY, "no_stream": NO_STREAM, "stale": max(0, current - 1)}[how]
        self._append(stream, events, expected)

    @precondition(lambda self: bool(self.appends))
    @rule(pick=st.integers(0, 10_000), how=st.sampled_from(["original", "any", "current"]), part=st.booleans())
    def retry_an_earlier_append(self, pick: int, how: str, part: bool) -> None:
        stream, events = self.appends[pick % len(self.appends)]
        events = events[-1:] if part else events
        current = self.run(self.store.stream_position(stream))
        first = self.run(self.store.read_stream(stream))
        position_before = next((prev.sequence for prev, nxt in itertools.pairwise(first) if nxt.id == events[0].id), 0)
        expected = {"original": position_before, "any": ANY, "current": current}[how]
        before = self.run(self.store.head())
        r = self.run(self.store.append(stream, events, expected))
        assert r.duplicate, "a retry of a stored append is a duplicate, whatever it expected"
        assert self.run(self.store.head()) == before

    @invariant()
    def log_is_well_formed(self) -> None:
        everything = self.run(_collect(self.store))
        positions = [e.sequence for e in everything]
        ids = [e.id for e in everything]
        assert positions == sorted(set(positions)) and all(p > 0 for p in positions)
        assert len(ids) == len(set(ids)), "no id twice"
        assert self.run(self.store.head()) == (positions[-1] if positions else 0)
        for s in STREAMS:
            own = self.run(self.store.read_stream(s))
            assert [e.id for e in own] == self.acked[s], "exactly what was acknowledged, in order"
            seqs = [e.sequence for e in own]
            assert seqs == sorted(set(seqs))
            assert self.run(self.store.stream_position(s)) == (seqs[-1] if seqs else 0)
        # fold(prefix) then fold(tail after the prefix's position) == fold(everything)
        whole = fold(everything)
        for cut in {0, len(everything) // 2, len(everything)}:
            prefix = everything[:cut]
            after = prefix[-1].sequence if prefix else 0
            tail = self.run(_collect(self.store, after))
            assert fold(tail, fold(prefix)) == whole


async def _collect(store: EventStore, after: int = 0) -> list[Envelope]:
    return [e async for e in store.read_all(after)]


@pytest.mark.parametrize(("backend", "examples"), [("memory", 150), ("jetstream", 20)])
def test_log_invariants_hold(nats_server: NatsServer, backend: str, examples: int) -> None:
    LogMachine.backend, LogMachine.url = backend, nats_server.superuser()
    run_state_machine_as_test(
        LogMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
