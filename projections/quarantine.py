"""Quarantine: stored events the read models could not apply, each with the reason, never a crash.

A stored event that does not decode (out of range, malformed, an unknown type: written with admin
credentials, or damaged) is skipped by every view; an event that decodes but makes one view's fold
raise is skipped by that view only. Either way the projector records it here, logs it, and goes on
with the events behind it. The row is committed with the views' checkpoints, so a restart starts
after the event and never meets it again.

``gpufleet status`` counts the rows, and the auditor reports the same events as findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from projections.storage import Table
from projections.view import View

__all__ = ["ALL_VIEWS", "QuarantineRow", "QuarantineView"]

#: The ``view`` of a row for an event that no view could read (it did not decode).
ALL_VIEWS = "*"


@dataclass(slots=True)
class QuarantineRow:
    position: int
    #: The view that skipped it, or ``*`` for an event that did not decode.
    view: str
    #: The event's type, as far as it could be read ("" when not even that).
    type: str
    #: The field at fault, when known.
    field: str
    reason: str


class QuarantineView(View):
    """The quarantined events; filled by the projector, not by folding."""

    name: ClassVar[str] = "quarantine"
    version: ClassVar[int] = 1
    quarantine: ClassVar[Table[QuarantineRow]] = Table.of("quarantine", QuarantineRow, key=("position", "view"))
    tables = (quarantine,)

    def record(self, position: int, view: str, type_name: str, field: str, reason: str) -> None:
        """Quarantine the event at ``position`` for ``view`` (``*``: for every view)."""
        key = (position, view)
        self.data["quarantine"][key] = QuarantineRow(position, view, type_name[:64], field[:200], reason[:2000])
        self.dirty["quarantine"].add(key)

    def rows(self) -> list[QuarantineRow]:
        """Every quarantined event, in log order."""
        rows: dict[tuple[int, str], QuarantineRow] = self.data["quarantine"]
        return [rows[k] for k in sorted(rows)]
