"""The watermark check: a log that lost, or changed, the last event a component applied stops it."""

from __future__ import annotations

from pathlib import Path

import pytest

from events import NO_STREAM, LogRegressed, MemoryEventStore
from events.store.watermark import Watermark, WatermarkFile, check_watermark
from projections.projector import Projector
from projections.storage import SqliteStore
from tests.factories import queued


async def _log(n: int) -> MemoryEventStore:
    store = MemoryEventStore()
    for i in range(n):
        await store.append(f"task.t{i}", [queued(f"task.t{i}")], expected=NO_STREAM)
    return store


async def test_the_same_log_passes_and_nothing_or_a_zero_mark_passes() -> None:
    store = await _log(3)
    event_id = await store.event_id_at(3)
    assert event_id is not None
    assert await check_watermark(store, Watermark(3, event_id, await store.log_id()), "x")
    assert await check_watermark(store, None, "x")
    assert await check_watermark(store, Watermark(0, ""), "x")


async def test_a_shorter_log_is_a_regression() -> None:
    store = await _log(2)
    with pytest.raises(LogRegressed, match="x: log regressed from 5 to 2 events"):
        await check_watermark(store, Watermark(5, "e5", await store.log_id()), "x")


async def test_another_event_at_the_position_is_a_rewrite() -> None:
    store = await _log(3)
    with pytest.raises(LogRegressed, match=r"log rewritten at position 2: it holds '.*' where 'other' was applied"):
        await check_watermark(store, Watermark(2, "other", await store.log_id()), "x", reset_hint="delete f")


async def test_a_mark_of_another_log_means_start_over_not_a_regression() -> None:
    store = await _log(1)
    assert not await check_watermark(store, Watermark(99, "e", "GF_EVENTS@yesterday"), "x")


def test_the_file_round_trips_and_a_damaged_one_is_a_clear_error(tmp_path: Path) -> None:
    f = WatermarkFile(tmp_path / "w.json")
    assert f.load() is None
    f.save(Watermark(7, "e7", "L"))
    assert f.load() == Watermark(7, "e7", "L")
    (tmp_path / "w.json").write_text("{half")
    with pytest.raises(LogRegressed, match="cannot read the watermark"):
        f.load()


async def test_a_projector_rebuilds_for_a_new_log_and_stops_on_a_shorter_one(tmp_path: Path) -> None:
    path = str(tmp_path / "rm.sqlite")
    old = await _log(4)
    db = SqliteStore(path)
    p = Projector(old, db)
    p.open()
    assert await p.catch_up() == 4
    mark = p.watermark()
    assert mark is not None and mark.position == 4 and mark.log == await old.log_id()
    db.close()

    # A fresh network at the same place: another log, so the read models start over from it.
    new = await _log(2)
    db = SqliteStore(path)
    p = Projector(new, db)
    p.open()
    assert await p.catch_up() == 2
    assert p.applied == 2  # folded from position 0 of the new log
    assert p.watermark() == Watermark(2, str(await new.event_id_at(2)), await new.log_id())
    db.close()
