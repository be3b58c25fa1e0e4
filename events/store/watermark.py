"""Watermarks: a component remembers the last event it applied, and refuses a log that lost or changed it.

A store can lose acknowledged writes (a disk fault, a restore from an old backup, a node that came
back without its data), and nats-server may then serve a shorter log without a warning. A component
that simply started again would read the short log and write a different history on top of it. So
each component that builds on the log keeps a watermark, the position and id of the last event it
applied, outside the log (the orchestrator in a file of its data directory, the projector in its
read-model database, committed with the rows), and checks it before it does anything:

- the log is shorter than the watermark: "log regressed from 312 to 14 events";
- the log no longer holds that event (the server kept its length but lost the message): "log lost
  events: position 312 ... is gone";
- the log holds another event at that position: "log rewritten at position 312";
- the log has holes: positions up to its head that hold no event (the event stream denies deletes,
  so only damage makes one): "log lost 1 event(s) it had acknowledged".

Either way it stops with that one line and writes nothing. Restore the store from a backup or a
replica; or, to start over on purpose, delete the watermark.

A watermark names the log it was taken on (the event stream's name and creation time, which the
server keeps in the stream's metadata, apart from its messages). A watermark of another log (a
network created afresh at the same address) is not a regression: the caller starts over. What this
cannot see is a stream deleted and created again with a different history: that is the admin's
power, and the signed checkpoints of the audit are the answer to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from events.errors import LogRegressed
from events.store.protocol import EventStore

__all__ = ["Watermark", "WatermarkFile", "check_watermark", "watermark_file"]


@dataclass(frozen=True, slots=True)
class Watermark:
    """The last event a component applied: its global position and its id."""

    position: int
    event_id: str
    #: The log it was taken on (``EventStore.log_id``); "" if unknown.
    log: str = ""


async def check_watermark(store: EventStore, mark: Watermark | None, who: str, *, reset_hint: str = "") -> bool:
    """Raise ``LogRegressed`` unless the log still holds ``mark``'s event at ``mark``'s position.

    Returns False when ``mark`` was taken on another log (nothing to compare: start over), else True.
    """
    if mark is None or mark.position <= 0:
        return True
    if mark.log and mark.log != await store.log_id():
        return False
    hint = "restore the store from a backup or a replica; nothing was written"
    if reset_hint:
        hint += f" (to start over on purpose: {reset_hint})"
    head = await store.head()
    if head < mark.position:
        raise LogRegressed(f"{who}: log regressed from {mark.position} to {head} events: {hint}")
    found = await store.event_id_at(mark.position)
    if found is None:
        raise LogRegressed(
            f"{who}: log lost events: position {mark.position} ({mark.event_id!r}, already applied) "
            f"is gone though the log claims {head} events: {hint}"
        )
    if found != mark.event_id:
        raise LogRegressed(
            f"{who}: log rewritten at position {mark.position}: it holds {found!r} "
            f"where {mark.event_id!r} was applied: {hint}"
        )
    lost = await store.missing()
    if lost:
        raise LogRegressed(
            f"{who}: log lost {lost} event(s) it had acknowledged: it holds {head - lost} of positions 1..{head} "
            f"(`gpufleet replay --audit` names them): {hint}"
        )
    return True


def watermark_file(directory: Path, who: str, log: str) -> WatermarkFile:
    """The watermark file of ``who`` for log ``log`` in ``directory``: one file per log, so that
    components of several networks sharing a data directory never overwrite each other's."""
    digest = hashlib.sha256(log.encode()).hexdigest()[:16]
    return WatermarkFile(directory / f"{who}.{digest}.watermark.json")


class WatermarkFile:
    """A watermark kept in a small JSON file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Watermark | None:
        """The saved watermark, or None if there is none (a file that does not parse is an error)."""
        try:
            data = json.loads(self.path.read_text())
            return Watermark(int(data["position"]), str(data["event_id"]), str(data.get("log", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LogRegressed(f"cannot read the watermark {self.path}: {e!r}: fix or delete it") from e

    def save(self, mark: Watermark) -> None:
        """Write ``mark`` (write a temporary file, fsync, rename: never a torn watermark)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump({"position": mark.position, "event_id": mark.event_id, "log": mark.log}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
