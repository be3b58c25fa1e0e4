"""Simulated providers: the real provider protocol over NATS, with tasks that only sleep.

Each has its own connection and credentials (a provider's identity is its credential). They register
through intake, heartbeat in the KV bucket, take leases from their dispatch consumer, report through
intake and publish live progress on core NATS, exactly like ``gpu_runtime``'s service, but run
``noop``/``sleep`` tasks in the event loop, so hundreds fit in one process. Tests and benchmarks use
them to exercise the orchestrator, and ``kill()`` injects a real fault: the provider stops mid-task
without a word, its connection dropped.

A simulated provider that lists ``montecarlo`` among its workloads runs it for real, and cheaply: the
result is the summary ``gpu_runtime`` computes (:func:`montecarlo_summary`), bit for bit, so results
can be verified against a real runtime's or another simulated provider's. What it reports comes from
:meth:`SimulatedProvider.outcome`, which a test's subclass overrides to lie (``tests/dishonest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import TypeAdapter, ValidationError

from events.dispatch import Dispatch, Heartbeat, LeaseBatch, LeaseGranted, LeaseRevoked, start_report_delay
from events.intake import (
    CompletedReport,
    ProgressReport,
    ProviderDeparture,
    ProviderRegistration,
    StartedReport,
)
from events.live import LiveProgress
from events.store.connection import Access, connect_nats
from events.store.topology import Topology
from events.subjects import dispatch_consumer, heartbeat_subject, intake_subject, live_subject, report_subject
from events.types import Calibration, Capabilities, JsonValue, ResultRef, utc_now
from events.verification import result_bytes
from events.workloads import MonteCarloParams

__all__ = ["SimulatedProvider", "inline_result", "montecarlo_summary"]

_log = structlog.get_logger("gpufleet.sim")
_DISPATCH: TypeAdapter[LeaseGranted | LeaseRevoked | LeaseBatch] = TypeAdapter(Dispatch)


def inline_result(value: Any) -> ResultRef:
    """A small result carried inline, with the sha256 of its canonical JSON."""
    data = result_bytes(value)
    return ResultRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data), inline=value)


def montecarlo_summary(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``montecarlo`` result exactly as ``gpu_runtime`` computes it: hits counted with NumPy in
    chunks of ``chunk`` (``gpu_runtime.workloads.montecarlo``), then the same summary."""
    import numpy as np

    from gpu_runtime.workloads.montecarlo import count_hits

    p = MonteCarloParams.model_validate(dict(params))
    hits = 0
    for start in range(0, p.samples, p.chunk):
        hits += count_hits(np, p.seed, start, min(p.chunk, p.samples - start))
    return {"workload": "montecarlo", "samples": p.samples, "seed": p.seed, "hits": hits, "pi": 4.0 * hits / p.samples}


@dataclass
class SimulatedProvider:
    """One simulated provider on connection ``nc``."""

    nc: NATS
    provider_id: str
    slots: int = 4
    backend: str = "cpu"
    price_micros: int = 100
    workloads: tuple[str, ...] = ("noop", "sleep")
    heartbeat_s: float = 0.5
    #: Report ``started`` for a task still running ``events.dispatch.start_report_delay`` after it
    #: began, as a real runtime does (a shorter task's completion implies its start).
    report_started: bool = True
    topology: Topology = field(default_factory=Topology)
    #: Close the connection when killed (it was opened for this provider by :meth:`connect`).
    owns_connection: bool = False
    completed: int = 0
    revoked: int = 0
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Start reports not yet due, and in flight, by lease (``_after_start``).
    _start_due: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _starting: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    _sub: Any = None
    _draining: bool = False
    _dead: bool = False
    _deaf: bool = False

    @property
    def capabilities(self) -> Capabilities:
        """What this provider claims to be."""
        return Capabilities(
            backend="cuda" if self.backend == "cuda" else "cpu",
            gpu_model="simulated",
            vram_mb=16_000,
            compute_capability=8.0 if self.backend == "cuda" else 0.0,
            slots=self.slots,
            price_micros=self.price_micros,
            workloads=self.workloads,
        )

    @classmethod
    async def connect(cls, access: Access, provider_id: str | None = None, **kw: Any) -> SimulatedProvider:
        """A simulated provider on its own connection, as the provider its credentials name."""
        ident = access.identity()
        pid = provider_id or (ident.name if ident else None)
        if pid is None:
            raise ValueError("a provider id, or provider credentials, are needed")
        nc = await connect_nats(access, name=f"gpufleet-sim-{pid}")
        return cls(nc, pid, owns_connection=True, **kw)

    async def start(self) -> SimulatedProvider:
        """Register, start heartbeating, and take leases."""
        js = self.nc.jetstream()
        await self._heartbeat_once()
        reg = ProviderRegistration(
            name=f"sim {self.provider_id}",
            capabilities=self.capabilities,
            calibration=Calibration(matmul_tflops={"fp32": 1.0}, memory_gbps=100.0, task_overhead_s=0.001),
            runtime_version="sim",
        )
        await js.publish(intake_subject("provider", self.provider_id, "register"), reg.model_dump_json().encode())
        # The orchestrator creates this consumer when it takes the registration.
        self._sub = await js.pull_subscribe_bind(dispatch_consumer(self.provider_id), self.topology.dispatch_stream)
        self._tasks.append(asyncio.create_task(self._heartbeats()))
        self._tasks.append(asyncio.create_task(self._fetch(), name="fetch"))
        return self

    async def _fetch(self) -> None:
        # Until killed: a cancellation can come back from nats-py's fetch as a timeout (its wait_for),
        # and must not leave this loop running on a closed connection.
        while not self._dead and not self._deaf:
            try:
                msgs = await self._sub.fetch(batch=max(16, self.slots * 2), timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.1)  # no consumer yet (registration in flight), or reconnecting
                continue
            for msg in msgs:
                await self._on_dispatch(msg)

    async def _heartbeat_once(self) -> None:
        hb = Heartbeat(
            provider_id=self.provider_id,
            at=utc_now(),
            running=len(self.running),
            slots=self.slots,
            draining=self._draining,
        )
        subject = heartbeat_subject(self.provider_id, self.topology.heartbeat_bucket)
        # Never wait longer than a beat for the ack (see gpu_runtime.service: a publish lost in a
        # server restart would otherwise hold the next beats back for the default 5 s).
        timeout = min(max(self.heartbeat_s, 0.2), 2.0)
        await self.nc.jetstream().publish(subject, hb.model_dump_json().encode(), timeout=timeout)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._heartbeat_once()

    async def _on_dispatch(self, msg: Msg) -> None:
        if self._dead:
            return  # killed: a crashed provider takes nothing (the lease expires)
        try:
            d = _DISPATCH.validate_json(msg.data)
        except ValidationError:
            await msg.term()
            return
        await msg.ack()
        for item in d.items if isinstance(d, LeaseBatch) else [d]:
            if item.provider_id != self.provider_id:
                continue  # misrouted: not ours to run
            if isinstance(item, LeaseRevoked):
                t = self.running.pop(item.lease_id, None)
                if t is not None:
                    self.revoked += 1
                    t.cancel()
            elif item.lease_id not in self.running and not self._draining and not self._dead:
                self.running[item.lease_id] = asyncio.create_task(self._run(item))

    async def _report(self, task_id: str, body: StartedReport | ProgressReport | CompletedReport) -> None:
        if not isinstance(body, StartedReport):
            await self._after_start(body.lease_id)
        js = self.nc.jetstream()
        for attempt in range(1000):
            if self._dead:
                return
            try:
                await js.publish(report_subject(self.provider_id, task_id), body.model_dump_json().encode())
                return
            except (nats.errors.Error, OSError) as e:
                _log.warning(
                    "sim.report_retry", provider=self.provider_id, task=task_id, error=str(e) or type(e).__name__
                )
                await asyncio.sleep(min(1.0, 0.05 * (attempt + 1)))

    async def execute(self, lease: LeaseGranted) -> JsonValue:
        """Do the work of ``lease`` honestly; the value of its result.

        ``montecarlo`` returns the summary ``gpu_runtime`` would (:func:`montecarlo_summary`, run in a
        thread so that heartbeats go on). ``sleep`` sleeps its ``seconds``, with live progress, and
        ``noop`` does nothing; both return a token naming the task and this provider. ``sleep`` reports
        ``steps - 1`` times (its ``steps`` parameter; 4 when the parameters leave it out).
        """
        if lease.workload == "montecarlo":
            return await asyncio.to_thread(montecarlo_summary, lease.params)
        seconds = float(lease.params.get("seconds", 0.0) or 0.0) if lease.workload == "sleep" else 0.0  # type: ignore[arg-type]
        if seconds > 0:
            steps = min(10_000, max(1, int(lease.params.get("steps", 4) or 4)))  # type: ignore[arg-type]
            for i in range(steps):
                await asyncio.sleep(seconds / steps)
                if i < steps - 1:
                    await self.progress(lease, (i + 1) / steps, steps / seconds)
        return {"task": lease.task_id, "by": self.provider_id}

    async def progress(self, lease: LeaseGranted, fraction: float, rate: float) -> None:
        """Say how far ``lease``'s run has got: live on core NATS (``events.live``), never an event;
        through intake only for a job from before identities, which has no live subject."""
        subject = live_subject(lease.task_id, self.provider_id)
        if subject is None:
            report = ProgressReport(lease_id=lease.lease_id, provider_id=self.provider_id, fraction=fraction, rate=rate)
            await self._report(lease.task_id, report)
            return
        if self._dead:
            return
        body = LiveProgress(lease_id=lease.lease_id, fraction=fraction, rate=rate, at=utc_now())
        with contextlib.suppress(nats.errors.Error, OSError):
            await self.nc.publish(subject, body.model_dump_json().encode())

    async def outcome(self, lease: LeaseGranted, t0: float) -> tuple[ResultRef, int]:
        """What this provider reports for ``lease``: the result and the GPU milliseconds it claims.

        Honestly: the value of :meth:`execute`, inline, and the time since ``t0`` (``time.perf_counter``
        when the lease arrived). A subclass overrides this to lie (``tests/dishonest.py``).
        """
        value = await self.execute(lease)
        return inline_result(value), int((time.perf_counter() - t0) * 1000)

    async def _run(self, lease: LeaseGranted) -> None:
        t0 = time.perf_counter()
        if self.report_started:
            self._start_due[lease.lease_id] = asyncio.get_running_loop().call_later(
                start_report_delay(lease, utc_now()), self._start_reported, lease
            )
        try:
            result, gpu_ms = await self.outcome(lease, t0)
            await self._report(
                lease.task_id,
                CompletedReport(lease_id=lease.lease_id, provider_id=self.provider_id, result=result, gpu_ms=gpu_ms),
            )
            self.completed += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a fault in the simulator itself: say so, the lease will expire
            _log.error("sim.task_crashed", provider=self.provider_id, task=lease.task_id, error=repr(e))
        finally:
            self.running.pop(lease.lease_id, None)
            if (due := self._start_due.pop(lease.lease_id, None)) is not None:
                due.cancel()
            self._starting.pop(lease.lease_id, None)

    def _start_reported(self, lease: LeaseGranted) -> None:
        """The task of ``lease`` still runs: report its start (in the background, in order)."""
        self._start_due.pop(lease.lease_id, None)
        if lease.lease_id not in self.running or self._dead:
            return
        report = StartedReport(lease_id=lease.lease_id, provider_id=self.provider_id)
        self._starting[lease.lease_id] = asyncio.ensure_future(self._report(lease.task_id, report))

    async def _after_start(self, lease_id: str) -> None:
        """Before any other report under ``lease_id``: it implies the start, so none is sent after it,
        and one already sent goes first (reports go out in order)."""
        if (due := self._start_due.pop(lease_id, None)) is not None:
            due.cancel()
        if (starting := self._starting.pop(lease_id, None)) is not None:
            with contextlib.suppress(Exception):
                await starting

    def deafen(self) -> None:
        """A fault: keep heartbeating, but stop reading dispatch (leases then never start)."""
        self._deaf = True
        for t in self._tasks:
            if t.get_name() == "fetch":
                t.cancel()

    async def kill(self) -> None:
        """Crash: stop heartbeating and working at once, telling nobody."""
        self._dead = True
        for t in self._tasks:
            t.cancel()
        for t in list(self.running.values()):
            t.cancel()
        self.running.clear()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self.owns_connection:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def drain(self) -> None:
        """Finish the running work, take nothing new, then leave."""
        self._draining = True
        js = self.nc.jetstream()
        body = ProviderDeparture(reason="drained").model_dump_json().encode()
        await js.publish(intake_subject("provider", self.provider_id, "drain"), body)
        if self.running:
            await asyncio.wait(list(self.running.values()))
        await js.publish(intake_subject("provider", self.provider_id, "leave"), body)
        await self.kill()
