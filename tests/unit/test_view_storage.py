"""Read-model storage and the projector: one transaction per batch, checkpoints, restarts, resets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from events import MemoryEventStore
from projections import Checkpoint, Projector, SqliteStore, Table
from projections.jobs import JobsView
from projections.view import View
from tests.golden.loggen import Sim, golden_scenario, random_log


@dataclass(slots=True)
class Row:
    k: str
    n: int = 0
    x: float | None = None


T = Table.of("t_rows", Row, key=("k",), indexes=(("n",),))


def test_sqlite_store_upserts_deletes_checkpoints_and_rolls_back(tmp_path: Path) -> None:
    db = SqliteStore(tmp_path / "a.db")
    db.ensure([T])
    assert db.checkpoint("v") == Checkpoint(0, 0)
    with db.transaction() as tx:
        tx.upsert(T, [("a", 1, 0.5), ("b", 2, None), ("c", 3, 1.0)])
        tx.set_checkpoint("v", Checkpoint(7, 1))
    with db.transaction() as tx:
        tx.upsert(T, [("a", 10, 0.25)])
        tx.delete(T, ["b"])
    assert db.scan(T) == [("a", 10, 0.25), ("c", 3, 1.0)]
    assert db.select(T, {"n": 3}) == [("c", 3, 1.0)]
    assert db.select(T, order_by=("n DESC",), limit=1) == [("a", 10, 0.25)]
    with pytest.raises(ValueError, match="no column"):
        db.select(T, {"nope; DROP TABLE t_rows": 1})
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.upsert(T, [("z", 0, None)])
        tx.set_checkpoint("v", Checkpoint(99, 1))
        raise RuntimeError("crash between the rows and the commit")
    assert db.checkpoint("v") == Checkpoint(7, 1)
    assert [r[0] for r in db.scan(T)] == ["a", "c"]
    db.close()


async def store_of(sim: Sim) -> MemoryEventStore:
    store = MemoryEventStore()
    for stream, group in sim.appends:
        await store.append(stream, group, expected=None)
    return store


async def test_restart_from_checkpoint_equals_one_pass(tmp_path: Path) -> None:
    sim = random_log(3, max_events=3000, checkpoint_every=500)
    store = await store_of(sim)
    whole = Projector(store, SqliteStore(tmp_path / "whole.db"), batch_size=700)
    assert await whole.catch_up() == len(sim.events)

    partial_db = SqliteStore(tmp_path / "partial.db")
    first = Projector(store, partial_db, batch_size=250)
    first.open()
    for env in sim.events[:1234]:
        first.fold(env)
    await first.flush()
    assert partial_db.checkpoint("jobs").position == 1234
    second = Projector(store, partial_db, batch_size=333)  # a new process: state comes from SQLite
    assert second.open() == 1234
    second.fold(sim.events[1000])  # a redelivery below the checkpoint is ignored
    assert second.applied == 0
    assert await second.catch_up() == len(sim.events)
    assert second.dump() == whole.dump()
    for view in second.views:
        assert partial_db.checkpoint(view.name).position == len(sim.events)


async def test_a_view_whose_version_changed_is_rebuilt_alone(tmp_path: Path) -> None:
    store = await store_of(golden_scenario())
    db = SqliteStore(tmp_path / "v.db")
    await Projector(store, db).catch_up()
    expected = Projector(store, db).dump()

    class JobsV2(JobsView):
        version: ClassVar[int] = JobsView.version + 1

    p = Projector(store, db, views=[JobsV2()])
    assert p.open() == 0  # the jobs tables were cleared
    assert db.scan(JobsV2.tables[0]) == []
    await p.catch_up()
    assert db.checkpoint("jobs") == Checkpoint(len(golden_scenario().events), JobsV2.version)
    assert {k: v for k, v in p.dump().items()} == {t.name: expected[t.name] for t in JobsV2.tables}


async def test_views_with_different_checkpoints_each_apply_each_event_once(tmp_path: Path) -> None:
    sim = golden_scenario()
    store = await store_of(sim)
    db = SqliteStore(tmp_path / "mixed.db")
    p = Projector(store, db, views=[JobsView()])
    p.open()
    for env in sim.events[:60]:
        p.fold(env)
    await p.flush()
    both = Projector(store, db)  # jobs at 60, the others at 0
    assert both.open() == 0
    await both.catch_up()
    ref = Projector(store, SqliteStore(tmp_path / "ref.db"))
    await ref.catch_up()
    assert both.dump() == ref.dump()


def test_view_base_ignores_events_it_has_no_handler_for() -> None:
    class Nothing(View):
        name: ClassVar[str] = "nothing"
        tables: ClassVar[tuple[Table[object], ...]] = ()

    v = Nothing()
    v.fold(golden_scenario().events)
    assert v.changes() == []
