"""The service's side of the workers: spawn, run a task with a deadline, cancel, kill and restart.

A task that crashes its worker (a segfault, an abrupt exit) fails alone, as ``worker_crashed``; the
worker is restarted in the background and the slot serves again. Cancellation and timeouts are
cooperative first (a flag the workload polls), then a SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from events.types import FailureReason
from gpu_runtime.errors import WorkerStartError
from gpu_runtime.worker import TaskSpec, WorkerOptions, worker_main

__all__ = ["Completed", "Failed", "NullSink", "TaskSink", "WorkerPool", "WorkerProcess"]

_log = structlog.get_logger("gpufleet.worker")

#: How often a running task's sink gets a ``tick`` (to flush throttled progress).
_TICK_S = 0.1
#: Messages larger than this are sent from a thread, not the event loop.
_LARGE = 1 << 20


@dataclass(frozen=True, slots=True)
class Completed:
    """The task finished: its summary, optional output arrays, metrics, device time."""

    summary: Any
    arrays: bytes | None
    metrics: dict[str, float]
    gpu_ms: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The task failed, with a classified reason."""

    reason: FailureReason
    message: str


class TaskSink(Protocol):
    """Where a running task's progress and checkpoints go (the service's reporter)."""

    async def progress(self, done: int, total: int, unit: str) -> None: ...
    async def checkpoint(self, step: int, blob: bytes) -> None: ...
    async def tick(self) -> None: ...


class NullSink:
    """A sink that drops everything: for calibration and warm-up tasks."""

    async def progress(self, done: int, total: int, unit: str) -> None:
        return None

    async def checkpoint(self, step: int, blob: bytes) -> None:
        return None

    async def tick(self) -> None:
        return None


def describe_exit(code: int | None) -> str:
    """A person's reading of a process exit code."""
    if code is None:
        return "the worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker process died of {name}"
    return f"the worker process exited with code {code}"


@dataclass
class WorkerProcess:
    """One warm worker process and the pipe to it; restarted after a crash or a kill."""

    index: int
    options: WorkerOptions = field(default_factory=WorkerOptions)
    start_timeout_s: float = 300.0
    grace_s: float = 2.0
    info: dict[str, Any] = field(default_factory=dict, init=False)
    restarts: int = field(default=0, init=False)
    #: (bytes in use, bytes in all) on its GPU, as the worker last reported (None on the CPU).
    memory: tuple[int, int] | None = field(default=None, init=False)
    _proc: Any = field(default=None, init=False, repr=False)
    _conn: Any = field(default=None, init=False, repr=False)
    _cancel: Any = field(default=None, init=False, repr=False)
    _queue: asyncio.Queue[tuple[Any, ...]] | None = field(default=None, init=False, repr=False)
    _starting: asyncio.Task[dict[str, Any]] | None = field(default=None, init=False, repr=False)
    _seq: int = field(default=0, init=False)
    _current: int | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        """The worker process id, while one runs."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    @property
    def busy(self) -> bool:
        """True while a task runs here."""
        return self._current is not None

    async def start(self) -> dict[str, Any]:
        """Spawn the process and wait until it is warm; returns what it detected."""
        loop = asyncio.get_running_loop()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._cancel = ctx.RawValue("q", 0)
        proc = ctx.Process(
            target=worker_main,
            args=(child, self._cancel, self.options),
            name=f"gpufleet-worker-{self.index}",
            daemon=True,
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self._queue = asyncio.Queue()
        loop.add_reader(parent.fileno(), self._readable, parent, self._queue)
        try:
            async with asyncio.timeout(self.start_timeout_s):
                msg = await self._queue.get()
        except TimeoutError:
            state = "alive" if proc.is_alive() else describe_exit(proc.exitcode)
            self._hard_stop()
            waited = f"{self.start_timeout_s:.0f}s"
            raise WorkerStartError(f"worker {self.index} did not get ready in {waited} ({state})") from None
        if msg[0] != "ready":
            detail = msg[1] if msg[0] == "failed" else describe_exit(await self._reap())
            self._hard_stop()
            raise WorkerStartError(f"worker {self.index} failed to start: {detail}")
        self.info = msg[1]
        memory = self.info.get("memory_in_use")
        if memory is not None:
            self.memory = (int(memory[0]), int(memory[1]))
        _log.debug("worker.ready", worker=self.index, pid=proc.pid, backend=self.info.get("backend"))
        return self.info

    @staticmethod
    def _readable(conn: Any, queue: asyncio.Queue[tuple[Any, ...]]) -> None:
        try:
            while conn.poll():
                queue.put_nowait(conn.recv())
        except Exception as e:  # EOF (the process died) or an unreadable message: either way it is lost
            if not isinstance(e, (EOFError, OSError)):
                _log.error("worker.bad_message", error=f"{type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            queue.put_nowait(("eof",))

    async def ensure_started(self) -> None:
        """Wait for a pending (re)start, or start now if no process runs."""
        if self._starting is not None:
            task, self._starting = self._starting, None
            await task
        elif self._proc is None:
            await self.start()

    def _restart_later(self) -> None:
        self._hard_stop()
        self.restarts += 1
        self._starting = asyncio.get_running_loop().create_task(self.start())

    async def _reap(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, proc.join, 5.0)
        code: int | None = proc.exitcode
        return code

    def _hard_stop(self) -> None:
        """Kill the process (if alive) and close the pipe; no waiting beyond a short join."""
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(2.0)

    def cancel(self, reason: FailureReason = "cancelled") -> None:
        """Ask the running task to stop: the flag now, a SIGKILL after the grace period."""
        if self._current is not None and self._queue is not None:
            self._cancel.value = self._current
            self._queue.put_nowait(("cancel", self._current, reason))

    async def run(
        self, spec: TaskSpec, sink: TaskSink, timeout_s: float, *, stopped: Callable[[], bool] = lambda: False
    ) -> Completed | Failed:
        """Run ``spec`` here within ``timeout_s``; never raises for the task's own failures.

        ``stopped`` says whether the task was cancelled before this call could register it (a
        revocation that raced the start): such a task is stopped as soon as it is handed over.
        """
        await self.ensure_started()
        assert self._queue is not None and self._conn is not None
        loop = asyncio.get_running_loop()
        self._seq += 1
        seq = self._seq
        spec = replace(spec, seq=seq)
        queue = self._queue
        # Drop anything a previous task left behind (a late message after a cancel).
        while not queue.empty():
            if queue.get_nowait()[0] == "eof":
                self._restart_later()
                return Failed("worker_crashed", "the worker process had died before the task started")
        self._current = seq
        try:
            size = len(spec.resume_blob or b"") + sum(len(b) for b in spec.blobs.values())
            if size > _LARGE:
                await loop.run_in_executor(None, self._conn.send, spec)
            else:
                self._conn.send(spec)
        except (OSError, ValueError) as e:
            self._current = None
            self._restart_later()
            return Failed("worker_crashed", f"could not hand the task to the worker: {e}")
        if stopped():
            self.cancel("cancelled")
        try:
            return await self._await_outcome(seq, queue, sink, loop.time() + timeout_s, timeout_s)
        finally:
            self._current = None

    async def _await_outcome(
        self,
        seq: int,
        queue: asyncio.Queue[tuple[Any, ...]],
        sink: TaskSink,
        deadline: float,
        timeout_s: float,
    ) -> Completed | Failed:
        loop = asyncio.get_running_loop()
        reason: FailureReason | None = None
        kill_at = 0.0

        def stop(why: FailureReason) -> None:
            nonlocal reason, kill_at
            reason = why
            kill_at = loop.time() + self.grace_s
            self._cancel.value = seq

        def stopped_message() -> str:
            return f"timed out after {timeout_s:g}s" if reason == "timeout" else "cancelled"

        while True:
            now = loop.time()
            if reason is None and now >= deadline:
                stop("timeout")
            wake = min(kill_at if reason is not None else deadline, now + _TICK_S)
            try:
                async with asyncio.timeout_at(wake):
                    msg = await queue.get()
            except TimeoutError:
                if reason is not None and loop.time() >= kill_at:
                    self._restart_later()
                    why = f"the worker did not stop in {self.grace_s:g}s and was killed"
                    return Failed(reason, f"{stopped_message()}; {why}")
                if reason is None:
                    await sink.tick()
                continue
            kind = msg[0]
            if kind == "eof":
                code = await self._reap()
                self._restart_later()
                if reason is not None:
                    return Failed(reason, stopped_message())
                return Failed("worker_crashed", f"{describe_exit(code)}; the worker was restarted")
            if len(msg) < 2 or msg[1] != seq:
                continue  # a stale message of an earlier task
            if kind == "cancel":
                if reason is None:
                    stop(msg[2])
            elif kind == "memory":
                self.memory = (int(msg[2]), int(msg[3]))
            elif kind == "progress":
                if reason is None:
                    await sink.progress(msg[2], msg[3], msg[4])
            elif kind == "checkpoint":
                if reason is None:
                    await sink.checkpoint(msg[2], msg[3])
            elif kind == "result":
                if reason is not None:
                    return Failed(reason, stopped_message())
                return Completed(summary=msg[2], arrays=msg[3], metrics=dict(msg[4]), gpu_ms=msg[5])
            elif kind == "error":
                if msg[4]:
                    self._restart_later()
                if reason is not None:
                    return Failed(reason, stopped_message())
                return Failed(msg[2], msg[3])

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the process to exit after its current task; kill it if it does not in time."""
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
            self._starting = None
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            conn.send(None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, proc.join, timeout_s)
        self._hard_stop()

    def kill(self) -> None:
        """Kill the process at once (no restart)."""
        if self._starting is not None:
            self._starting.cancel()
            self._starting = None
        self._hard_stop()


@dataclass
class WorkerPool:
    """The service's slots: idle workers handed out first come, first served."""

    workers: list[WorkerProcess]
    _idle: asyncio.Queue[WorkerProcess] = field(default_factory=asyncio.Queue, init=False)

    def __post_init__(self) -> None:
        for w in self.workers:
            self._idle.put_nowait(w)

    @property
    def size(self) -> int:
        """Number of slots."""
        return len(self.workers)

    @property
    def busy(self) -> int:
        """Slots running a task now."""
        return sum(1 for w in self.workers if w.busy)

    async def acquire(self) -> WorkerProcess:
        """The next idle worker (waits while all are busy)."""
        return await self._idle.get()

    def release(self, worker: WorkerProcess) -> None:
        """Give a worker back."""
        self._idle.put_nowait(worker)

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [p for p in (w.pid for w in self.workers) if p is not None]

    async def stop(self) -> None:
        """Stop every worker."""
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    def kill(self) -> None:
        """Kill every worker at once."""
        for w in self.workers:
            w.kill()
