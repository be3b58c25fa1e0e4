"""A clean lifecycle: stop on SIGTERM as on Ctrl-C, children that die with their parent, one server per store.

- :func:`graceful_shutdown` turns SIGTERM and SIGINT alike into a request to stop, that a command's
  asyncio main waits on (:meth:`Shutdown.until`) before it drains and stops its children.
- :func:`spawn` starts a child process that gets SIGKILL when this process dies, however it dies
  (Linux ``PR_SET_PDEATHSIG``): a ``kill -9`` of ``gpufleet up`` leaves no nats-server behind.
- :class:`DataDirLock` holds a data directory for one network at a time (``flock`` on
  ``<data dir>/lock``, which names its holder). A second ``up``, or a server started to work on a
  stopped network's store, is refused in one line naming the holder's pid.
- :func:`stopped_store` serves a stopped network's store for the time of some work (an audit), on a
  free port, with the network's own identities.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from events.errors import GpufleetError
from events.store.connection import Access, connect_nats
from gpu_runtime import pdeathsig

__all__ = [
    "DataDirInUse",
    "DataDirLock",
    "NoStore",
    "PortInUse",
    "Shutdown",
    "check_port_free",
    "graceful_shutdown",
    "servers_on",
    "spawn",
    "stopped_store",
]

_log = structlog.get_logger("gpufleet.lifecycle")

#: The lock file, in the data directory.
LOCK_NAME = "lock"


class DataDirInUse(GpufleetError):
    """Another process holds the data directory: a running network, or a server working on its store."""

    def __init__(self, message: str, data_dir: Path, pid: int | None, holder: str) -> None:
        super().__init__(message)
        self.data_dir = data_dir
        self.pid = pid
        self.holder = holder


class PortInUse(GpufleetError):
    """An explicitly requested port is taken."""


class NoStore(GpufleetError):
    """The directory holds no network's store."""


# ---- signals -------------------------------------------------------------------------------------


@dataclass
class Shutdown:
    """A request to stop, made by the first SIGTERM or SIGINT (see :func:`graceful_shutdown`)."""

    requested: asyncio.Event = field(default_factory=asyncio.Event)
    #: The signal that asked first ("SIGTERM", "SIGINT"), once one did.
    signal: str | None = None
    #: How many signals arrived.
    count: int = 0

    async def wait(self) -> None:
        """Until a signal asks to stop."""
        await self.requested.wait()

    async def until(self, *aws: Awaitable[Any]) -> bool:
        """Until a signal asks to stop, or the first of ``aws`` ends; True if a signal ended the wait.

        Coroutines given are run here and cancelled when the wait ends first; tasks and futures
        given are only watched, never cancelled (stop them your own way). An exception that ends
        one of ``aws`` is raised here.
        """
        asked = asyncio.ensure_future(self.requested.wait())
        owned = [not isinstance(a, asyncio.Future) for a in aws]
        watched = [asyncio.ensure_future(a) for a in aws]
        try:
            await asyncio.wait([asked, *watched], return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
            for task, ours in zip(watched, owned, strict=True):
                if ours and not task.done():
                    task.cancel()
        for task in watched:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return self.requested.is_set()


@contextlib.asynccontextmanager
async def graceful_shutdown(
    *,
    on_signal: Callable[[str], object] | None = None,
    on_repeat: Callable[[str], object] | None = None,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> AsyncIterator[Shutdown]:
    """SIGTERM (systemd, Docker, ``kill``) and SIGINT (Ctrl-C) alike ask the command to stop.

    Use it around a command's asyncio main::

        async with graceful_shutdown() as shutdown:
            await thing.start()
            try:
                await shutdown.until(thing.finished())   # a signal, or the thing ends by itself
            finally:
                await thing.stop()                       # drain, then stop every child

    The first signal sets :attr:`Shutdown.requested` (and calls ``on_signal`` with its name); a
    later one calls ``on_repeat`` (to stop at once what a drain waits for, say). No
    ``KeyboardInterrupt`` is raised while it is in force, so nothing is cut short mid-stop.
    """
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    wanted = list(signals)

    def handle(sig: signal.Signals) -> None:
        shutdown.count += 1
        if shutdown.requested.is_set():
            _log.info("lifecycle.signal_again", signal=sig.name)
            if on_repeat is not None:
                on_repeat(sig.name)
            return
        shutdown.signal = sig.name
        shutdown.requested.set()
        _log.info("lifecycle.stopping", signal=sig.name)
        if on_signal is not None:
            on_signal(sig.name)

    for sig in wanted:
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield shutdown
    finally:
        for sig in wanted:
            loop.remove_signal_handler(sig)


# ---- children ------------------------------------------------------------------------------------


class _Spawner:
    """A thread that lives as long as the process, for starting children from other threads.

    The kernel sends the parent-death signal when the *thread* that created the child ends, not the
    process: a nats-server started from ``asyncio.to_thread`` would die with that pool's thread.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="gpufleet-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, done = self._jobs.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn())
            except BaseException as e:
                done.set_exception(e)

    def call(self, fn: Callable[[], Any]) -> Any:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, done))
        return done.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _the_spawner() -> _Spawner:
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():  # none yet, or inherited by a fork
            _spawner = _Spawner()
        return _spawner


def spawn(args: list[str], *, own_group: bool = True, **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **popen)`` for a child that dies with this process (SIGKILL; Linux).

    With ``own_group`` (the default) the child gets a process group of its own, so that a Ctrl-C in
    the terminal reaches only this process, which then stops its children in order. Elsewhere than on
    Linux, the child is started all the same, without the guarantee.
    """
    wrapped = pdeathsig.command(args)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(wrapped, process_group=0 if own_group else None, **popen)

    if threading.current_thread() is threading.main_thread():
        return start()
    result: subprocess.Popen[bytes] = _the_spawner().call(start)
    return result


# ---- one server per store ------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"


def servers_on(data_dir: Path) -> list[int]:
    """Pids of the nats-servers whose store (``-sd``) lies in ``data_dir`` (Linux ``/proc``; else none).

    It finds servers that hold no lock: one left running by a gpufleet from before the lock.
    """
    root = data_dir.resolve()
    found = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not argv or not argv[0].endswith(b"nats-server") or b"-sd" not in argv:
                continue
            i = argv.index(b"-sd")
            if i + 1 < len(argv):
                store = Path(os.fsdecode(argv[i + 1]))
                if not store.is_absolute():  # relative to the server's own working directory
                    with contextlib.suppress(OSError):
                        store = Path(os.readlink(entry / "cwd")) / store
                store = store.resolve()
                if (store == root or root in store.parents) and _alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def _this_command() -> str:
    """How this process reads in a refusal: ``gpufleet up``, ``gpufleet replay``... or the program."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog in ("gpufleet", "__main__.py"):
        known = ("up", "demo", "replay", "backup", "restore", "dashboard")
        word = next((a for a in sys.argv[1:] if a in known), None)
        return f"gpufleet {word}" if word else "gpufleet"
    return prog


@dataclass
class DataDirLock:
    """An exclusive hold on a data directory: ``flock`` on ``<data dir>/lock``, which records the holder.

    The lock lives as long as any process has its file open: give :attr:`fd` to the servers that use
    the store (``NatsServer.keep_fds``) and a server that outlived its parent would keep it held.
    (Where children die with their parent, on Linux, none outlives it.)
    """

    data_dir: Path
    fd: int
    holder: str

    @property
    def path(self) -> Path:
        return self.data_dir / LOCK_NAME

    @classmethod
    def acquire(cls, data_dir: Path, holder: str | None = None) -> DataDirLock:
        """Hold ``data_dir`` (made if missing), or raise :class:`DataDirInUse` naming who holds it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(data_dir, path) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(data_dir, fd, holder or _this_command())
        strays = servers_on(data_dir)
        if strays:
            lock.release()
            raise DataDirInUse(
                f"data directory {data_dir} is in use by a nats-server (pid {strays[0]}) that serves its store; "
                "stop it first",
                data_dir,
                strays[0],
                "nats-server",
            )
        lock._write(servers=[])
        return lock

    def _write(self, servers: list[int]) -> None:
        body = {"pid": os.getpid(), "holder": self.holder, "since": time.time(), "servers": servers}
        data = json.dumps(body).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def note_servers(self, pids: list[int]) -> None:
        """Record the servers that keep the store (named in a refusal if they outlive this process)."""
        with contextlib.suppress(OSError):
            self._write(servers=[p for p in pids if p])

    def release(self) -> None:
        """Let the directory go (a server that still has :attr:`fd` open keeps it held)."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _in_use(data_dir: Path, path: Path) -> DataDirInUse:
    """The refusal: one line naming the holder's pid."""
    try:
        body: dict[str, Any] = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        body = {}
    pid = int(body.get("pid") or 0) or None
    holder = str(body.get("holder") or "another process")
    if pid is not None and _alive(pid):
        return DataDirInUse(
            f"data directory {data_dir} is in use by {holder} (pid {pid}); stop it first", data_dir, pid, holder
        )
    servers = [int(p) for p in body.get("servers") or [] if _alive(int(p))]
    if servers:
        gone = ", gone" if pid is not None else ""
        return DataDirInUse(
            f"data directory {data_dir} is in use by a nats-server (pid {servers[0]}) that {holder} "
            f"(pid {pid}{gone}) left running; stop it first",
            data_dir,
            servers[0],
            "nats-server",
        )
    return DataDirInUse(
        f"data directory {data_dir} is in use by {holder}" + (f" (pid {pid})" if pid else "") + "; stop it first",
        data_dir,
        pid,
        holder,
    )


def check_port_free(port: int, host: str) -> None:
    """Raise :class:`PortInUse` if ``port`` cannot be listened on at ``host`` (an explicit ``--port``)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise PortInUse(f"port {port} is in use on {host}: choose another --port, or leave it out") from None


# ---- a stopped network's store -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stopped_store(data_dir: Path, role: str = "auditor") -> AsyncIterator[Access]:
    """Serve the store of the stopped network in ``data_dir`` for the time of the block; ``role``'s access.

    A private nats-server (every node of a cluster's directory) on free ports of 127.0.0.1, with the
    network's own operator and identities, holding the directory's lock: ``gpufleet up`` cannot start
    on it meanwhile, and it refuses (:class:`DataDirInUse`) while a network runs there.
    """
    from gpufleet.cluster import LocalCluster
    from gpufleet.network import EmbeddedServer, local_name

    if not (data_dir / "auth" / "operator.nk").is_file():
        raise NoStore(f"no network in {data_dir}: give the --data-dir a `gpufleet up` ran on")
    with DataDirLock.acquire(data_dir) as lock:
        nodes = sorted(p for p in (data_dir / "cluster").glob("n*") if (p / "jetstream").is_dir())
        single = data_dir / "nats" / "jetstream"
        if not nodes and not (single.is_dir() and any(single.iterdir())):
            raise NoStore(f"no store in {data_dir} (no {single}): the network there never started")
        if nodes:
            cluster = LocalCluster(data_dir, len(nodes), lock=lock)
            try:
                await asyncio.to_thread(cluster.start)
                await cluster.wait_formed()
                # Every stream elects its leader again: read nothing before they all have one.
                nc = await connect_nats(cluster.access("admin", local_name("admin")), name="gpufleet-store-check")
                try:
                    await cluster.wait_current(nc.jetstream())
                finally:
                    await nc.close()
                yield cluster.access(role, local_name(role))
            finally:
                await asyncio.to_thread(cluster.stop)
        else:
            server = EmbeddedServer(data_dir, port=0, lock=lock)
            try:
                await asyncio.to_thread(server.start)
                yield server.access(role)
            finally:
                await asyncio.to_thread(server.stop)
