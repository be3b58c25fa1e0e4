"""``gpufleet backup`` and ``restore``: JetStream snapshots of every stream and bucket, and a checksummed manifest.

A backup is a directory: one snapshot file per stream (``<stream>.tar.s2``, the server's own format:
message blocks, indexes, consumers), and ``manifest.json`` written last, which names each stream's
configuration, its state when it was taken (messages, first and last sequence, bytes), the size and
sha256 of its file, and the identity of the event log. A restore brings every stream back byte for
byte, with its sequences, configuration, creation time and consumers.

The protocol is JetStream's (nats-py has no helper for it):

- snapshot: ``$JS.API.STREAM.SNAPSHOT.<stream>`` with a deliver subject; the server sends chunks to
  it, asks for an acknowledgement (an empty reply) every so often and sends no more than a window
  ahead of them, and ends with an empty message whose ``Status`` header is 204. Each chunk goes to
  disk as it comes: memory holds at most one window.
- restore: ``$JS.API.STREAM.RESTORE.<stream>`` with the configuration and state; the server answers
  with a subject to send the file to, chunk by chunk (each one a request it acknowledges), then an
  empty message, answered by the stream's creation response once the server has rebuilt it.

Only the network's admin may do either (its role allows ``$JS.API.>`` and ``$JS.SNAPSHOT.>``).

A backup older than what the orchestrator or the projector of this machine already applied is a
regressed log. ``restore`` says so before it changes anything, and restores such a backup only when
the operator accepts the loss: the regressed watermarks are then set aside (renamed, never deleted).
A restored stream gets a new creation time, hence the log a new identity; the orchestrator's
watermark is carried over to it, so that its own check (``events.store.watermark``) still applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from events.errors import GpufleetError, LogRegressed
from events.store import JetStreamEventStore, StreamSettings
from events.store.connection import Access, connect_nats, denied_subjects
from events.store.watermark import Watermark, WatermarkFile, check_watermark, watermark_file

__all__ = [
    "MANIFEST",
    "BackupError",
    "LocalMark",
    "Manifest",
    "Progress",
    "Restored",
    "StreamBackup",
    "WatermarkProblem",
    "admin_connection",
    "backup_command",
    "local_watermarks",
    "read_manifest",
    "regressions",
    "restore",
    "restore_command",
    "settle_watermarks",
    "stream_names",
    "take_backup",
    "verify_backup",
]

MANIFEST = "manifest.json"
FORMAT = 1
#: The server sends the snapshot in chunks of this size, and at most a window of them unacknowledged.
SNAPSHOT_CHUNK = 128 * 1024
SNAPSHOT_WINDOW = 4 * 1024 * 1024
#: A restore sends the file in chunks of this size (well under the admin's largest message).
RESTORE_CHUNK = 128 * 1024
#: No chunk for this long: the snapshot stalled.
STALL_S = 30.0
API_TIMEOUT_S = 10.0

_log = structlog.get_logger("gpufleet.backup")

#: Called as work goes on: (stream, bytes done, bytes in all or None if unknown).
Progress = Callable[[str, int, int | None], None]


class BackupError(GpufleetError):
    """A backup or a restore that cannot go on; one line that says why, and what to do."""


@dataclass(frozen=True, slots=True)
class StreamBackup:
    """One stream in a backup: its snapshot file and what the server said of it when it was taken."""

    name: str
    file: str
    size: int
    sha256: str
    config: dict[str, Any]
    state: dict[str, Any]

    @property
    def messages(self) -> int:
        return int(self.state.get("messages", 0))

    @property
    def last_seq(self) -> int:
        return int(self.state.get("last_seq", 0))


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a backup holds (``manifest.json``)."""

    gpufleet: str
    created: str
    server: str
    #: The event log's identity (``EventStore.log_id``: its name and creation time), "" if absent.
    log: str
    events_stream: str
    streams: tuple[StreamBackup, ...]
    #: Streams that could not be snapshotted (memory storage), with the reason.
    skipped: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "gpufleet": self.gpufleet,
            "created": self.created,
            "server": self.server,
            "log": self.log,
            "events_stream": self.events_stream,
            "streams": [
                {"name": s.name, "file": s.file, "size": s.size, "sha256": s.sha256}
                | {"config": s.config, "state": s.state}
                for s in self.streams
            ],
            "skipped": self.skipped,
        }

    def stream(self, name: str) -> StreamBackup | None:
        return next((s for s in self.streams if s.name == name), None)

    @property
    def events(self) -> StreamBackup | None:
        """The event log's snapshot."""
        return self.stream(self.events_stream)


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpufleet")
    except PackageNotFoundError:
        return "unknown"


def _who(nc: NATS, access: Access | None) -> str:
    with contextlib.suppress(GpufleetError, OSError, ValueError):
        ident = access.identity() if access is not None else None
        if ident is not None:
            return str(ident)
    return "these credentials"


def _denied(subject: str, who: str) -> BackupError:
    if who.startswith("admin "):
        return BackupError(
            f"permission denied: the network refused {subject} to {who}: its admin role predates backups; "
            "start `gpufleet up` once with this version (it updates the accounts), or allow the admin "
            "$JS.SNAPSHOT.> on your own servers"
        )
    return BackupError(
        f"permission denied: the network refused {subject} to {who}: backup and restore need the "
        "network's admin credentials (`gpufleet creds issue admin NAME`, or run them on the machine of `gpufleet up`)"
    )


async def _request(nc: NATS, subject: str, body: bytes, who: str, timeout: float = API_TIMEOUT_S) -> Any:
    """A request whose refusal by the server's permissions is told at once (its answer never comes)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, body, reply=inbox)
        # The server answers this PING after it has handled the request: a refusal has arrived by then.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await nc.flush(timeout=int(timeout))
        # The error callback records a refusal in its own time: look for it while waiting.
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if subject.lower() in denied_subjects(nc):
                raise _denied(subject, who)
            try:
                return await sub.next_msg(timeout=0.25)
            except nats.errors.TimeoutError as e:
                if asyncio.get_running_loop().time() >= deadline:
                    raise BackupError(
                        f"no answer from JetStream to {subject}: is JetStream enabled on this server?"
                    ) from e
            except nats.errors.Error as e:
                raise BackupError(f"{subject} failed: {e!s}") from e
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def _api(nc: NATS, subject: str, payload: dict[str, Any] | None, who: str, what: str) -> dict[str, Any]:
    """A JetStream API call: its JSON answer, or ``BackupError`` naming ``what`` and the server's reason."""
    msg = await _request(nc, subject, json.dumps(payload).encode() if payload is not None else b"", who)
    try:
        data: dict[str, Any] = json.loads(msg.data)
    except ValueError as e:
        raise BackupError(f"{what}: the server's answer is not JSON: {msg.data[:80]!r}") from e
    error = data.get("error")
    if error:
        raise BackupError(f"{what}: {error.get('description', error)} (JetStream error {error.get('err_code', '?')})")
    return data


async def stream_names(nc: NATS, who: str = "these credentials") -> list[str]:
    """Every stream of the account (KV buckets are streams named ``KV_<bucket>``), sorted."""
    names: list[str] = []
    while True:
        page = await _api(nc, "$JS.API.STREAM.NAMES", {"offset": len(names)}, who, "listing the streams")
        batch = page.get("streams") or []
        names += batch
        if not batch or len(names) >= int(page.get("total", 0)):
            return sorted(set(names))


# ---- backup --------------------------------------------------------------------------------------


class _Sink:
    """A snapshot file being written: chunks appended and hashed as they come, renamed into place once complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".part")
        # Every tenant's data: the owner's alone (0600), whatever the umask.
        self.file = os.fdopen(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


async def _next_chunk(nc: NATS, sub: Any, name: str, who: str) -> Any:
    """The next message of a snapshot; a refused acknowledgement (the server then sends nothing more)
    is told within a second, a stall after ``STALL_S``."""
    waited = 0.0
    while True:
        refused = next((s for s in denied_subjects(nc) if s.startswith("$js.snapshot.")), None)
        if refused is not None:
            raise _denied(refused, who)
        try:
            return await sub.next_msg(timeout=1.0)
        except nats.errors.TimeoutError as e:
            waited += 1.0
            if waited >= STALL_S:
                raise BackupError(f"the snapshot of {name} stalled: no data for {STALL_S:g}s") from e


async def _snapshot(
    nc: NATS, name: str, path: Path, who: str, progress: Progress | None
) -> tuple[dict[str, Any], int, str]:
    """Snapshot one stream into ``path`` chunk by chunk; the server's answer (config and state), the
    file's size and sha256."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    sink: _Sink | None = None
    try:
        request = {
            "deliver_subject": inbox,
            "no_consumers": False,
            "chunk_size": SNAPSHOT_CHUNK,
            "window_size": SNAPSHOT_WINDOW,
        }
        answer = await _api(nc, f"$JS.API.STREAM.SNAPSHOT.{name}", request, who, f"snapshot of {name}")
        sink = await asyncio.to_thread(_Sink, path)
        while True:
            msg = await _next_chunk(nc, sub, name, who)
            if not msg.data:
                headers = msg.headers or {}
                status = headers.get("Status", "")
                if status and status != "204":
                    why = headers.get("Description", "")
                    raise BackupError(f"the server stopped the snapshot of {name}: {status} {why}".strip())
                break
            if msg.reply:
                # Acknowledge first: the server waits for it before it sends the next window.
                await nc.publish(msg.reply, b"")
            await asyncio.to_thread(sink.write, msg.data)
            if progress is not None:
                progress(name, sink.size, None)
        await asyncio.to_thread(sink.commit)
        size, digest, sink = sink.size, sink.digest.hexdigest(), None
        return answer, size, digest
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        if sink is not None:
            await asyncio.to_thread(sink.discard)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def take_backup(
    nc: NATS,
    directory: Path,
    *,
    access: Access | None = None,
    events: StreamSettings | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Snapshot every stream of the network into ``directory`` (new or empty) and write its manifest last.

    The event log is taken first: every other stream (intake, objects, dispatch, buckets) is then at
    least as new as it, so nothing the log refers to is missing from the backup.
    """
    who = _who(nc, access)
    await asyncio.to_thread(_empty_directory, directory)
    settings = events or StreamSettings()
    names = await stream_names(nc, who)
    if not names:
        raise BackupError("the network has no streams: nothing to back up")
    names.sort(key=lambda n: (n != settings.name, n))
    log = ""
    if settings.name in names:
        store = JetStreamEventStore(nc, settings=settings)
        log = await store.log_id()
    streams: list[StreamBackup] = []
    skipped: dict[str, str] = {}
    for name in names:
        info = await _api(nc, f"$JS.API.STREAM.INFO.{name}", None, who, f"stream {name}")
        if str(info.get("config", {}).get("storage", "file")) == "memory":
            skipped[name] = "memory storage: JetStream cannot snapshot it"
            continue
        file = f"{name}.tar.s2"
        answer, size, sha = await _snapshot(nc, name, directory / file, who, progress)
        streams.append(StreamBackup(name, file, size, sha, answer.get("config", {}), answer.get("state", {})))
        _log.info("backup.stream", stream=name, messages=streams[-1].messages, bytes=size)
    server = str((nc._server_info or {}).get("version", ""))  # nats-py keeps the server's INFO there
    manifest = Manifest(
        gpufleet=_version(),
        created=datetime.now(UTC).isoformat(),
        server=server,
        log=log,
        events_stream=settings.name,
        streams=tuple(streams),
        skipped=skipped,
    )
    await asyncio.to_thread(_write_manifest, directory, manifest.body())
    return manifest


def _empty_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / MANIFEST).exists():
        raise BackupError(f"{directory} already holds a backup: back up into a new directory")
    if any(p for p in directory.iterdir() if not p.name.startswith(".")):
        raise BackupError(f"{directory} is not empty: back up into a new or empty directory")
    directory.chmod(0o700)  # a backup is every tenant's data: its owner's alone


def _write_manifest(directory: Path, body: dict[str, Any]) -> None:
    """Written last, atomically: a directory without it is an unfinished backup."""
    tmp = directory / f".{MANIFEST}.tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump({**body, "digest": _digest(body)}, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    _fsync_dir(directory)


# ---- verify --------------------------------------------------------------------------------------


def read_manifest(directory: Path) -> Manifest:
    """The backup's manifest, checked against its own digest (``BackupError`` naming the problem)."""
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BackupError(f"{path} does not exist: {directory} is not a gpufleet backup, or an unfinished one") from e
    except (OSError, ValueError) as e:
        raise BackupError(f"{path} cannot be read: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else None
        raise BackupError(f"{path}: backup format {got!r}, this version reads format {FORMAT}")
    recorded = raw.pop("digest", None)
    if recorded != _digest(raw):
        raise BackupError(f"{path} is corrupt: it does not match its own digest; nothing was restored")
    try:
        streams = tuple(
            StreamBackup(
                str(s["name"]), str(s["file"]), int(s["size"]), str(s["sha256"]), dict(s["config"]), dict(s["state"])
            )
            for s in raw["streams"]
        )
        for s in streams:
            if Path(s.file).name != s.file or s.config.get("name") != s.name:
                raise ValueError(f"stream {s.name!r}: bad file name or configuration")
        return Manifest(
            gpufleet=str(raw["gpufleet"]),
            created=str(raw["created"]),
            server=str(raw["server"]),
            log=str(raw["log"]),
            events_stream=str(raw["events_stream"]),
            streams=streams,
            skipped={str(k): str(v) for k, v in dict(raw.get("skipped") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BackupError(f"{path} is not a valid manifest: {e}") from e


def verify_backup(directory: Path, progress: Progress | None = None) -> Manifest:
    """Read the manifest and check every snapshot file's size and sha256 against it, reading each file
    in blocks. ``BackupError`` names the first file that does not match."""
    manifest = read_manifest(directory)
    for s in manifest.streams:
        path = directory / s.file
        digest = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    size += len(block)
                    if progress is not None:
                        progress(f"check {s.name}", size, s.size)
        except FileNotFoundError as e:
            raise BackupError(f"{path} is missing from the backup; nothing was restored") from e
        except OSError as e:
            raise BackupError(f"{path} cannot be read: {e.strerror}; nothing was restored") from e
        if size != s.size or digest.hexdigest() != s.sha256:
            raise BackupError(
                f"{path} is corrupt: {size} bytes with sha256 {digest.hexdigest()[:16]}…, the manifest says "
                f"{s.size} bytes with sha256 {s.sha256[:16]}…; nothing was restored"
            )
    return manifest


# ---- watermarks ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalMark:
    """A watermark this machine keeps for a log: whose, where, and the mark."""

    who: str
    path: Path
    mark: Watermark


def local_watermarks(store: JetStreamEventStore, data_dir: Path | None) -> list[LocalMark]:
    """The watermarks in ``data_dir`` taken on a log of ``store``'s event stream (by its name: the
    identity of the log also holds its creation time, which a restore changes): each orchestrator
    watermark file, and the projector's in the read models (``readmodels.sqlite``, where ``gpufleet
    up`` keeps them)."""
    if data_dir is None:
        return []
    stream = f"{store.settings.name}@"
    found: list[LocalMark] = []
    for path in sorted(data_dir.glob("orchestrator.*.watermark.json")):
        mark = WatermarkFile(path).load()
        if mark is not None and mark.log.startswith(stream):
            found.append(LocalMark("orchestrator", path, mark))
    db_path = data_dir / "readmodels.sqlite"
    if db_path.is_file():
        from projections.projector import WATERMARK, Projector
        from projections.storage import SqliteStore

        db = SqliteStore(str(db_path))
        try:
            db.ensure([WATERMARK])
            pmark = Projector(store, db).watermark()
        finally:
            db.close()
        if pmark is not None and pmark.log.startswith(stream):
            found.append(LocalMark("projector", db_path, pmark))
    return found


@dataclass(frozen=True, slots=True)
class WatermarkProblem:
    """A watermark of this machine that the restored log does not satisfy: the component will refuse it."""

    who: str
    path: Path
    message: str


def regressions(manifest: Manifest, marks: list[LocalMark]) -> list[WatermarkProblem]:
    """Before a restore: the watermarks ahead of the backup's event log (restoring it loses those events)."""
    events = manifest.events
    last = events.last_seq if events is not None else 0
    problems = []
    for m in marks:
        if m.mark.position <= last:
            continue
        other = "" if m.mark.log == manifest.log else f" on {m.mark.log} (an earlier restore of it, or another log)"
        problems.append(
            WatermarkProblem(
                m.who,
                m.path,
                f"the {m.who} ({m.path}) applied {m.mark.position} events{other}, this backup's log ends at "
                f"{last}: restoring it loses events {last + 1}-{m.mark.position} for good",
            )
        )
    return problems


def _set_aside(path: Path, stamp: str) -> list[Path]:
    """Rename ``path`` (and a database's ``-wal`` and ``-shm`` files) to ``<name>.before-restore-<stamp>``."""
    moved = []
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            target = p.with_name(f"{p.name}.before-restore-{stamp}")
            os.replace(p, target)
            moved.append(target)
    return moved


async def settle_watermarks(
    store: JetStreamEventStore,
    data_dir: Path,
    marks: list[LocalMark],
    backup_log: str,
    *,
    accept: bool,
    stamp: str | None = None,
) -> tuple[list[str], list[WatermarkProblem]]:
    """After a restore: bring this machine's watermarks over to the restored log, so that each component
    checks it as it checks any log before it starts (``check_watermark``).

    nats-server gives a restored stream a new creation time, so the restored log has a new identity
    (``EventStore.log_id``), and the components would take it for another log and start over without
    a check. The restore knows better: it is the backed-up log. So the orchestrator's watermark is
    carried over to the restored log (its file for the old identity is renamed aside), and the
    orchestrator refuses the restored log if it lost what it applied. With ``accept``, a watermark the
    restored log does not hold is set aside instead, and the orchestrator starts over on the restored
    log. The projector rebuilds its read models from the restored log at its next start. Returns what
    was done, in lines, and the problems left (each component refuses the log until they are settled).
    """
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log = await store.log_id()
    head = await store.head()
    notes: list[str] = []
    problems: list[WatermarkProblem] = []
    for m in marks:
        if m.mark.log != backup_log:
            # Another log of the same name (an earlier restore, or a network created afresh here):
            # set aside only when the operator accepted losing what it applied, else left alone.
            if accept and m.mark.position > head:
                moved = ", ".join(str(p) for p in await asyncio.to_thread(_set_aside, m.path, stamp))
                notes.append(
                    f"accepted the restored log: the {m.who}'s watermark ({m.mark.position}) set aside: {moved}"
                )
            continue
        carried = Watermark(m.mark.position, m.mark.event_id, log)
        try:
            await check_watermark(store, carried, m.who)
            problem = ""
        except LogRegressed as e:
            problem = str(e)
        if problem and accept:
            moved = ", ".join(str(p) for p in await asyncio.to_thread(_set_aside, m.path, stamp))
            notes.append(f"accepted the restored log: the {m.who}'s watermark ({m.mark.position}) set aside: {moved}")
        elif m.who == "projector":
            if problem:
                problems.append(WatermarkProblem(m.who, m.path, problem))
            if m.mark.log != log:
                notes.append("the projector rebuilds its read models from the restored log at its next start")
        else:
            target = watermark_file(data_dir, m.who, log)
            if m.mark.log != log:
                await asyncio.to_thread(target.save, carried)
                await asyncio.to_thread(_set_aside, m.path, stamp)
                notes.append(f"the {m.who}'s watermark ({m.mark.position}) carried over to the restored log")
            if problem:
                problems.append(WatermarkProblem(m.who, target.path, problem))
    return notes, problems


# ---- restore -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    """One stream as the server reports it after the restore."""

    name: str
    messages: int
    first_seq: int
    last_seq: int
    consumers: int


_COMPARED = ("messages", "first_seq", "last_seq", "bytes")


async def _restore_one(nc: NATS, s: StreamBackup, path: Path, who: str, progress: Progress | None) -> dict[str, Any]:
    answer = await _api(
        nc, f"$JS.API.STREAM.RESTORE.{s.name}", {"config": s.config, "state": s.state}, who, f"restore of {s.name}"
    )
    subject = str(answer.get("deliver_subject") or "")
    if not subject:
        raise BackupError(f"restore of {s.name}: the server named no subject to send the snapshot to")
    sent = 0
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, RESTORE_CHUNK):
            ack = await _request(nc, subject, chunk, who, timeout=STALL_S)
            if ack.data:
                why = ack.data[:200].decode(errors="replace")
                raise BackupError(f"the server refused the snapshot of {s.name}: {why}")
            sent += len(chunk)
            if progress is not None:
                progress(s.name, sent, s.size)
    finally:
        f.close()
    # The server rebuilds the stream now: allow for a large one.
    final = await _request(nc, subject, b"", who, timeout=max(120.0, s.size / (5 << 20)))
    try:
        created: dict[str, Any] = json.loads(final.data)
    except ValueError as e:
        raise BackupError(f"restore of {s.name}: the server's answer is not JSON: {final.data[:80]!r}") from e
    error = created.get("error")
    if error:
        raise BackupError(f"restore of {s.name} failed: {error.get('description', error)}")
    state = created.get("state") or {}
    # An empty stream's first sequence is 0 in one report and 1 in another: it holds nothing either way.
    compared = _COMPARED if s.messages else tuple(k for k in _COMPARED if k != "first_seq")
    wrong = [f"{k} {state.get(k)} (backup: {s.state.get(k)})" for k in compared if state.get(k) != s.state.get(k)]
    if wrong:
        raise BackupError(f"restored {s.name} does not match the backup: {', '.join(wrong)}")
    return state


async def restore(
    nc: NATS,
    directory: Path,
    *,
    access: Access | None = None,
    force: bool = False,
    manifest: Manifest | None = None,
    progress: Progress | None = None,
) -> list[Restored]:
    """Restore every stream of the backup in ``directory`` (verified first, unless ``manifest`` is the
    already verified one). A stream that already exists is refused, unless ``force``: it is then
    deleted and replaced (after every check has passed, never before)."""
    who = _who(nc, access)
    manifest = manifest or verify_backup(directory)
    existing = set(await stream_names(nc, who))
    clash = [s.name for s in manifest.streams if s.name in existing]
    if clash and not force:
        raise BackupError(
            f"the server already has stream(s) {', '.join(clash)}: restore into a fresh server, or stop the "
            "network and add --force to replace them (their messages are lost); nothing was restored"
        )
    done: list[Restored] = []
    for s in manifest.streams:
        if s.name in existing:
            await _api(nc, f"$JS.API.STREAM.DELETE.{s.name}", None, who, f"deleting {s.name} to replace it")
            _log.info("restore.replaced", stream=s.name)
        try:
            state = await _restore_one(nc, s, directory / s.file, who, progress)
        except BackupError as e:
            if done:
                names = ", ".join(r.name for r in done)
                raise BackupError(f"{e} (restored before it: {names}; run again with --force to redo all)") from e
            raise
        done.append(
            Restored(
                s.name,
                int(state.get("messages", 0)),
                int(state.get("first_seq", 0)),
                int(state.get("last_seq", 0)),
                int(state.get("consumer_count", 0)),
            )
        )
        _log.info("restore.stream", stream=s.name, messages=done[-1].messages)
    return done


# ---- the commands --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _reach(access: Access | None, data_dir: Path, say: Callable[[str], None]) -> AsyncIterator[Access]:
    """The network to work on: ``access``; or, with None, the store of ``data_dir`` served by a
    nats-server started for the time of the work (the network ``gpufleet up`` runs there is stopped)."""
    if access is not None:
        yield access
        return
    from gpufleet.network import EmbeddedServer

    if not (data_dir / "auth" / "operator.nk").is_file():
        raise BackupError(
            f"no network in {data_dir}: give --data-dir of the machine that runs `gpufleet up`, "
            "or --nats and --creds of the network's admin"
        )
    server = EmbeddedServer(data_dir, port=0)
    await asyncio.to_thread(server.start)
    say(f"the network is not running: working on its store {server.server.store_dir} (a server started for this)")
    try:
        yield server.access("admin")
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.contextmanager
def _disk_errors() -> Iterator[None]:
    """A full disk or an unwritable directory is one line too."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # the command line says these in one line already
    except OSError as e:
        raise BackupError(f"{e.filename or 'the backup'}: {e.strerror or e}") from e


def _say(console: Any) -> Callable[[str], None]:
    return lambda line: console.print(line, highlight=False)


def _progress_bar(console: Any) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _tracker(bar: Any) -> Progress:
    tasks: dict[str, Any] = {}

    def update(name: str, done: int, total: int | None) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done)

    return update


async def backup_command(directory: Path, access: Access | None, data_dir: Path, console: Any) -> Manifest:
    """``gpufleet backup DIR``: snapshot every stream and bucket, print what the backup holds."""
    from gpufleet.tables import narrow_table

    say = _say(console)
    async with _reach(access, data_dir, say) as target, admin_connection(target) as nc:
        with _progress_bar(console) as bar, _disk_errors():
            manifest = await take_backup(nc, directory, access=target, progress=_tracker(bar))
    table = narrow_table(f"backup in {directory}")
    for col in ("stream", "messages", "first seq", "last seq", "file bytes", "sha256"):
        table.add_column(col, justify="left" if col in ("stream", "sha256") else "right")
    for s in manifest.streams:
        st = s.state
        first = str(st.get("first_seq", 0)) if s.messages else "-"
        table.add_row(s.name, str(s.messages), first, str(s.last_seq), f"{s.size:,}", s.sha256[:16] + "…")
    console.print(table)
    for name, why in manifest.skipped.items():
        console.print(f"not backed up: {name}: {why}", highlight=False)
    console.print(
        f"restore with `gpufleet restore {directory}`; keep a copy of the network's keys (<data dir>/auth) apart: "
        "a backup holds no keys",
        highlight=False,
    )
    return manifest


async def restore_command(
    directory: Path,
    access: Access | None,
    data_dir: Path,
    console: Any,
    *,
    force: bool = False,
    accept: bool = False,
) -> list[Restored]:
    """``gpufleet restore DIR``: verify, check this machine's watermarks, restore, check them again, and
    say what came back and what to do next."""
    from gpufleet.tables import narrow_table

    with _progress_bar(console) as bar, _disk_errors():
        manifest = await asyncio.to_thread(verify_backup, directory, _tracker(bar))
    settings = StreamSettings(name=manifest.events_stream)
    async with _reach(access, data_dir, _say(console)) as target, admin_connection(target) as nc:
        store = JetStreamEventStore(nc, settings=settings)
        marks = local_watermarks(store, data_dir)
        ahead = regressions(manifest, marks)
        if ahead and not accept:
            raise BackupError(
                "; ".join(p.message for p in ahead)
                + ": nothing was restored (to restore it and accept that loss, add --accept-restored)"
            )
        with _progress_bar(console) as bar, _disk_errors():
            restored = await restore(
                nc, directory, access=target, force=force, manifest=manifest, progress=_tracker(bar)
            )
        notes: list[str] = []
        problems: list[WatermarkProblem] = []
        try:
            if manifest.events is not None and marks:
                await store.ensure()
                notes, problems = await settle_watermarks(store, data_dir, marks, manifest.log, accept=accept)
        finally:
            await store.close()
    table = narrow_table(f"restored from {directory} (taken {manifest.created})")
    for col in ("stream", "messages", "first seq", "last seq", "consumers"):
        table.add_column(col, justify="left" if col == "stream" else "right")
    for r in restored:
        first = str(r.first_seq) if r.messages else "-"
        table.add_row(r.name, str(r.messages), first, str(r.last_seq), str(r.consumers))
    console.print(table)
    for line in notes:
        console.print(line, highlight=False)
    if problems:
        raise BackupError(
            "restored, but "
            + "; ".join(p.message for p in problems)
            + " (to accept the restored log as the network's history, delete "
            + ", ".join(str(p.path) for p in problems)
            + ")"
        )
    events = manifest.events
    console.print(
        f"next: start the network (`gpufleet up`): the orchestrator resumes at log position "
        f"{events.last_seq if events else 0} and the projector catches up (or rebuilds its read models); "
        "then check it with `gpufleet replay --audit`",
        highlight=False,
    )
    return restored


@contextlib.asynccontextmanager
async def admin_connection(access: Access) -> AsyncIterator[NATS]:
    """A connection for a backup or a restore (its own name, so that the server's monitoring shows it)."""
    nc = await connect_nats(access, name="gpufleet-backup")
    try:
        yield nc
    finally:
        await nc.close()
