"""Property tests: live equals rebuilt, and a prefix then the tail equals the whole, on random logs."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import MemoryEventStore
from projections import Projector, SqliteStore, default_views
from tests.golden.loggen import Sim, random_log
from tests.integration.audited import eventually

logs = st.builds(
    random_log,
    seed=st.integers(0, 2**31),
    max_events=st.integers(50, 1200),
    providers=st.integers(1, 6),
    chaos=st.sampled_from([0.0, 1.0, 4.0]),
    checkpoint_every=st.sampled_from([None, 100]),
)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


async def rebuilt(sim: Sim, path: Path) -> dict[str, list[tuple[object, ...]]]:
    store = MemoryEventStore()
    for stream, group in sim.appends:
        await store.append(stream, group, expected=None)
    p = Projector(store, SqliteStore(path), batch_size=10_000)
    await p.rebuild()
    return p.dump()


@SETTINGS
@given(sim=logs, chunks=st.lists(st.integers(1, 60), min_size=1, max_size=30), batch=st.integers(1, 400))
async def test_live_equals_rebuilt(sim: Sim, chunks: list[int], batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoryEventStore()
        live = Projector(store, SqliteStore(Path(tmp) / "live.db"), batch_size=batch, flush_interval=0.001)
        runner = asyncio.create_task(live.run())
        appends = list(sim.appends)
        i = 0
        while i < len(appends):
            for stream, group in appends[i : i + chunks[i % len(chunks)]]:
                await store.append(stream, group, expected=None)
            i += chunks[i % len(chunks)]
            await asyncio.sleep(0.001 * (i % 3))  # let the live projector follow, sometimes mid-batch
        await eventually(
            lambda: live.position >= len(sim.events),
            lambda: f"the live projector to fold all {len(sim.events)} events (it is at {live.position})",
            poll=0.005,
        )
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        live_tables = live.dump()
        whole = await rebuilt(sim, Path(tmp) / "rebuilt.db")
        assert sorted(live_tables) == sorted(whole)
        for table in whole:
            assert live_tables[table] == whole[table], table


@SETTINGS
@given(sim=logs, cut=st.floats(0.0, 1.0), batch=st.integers(1, 500))
async def test_prefix_then_tail_equals_whole(sim: Sim, cut: float, batch: int) -> None:
    k = int(len(sim.events) * cut)
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoryEventStore()
        for stream, group in sim.appends:
            await store.append(stream, group, expected=None)
        db = SqliteStore(Path(tmp) / "split.db")
        first = Projector(store, db, batch_size=batch)
        first.open()
        for env in sim.events[:k]:
            first.fold(env)
            if first.applied % batch == 0:
                await first.commit()
        await first.flush()
        second = Projector(store, db, batch_size=batch)  # as after a restart: state from SQLite only
        assert second.open() == k
        await second.catch_up()
        whole = await rebuilt(sim, Path(tmp) / "whole.db")
        split = second.dump()
        for table in whole:
            assert split[table] == whole[table], table
        # The in-memory model of the restarted projector is the stored one.
        memory = {name: rows for v in second.views for name, rows in v.snapshot().items()}
        assert memory == split


@settings(max_examples=25, deadline=None)
@given(sim=logs)
def test_folding_is_deterministic_byte_for_byte(sim: Sim) -> None:
    a, b = default_views(), default_views()
    for v in a:
        v.fold(sim.events)
    for v in b:
        v.fold(list(sim.events))
    assert [v.snapshot() for v in a] == [v.snapshot() for v in b]
