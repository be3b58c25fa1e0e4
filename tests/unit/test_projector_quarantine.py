"""A view whose fold fails on one event skips that event (quarantined, with the reason), and nothing
else: the other views apply it, the failing view applies every event behind it, and a restart from the
checkpoint never meets the event again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from events import NO_STREAM, MemoryEventStore
from events.envelope import Envelope
from events.task import TaskQueued
from projections.projector import Projector
from projections.quarantine import QuarantineView
from projections.storage import SqliteStore, Table
from projections.view import View
from tests.factories import queued


@dataclass(slots=True)
class SeenRow:
    task_id: str
    n: int


class Counting(View):
    """Counts TaskQueued per task; ``fail_on`` makes its fold raise for one task."""

    name: ClassVar[str] = "counting"
    seen: ClassVar[Table[SeenRow]] = Table.of("counting_seen", SeenRow, key=("task_id",))
    tables = (seen,)
    fail_on: ClassVar[str] = "bad"

    def on_TaskQueued(self, e: TaskQueued, env: Envelope) -> None:
        if e.task_id == self.fail_on:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        row: Any = self.data["counting_seen"].get(e.task_id) or SeenRow(e.task_id, 0)
        row.n += 1
        self.data["counting_seen"][e.task_id] = row
        self.dirty["counting_seen"].add(e.task_id)


class Other(Counting):
    name: ClassVar[str] = "other"
    seen: ClassVar[Table[SeenRow]] = Table.of("other_seen", SeenRow, key=("task_id",))
    tables = (seen,)
    fail_on: ClassVar[str] = ""

    def on_TaskQueued(self, e: TaskQueued, env: Envelope) -> None:
        row: Any = self.data["other_seen"].get(e.task_id) or SeenRow(e.task_id, 0)
        row.n += 1
        self.data["other_seen"][e.task_id] = row
        self.dirty["other_seen"].add(e.task_id)


async def test_a_failing_fold_quarantines_the_event_for_that_view_only(tmp_path: Any) -> None:
    store = MemoryEventStore()
    for stream in ("task.a", "task.bad", "task.b"):
        await store.append(stream, [queued(stream)], expected=NO_STREAM)
    bad_position = (await store.read_stream("task.bad"))[0].sequence
    path = str(tmp_path / "rm.sqlite")
    db = SqliteStore(path)
    p = Projector(store, db, [Counting(), Other(), QuarantineView()])
    p.open()
    assert await p.catch_up() == 3
    assert p.quarantined == 1
    dump = p.dump()
    assert dump["counting_seen"] == [("a", 1), ("b", 1)]
    assert dump["other_seen"] == [("a", 1), ("b", 1), ("bad", 1)]
    ((position, view, type_name, field, reason),) = dump["quarantine"]
    assert (position, view, type_name, field) == (bad_position, "counting", "TaskQueued", "")
    assert reason.startswith("OverflowError: Python int too large")
    db.close()

    db = SqliteStore(path)
    again = Projector(store, db, [Counting(), Other(), QuarantineView()])
    again.open()
    await store.append("task.c", [queued("task.c")], expected=NO_STREAM)
    assert await again.catch_up() == 4
    assert again.quarantined == 0
    assert again.dump()["counting_seen"] == [("a", 1), ("b", 1), ("c", 1)]
    assert len(again.dump()["quarantine"]) == 1
    db.close()


class Fussy(Counting):
    """A view whose ``loaded`` cannot take back a row it wrote (as a fold that failed half-way could leave)."""

    name: ClassVar[str] = "fussy"
    seen: ClassVar[Table[SeenRow]] = Table.of("fussy_seen", SeenRow, key=("task_id",))
    tables = (seen,)
    fail_on: ClassVar[str] = ""

    def on_TaskQueued(self, e: TaskQueued, env: Envelope) -> None:
        row: Any = self.data["fussy_seen"].get(e.task_id) or SeenRow(e.task_id, 0)
        row.n += 1
        self.data["fussy_seen"][e.task_id] = row
        self.dirty["fussy_seen"].add(e.task_id)

    def loaded(self) -> None:
        if "poison" in self.data["fussy_seen"]:
            raise ZeroDivisionError("cannot derive the cache from this row")


async def test_a_view_that_cannot_load_its_rows_starts_over_alone(tmp_path: Any) -> None:
    store = MemoryEventStore()
    for stream in ("task.a", "task.poison", "task.b"):
        await store.append(stream, [queued(stream)], expected=NO_STREAM)
    path = str(tmp_path / "rm.sqlite")
    db = SqliteStore(path)
    p = Projector(store, db, [Other(), Fussy(), QuarantineView()])
    p.open()
    assert await p.catch_up() == 3
    db.close()

    db = SqliteStore(path)
    again = Projector(store, db, [Other(), Fussy(), QuarantineView()])
    try:
        assert again.open() == 0  # the one view starts over; the others keep their checkpoint
        assert db.checkpoint("other").position == 3 and db.checkpoint("fussy").position == 0
        assert await again.catch_up() == 3
        assert again.dump()["fussy_seen"] == [("a", 1), ("b", 1), ("poison", 1)]
        assert again.dump()["other_seen"] == [("a", 1), ("b", 1), ("poison", 1)]
    finally:
        db.close()
