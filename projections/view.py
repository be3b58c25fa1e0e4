"""The shape of a view: a deterministic fold of events into in-memory tables that know what changed.

A view keeps its read model in memory as rows (slotted dataclasses) keyed like its tables. Its
``evolve`` folds one event: no I/O, no clock, no randomness; it changes only its own rows and marks
them dirty. The projector takes the dirty rows of a whole batch (``changes``) and writes them with
the checkpoint in one transaction. Loading the rows back (``load``) restores the exact state, so a
view restarted from its checkpoint folds the tail exactly as a view that never stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from events.envelope import Envelope
from events.types import EventModel
from projections.storage import ReadModelStore, Table, Value

__all__ = ["Changes", "Handler", "TableChanges", "View", "iso", "parse_iso"]

#: Folds one event (and its envelope) into a view's rows.
Handler = Callable[[Any, Envelope], None]


_ISO_CACHE: dict[datetime, str] = {}


def iso(at: datetime) -> str:
    """A UTC instant as stored in read models: ISO 8601 with a ``Z``; sortable as text."""
    # Events of one append share their instant, and every view formats it: a small cache pays.
    text = _ISO_CACHE.get(at)
    if text is None:
        if len(_ISO_CACHE) >= 4096:
            _ISO_CACHE.clear()
        text = _ISO_CACHE[at] = at.isoformat().replace("+00:00", "Z")
    return text


def parse_iso(text: str) -> datetime:
    """Inverse of :func:`iso`."""
    return datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class TableChanges:
    """The rows of one table to write (whole rows, column order) and the keys to delete."""

    table: Table[Any]
    upserts: list[tuple[Value, ...]]
    deletes: list[Any]


#: Everything one view changed since the last ``changes()``.
Changes = list[TableChanges]


class View:
    """Base of every view. Subclasses set ``name``, ``version`` and ``tables``, and define
    ``on_<EventType>(self, event, envelope)`` handlers; events without a handler are ignored.

    Bump ``version`` when a view's tables or fold change meaning: the projector then rebuilds that
    view from position 0.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table[Any], ...]]
    #: True for a view that reads every event through ``evolve`` (the audit chain).
    all_events: ClassVar[bool] = False

    def __init__(self) -> None:
        self.data: dict[str, dict[Any, Any]] = {t.name: {} for t in self.tables}
        self.dirty: dict[str, set[Any]] = {t.name: set() for t in self.tables}
        self.handlers: dict[str, Handler] = {
            attr[3:]: getattr(self, attr) for attr in dir(type(self)) if attr.startswith("on_")
        }

    def evolve(self, env: Envelope) -> None:
        """Fold one event into the view's rows (a no-op for events the view does not read)."""
        handler = self.handlers.get(env.type)
        if handler is not None:
            handler(env.data, env)

    def fold(self, envs: list[Envelope]) -> None:
        """Fold events in order."""
        for env in envs:
            self.evolve(env)

    def load(self, store: ReadModelStore) -> None:
        """Replace the in-memory rows by the stored ones, then let the view derive its caches."""
        for t in self.tables:
            rows: dict[Any, Any] = {}
            for values in store.scan(t):
                rows[t.key_from_values(values)] = t.make(values)
            self.data[t.name].clear()
            self.data[t.name].update(rows)
            self.dirty[t.name].clear()
        self.loaded()

    def loaded(self) -> None:
        """Hook: rebuild caches that are derived from the rows after ``load``."""

    def changes(self) -> Changes:
        """The dirty rows as immutable values (safe to write from another thread); clears the marks."""
        out: Changes = []
        for t in self.tables:
            keys = self.dirty[t.name]
            if not keys:
                continue
            rows = self.data[t.name]
            values = t.values
            upserts: list[tuple[Value, ...]] = []
            deletes: list[Any] = []
            for k in keys:
                row = rows.get(k)
                if row is None:
                    deletes.append(k)
                else:
                    upserts.append(values(row))
            out.append(TableChanges(t, upserts, deletes))
            keys.clear()
        return out

    def snapshot(self) -> dict[str, list[tuple[Value, ...]]]:
        """Every table's rows as values, sorted by key: for comparing two views."""
        out: dict[str, list[tuple[Value, ...]]] = {}
        for t in self.tables:
            rows = self.data[t.name]
            out[t.name] = [t.values(rows[k]) for k in sorted(rows)]
        return out


def event_type(event: EventModel) -> str:
    """The ``type`` literal of an event."""
    t: str = event.type  # type: ignore[attr-defined]
    return t
