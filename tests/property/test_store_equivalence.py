"""Both event stores, fed the same random appends, end in the same observable state.

Each hypothesis example gets a fresh ``MemoryEventStore`` and a ``JetStreamEventStore`` on a fresh
stream of the session's real nats-server. Operations are drawn abstractly ("re-send append #3 with a
stale expectation") and made concrete against the memory store's state, so that both stores receive
exactly the same calls. After every call the outcomes must match; at the end so must every read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import ANY, NO_STREAM, AppendResult, Envelope, GpufleetError
from events.store import JetStreamEventStore, MemoryEventStore
from events.store.connection import Access
from gpufleet.natsserver import NatsServer
from tests.conftest import isolated_settings
from tests.factories import queued

STREAMS = ("task.a", "task.b", "job.c")

#: How an operation chooses its expected position.
EXPECTATIONS = ("any", "no_stream", "current", "stale", "ahead")


@dataclass(frozen=True)
class Op:
    """An abstract operation, made concrete against the reference store when it runs."""

    kind: str  # "new": fresh events; "resend": an earlier append again; "mixed": old and new ids;
    # "foreign": an id already stored in one stream, reused for an event of another stream
    stream: int
    size: int  # events in a new append (0: an empty append)
    pick: int  # which earlier append to re-send or mix (modulo how many there are)
    part: str  # resend: "all", "head", "tail", "one", "reversed"
    expect: str
    stale: int  # which older position to use as a stale expectation


ops = st.builds(
    Op,
    kind=st.sampled_from(["new", "new", "new", "resend", "resend", "mixed", "foreign"]),
    stream=st.integers(0, len(STREAMS) - 1),
    size=st.sampled_from([0, 1, 1, 1, 2, 3, 5]),
    pick=st.integers(0, 1000),
    part=st.sampled_from(["all", "all", "head", "tail", "one", "reversed"]),
    expect=st.sampled_from(EXPECTATIONS),
    stale=st.integers(0, 1000),
)


Outcome = tuple[Any, ...]


async def outcome_of(store: Any, stream: str, events: Sequence[Envelope], expected: int | None) -> Outcome:
    """What an append did, in a form that can be compared across stores."""
    try:
        r: AppendResult = await store.append(stream, events, expected)
    except GpufleetError as e:
        return ("raised", type(e).__name__)
    return ("ok", r.stream, r.first, r.last, r.duplicate)


@dataclass
class Concrete:
    stream: str
    events: list[Envelope]
    expected: int | None

    def describe(self) -> str:
        exp = "ANY" if self.expected is None else self.expected
        return f"append({self.stream!r}, {[e.id for e in self.events]}, expected={exp})"


class Scenario:
    """Turns abstract operations into concrete calls, remembering what was appended before."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.appended: list[Concrete] = []  # every append that was stored (not duplicates)
        self.history: dict[str, list[int]] = {s: [0] for s in STREAMS}  # positions each stream had

    def fresh(self, stream: str, n: int) -> list[Envelope]:
        return [queued(stream, event_id=f"e{next(self.ids)}") for _ in range(n)]

    def events_for(self, op: Op, stream: str) -> tuple[str, list[Envelope]]:
        if op.kind == "new" or not self.appended:
            return stream, self.fresh(stream, op.size)
        earlier = self.appended[op.pick % len(self.appended)]
        old = earlier.events
        if op.kind == "foreign":
            reused = old[op.stale % len(old)].id
            others = [s for s in STREAMS if s != earlier.stream]
            target = others[op.stream % len(others)]
            return target, [queued(target, event_id=reused), *self.fresh(target, op.size - 1)]
        if op.kind == "mixed":
            return earlier.stream, [old[op.stale % len(old)], *self.fresh(earlier.stream, max(1, op.size))]
        part = {
            "all": old,
            "head": old[: max(1, len(old) - 1)],
            "tail": old[1:] or old,
            "one": [old[op.stale % len(old)]],
            "reversed": old[::-1],
        }[op.part]
        return earlier.stream, list(part)

    async def concrete(self, op: Op, reference: MemoryEventStore) -> Concrete:
        stream, events = self.events_for(op, STREAMS[op.stream])
        current = await reference.stream_position(stream)
        older = [p for p in self.history[stream] if p != current] or [current + 1]
        expected: int | None = {
            "any": ANY,
            "no_stream": NO_STREAM,
            "current": current,
            "stale": older[op.stale % len(older)],
            "ahead": current + 1 + op.stale % 3,
        }[op.expect]
        return Concrete(stream, events, expected)

    def record(self, call: Concrete, outcome: Outcome) -> None:
        if outcome[0] == "ok" and not outcome[4] and call.events:
            self.appended.append(call)
            self.history[call.stream].append(outcome[3])


async def observable_state(store: Any) -> dict[str, Any]:
    everything = [e async for e in store.read_all()]
    return {
        "head": await store.head(),
        "read_all": [(e.id, e.subject, e.sequence, e.data) for e in everything],
        "read_all_after_2": [e.sequence async for e in store.read_all(after=2)],
        "streams": {s: [(e.id, e.sequence) for e in await store.read_stream(s)] for s in STREAMS},
        "streams_after_3": {s: [e.sequence for e in await store.read_stream(s, after=3)] for s in STREAMS},
        "positions": {s: await store.stream_position(s) for s in STREAMS},
    }


def check_invariants(state: dict[str, Any]) -> None:
    """What any correct log looks like, whatever was appended."""
    seqs = [seq for _, _, seq, _ in state["read_all"]]
    ids = [i for i, _, _, _ in state["read_all"]]
    assert seqs == sorted(set(seqs)), "global positions strictly increase"
    assert len(set(ids)) == len(ids), "no event id is stored twice"
    assert state["head"] == (seqs[-1] if seqs else 0)
    for s in STREAMS:
        in_stream = [(i, seq) for i, subj, seq, _ in state["read_all"] if subj == s]
        assert state["streams"][s] == in_stream, "a stream is the log filtered to its subject"
        positions = [seq for _, seq in in_stream]
        assert positions == sorted(set(positions))
        assert state["positions"][s] == (positions[-1] if positions else 0)


async def run_both(server_url: Access, program: list[Op]) -> list[str]:
    memory = MemoryEventStore()
    jetstream = await JetStreamEventStore.connect(server_url, settings=isolated_settings(), create=True)
    scenario = Scenario()
    trace: list[str] = []
    try:
        for op in program:
            call = await scenario.concrete(op, memory)
            got_memory = await outcome_of(memory, call.stream, call.events, call.expected)
            got_jetstream = await outcome_of(jetstream, call.stream, call.events, call.expected)
            trace.append(f"{call.describe()} -> memory {got_memory}, jetstream {got_jetstream}")
            assert got_memory == got_jetstream, "\n".join(trace)
            scenario.record(call, got_memory)
        state_memory = await observable_state(memory)
        state_jetstream = await observable_state(jetstream)
        assert state_memory == state_jetstream, "\n".join(trace)
        check_invariants(state_memory)
        check_invariants(state_jetstream)
    finally:
        await jetstream.close()
        await memory.close()
    return trace


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=st.lists(ops, min_size=1, max_size=25))
def test_memory_and_jetstream_stores_agree(nats_server: NatsServer, program: list[Op]) -> None:
    asyncio.run(run_both(nats_server.superuser(), program))


def test_a_known_tricky_sequence_agrees(nats_server: NatsServer) -> None:
    """Re-sends of a batch (whole, partial, reordered) with stale and fresh expectations."""
    program = [
        Op("new", 0, 3, 0, "all", "no_stream", 0),
        Op("new", 1, 1, 0, "all", "any", 0),
        Op("resend", 0, 0, 0, "all", "no_stream", 0),  # the whole batch again, stale: duplicate
        Op("resend", 0, 0, 0, "one", "current", 1),  # one event of it: duplicate
        Op("resend", 0, 0, 0, "tail", "any", 0),  # a consecutive part: duplicate
        Op("resend", 0, 0, 0, "reversed", "any", 0),  # out of order: refused
        Op("mixed", 0, 1, 0, "all", "stale", 0),  # one stored id and a new one, stale: conflict
        Op("mixed", 0, 1, 0, "all", "current", 0),  # ...expecting the right position: refused
        Op("new", 0, 0, 0, "all", "stale", 0),  # an empty append checks the expectation
        Op("new", 2, 2, 0, "all", "ahead", 0),
    ]
    trace = asyncio.run(run_both(nats_server.superuser(), program))
    assert len(trace) == len(program)
    assert "duplicate" not in trace[0]
    assert trace[2].endswith("jetstream ('ok', 'task.a', 1, 3, True)")
    assert "raised" in trace[5] and "raised" in trace[6] and "ConcurrencyError" in trace[6]


def test_found_divergence_stale_batch_with_a_stored_id_is_a_conflict(nats_server: NatsServer) -> None:
    """Found by the property test: JetStream refuses a batch holding a stored id (10201) before it
    checks the expected sequence, so the store said InvalidPayload where memory said conflict."""
    program = [Op("new", 0, 1, 0, "all", "any", 0), Op("mixed", 0, 1, 0, "all", "no_stream", 0)]
    trace = asyncio.run(run_both(nats_server.superuser(), program))
    assert trace[1] == (
        "append('task.a', ['e1', 'e2'], expected=0) -> "
        "memory ('raised', 'ConcurrencyError'), jetstream ('raised', 'ConcurrencyError')"
    )


def test_found_divergence_an_id_stored_in_another_stream_is_not_a_duplicate(nats_server: NatsServer) -> None:
    """Found by the property test: JetStream de-duplicates ids across all subjects, and the store
    reported ``duplicate=True`` for an event that is not in the stream it was appended to."""
    program = [Op("new", 0, 1, 0, "all", "any", 0), Op("foreign", 0, 1, 0, "all", "any", 0)]
    trace = asyncio.run(run_both(nats_server.superuser(), program))
    assert trace[1] == (
        "append('task.b', ['e1'], expected=ANY) -> "
        "memory ('raised', 'InvalidPayload'), jetstream ('raised', 'InvalidPayload')"
    )
