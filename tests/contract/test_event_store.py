"""One contract, every EventStore: in-memory and JetStream (a real nats-server) behave the same."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from events import ANY, NO_STREAM, ConcurrencyError, Envelope, EventStore, InvalidPayload, PayloadTooLarge
from events.registry import MAX_EVENT_BYTES
from tests.factories import created, progressed, queued


async def collect(it: Any, n: int | None = None, timeout: float = 10.0) -> list[Envelope]:
    """Drain an async iterator, or take its first ``n`` items, within ``timeout``."""

    async def run() -> list[Envelope]:
        out: list[Envelope] = []
        async for e in it:
            out.append(e)
            if n is not None and len(out) >= n:
                break
        return out

    return await asyncio.wait_for(run(), timeout)


def ids(envs: list[Envelope]) -> list[str]:
    return [e.id for e in envs]


async def test_implements_protocol(store: EventStore) -> None:
    assert isinstance(store, EventStore)


async def test_empty_log(store: EventStore) -> None:
    assert await store.head() == 0
    assert await store.read_stream("task.nothing") == []
    assert await collect(store.read_all()) == []
    assert await store.stream_position("task.nothing") == 0


async def test_append_and_read_in_order(store: EventStore) -> None:
    a = [queued("task.a", n=i) for i in range(3)]
    r = await store.append("task.a", a, expected=NO_STREAM)
    assert (r.first, r.last, r.duplicate) == (1, 3, False)
    b = [queued("task.b")]
    r2 = await store.append("task.b", b, expected=NO_STREAM)
    assert (r2.first, r2.last) == (4, 4)
    got = await store.read_stream("task.a")
    assert ids(got) == ids(a)
    assert [e.sequence for e in got] == [1, 2, 3]
    assert [e.data for e in got] == [e.data for e in a]
    everything = await collect(store.read_all())
    assert ids(everything) == ids(a) + ids(b)
    assert [e.sequence for e in everything] == [1, 2, 3, 4]
    assert await store.head() == 4


async def test_round_trip_keeps_envelope_attributes(store: EventStore) -> None:
    env = queued("task.rt")
    env = Envelope(
        id=env.id, source="svc/x", subject=env.subject, data=env.data, correlationid="c-1", causationid="k-1"
    )
    await store.append("task.rt", [env], expected=NO_STREAM)
    (got,) = await store.read_stream("task.rt")
    assert (got.id, got.source, got.subject, got.correlationid, got.causationid) == (
        env.id,
        "svc/x",
        "task.rt",
        "c-1",
        "k-1",
    )
    assert got.data == env.data and got.type == "TaskQueued" and got.time == env.time


async def test_stale_expected_position_conflicts_and_writes_nothing(store: EventStore) -> None:
    r = await store.append("task.c", [queued("task.c")], expected=NO_STREAM)
    await store.append("task.c", [queued("task.c")], expected=r.last)
    with pytest.raises(ConcurrencyError) as info:
        await store.append("task.c", [queued("task.c"), queued("task.c")], expected=r.last)
    assert info.value.stream == "task.c" and info.value.expected == r.last
    assert len(await store.read_stream("task.c")) == 2
    assert await store.head() == 2


async def test_create_once(store: EventStore) -> None:
    await store.append("task.once", [queued("task.once")], expected=NO_STREAM)
    with pytest.raises(ConcurrencyError):
        await store.append("task.once", [queued("task.once")], expected=NO_STREAM)


async def test_expected_on_missing_stream_conflicts(store: EventStore) -> None:
    with pytest.raises(ConcurrencyError):
        await store.append("task.ghost", [queued("task.ghost")], expected=7)


async def test_any_skips_the_check(store: EventStore) -> None:
    await store.append("task.any", [queued("task.any")], expected=ANY)
    await store.append("task.any", [queued("task.any")], expected=ANY)
    assert len(await store.read_stream("task.any")) == 2


async def test_resent_event_id_is_stored_once(store: EventStore) -> None:
    e = queued("task.d", event_id="same-id")
    first = await store.append("task.d", [e], expected=NO_STREAM)
    # A retry with the original (now stale) expectation, and one without any.
    again = await store.append("task.d", [e], expected=NO_STREAM)
    anyway = await store.append("task.d", [e], expected=ANY)
    assert again.duplicate and anyway.duplicate
    assert again.last == first.last == anyway.last
    assert ids(await store.read_stream("task.d")) == ["same-id"]
    assert await store.head() == 1


async def test_resent_batch_is_stored_once(store: EventStore) -> None:
    batch = [queued("task.e", event_id=f"b-{i}") for i in range(4)]
    first = await store.append("task.e", batch, expected=NO_STREAM)
    again = await store.append("task.e", batch, expected=NO_STREAM)
    assert again.duplicate and (again.first, again.last) == (first.first, first.last)
    assert len(await store.read_stream("task.e")) == 4


async def test_mixing_stored_and_new_ids_is_refused(store: EventStore) -> None:
    await store.append("task.m", [queued("task.m", event_id="m-1")], expected=NO_STREAM)
    with pytest.raises((InvalidPayload, ConcurrencyError)):
        await store.append("task.m", [queued("task.m", event_id="m-1"), queued("task.m", event_id="m-2")], expected=ANY)
    assert ids(await store.read_stream("task.m")) == ["m-1"]


async def test_reads_after_a_position(store: EventStore) -> None:
    for i in range(5):
        await store.append(f"task.r{i % 2}", [queued(f"task.r{i % 2}")], expected=ANY)
    tail = await collect(store.read_all(after=3))
    assert [e.sequence for e in tail] == [4, 5]
    r0 = await store.read_stream("task.r0", after=1)
    assert [e.sequence for e in r0] == [3, 5]
    assert await collect(store.read_all(after=5)) == []


async def test_positions_increase_but_are_not_contiguous_per_stream(store: EventStore) -> None:
    for _ in range(3):
        for s in ("task.x", "task.y"):
            await store.append(s, [queued(s)], expected=ANY)
    xs = [e.sequence for e in await store.read_stream("task.x")]
    ys = [e.sequence for e in await store.read_stream("task.y")]
    assert xs == [1, 3, 5] and ys == [2, 4, 6]
    assert await store.stream_position("task.x") == 5
    # The next append to x must expect x's own last position, not the global head.
    with pytest.raises(ConcurrencyError):
        await store.append("task.x", [queued("task.x")], expected=6)
    r = await store.append("task.x", [queued("task.x")], expected=5)
    assert r.last == 7


async def test_empty_append_checks_and_writes_nothing(store: EventStore) -> None:
    r = await store.append("task.empty", [], expected=NO_STREAM)
    assert (r.first, r.last) == (0, 0)
    w = await store.append("task.empty", [queued("task.empty")], expected=NO_STREAM)
    assert (await store.append("task.empty", [], expected=w.last)).last == w.last
    assert (await store.append("task.empty", [], expected=ANY)).last == w.last
    with pytest.raises(ConcurrencyError):
        await store.append("task.empty", [], expected=NO_STREAM)
    assert await store.head() == 1


async def test_subscription_catches_up_then_goes_live(store: EventStore) -> None:
    await store.append("task.s", [queued("task.s") for _ in range(3)], expected=NO_STREAM)
    sub = store.subscribe(after=1)
    first_two = await collect(sub, 2)
    assert [e.sequence for e in first_two] == [2, 3]

    async def later() -> None:
        await asyncio.sleep(0.05)
        await store.append("task.t", [queued("task.t"), queued("task.t")], expected=NO_STREAM)

    writer = asyncio.create_task(later())
    live = await collect(sub, 2)
    await writer
    assert [e.sequence for e in live] == [4, 5]
    assert {e.subject for e in live} == {"task.t"}
    await sub.aclose()  # type: ignore[attr-defined]


async def test_oversized_event_is_refused_with_the_limit(store: EventStore) -> None:
    ok = progressed("task.big", 0.5)
    big = created("task.big", params={"blob": "x" * (MAX_EVENT_BYTES + 1)})
    with pytest.raises(PayloadTooLarge) as info:
        await store.append("task.big", [ok, big], expected=NO_STREAM)
    assert info.value.limit == MAX_EVENT_BYTES and str(MAX_EVENT_BYTES) in str(info.value)
    assert await store.head() == 0
    await store.append("task.big", [ok], expected=NO_STREAM)
    assert ids(await store.read_stream("task.big")) == [ok.id]


async def test_event_for_another_stream_is_refused(store: EventStore) -> None:
    with pytest.raises(InvalidPayload) as info:
        await store.append("task.one", [queued("task.two")], expected=ANY)
    assert info.value.field == "subject"
    assert await store.head() == 0


async def test_bad_stream_name_is_refused(store: EventStore) -> None:
    with pytest.raises(InvalidPayload):
        await store.append("not a stream", [queued("task.z")], expected=ANY)


async def test_duplicate_ids_within_one_append_are_refused(store: EventStore) -> None:
    e = queued("task.dd", event_id="twice")
    with pytest.raises(InvalidPayload):
        await store.append("task.dd", [e, e], expected=ANY)
    assert await store.head() == 0


async def test_concurrent_writers_one_wins(store: EventStore) -> None:
    r = await store.append("task.race", [queued("task.race")], expected=NO_STREAM)
    results = await asyncio.gather(
        *(store.append("task.race", [queued("task.race")], expected=r.last) for _ in range(5)),
        return_exceptions=True,
    )
    wins = [x for x in results if not isinstance(x, BaseException)]
    conflicts = [x for x in results if isinstance(x, ConcurrencyError)]
    assert len(wins) == 1 and len(conflicts) == 4
    assert len(await store.read_stream("task.race")) == 2


async def test_append_many_is_atomic_across_streams(store: EventStore) -> None:
    r = await store.append("task.m1", [queued("task.m1")], expected=NO_STREAM)
    batch = [
        ("task.m1", [queued("task.m1"), queued("task.m1")], r.last),
        ("task.m2", [queued("task.m2")], NO_STREAM),
        ("task.m3", [queued("task.m3")], ANY),
    ]
    results = await store.append_many(batch)
    assert [(x.stream, x.first, x.last) for x in results] == [("task.m1", 2, 3), ("task.m2", 4, 4), ("task.m3", 5, 5)]
    assert await store.stream_position("task.m2") == 4
    # The same batch again (a retry after a lost acknowledgement) stores nothing twice.
    again = await store.append_many(batch)
    assert all(x.duplicate for x in again) and [x.last for x in again] == [3, 4, 5]
    assert await store.head() == 5


async def test_append_many_with_one_stale_expectation_writes_nothing(store: EventStore) -> None:
    await store.append("task.s1", [queued("task.s1")], expected=NO_STREAM)
    with pytest.raises(ConcurrencyError) as info:
        await store.append_many(
            [("task.s2", [queued("task.s2")], NO_STREAM), ("task.s1", [queued("task.s1")], NO_STREAM)]
        )
    assert info.value.stream == "task.s1"
    assert await store.head() == 1 and await store.read_stream("task.s2") == []


async def test_append_many_creates_many_streams_at_once(store: EventStore) -> None:
    batch = [(f"task.c{i}", [queued(f"task.c{i}")], NO_STREAM) for i in range(200)]
    results = await store.append_many(batch)
    assert [x.first for x in results] == list(range(1, 201))
    assert ids(await collect(store.read_all())) == [events[0].id for _, events, _ in batch]
