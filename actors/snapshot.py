"""Snapshots of the orchestrator's core: a restart reads the state at a log position, then only the tail.

Without one, a restart folds every event since position 0: minutes on a log of millions of events,
however little of it is live. A snapshot is the core (world, scheduler, timers, windows, runtime
model: ``actors.core.Core``) as it stood after the event at ``position``, kept in a file of the
orchestrator's state directory beside its watermark (``events.store.watermark``), one per log. With
jobs that are over retired from memory (``actors.world``), its size follows the live work, not the
history.

It is only ever a cache of the log, trusted no further than the log agrees with it:

- it names its log, its position and the id of the event there; the orchestrator loads it only if
  the log still holds that very event at that position (``check_watermark``'s rule), and reads the
  log from the next position on;
- it carries the sha256 of its body and a fingerprint of the code that wrote it (the source of
  ``actors`` and ``events``): any other version of the code, a torn or damaged file, a snapshot of
  another log or of a position the log no longer holds, and it is set aside with one log line and
  the core is rebuilt from the whole log, as before;
- what the writing process held in flight (slots reserved for leases not yet in the log, tasks it
  was creating) is not the log's: ``restore`` lets it go, exactly as a fresh fold never had it;
  reconciliation at start then redoes whatever it owed (``Core.reconcile``).

The body is a pickle, which runs code from what it reads: so a snapshot is read only from the
orchestrator's own state directory, only when the file belongs to this user and nobody else may
write it (the orchestrator writes it ``0600``), the same trust as the credentials kept there.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from actors.core import Core
from events.store.watermark import Watermark

__all__ = ["SNAPSHOT_FORMAT", "Snapshot", "SnapshotFile", "adopt", "code_fingerprint", "restore", "snapshot_file"]

#: The layout of the file (header line, then the compressed pickle).
SNAPSHOT_FORMAT = 1
_MAGIC = b"gpufleet-snapshot"


@cache
def code_fingerprint() -> str:
    """A digest of the code whose objects a snapshot holds: a snapshot of any other code is not read."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in ("actors", "events"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A core as it stood after the event ``mark`` names."""

    mark: Watermark
    core: Core


def snapshot_file(directory: Path, who: str, log: str) -> SnapshotFile:
    """The snapshot file of ``who`` for log ``log`` in ``directory`` (one per log, as watermarks are)."""
    digest = hashlib.sha256(log.encode()).hexdigest()[:16]
    return SnapshotFile(directory / f"{who}.{digest}.snapshot")


class SnapshotFile:
    """One snapshot in a file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, body: bytes, mark: Watermark, context: str = "") -> int:
        """Write a body made by ``dumps`` of a core as it stands after ``mark`` (temporary file, fsync,
        rename: never a torn snapshot; it may run in another thread); returns the bytes written.
        ``context``: what else the core was built with (configuration); ``load`` wants the same."""
        header = {
            "context": hashlib.sha256(context.encode()).hexdigest(),
            "format": SNAPSHOT_FORMAT,
            "code": code_fingerprint(),
            "log": mark.log,
            "position": mark.position,
            "event_id": mark.event_id,
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + b" " + json.dumps(header, sort_keys=True).encode() + b"\n")
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(body)

    @staticmethod
    def dumps(core: Core) -> bytes:
        """The body of a snapshot of ``core`` (in the thread that owns it: it must not change meanwhile)."""
        return zlib.compress(pickle.dumps(core, protocol=pickle.HIGHEST_PROTOCOL), 1)

    @staticmethod
    def loads(body: bytes) -> Core:
        """The core in a body made by ``dumps`` (trusted: see the module's docstring)."""
        core = pickle.loads(zlib.decompress(body))  # our own file: see the module docstring
        if not isinstance(core, Core):
            raise TypeError(f"a snapshot holds a Core, not {type(core).__name__}")
        return core

    def load(self, log: str, context: str = "") -> tuple[Snapshot | None, str]:
        """The snapshot, if there is one this code may use for log ``log``; else None and why not
        ("" when there is no file). It is not yet checked against the log (``Watermark`` rules)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None, ""
        except OSError as e:
            return None, f"cannot read it: {e}"
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None, "it is not a file of this user that only this user may write"
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            return None, f"cannot read it: {e}"
        line, _, body = raw.partition(b"\n")
        magic, _, text = line.partition(b" ")
        try:
            header = json.loads(text) if magic == _MAGIC else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
            return None, "not a snapshot this version reads"
        if header.get("code") != code_fingerprint():
            return None, "written by another version of the code"
        if header.get("log") != log:
            return None, "of another log"
        if header.get("context") != hashlib.sha256(context.encode()).hexdigest():
            return None, "made with another configuration"
        if header.get("size") != len(body) or header.get("sha256") != hashlib.sha256(body).hexdigest():
            return None, "damaged: its body does not match its digest"
        try:
            core = self.loads(body)
            mark = Watermark(int(header["position"]), str(header["event_id"]), log)
        except Exception as e:
            return None, f"does not load: {e!r}"
        if mark.position <= 0:
            return None, "of no position"
        return Snapshot(mark, core), ""


def restore(core: Core) -> Core:
    """``core`` as a fresh fold of the same events would have it: what its process held in flight
    (slots reserved for leases the log does not show yet, tasks it was creating) is let go."""
    for lease_id in list(core.reserved):
        core.lease_refused(lease_id)
    core.windows.forget_planned()
    return core


def adopt(core: Core, snapshot: Core) -> None:
    """Make ``core`` the ``snapshot``'s core, ``restore``d, in place: the objects others hold (the core,
    its world, its scheduler) stay the same objects, now with the snapshot's state."""
    restore(snapshot)
    core.world.__dict__.update(snapshot.world.__dict__)
    core.scheduler.__dict__.update(snapshot.scheduler.__dict__)
    snapshot.world, snapshot.scheduler = core.world, core.scheduler
    core.__dict__.update(snapshot.__dict__)
