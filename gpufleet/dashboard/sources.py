"""Where a dashboard's read models come from, and how they stay live.

- ``gpufleet up``: the network's own projector and read models (``start_dashboard``).
- ``gpufleet dashboard`` with an auditor's (or the operator's) credentials: a private projector
  follows the whole log into a cache in the data directory.
- ``gpufleet dashboard`` with a submitter's credentials: that identity's readable events, from the
  network's event feed (``Client.feed``, which serves only what ``events.subjects.readable`` allows),
  folded by the same views into a private store; only its own jobs show, and no fleet.

Either way, each durable commit of the projector notifies the dashboard (``Projector.on_commit``), and
so does live progress (``gpufleet.dashboard.live``), which the pages lay over the read models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from events import MemoryEventStore
from events.aio import cancel_and_wait
from events.errors import GpufleetError
from events.store.connection import Access
from events.subjects import outcomes_stream
from events.tlog import NoteKey
from gpufleet.dashboard.app import LOCAL_HOSTS, SignedCheckpoint, Source, create_app
from gpufleet.dashboard.live import LiveProgressCache, live_subjects
from gpufleet.dashboard.notify import Changes
from gpufleet.dashboard.serve import DashboardError, DashboardServer
from projections.eta import EtaView
from projections.jobs import JobsView
from projections.ledger import LedgerView
from projections.projector import Projector
from projections.quarantine import QuarantineView
from projections.query import ReadModels
from projections.storage import SqliteStore

__all__ = ["CheckpointProbe", "RunningDashboard", "open_network", "serve_network", "start_dashboard"]

_log = structlog.get_logger("gpufleet.dashboard")
#: Roles whose credentials read the whole log (the dashboard follows it with its own projector).
LOG_READERS = frozenset({"auditor", "admin", "orchestrator"})


class CheckpointProbe:
    """The latest signed checkpoint, verified as a reader does (``Client.checkpoint``), at most every
    ``every_s`` seconds; each one must extend the last one this probe verified."""

    def __init__(self, access: Access, key: NoteKey | str, *, every_s: float = 3.0, timeout_s: float = 5.0) -> None:
        self.access = access
        self.key = key
        self.every_s = every_s
        self.timeout_s = timeout_s
        self._client: Any = None
        self._last = SignedCheckpoint()
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> SignedCheckpoint:
        async with self._lock:
            if time.monotonic() - self._at < self.every_s:
                return self._last
            self._at = time.monotonic()
            try:
                if self._client is None:
                    from gpufleet.client import Client

                    a = self.access
                    self._client = await Client.connect(a.url, creds=a.creds, tls_ca=a.tls_ca)
                    self._client.trust(self.key)
                cp = await asyncio.wait_for(self._client.checkpoint(), self.timeout_s)
                vkey = self.key if isinstance(self.key, str) else self.key.vkey
                self._last = SignedCheckpoint(cp.size, cp.root.hex(), vkey, time.time())
            except (GpufleetError, TimeoutError) as e:
                self._last = SignedCheckpoint(
                    self._last.size, self._last.root, self._last.key, self._last.verified_at, str(e) or "timed out"
                )
            return self._last

    async def close(self) -> None:
        """Close its connection."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None


class RunningDashboard:
    """A served dashboard and what keeps it live; :meth:`stop` ends them all."""

    def __init__(self, server: DashboardServer | None = None, probe: CheckpointProbe | None = None) -> None:
        self.server = server
        self.probe = probe
        self.tasks: list[asyncio.Task[Any]] = []
        #: The private projector that follows the log (``gpufleet dashboard`` as an auditor).
        self.projector: Projector | None = None
        self.closers: list[Callable[[], Any]] = []

    @property
    def url(self) -> str:
        """Where a browser on this machine opens it."""
        return self.server.url if self.server is not None else ""

    async def stop(self) -> None:
        """Stop serving, then stop following the log, then release stores and connections."""
        if self.server is not None:
            await self.server.stop()
        await cancel_and_wait(self.tasks)  # again until done: a cancellation can be lost (events.aio)
        if self.probe is not None:
            await self.probe.close()
        for close in self.closers:
            with contextlib.suppress(Exception):
                result = close()
                if asyncio.iscoroutine(result):
                    await result


async def start_dashboard(
    projector: Projector,
    models: ReadModels,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    who: str = "operator (the whole network)",
    checkpoints: CheckpointProbe | None = None,
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS,
    metrics_registry: Any = None,
    live: Access | None = None,
) -> RunningDashboard:
    """Serve ``models`` (which ``projector`` keeps live) on ``host``, and ``/metrics`` from
    ``metrics_registry``; notified on every commit, and with the live progress ``live``'s identity
    hears (``gpufleet.dashboard.live``)."""
    changes = Changes()
    projector.on_commit = changes.notify
    running = RunningDashboard(None, checkpoints)
    try:
        cache = await _live_progress(live, changes, running) if live is not None else None
        source = Source(models, changes, who=who, checkpoint=checkpoints, live=cache)
        app = create_app(source, allowed_hosts=allowed_hosts, metrics_registry=metrics_registry)
        running.server = DashboardServer(app, changes, host=host, port=port)
        await running.server.start()
    except BaseException:
        await running.stop()
        raise
    return running


async def _live_progress(access: Access, changes: Changes, running: RunningDashboard) -> LiveProgressCache | None:
    """The live progress ``access``'s identity may hear, kept for the pages (None: it may hear none)."""
    subject = live_subjects(access)
    if subject is None:
        return None
    cache = LiveProgressCache(changes)
    running.closers.append(cache.close)
    await cache.start(access, subject)
    return cache


# ---- gpufleet dashboard --------------------------------------------------------------------------


async def _follow_log(access: Access, cache: Path, changes: Changes, running: RunningDashboard) -> ReadModels:
    from events.store import JetStreamEventStore

    # Direct gets: an auditor may read the log but not create consumers on it.
    store = await JetStreamEventStore.connect(access, name="gpufleet-dashboard", reads="direct")
    db = SqliteStore(str(cache))
    projector = Projector(store, db, on_commit=changes.notify)
    projector.open()
    running.closers += [store.close, db.close]
    running.projector = projector
    await projector.catch_up()
    running.tasks.append(asyncio.create_task(projector.run(), name="dashboard-projector"))
    return ReadModels(db)


async def _follow_feed(access: Access, name: str, changes: Changes, running: RunningDashboard) -> ReadModels:
    from gpufleet.client import Client

    client = await Client.connect(access.url, creds=access.creds, tls_ca=access.tls_ca)
    workdir = tempfile.TemporaryDirectory(prefix="gpufleet-dashboard-")
    db = SqliteStore(str(Path(workdir.name) / "readmodels.sqlite"))
    views = [JobsView(), LedgerView(), EtaView(), QuarantineView()]
    # Folded by hand from the feed: the projector's own store is never read.
    projector = Projector(MemoryEventStore(), db, views, on_commit=changes.notify)
    projector.open()
    running.closers += [client.close, db.close, workdir.cleanup]
    streams = [f"job.{name}.>", f"task.{name}.>", outcomes_stream("submitter", name)]

    async def step(after: int, wait_s: float) -> tuple[int, int]:
        events, last, head = await client.feed(streams, after, wait_s=wait_s)
        for env in events:
            projector.fold(env)
        await projector.flush()
        return max(after, last), head

    after, head = await step(0, 0.0)
    while after < head:
        after, head = await step(after, 0.0)

    async def follow() -> None:
        position = after
        while True:
            position, _ = await step(position, 20.0)

    running.tasks.append(asyncio.create_task(follow(), name="dashboard-feed"))
    return ReadModels(db)


async def open_network(
    access: Access,
    *,
    port: int | None = None,
    notary_key: NoteKey | None = None,
    data_dir: Path,
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS,
) -> tuple[RunningDashboard, Source]:
    """Start serving what ``access``'s identity may see, kept live; stop it with ``RunningDashboard.stop``.

    An auditor (or the operator) follows the whole log with a private projector into a cache in
    ``data_dir``; a submitter folds its own readable events from the feed; anyone else is refused.
    """
    identity = access.identity()
    if identity is None:
        raise DashboardError("the dashboard needs credentials: give --creds FILE (or $GPUFLEET_CREDS)")
    if identity.role not in LOG_READERS and identity.role != "submitter":
        raise DashboardError(
            f"these credentials are {identity}: the dashboard shows a submitter its own jobs, or an "
            "auditor the whole network; use one of those"
        )
    changes = Changes()
    probe = CheckpointProbe(access, notary_key) if notary_key is not None else None
    running = RunningDashboard(None, probe)
    try:
        if identity.role in LOG_READERS:
            await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
            digest = hashlib.sha1(f"{access.url} {identity}".encode()).hexdigest()[:10]
            models = await _follow_log(access, data_dir / f"dashboard-{digest}.sqlite", changes, running)
            live = await _live_progress(access, changes, running)
            source = Source(models, changes, who=f"{identity} (the whole network)", checkpoint=probe, live=live)
        else:
            models = await _follow_feed(access, identity.name, changes, running)
            live = await _live_progress(access, changes, running)
            source = Source(
                models, changes, who=str(identity), submitter=identity.name, fleet=False, checkpoint=probe, live=live
            )
        registry = None
        if running.projector is not None:
            with contextlib.suppress(ImportError):
                from gpufleet.metrics import registry_for

                registry = registry_for(projector=running.projector)  # its lag behind the log
        app = create_app(source, allowed_hosts=allowed_hosts, metrics_registry=registry)
        running.server = DashboardServer(app, changes, host="127.0.0.1", port=port)
        await running.server.start()
    except BaseException:
        await running.stop()
        raise
    return running, source


async def serve_network(
    access: Access,
    *,
    port: int | None = None,
    notary_key: NoteKey | None = None,
    data_dir: Path,
    ready: Callable[[str, str], None] | None = None,
) -> None:
    """``gpufleet dashboard``: serve what ``access``'s identity may see until SIGINT or SIGTERM
    (``open_network``). ``ready(url, who)`` is called once it serves. A failure of what keeps it live
    (the log lost, say) stops it with that error. Stopping closes every open stream too.
    """
    running, source = await open_network(access, port=port, notary_key=notary_key, data_dir=data_dir)
    try:
        if ready is not None:
            ready(running.url, source.who)
        await _until_stopped(running)
    finally:
        await running.stop()


async def _until_stopped(running: RunningDashboard) -> None:
    """Until SIGINT or SIGTERM (the same stop as every other command's), or until what keeps the
    dashboard live fails (then its error)."""
    from gpufleet.lifecycle import graceful_shutdown

    async with graceful_shutdown() as shutdown:
        await shutdown.until(*running.tasks)
