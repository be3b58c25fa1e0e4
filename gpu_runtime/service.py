"""The provider runtime service: register, heartbeat, take leases, run them in warm workers, report.

It is an actor keyed by its provider id, which is the name in its credentials (on a secured
network nothing else is possible: the server lets it publish only under that name). Its inputs are
the dispatch messages on ``gf.dispatch.<provider_id>`` (a work-queue stream, read through the durable
pull consumer ``prov-<provider_id>`` that the orchestrator creates when it registers); its outputs are
intake messages (registration, task reports, drain and leave), heartbeats in the KV bucket, live
progress on core NATS (``events.live``: fraction and rate are not events; a checkpoint is), and
objects (results, checkpoints) stored under its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

from events.aio import cancel_and_wait
from events.dispatch import Dispatch, Heartbeat, LeaseBatch, LeaseGranted, LeaseRevoked, start_report_delay
from events.identity import read_credentials
from events.intake import (
    CompletedReport,
    FailedReport,
    ProgressReport,
    ProviderDeparture,
    ProviderRegistration,
    StartedReport,
)
from events.live import LiveProgress
from events.store.blobs import BlobStore, ObjectIntegrityError, ObjectNotFound
from events.store.connection import Access, connect_nats
from events.store.topology import Topology
from events.subjects import (
    dispatch_consumer,
    heartbeat_subject,
    intake_subject,
    job_of_task,
    job_owner,
    live_subject,
    report_subject,
)
from events.types import (
    MAX_GPU_MS,
    MAX_MEASURE,
    Calibration,
    Capabilities,
    FailureReason,
    ObjectRef,
    ResultRef,
    is_valid_id,
    utc_now,
)
from events.workloads import (
    CODE_WORKLOAD,
    WORKLOADS,
    CustomKernelParams,
    FunctionParams,
    NoopParams,
)
from gpu_runtime.admission import DeviceFacts, admit
from gpu_runtime.backend import BackendChoice
from gpu_runtime.errors import RuntimeServiceError, WorkloadError
from gpu_runtime.packages import installed_packages
from gpu_runtime.results import INLINE_LIMIT, canonical_json, json_safe, sha256_hex
from gpu_runtime.supervisor import Completed, Failed, NullSink, WorkerPool, WorkerProcess
from gpu_runtime.throttle import ProgressThrottle
from gpu_runtime.worker import TaskSpec, WorkerOptions
from gpu_runtime.workloads import faults_enabled

__all__ = ["RUNTIME_VERSION", "ProviderRuntime", "RuntimeConfig", "RuntimeStats"]

RUNTIME_VERSION = "gpu_runtime/0.1.0"

_DISPATCH: TypeAdapter[LeaseGranted | LeaseRevoked | LeaseBatch] = TypeAdapter(Dispatch)
#: The key of a code task's archive among its fetched inputs (array arguments are keyed by name,
#: which is an identifier: never this).
_ARCHIVE = "-archive"
#: Code archives kept for the next task of the same code (each at most ``MAX_ARCHIVE_BYTES``).
_ARCHIVE_CACHE_BYTES = 64 << 20
_log = structlog.get_logger("gpufleet.provider")

if TYPE_CHECKING:
    from gpu_runtime.sandbox import CodeSpec, SandboxWorker


def _task_index(task_id: str) -> int:
    """A task's index in its job, from its id (``<job>.<index>``, see ``events.subjects.task_id_of``)."""
    tail = task_id[len(job_of_task(task_id)) + 1 :]
    return int(tail) if tail.isdigit() else 0


def _default_provider_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:48]
    return f"{host or 'provider'}-{os.getpid()}"


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of one provider runtime."""

    nats_url: str = "nats://127.0.0.1:4222"
    #: The provider's credentials; its provider id is their name. None on an open (test) server.
    creds: Path | None = None
    #: The CA that signed the network's TLS certificate (for ``tls://`` URLs).
    tls_ca: Path | None = None
    #: Default: the credentials' name (or ``<host>-<pid>`` without credentials).
    provider_id: str = ""
    name: str = ""
    backend: BackendChoice = "auto"
    #: Worker processes (concurrent tasks). None: one per GPU, or one on the CPU.
    slots: int | None = None
    heartbeat_s: float = 1.0
    #: Per-task device memory cap (CuPy pool limit). None: 90% of the device shared by its workers.
    memory_limit_mb: int | None = None
    #: Seconds a cancelled or timed-out task gets to stop by itself before its worker is killed.
    cancel_grace_s: float = 2.0
    progress_per_s: float = 2.0
    inline_limit: int = INLINE_LIMIT
    price_micros: int = 0
    calibrate: bool = True
    worker_start_timeout_s: float = 300.0
    topology: Topology | None = None
    #: Fault injection (tests only): needs ``GPUFLEET_FAULTS=1`` in the environment as well.
    faults: bool = field(default_factory=faults_enabled)
    #: Whose code (the ``function`` workload) it runs: submitter names, ``("*",)`` for anyone, or
    #: nobody's (the default). See ``gpu_runtime.packages.parse_accept_code``.
    accept_code: tuple[str, ...] = ()
    #: Run code without a sandbox when ``bwrap`` is missing (``--unsafe-trusted-code``): only for
    #: code you trust as you trust your own; it can read and write whatever this process can.
    unsafe_trusted_code: bool = False
    #: A sandboxed function's host-memory cap, MiB (its GPU memory is capped as a task's is).
    code_memory_mb: int = 4096
    #: Paths a sandbox never sees, even inside a directory it is given (the provider's data).
    private_paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.creds is not None:
            object.__setattr__(self, "private_paths", (*self.private_paths, self.creds))
            ident = read_credentials(self.creds)
            if ident.role != "provider":
                raise RuntimeServiceError(f"{self.creds} are {ident.role} credentials, not a provider's")
            if self.provider_id and self.provider_id != ident.name:
                raise RuntimeServiceError(
                    f"provider_id: {self.provider_id!r}, but the credentials are provider {ident.name!r}"
                )
            object.__setattr__(self, "provider_id", ident.name)
        elif not self.provider_id:
            object.__setattr__(self, "provider_id", _default_provider_id())
        if not is_valid_id(self.provider_id):
            raise RuntimeServiceError(f"provider_id: {self.provider_id!r} is not a valid id")

    @property
    def access(self) -> Access:
        """How this provider reaches the network."""
        return Access(self.nats_url, self.creds, self.tls_ca)


@dataclass
class _TaskRun:
    """One lease as this provider runs it."""

    lease: LeaseGranted
    worker: WorkerProcess | SandboxWorker | None = None
    revoked: bool = False
    task: asyncio.Task[None] | None = None
    #: How it ended, once reported: ``completed`` or ``failed`` (with ``reason``).
    outcome: str = ""
    reason: str = ""
    #: Its start report, once due (``start_report_delay``) and once sent: any other report implies
    #: the start, so the first cancels the one not yet due, and goes out after the one sent.
    start_due: asyncio.TimerHandle | None = None
    starting: asyncio.Future[None] | None = None


@dataclass(slots=True)
class RuntimeStats:
    """What the runtime counts for metrics (``gpu_runtime.metrics``): plain numbers, read at scrape time."""

    #: Leases that ended here, by outcome: ``completed``, ``failed``, ``revoked`` (stopped by the
    #: orchestrator: cancelled, expired, reassigned) or ``unreported`` (its report could not be sent).
    tasks: dict[str, int] = field(default_factory=dict)
    #: Failed tasks by reason (``events.types.FailureReason``).
    failures: dict[str, int] = field(default_factory=dict)

    def ended(self, outcome: str, reason: str = "") -> None:
        """Count one lease that ended."""
        self.tasks[outcome] = self.tasks.get(outcome, 0) + 1
        if outcome == "failed":
            self.failures[reason] = self.failures.get(reason, 0) + 1


@dataclass
class _Reporter:
    """A running task's progress reports: throttled, with the latest checkpoint carried along."""

    runtime: ProviderRuntime
    run: _TaskRun
    throttle: ProgressThrottle
    started: float = field(default_factory=time.monotonic)
    base: int = 0
    fraction: float = 0.0
    rate: float = 0.0
    unit: str = "steps"
    checkpoint_ref: ObjectRef | None = None
    checkpoint_step: int = 0
    dirty: bool = False
    checkpoint_dirty: bool = False
    sent: int = 0
    #: The newest checkpoint not yet stored: stored when a report carries it, not once per call.
    pending: tuple[int, bytes] | None = None
    #: 100% passes the throttle once: a submitted function may report it in a loop, and the intake
    #: keeps every report (and refuses everyone's messages once full).
    finished: bool = False

    async def progress(self, done: int, total: int, unit: str) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.fraction = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
        self.rate = max(0.0, (done - self.base) / elapsed)
        self.unit = unit[:32]
        self.dirty = True
        final = done >= total and not self.finished
        self.finished = self.finished or final
        await self.flush(final=final)

    async def checkpoint(self, step: int, blob: bytes) -> None:
        self.pending = (step, blob)
        self.dirty = self.checkpoint_dirty = True
        await self.flush()

    async def tick(self) -> None:
        if self.dirty:
            await self.flush()

    async def flush(self, *, final: bool = False) -> None:
        """Publish the latest state if the throttle allows (always when ``final``)."""
        if not self.dirty or self.run.revoked or not self.throttle.allow(time.monotonic(), final=final):
            return
        if self.pending is not None:
            (step, blob), self.pending = self.pending, None
            self.checkpoint_ref, self.checkpoint_step = await self.runtime.put_object(blob), step
        lease = self.run.lease
        live = None if self.checkpoint_dirty else live_subject(lease.task_id, lease.provider_id)
        if live is not None:
            # Fraction and rate only: live, on core NATS, never an event (``events.live``). Its start
            # is still reported once the run has gone on ``START_REPORT_S`` (one durable write per
            # lease, however often progress comes), and not at all for a shorter run.
            self.dirty = False
            self.sent += 1
            body = LiveProgress(
                lease_id=lease.lease_id, fraction=self.fraction, rate=self.rate, unit=self.unit, at=utc_now()
            )
            await self.runtime.publish_live(live, body)
            return
        report = ProgressReport(
            lease_id=lease.lease_id,
            provider_id=lease.provider_id,
            fraction=self.fraction,
            rate=self.rate,
            unit=self.unit,
            checkpoint=self.checkpoint_ref if self.checkpoint_dirty else None,
            checkpoint_step=self.checkpoint_step if self.checkpoint_dirty else 0,
        )
        self.dirty = self.checkpoint_dirty = False
        self.sent += 1
        await ProviderRuntime._after_start(self.run)  # progress implies the start: none is sent after it
        await self.runtime.report(lease, report, f"{lease.lease_id}-p{self.sent}", wait=False)

    async def flush_checkpoint(self) -> None:
        """Before a failure: the newest checkpoint goes out even if throttled, so a retry can resume."""
        if self.checkpoint_dirty:
            await self.flush(final=True)


class ProviderRuntime:
    """A provider: one service process, one warm worker per slot, on one NATS connection."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.provider_id = config.provider_id
        self.capabilities: Capabilities | None = None
        self.calibration: Calibration | None = None
        self._log = _log.bind(provider_id=self.provider_id)
        self._nc: Any = None
        self._js: Any = None
        self._blobs: BlobStore | None = None
        self._topology: Topology = config.topology or Topology()
        self._pool: WorkerPool | None = None
        self._psub: Any = None
        self._runs: dict[str, _TaskRun] = {}
        #: Recently revoked and recently finished leases: a redelivered dispatch must not run again.
        self._revoked: dict[str, None] = {}
        self._recent: dict[str, None] = {}
        self._precisions: tuple[str, ...] = ()
        self._total_memory = 0
        self._memory_limit: int | None = None
        self._draining = False
        self._stopping = False
        self._closed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Future[Any]] = set()
        self.stats = RuntimeStats()
        #: Slot index -> the warm sandbox of the tenant (submitter) whose code ran there last.
        self._sandboxes: dict[int, SandboxWorker] = {}
        #: Sandboxes started for a new tenant on a slot, and the replacements of sandboxes now gone.
        self._sandbox_starts = 0
        #: Code archives by object name, most recently used last (at most ``_ARCHIVE_CACHE_BYTES``).
        self._archives: dict[str, bytes] = {}
        #: Why code tasks are refused here (None: they run), decided at start.
        self._no_code: str | None = "this provider runs no submitters' code (it did not opt in: --accept-code)"
        self._sandboxed = False

    # ----------------------------------------------------------------------------------- lifecycle

    @property
    def backend(self) -> str:
        """``cuda`` or ``cpu``, once started."""
        return self.capabilities.backend if self.capabilities else "unknown"

    @property
    def running(self) -> int:
        """Tasks holding a worker now."""
        return self._pool.busy if self._pool else 0

    @property
    def draining(self) -> bool:
        """True once a drain began."""
        return self._draining

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers."""
        return self._pool.pids() if self._pool else []

    @property
    def slots(self) -> int:
        """Worker processes (tasks it runs at once), once started."""
        return self._pool.size if self._pool else 0

    @property
    def worker_restarts(self) -> int:
        """Workers restarted since the start: after a crash, or a task that would not stop."""
        return sum(w.restarts for w in self._pool.workers) if self._pool else 0

    @property
    def sandboxes(self) -> int:
        """Warm sandboxes of submitters' code (at most one per slot)."""
        return sum(1 for s in self._sandboxes.values() if s.pid is not None)

    @property
    def sandbox_starts(self) -> int:
        """Sandboxes started since the start: new tenants on a slot, and replacements."""
        return self._sandbox_starts + sum(s.restarts for s in self._sandboxes.values())

    def gpu_memory(self) -> dict[int, tuple[int, int]]:
        """Per GPU index: (bytes in use, bytes in all), as its workers last reported; empty on the CPU."""
        out: dict[int, tuple[int, int]] = {}
        for w in self._pool.workers if self._pool else []:
            if w.memory is not None:
                out[w.options.device_index] = w.memory
        return out

    async def start(self) -> None:
        """Connect, create the topology, start and calibrate the workers, register, start serving."""
        try:
            await self._start()
        except BaseException:
            await self._shutdown(graceful=False)
            raise

    async def _start(self) -> None:
        cfg = self.config
        self._nc = await connect_nats(cfg.access, name=f"gpufleet-provider-{self.provider_id}")
        self._js = self._nc.jetstream()
        self._blobs = BlobStore(self._nc, "provider", self.provider_id, self._topology)
        await self._start_workers()
        assert self._pool is not None
        # The orchestrator creates this consumer when it takes our registration; until then a fetch
        # finds nothing and the loop asks again.
        self._psub = await self._js.pull_subscribe_bind(
            dispatch_consumer(self.provider_id), self._topology.dispatch_stream
        )
        registration = ProviderRegistration(
            name=(cfg.name or self.provider_id)[:200],
            capabilities=self.capabilities,
            calibration=self.calibration,
            runtime_version=RUNTIME_VERSION,
        )
        await self._announce("register", registration)
        await self._heartbeat_once()
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._heartbeat_loop()), loop.create_task(self._fetch_loop())]
        self._log.info(
            "provider.registered",
            backend=self.backend,
            device=self.capabilities.gpu_model if self.capabilities else "",
            slots=self._pool.size,
            calibration=self.calibration.model_dump() if self.calibration else None,
        )

    async def _start_workers(self) -> None:
        cfg = self.config

        def worker(i: int, device: int, calibrate: bool) -> WorkerProcess:
            opts = WorkerOptions(backend=cfg.backend, device_index=device, calibrate=calibrate)
            timeout = cfg.worker_start_timeout_s
            return WorkerProcess(i, opts, start_timeout_s=timeout, grace_s=cfg.cancel_grace_s)

        first = worker(0, 0, cfg.calibrate)
        info = await first.start()
        devices = max(1, int(info["device_count"]))
        slots = cfg.slots or devices
        rest = [worker(i, i % devices, False) for i in range(1, slots)]
        try:
            await asyncio.gather(*(w.start() for w in rest))
        except BaseException:
            first.kill()
            for w in rest:
                w.kill()
            raise
        self._pool = WorkerPool([first, *rest])
        self._precisions = tuple(info["precisions"])
        self._total_memory = int(info["total_memory"])
        per_device = -(-slots // devices)
        if cfg.memory_limit_mb is not None:
            self._memory_limit = cfg.memory_limit_mb << 20
        elif info["backend"] == "cuda":
            self._memory_limit = int(self._total_memory * 0.9) // per_device
        supported = tuple(
            name
            for name, c in WORKLOADS.items()
            if (not c.requires_cuda or info["backend"] == "cuda") and name != CODE_WORKLOAD
        )
        caps = dict(info["capabilities"])
        if self._code_ready():
            supported = (*supported, CODE_WORKLOAD)
            caps.update(code_from=list(cfg.accept_code))
        caps.update(slots=slots, price_micros=cfg.price_micros, workloads=list(supported))
        caps.update(packages=installed_packages())
        self.capabilities = Capabilities.model_validate_json(json.dumps(caps))
        if not cfg.calibrate:
            # Measured nothing: say so (no calibration), rather than register a calibration of zeros
            # that the scheduler's runtime model would read as an infinitely fast device.
            self.calibration = None
            return
        measured = Calibration.model_validate_json(json.dumps(info.get("calibration") or {}))
        overhead = await self._measure_overhead(first)
        self.calibration = measured.model_copy(update={"task_overhead_s": round(overhead, 6)})

    def _code_ready(self) -> bool:
        """Whether code tasks can run here: opted in, and a sandbox (or the operator's waiver)."""
        cfg = self.config
        if not cfg.accept_code:
            return False
        from gpu_runtime import sandbox

        if sandbox.find_bwrap() is not None:
            if os.geteuid() == 0 and not sandbox.pids_cgroup_available() and not cfg.unsafe_trusted_code:
                # Root is exempt from RLIMIT_NPROC: without a pids cgroup, a fork bomb in a sandbox
                # would reach the whole machine.
                self._no_code = (
                    "unsupported: no process cap for a sandbox (the provider runs as root, which the kernel "
                    "exempts from RLIMIT_NPROC, and no pids cgroup can be made here): run the provider as "
                    "another user, or pass --unsafe-trusted-code"
                )
                self._log.warning("code.refused", reason=self._no_code, accept_code=list(cfg.accept_code))
                return False
            self._sandboxed, self._no_code = True, None
        elif cfg.unsafe_trusted_code:
            self._no_code = None
            self._log.warning(
                "code.unsandboxed",
                accept_code=list(cfg.accept_code),
                warning="--unsafe-trusted-code: submitted functions run WITHOUT a sandbox, with this "
                "process's access to files and network",
            )
        else:
            self._no_code = "unsupported: no sandbox (install bubblewrap, or pass --unsafe-trusted-code)"
            self._log.warning("code.refused", reason=self._no_code, accept_code=list(cfg.accept_code))
            return False
        return True

    def _code_refusal(self, tenant: str | None) -> str | None:
        """Why this provider will not run ``tenant``'s code now, or None."""
        if self._no_code is not None:
            return self._no_code
        accepted = self.config.accept_code
        if not tenant or ("*" not in accepted and tenant not in accepted):
            return f"this provider runs no code from {tenant or 'a job without a submitter'}"
        return None

    async def _measure_overhead(self, worker: WorkerProcess, rounds: int = 15) -> float:
        """Median round trip of a no-op task through a warm worker."""
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            out = await worker.run(TaskSpec(0, "calibration", "noop", NoopParams()), NullSink(), 10.0)
            if isinstance(out, Completed):
                times.append(time.perf_counter() - t0)
        return statistics.median(times) if times else 0.0

    async def serve(self) -> None:
        """Start (if needed) and run until drained or closed."""
        if self._nc is None:
            await self.start()
        await self._closed.wait()

    async def drain(self, reason: str = "") -> None:
        """Take nothing new, finish the running work, publish ``leave`` and stop."""
        if self._closed.is_set():
            return
        self._draining = True
        body = ProviderDeparture(reason=reason[:500])
        self._log.info("provider.draining", running=len(self._runs))
        await self._announce("drain", body)
        await self._heartbeat_once()
        await self._idle.wait()
        await self._announce("leave", body)
        await self._shutdown(graceful=True)
        self._log.info("provider.left")

    async def close(self) -> None:
        """Stop at once: kill workers, drop the connection, say nothing (as a lost provider would)."""
        if self._closed.is_set():
            return
        for run in self._runs.values():
            run.revoked = True
        await self._shutdown(graceful=False)

    async def _stop_tasks(self, tasks: list[asyncio.Task[None]], timeout_s: float = 10.0) -> None:
        """Cancel ``tasks`` and wait for them, cancelling again while they linger.

        A single ``cancel()`` is not enough: a cancellation that lands as a nats-py request
        completes can be swallowed (``asyncio.wait_for`` on Python 3.11), leaving a loop running.
        """
        pending = await cancel_and_wait(tasks, every_s=0.25, timeout_s=timeout_s)
        if pending:
            self._log.warning("provider.tasks_linger", count=len(pending))

    async def _shutdown(self, *, graceful: bool) -> None:
        self._stopping = True
        await self._stop_tasks(self._background)
        self._background = []
        await self._stop_tasks([r.task for r in self._runs.values() if r.task is not None])
        sandboxes, self._sandboxes = list(self._sandboxes.values()), {}
        if graceful:
            await asyncio.gather(*(s.stop() for s in sandboxes), return_exceptions=True)
        else:
            for s in sandboxes:
                s.kill()
        if self._pool is not None:
            if graceful:
                await self._pool.stop()
            else:
                self._pool.kill()
        if self._nc is not None and not self._nc.is_closed:
            if graceful:
                with contextlib.suppress(Exception):
                    if self._pending:
                        await asyncio.wait(self._pending, timeout=5.0)
                    await self._js.publish(self._heartbeat_subject, b"", headers={"KV-Operation": "DEL"})
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._closed.set()

    async def __aenter__(self) -> ProviderRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------------------------- NATS I/O

    @property
    def _heartbeat_subject(self) -> str:
        return heartbeat_subject(self.provider_id, self._topology.heartbeat_bucket)

    async def _announce(self, verb: str, body: BaseModel) -> None:
        subject = intake_subject("provider", self.provider_id, verb)
        await self._publish(subject, body, f"{self.provider_id}-{verb}-{time.time_ns()}")

    async def _publish(self, subject: str, body: BaseModel, msg_id: str, *, wait: bool = True) -> None:
        data = body.model_dump_json().encode()
        headers = {"Nats-Msg-Id": msg_id}
        if not wait:
            fut = await self._js.publish_async(subject, data, headers=headers)
            self._pending.add(fut)
            fut.add_done_callback(self._published)
            return
        for attempt in range(3):
            try:
                await self._js.publish(subject, data, headers=headers, timeout=5.0)
                return
            except nats.errors.TimeoutError:
                # The same Nats-Msg-Id makes a retry of a publish that did land a no-op.
                if attempt == 2:
                    raise

    def _published(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self._log.warning("report.publish_failed", error=str(fut.exception()))

    async def publish_live(self, subject: str, body: LiveProgress) -> None:
        """Publish live progress on core NATS: at most once, never waited for, never retried (the next
        one supersedes it, and a lost one costs nothing)."""
        try:
            await self._nc.publish(subject, body.model_dump_json().encode())
        except Exception as e:
            self._log.debug("live.publish_failed", subject=subject, error=str(e) or type(e).__name__)

    async def report(self, lease: LeaseGranted, body: BaseModel, msg_id: str, *, wait: bool = True) -> None:
        """Publish one task report to ``gf.in.provider.<id>.report.<task_id>``."""
        await self._publish(report_subject(self.provider_id, lease.task_id), body, msg_id, wait=wait)

    async def put_object(self, data: bytes, *, for_submitter: str | None = None) -> ObjectRef:
        """Store ``data`` under this provider's name (a result: for the job's submitter); its reference."""
        assert self._blobs is not None
        return await self._blobs.put(data, for_submitter=for_submitter)

    async def get_object(self, ref: ObjectRef, what: str) -> bytes:
        """Fetch ``ref`` and check its sha256; problems raise ``WorkloadError`` naming ``what``."""
        assert self._blobs is not None
        try:
            return await self._blobs.get(ref)
        except ObjectNotFound as e:
            raise WorkloadError("invalid_params", f"{what}: {e}") from e
        except ObjectIntegrityError as e:
            raise WorkloadError("invalid_params", f"{what}: {e}") from e

    async def _heartbeat_once(self) -> None:
        hb = Heartbeat(
            provider_id=self.provider_id,
            at=utc_now(),
            running=self.running,
            slots=self._pool.size if self._pool else 1,
            draining=self._draining,
        )
        # A heartbeat is worth only until the next one: never wait longer than that for its ack. (A
        # publish in flight when the server went down is never answered: with the default 5 s timeout
        # the next beats would wait behind it, and the provider would look dead after a reconnect.)
        timeout = min(max(self.config.heartbeat_s, 0.2), 2.0)
        await self._js.publish(self._heartbeat_subject, hb.model_dump_json().encode(), timeout=timeout)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self._heartbeat_once()
            except Exception as e:
                self._log.warning("heartbeat.failed", error=str(e) or type(e).__name__)

    async def _fetch_loop(self) -> None:
        waited = False
        while not self._stopping:
            try:
                msgs = await self._psub.fetch(batch=16, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except nats.js.errors.ServiceUnavailableError:
                # No consumer yet: the orchestrator creates it when it takes our registration.
                if not waited:
                    self._log.info("dispatch.waiting_for_orchestrator")
                    waited = True
                await asyncio.sleep(0.2)
                continue
            except Exception as e:
                self._log.warning("dispatch.fetch_failed", error=str(e) or type(e).__name__)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._on_dispatch(msg)

    async def _on_dispatch(self, msg: Any) -> None:
        # A dispatch is a notification, not a fact: acknowledged on receipt. If this process dies
        # now, the lease expires and the orchestrator hands the task out again.
        with contextlib.suppress(Exception):
            await msg.ack()
        try:
            d = _DISPATCH.validate_json(msg.data)
        except ValidationError as e:
            self._log.warning("dispatch.invalid", error=str(e.errors()[0]["msg"]))
            return
        for item in d.items if isinstance(d, LeaseBatch) else [d]:
            if d.provider_id != self.provider_id or item.provider_id != self.provider_id:
                self._log.warning("dispatch.misrouted", for_provider=item.provider_id, lease_id=item.lease_id)
            elif isinstance(item, LeaseGranted):
                self._accept(item)
            else:
                self._revoke(item)

    # ----------------------------------------------------------------------------------- leases

    def _accept(self, lease: LeaseGranted) -> None:
        log = self._log.bind(task_id=lease.task_id, lease_id=lease.lease_id)
        if lease.lease_id in self._runs or lease.lease_id in self._revoked or lease.lease_id in self._recent:
            log.info("lease.duplicate_ignored")
            return
        run = _TaskRun(lease)
        self._runs[lease.lease_id] = run
        self._idle.clear()
        if self._draining:
            run.task = asyncio.get_running_loop().create_task(
                self._refuse(run, "provider_error", "the provider is draining and takes no new work")
            )
        else:
            run.task = asyncio.get_running_loop().create_task(self._run_lease(run))

    @staticmethod
    def _remember(ids: dict[str, None], lease_id: str, keep: int = 10_000) -> None:
        ids[lease_id] = None
        while len(ids) > keep:
            del ids[next(iter(ids))]

    def _revoke(self, revoked: LeaseRevoked) -> None:
        self._remember(self._revoked, revoked.lease_id)
        run = self._runs.get(revoked.lease_id)
        log = self._log.bind(task_id=revoked.task_id, lease_id=revoked.lease_id)
        if run is None:
            log.info("lease.revoked_unknown")
            return
        log.info("lease.revoked", reason=revoked.reason)
        run.revoked = True
        if run.worker is not None:
            run.worker.cancel("cancelled")

    def _finished(self, run: _TaskRun) -> None:
        self.stats.ended(run.outcome or ("revoked" if run.revoked else "unreported"), run.reason)
        self._remember(self._recent, run.lease.lease_id)
        self._runs.pop(run.lease.lease_id, None)
        if not self._runs:
            self._idle.set()

    async def _refuse(self, run: _TaskRun, reason: FailureReason, message: str) -> None:
        try:
            await self._fail(run, reason, message)
        finally:
            self._finished(run)

    async def _fail(self, run: _TaskRun, reason: FailureReason, message: str) -> None:
        if run.revoked:
            return
        lease = run.lease
        log = self._log.bind(task_id=lease.task_id, lease_id=lease.lease_id)
        log.info("task.failed", reason=reason, error=message)
        body = FailedReport(
            lease_id=lease.lease_id, provider_id=self.provider_id, reason=reason, message=message[:2000]
        )
        await self._after_start(run)
        await self.report(lease, body, f"{lease.lease_id}-end")
        run.outcome, run.reason = "failed", reason

    def _validate(self, lease: LeaseGranted) -> BaseModel:
        """The lease's parameters, checked against the workload and against this device."""
        facts = DeviceFacts(
            backend=self.backend,
            precisions=self._precisions,
            total_memory=self._total_memory,
            memory_limit=self._memory_limit,
            faults=self.config.faults,
        )
        return admit(lease.workload, lease.params, facts)

    async def _inputs(self, lease: LeaseGranted, params: BaseModel) -> tuple[bytes | None, dict[str, bytes]]:
        resume: bytes | None = None
        if lease.resume_from is not None and lease.resume_step > 0:
            resume = await self.get_object(lease.resume_from, "resume_from")
        blobs: dict[str, bytes] = {}
        if isinstance(params, CustomKernelParams):
            for i, arg in enumerate(params.args):
                if arg.ref is not None and arg.ref.name not in blobs:
                    blobs[arg.ref.name] = await self.get_object(arg.ref, f"params.args.{i}.ref")
        elif isinstance(params, FunctionParams):
            # The code archive, then each array argument by its name. The archive is pinned by its
            # sha256, so a copy fetched for an earlier task is the same bytes; it is kept by its
            # object's name, which names its owner too: knowing another submitter's digest is no way
            # to run their code without it being in the object store under your own name.
            archive = self._archives.pop(params.code.name, None)
            if archive is None:
                archive = await self.get_object(params.code, "params.code")
            self._archives[params.code.name] = archive
            while sum(len(a) for a in self._archives.values()) > _ARCHIVE_CACHE_BYTES and len(self._archives) > 1:
                del self._archives[next(iter(self._archives))]
            blobs[_ARCHIVE] = archive
            for name, ref in params.arrays.items():
                blobs[name] = await self.get_object(ref, f"params.arrays.{name}")
        return resume, blobs

    async def _sandbox_for(self, slot: WorkerProcess, tenant: str) -> SandboxWorker:
        """The slot's warm sandbox for ``tenant``: kept while the same submitter's code runs there,
        replaced (its process killed, its GPU memory released) when another submitter's comes."""
        from gpu_runtime.sandbox import SandboxOptions, SandboxWorker

        current = self._sandboxes.get(slot.index)
        if current is not None and current.tenant == tenant:
            return current
        if current is not None:
            self._log.info("sandbox.replaced", slot=slot.index, tenant=tenant, previous=current.tenant)
            self._sandbox_starts += current.restarts  # a counter: what it counted stays counted
            current.kill()
        options = SandboxOptions(
            backend="cuda" if self.backend == "cuda" else "cpu",
            device_index=slot.options.device_index,
            memory_limit=self._memory_limit,
            host_memory_mb=self.config.code_memory_mb,
            hide=self.config.private_paths,
            unsafe=not self._sandboxed,
        )
        sandbox = SandboxWorker(slot.index, tenant, options, grace_s=self.config.cancel_grace_s)
        self._sandboxes[slot.index] = sandbox
        self._sandbox_starts += 1
        try:
            await sandbox.start()
        except Exception as e:
            self._sandboxes.pop(slot.index, None)
            sandbox.kill()
            raise WorkloadError("provider_error", f"the sandbox did not start: {e}") from e
        self._log.info("sandbox.started", slot=slot.index, tenant=tenant, pid=sandbox.pid, sandboxed=self._sandboxed)
        return sandbox

    async def _run_lease(self, run: _TaskRun) -> None:
        lease = run.lease
        log = self._log.bind(task_id=lease.task_id, lease_id=lease.lease_id)
        assert self._pool is not None
        t0 = time.perf_counter()
        try:
            params = self._validate(lease)
            code: CodeSpec | None = None
            if isinstance(params, FunctionParams):
                from gpu_runtime.sandbox import CodeSpec

                refusal = self._code_refusal(job_owner(lease.job_id))
                if refusal is not None:
                    raise WorkloadError("unsupported", refusal)
            resume, blobs = await self._inputs(lease, params)
            if isinstance(params, FunctionParams):
                code = CodeSpec(
                    task_id=lease.task_id,
                    index=_task_index(lease.task_id),
                    archive=blobs.pop(_ARCHIVE),
                    entry=params.entry,
                    args=dict(params.args),
                    arrays=blobs,
                    seed=params.seed,
                    resume_step=lease.resume_step if resume is not None else 0,
                    resume_blob=resume,
                )
            worker = await self._pool.acquire()
            # The start is reported only if the task still runs a moment from now (it extends the
            # lease to the task's timeout); a short task's completion implies it.
            run.start_due = started = asyncio.get_running_loop().call_later(
                start_report_delay(lease, utc_now()), self._report_started, run
            )
            try:
                if run.revoked:
                    return
                run.worker = worker
                log.debug("task.started", workload=lease.workload, attempt=lease.attempt)
                base = lease.resume_step if resume is not None else 0
                reporter = _Reporter(self, run, ProgressThrottle(self.config.progress_per_s), base=base)
                if code is not None:
                    sandbox = await self._sandbox_for(worker, job_owner(lease.job_id) or "")
                    run.worker = sandbox
                    if run.revoked:
                        return
                    outcome = await sandbox.run(code, reporter, lease.timeout_s, stopped=lambda: run.revoked)
                else:
                    spec = TaskSpec(
                        seq=0,
                        task_id=lease.task_id,
                        workload=lease.workload,
                        params=params,
                        memory_limit=self._memory_limit,
                        resume_step=lease.resume_step if resume is not None else 0,
                        resume_blob=resume,
                        blobs=blobs,
                    )
                    outcome = await worker.run(spec, reporter, lease.timeout_s, stopped=lambda: run.revoked)
            finally:
                started.cancel()
                run.worker = None
                self._pool.release(worker)
            if run.revoked:
                log.info("task.dropped_after_revoke")
                return
            if isinstance(outcome, Failed):
                await reporter.flush_checkpoint()
                await self._fail(run, outcome.reason, outcome.message)
                return
            await self._complete(run, outcome, time.perf_counter() - t0)
        except WorkloadError as e:
            await self._fail(run, e.reason, e.message)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("task.provider_error")
            with contextlib.suppress(Exception):
                await self._fail(run, "provider_error", f"{type(e).__name__}: {e}")
        finally:
            self._finished(run)

    @staticmethod
    async def _after_start(run: _TaskRun) -> None:
        """Before any other report of ``run``: no start report is sent after it (that report implies
        the start), and one already sent is on the wire first (reports go out in order)."""
        if run.start_due is not None:
            run.start_due.cancel()
        if run.starting is not None:
            with contextlib.suppress(Exception):
                await run.starting

    def _report_started(self, run: _TaskRun) -> None:
        """Report that ``run`` started (it is still running ``start_report_delay`` after it began)."""
        lease = run.lease
        if run.revoked or run.outcome or self._stopping:
            return
        started = StartedReport(lease_id=lease.lease_id, provider_id=self.provider_id)
        run.starting = task = asyncio.ensure_future(
            self.report(lease, started, f"{lease.lease_id}-started", wait=False)
        )
        self._pending.add(task)
        task.add_done_callback(self._published)

    async def _complete(self, run: _TaskRun, outcome: Completed, wall_s: float) -> None:
        lease = run.lease
        summary = dict(outcome.summary)
        if outcome.arrays is not None:
            ref = await self.put_object(outcome.arrays, for_submitter=job_owner(lease.job_id))
            summary["arrays"] = ref.model_dump(mode="json")
        value = json_safe(summary)
        data = canonical_json(value)
        digest = sha256_hex(data)
        if len(data) <= self.config.inline_limit:
            result = ResultRef(sha256=digest, size=len(data), inline=value)
        else:
            ref = await self.put_object(data, for_submitter=job_owner(lease.job_id))
            result = ResultRef(sha256=digest, size=len(data), object=ref)
        # Only what the catalogue can carry: a workload's odd metric must not cost the completion.
        metrics = {
            k: float(v) for k, v in list(outcome.metrics.items())[:63] if math.isfinite(v) and abs(v) <= MAX_MEASURE
        }
        metrics["wall_s"] = wall_s
        body = CompletedReport(
            lease_id=lease.lease_id,
            provider_id=self.provider_id,
            result=result,
            gpu_ms=min(max(0, outcome.gpu_ms), MAX_GPU_MS),
            metrics=metrics,
        )
        if run.revoked:
            return
        await self._after_start(run)
        await self.report(lease, body, f"{lease.lease_id}-end")
        run.outcome = "completed"
        log = self._log.bind(task_id=lease.task_id, lease_id=lease.lease_id)
        log.debug("task.completed", gpu_ms=outcome.gpu_ms)
