"""Deterministic event logs that follow the orchestrator's contract, for golden files, tests and benches.

````Sim`` emits exactly what the write side appends (see the projections issue): per intake message
one outcome (its facts, or ``InputAccepted``/``InputRejected`` in ``intake.outcomes``); jobs, tasks
and providers on their own streams; ``UsageMetered`` per completed task and the settlement in the
same append as a job's end.
``golden_scenario()`` is a scripted story; ``random_log()`` a discrete-event simulation of a fleet.
Everything is a function of its arguments and seed: no clock, no uuid. An accepted input's facts have
the ids ``in-<intake seq>.<n>`` and are its outcome; ``InputAccepted`` is only for inputs that
changed nothing.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from events import Envelope, new_envelope
from events.audit import AuditCheckpointed
from events.estimates import RuntimeModel, base_seconds
from events.intake import InputAccepted, InputRejected
from events.job import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadlineMissed,
    JobFailed,
    JobRejected,
    JobSpec,
    JobSubmitted,
    ProviderCredited,
    SubmitterCharged,
    UsageMetered,
)
from events.provider import (
    ProviderCalibrated,
    ProviderDraining,
    ProviderLeft,
    ProviderLost,
    ProviderOnline,
    ProviderRegistered,
)
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskProgressed,
    TaskQueued,
    TaskResultRejected,
    TaskRetried,
    TaskStarted,
)
from events.types import Calibration, Capabilities, EventModel, FailureReason, ResultRef
from events.workloads import contract, validate_params
from projections.chain import CHAIN_STREAM, GENESIS, chain_step

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SOURCE = "gpufleet.orchestrator"


@dataclass
class Provider:
    pid: str
    caps: Capabilities
    cal: Calibration
    #: How much slower than its calibration this device really is, per workload (the hidden truth).
    factor: dict[str, float]
    status: str = "online"
    leases: set[str] = field(default_factory=set)


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    tasks: list[str]
    ended: bool = False
    metered: dict[str, tuple[int, int]] = field(default_factory=dict)  # provider -> (micros, gpu_ms)


@dataclass
class Task:
    task_id: str
    job_id: str
    created: TaskCreated
    state: str = "queued"
    attempt: int = 0
    failures: int = 0
    lease_id: str | None = None
    provider: str | None = None
    started: bool = False
    duration: float = 0.0
    epoch: int = 0  # bumps on every lease change: stale timers are ignored


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


class Sim:
    """The write side's output for a scripted or simulated history; ``events`` are in log order."""

    def __init__(self, seed: int = 0, *, checkpoint_every: int | None = None) -> None:
        self.rng = random.Random(seed)
        #: Like the live audit chain: an ``AuditCheckpointed`` after every that many events.
        self.checkpoint_every = checkpoint_every
        self.digest = GENESIS
        self._last_checkpoint = 0
        self.now = T0
        self.events: list[Envelope] = []
        self.appends: list[tuple[str, list[Envelope]]] = []
        self.intake: list[tuple[str, bytes]] = []
        self.providers: dict[str, Provider] = {}
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        self.model = RuntimeModel()
        self._counters: dict[str, int] = {}
        self._leases = 0
        #: The intake message whose facts are being appended (their ids are ``in-<seq>.<n>``).
        self._cause: int | None = None
        self._cause_n = 0

    # ---- plumbing ------------------------------------------------------------------------------

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def append(self, stream: str, *events: EventModel, correlation: str | None = None) -> None:
        group = []
        for ev in events:
            n = self._counters.get(stream, 0) + 1
            self._counters[stream] = n
            event_id = f"{stream}:{n}"
            if self._cause is not None and stream not in ("intake.outcomes", CHAIN_STREAM):
                # The facts of an accepted input are its outcome: ids in-<intake seq>.<n>.
                self._cause_n += 1
                event_id = f"in-{self._cause}.{self._cause_n}"
            env = new_envelope(stream, ev, id=event_id, source=SOURCE, correlationid=correlation)
            env = env.at_position(len(self.events) + 1)
            self.events.append(env)
            self.digest = chain_step(self.digest, env)
            group.append(env)
        self.appends.append((stream, group))
        every = self.checkpoint_every
        if every and stream != CHAIN_STREAM and len(self.events) - self._last_checkpoint >= every:
            pos = len(self.events)
            self._last_checkpoint = pos
            self.append(
                CHAIN_STREAM, AuditCheckpointed(at=self.now, position=pos, digest=self.digest.hex(), events=pos)
            )

    def send(self, subject: str, body: bytes) -> int:
        self.intake.append((subject, body))
        self._cause = len(self.intake)
        self._cause_n = 0
        return len(self.intake)

    def accepted(self, seq: int, facts: int, note: str = "") -> None:
        """The input's outcome: its facts (already appended, ids ``in-<seq>.<n>``), or, when it
        changed nothing, an ``InputAccepted``."""
        self._cause = None
        if facts:
            return
        subject = self.intake[seq - 1][0]
        self.append(
            "intake.outcomes",
            InputAccepted(at=self.now, intake_seq=seq, subject=subject, facts=facts, note=note),
        )

    def rejected(self, seq: int, reason: str, field_name: str | None) -> None:
        self._cause = None
        subject, body = self.intake[seq - 1]
        self.append(
            "intake.outcomes",
            InputRejected(
                at=self.now,
                intake_seq=seq,
                subject=subject,
                reason=reason,
                field=field_name,
                excerpt=body[:300].decode(errors="replace"),
            ),
        )

    # ---- providers -----------------------------------------------------------------------------

    def register(
        self,
        pid: str,
        *,
        backend: str = "cuda",
        vram_mb: int = 24576,
        cc: float = 8.9,
        slots: int = 2,
        price: int = 1000,
        tflops: float = 50.0,
        workloads: tuple[str, ...] = ("sleep", "matmul", "stencil", "montecarlo", "noop"),
        factor: float = 1.0,
    ) -> None:
        caps = Capabilities(
            backend=backend,  # type: ignore[arg-type]
            gpu_model=f"sim-{backend}-{vram_mb}",
            vram_mb=vram_mb,
            compute_capability=cc,
            slots=slots,
            price_micros=price,
            workloads=workloads,
        )
        cal = Calibration(
            matmul_tflops={"fp32": tflops, "fp16": tflops * 4}, memory_gbps=tflops * 20, task_overhead_s=0.01
        )
        body = json.dumps({"name": pid, "capabilities": caps.model_dump(mode="json"), "calibration": cal.model_dump()})
        seq = self.send(f"gf.in.provider.{pid}.register", body.encode())
        stream = f"provider.{pid}"
        self.append(
            stream,
            ProviderRegistered(at=self.now, provider_id=pid, name=pid, capabilities=caps, runtime_version="0.1"),
            ProviderCalibrated(at=self.now, provider_id=pid, calibration=cal),
            ProviderOnline(at=self.now, provider_id=pid),
        )
        self.accepted(seq, 3)
        wl = {w: factor * self.rng.uniform(0.8, 1.25) for w in workloads}
        self.providers[pid] = Provider(pid, caps, cal, wl)

    def lose(self, pid: str) -> list[str]:
        p = self.providers[pid]
        p.status = "lost"
        self.append(f"provider.{pid}", ProviderLost(at=self.now, provider_id=pid))
        revoked = sorted(p.leases)
        for tid in revoked:
            self._end_lease(tid, "provider_lost")
        return revoked

    def back_online(self, pid: str) -> None:
        self.providers[pid].status = "online"
        self.append(f"provider.{pid}", ProviderOnline(at=self.now, provider_id=pid))

    def drain(self, pid: str) -> None:
        seq = self.send(f"gf.in.provider.{pid}.drain", b'{"reason":"maintenance"}')
        self.providers[pid].status = "draining"
        self.append(f"provider.{pid}", ProviderDraining(at=self.now, provider_id=pid, reason="maintenance"))
        self.accepted(seq, 1)

    def leave(self, pid: str) -> None:
        seq = self.send(f"gf.in.provider.{pid}.leave", b"{}")
        p = self.providers[pid]
        for tid in sorted(p.leases):
            self._end_lease(tid, "provider_left")
        p.status = "left"
        self.append(f"provider.{pid}", ProviderLeft(at=self.now, provider_id=pid))
        self.accepted(seq, 1)

    def capable(self, p: Provider, t: Task, *, static: bool = False) -> bool:
        c, r = p.caps, t.created.resources
        return (
            (static or (p.status == "online" and len(p.leases) < c.slots))
            and c.vram_mb >= r.min_vram_mb
            and c.compute_capability >= r.min_compute_capability
            and (r.backend in ("any", c.backend))
            and (not c.workloads or t.created.workload in c.workloads)
            and (t.created.max_price_micros is None or c.price_micros <= t.created.max_price_micros)
        )

    # ---- jobs ----------------------------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        workload: str = "sleep",
        params: dict[str, Any] | None = None,
        *,
        count: int = 2,
        submitter: str = "alice",
        max_price: int | None = None,
        min_vram_mb: int = 0,
        backend: str = "any",
        max_attempts: int = 3,
        deadline_s: float | None = None,
        on_deadline: str = "cancel",
    ) -> bool:
        params = params if params is not None else {"seconds": 2.0, "steps": 4}
        spec_obj: dict[str, Any] = {
            "workload": workload,
            "params": params,
            "split": {"kind": "count", "count": count},
            "resources": {"min_vram_mb": min_vram_mb, "backend": backend},
            "max_price_micros": max_price,
            "retry": {"max_attempts": max_attempts, "backoff_s": 1.0},
            "submitter": submitter,
            "on_deadline": on_deadline,
            "timeout_s": 600.0,
        }
        if deadline_s is not None:
            spec_obj["deadline"] = (self.now + timedelta(seconds=deadline_s)).isoformat()
        body = json.dumps(spec_obj).encode()
        seq = self.send(f"gf.in.job.{job_id}.submit", body)
        spec = JobSpec.model_validate_json(body)
        stream = f"job.{job_id}"
        try:
            validated = validate_params(workload, spec.params)
        except Exception as e:  # an invalid job is a fact too: JobRejected
            field_name = getattr(e, "field", None)
            self.append(
                stream,
                JobSubmitted(at=self.now, job_id=job_id, spec=spec),
                JobRejected(at=self.now, job_id=job_id, reason=str(e)[:2000], field=field_name),
                correlation=job_id,
            )
            self.accepted(seq, 2, note="job rejected")
            return False
        estimate = contract(workload).estimate(validated)
        probe = TaskCreated(
            at=self.now,
            task_id=f"{job_id}-0",
            job_id=job_id,
            index=0,
            submitter=spec.submitter,
            workload=workload,
            params={},
            resources=spec.resources,
            estimate=estimate,
            max_price_micros=spec.max_price_micros,
            timeout_s=spec.timeout_s,
        )
        if self.providers and not any(
            self.capable(p, Task("probe", job_id, probe), static=True) for p in self.providers.values()
        ):
            self.append(
                stream,
                JobSubmitted(at=self.now, job_id=job_id, spec=spec),
                JobRejected(at=self.now, job_id=job_id, reason="no provider can run this job", field="resources"),
                correlation=job_id,
            )
            self.accepted(seq, 2, note="job rejected")
            return False
        task_ids = [f"{job_id}-{i}" for i in range(spec.task_count())]
        online = [p for p in self.providers.values() if p.status == "online"]
        slots = sum(p.caps.slots for p in online) or 1
        per_task = max(
            (self.model.predict(workload, estimate, p.cal, p.pid) for p in online),
            default=base_seconds(estimate, None),
        )
        predicted = per_task * math.ceil(len(task_ids) / slots)
        self.append(
            stream,
            JobSubmitted(at=self.now, job_id=job_id, spec=spec),
            JobAccepted(at=self.now, job_id=job_id, task_count=len(task_ids), predicted_s=predicted),
            correlation=job_id,
        )
        job = Job(job_id, spec, task_ids)
        self.jobs[job_id] = job
        for i, tid in enumerate(task_ids):
            created = TaskCreated(
                at=self.now,
                task_id=tid,
                job_id=job_id,
                index=i,
                submitter=spec.submitter,
                workload=workload,
                params=spec.task_params(i),
                resources=spec.resources,
                estimate=estimate,
                max_price_micros=spec.max_price_micros,
                priority=spec.priority,
                retry=spec.retry,
                timeout_s=spec.timeout_s,
                deadline=spec.deadline,
            )
            self.tasks[tid] = Task(tid, job_id, created)
            self.append(f"task.{tid}", created, correlation=job_id)
        self.accepted(seq, 2 + len(task_ids))
        return True

    def bad_input(self, kind: str = "job") -> None:
        if kind == "job":
            seq = self.send("gf.in.job.bad1.submit", b'{"workload": "sleep", "priority": "high"}')
            self.rejected(seq, "Input should be a valid integer", "priority")
        elif kind == "json":
            seq = self.send("gf.in.job.bad2.submit", b"{not json")
            self.rejected(seq, "Invalid JSON", "body")
        else:
            seq = self.send("gf.in.martian.x.submit", b"{}")
            self.rejected(seq, "unknown intake subject", "subject")

    # ---- tasks ---------------------------------------------------------------------------------

    def lease(self, tid: str, pid: str, *, expires_in: float = 30.0) -> None:
        t, p = self.tasks[tid], self.providers[pid]
        self._leases += 1
        t.attempt += 1
        t.lease_id = f"l{self._leases}"
        t.provider = pid
        t.state = "leased"
        t.started = False
        t.epoch += 1
        p.leases.add(tid)
        est = t.created.estimate
        predicted = self.model.predict(t.created.workload, est, p.cal, pid)
        t.duration = base_seconds(est, p.cal) * p.factor.get(t.created.workload, 1.0)
        t.duration *= math.exp(self.rng.gauss(0.0, 0.1))
        self.append(
            f"task.{tid}",
            TaskLeased(
                at=self.now,
                task_id=tid,
                lease_id=t.lease_id,
                provider_id=pid,
                attempt=t.attempt,
                expires_at=self.now + timedelta(seconds=expires_in),
                predicted_s=predicted,
                price_micros=p.caps.price_micros,
            ),
            correlation=t.job_id,
        )

    def _report(self, t: Task, body: dict[str, Any], pid: str | None = None, lease: str | None = None) -> int:
        body = {"lease_id": lease or t.lease_id, "provider_id": pid or t.provider, **body}
        return self.send(f"gf.in.task.{t.task_id}.report", json.dumps(body).encode())

    def start(self, tid: str) -> None:
        t = self.tasks[tid]
        seq = self._report(t, {"report": "started"})
        t.state = "running"
        t.started = True
        assert t.lease_id and t.provider
        self.append(
            f"task.{tid}",
            TaskStarted(
                at=self.now,
                task_id=tid,
                lease_id=t.lease_id,
                provider_id=t.provider,
                expires_at=self.now + timedelta(seconds=t.created.timeout_s),
            ),
            correlation=t.job_id,
        )
        self.accepted(seq, 1)

    def progress(self, tid: str, fraction: float) -> None:
        t = self.tasks[tid]
        seq = self._report(t, {"report": "progress", "fraction": fraction, "rate": 2.0})
        assert t.lease_id and t.provider
        self.append(
            f"task.{tid}",
            TaskProgressed(
                at=self.now,
                task_id=tid,
                lease_id=t.lease_id,
                provider_id=t.provider,
                fraction=fraction,
                rate=2.0,
            ),
            correlation=t.job_id,
        )
        self.accepted(seq, 1)

    def complete(self, tid: str) -> None:
        t = self.tasks[tid]
        assert t.lease_id and t.provider
        p = self.providers[t.provider]
        value = {"task": tid, "attempt": t.attempt}
        result = ResultRef(sha256=_sha(json.dumps(value)), size=len(json.dumps(value)), inline=value)
        gpu_ms = max(1, int(t.duration * 1000))
        seq = self._report(t, {"report": "completed", "result": result.model_dump(mode="json"), "gpu_ms": gpu_ms})
        self.append(
            f"task.{tid}",
            TaskCompleted(
                at=self.now, task_id=tid, lease_id=t.lease_id, provider_id=t.provider, result=result, gpu_ms=gpu_ms
            ),
            correlation=t.job_id,
        )
        job = self.jobs[t.job_id]
        price = p.caps.price_micros
        amount = -(-gpu_ms * price // 1000)
        self.append(
            f"job.{t.job_id}",
            UsageMetered(
                at=self.now,
                job_id=t.job_id,
                task_id=tid,
                provider_id=t.provider,
                submitter=job.spec.submitter,
                gpu_ms=gpu_ms,
                price_micros=price,
                amount_micros=amount,
            ),
            correlation=t.job_id,
        )
        m, g = job.metered.get(t.provider, (0, 0))
        job.metered[t.provider] = (m + amount, g + gpu_ms)
        self.accepted(seq, 2)
        if t.started:
            self.model.observe(t.created.workload, t.created.estimate, p.cal, t.provider, t.duration)
        p.leases.discard(tid)
        t.state = "completed"
        t.epoch += 1
        if all(self.tasks[x].state == "completed" for x in job.tasks):
            gpu = sum(g for _, g in job.metered.values())
            cost = sum(m for m, _ in job.metered.values())
            self._end_job(
                job, JobCompleted(at=self.now, job_id=job.job_id, tasks=len(job.tasks), gpu_ms=gpu, cost_micros=cost)
            )

    def fail(self, tid: str, reason: FailureReason = "worker_crashed") -> None:
        t = self.tasks[tid]
        assert t.lease_id and t.provider
        seq = self._report(t, {"report": "failed", "reason": reason})
        t.failures += 1
        terminal = t.failures >= t.created.retry.max_attempts or reason == "invalid_params"
        failed = TaskFailed(
            at=self.now,
            task_id=tid,
            lease_id=t.lease_id,
            provider_id=t.provider,
            reason=reason,
            attempt=t.attempt,
            terminal=terminal,
        )
        self.providers[t.provider].leases.discard(tid)
        t.epoch += 1
        if terminal:
            t.state = "dead"
            self.append(f"task.{tid}", failed, correlation=t.job_id)
            self.accepted(seq, 1)
            job = self.jobs[t.job_id]
            self._cancel_tasks(job, "job failed")
            self._end_job(job, JobFailed(at=self.now, job_id=job.job_id, reason=f"task {tid} failed", task_id=tid))
        else:
            t.state = "retrying"
            delay = t.created.retry.delay_after(t.failures)
            retried = TaskRetried(
                at=self.now, task_id=tid, failures=t.failures, not_before=self.now + timedelta(seconds=delay)
            )
            self.append(f"task.{tid}", failed, retried, correlation=t.job_id)
            self.accepted(seq, 2)

    def requeue(self, tid: str) -> None:
        t = self.tasks[tid]
        t.state = "queued"
        self.append(f"task.{tid}", TaskQueued(at=self.now, task_id=tid), correlation=t.job_id)

    def expire(self, tid: str) -> None:
        self._end_lease(tid, "expired")

    def _end_lease(self, tid: str, reason: str) -> None:
        t = self.tasks[tid]
        assert t.lease_id and t.provider
        self.providers[t.provider].leases.discard(tid)
        self.append(
            f"task.{tid}",
            TaskLeaseExpired(
                at=self.now,
                task_id=tid,
                lease_id=t.lease_id,
                provider_id=t.provider,
                reason=reason,  # type: ignore[arg-type]
            ),
            correlation=t.job_id,
        )
        t.state = "queued"
        t.epoch += 1

    def refuse(self, tid: str, pid: str, reason: str = "not the lease holder", lease: str = "forged") -> None:
        """A report the orchestrator refuses: forged, or late from a revoked lease."""
        t = self.tasks[tid]
        value = {"forged": True}
        body = {
            "report": "completed",
            "result": {"sha256": _sha("forged"), "size": 1, "inline": value},
            "gpu_ms": 1,
        }
        seq = self._report(t, body, pid=pid, lease=lease)
        self._cause = None  # a refused input: its outcome is the InputRejected below
        self.append(
            f"task.{tid}",
            TaskResultRejected(
                at=self.now, task_id=tid, lease_id=lease, provider_id=pid, report="completed", reason=reason
            ),
            correlation=t.job_id,
        )
        self.rejected(seq, reason, "lease_id")

    def _cancel_tasks(self, job: Job, reason: str) -> None:
        for tid in job.tasks:
            t = self.tasks[tid]
            if t.state in ("completed", "dead", "cancelled"):
                continue
            lease, pid = (t.lease_id, t.provider) if t.state in ("leased", "running") else (None, None)
            if pid is not None:
                self.providers[pid].leases.discard(tid)
            t.state = "cancelled"
            t.epoch += 1
            self.append(
                f"task.{tid}",
                TaskCancelled(at=self.now, task_id=tid, reason=reason, lease_id=lease, provider_id=pid),
                correlation=job.job_id,
            )

    def _end_job(self, job: Job, ending: EventModel) -> None:
        job.ended = True
        settlement: list[EventModel] = []
        if job.metered:
            gpu = sum(g for _, g in job.metered.values())
            cost = sum(m for m, _ in job.metered.values())
            settlement.append(
                SubmitterCharged(
                    at=self.now, job_id=job.job_id, submitter=job.spec.submitter, amount_micros=cost, gpu_ms=gpu
                )
            )
            for pid in sorted(job.metered):
                m, g = job.metered[pid]
                settlement.append(
                    ProviderCredited(at=self.now, job_id=job.job_id, provider_id=pid, amount_micros=m, gpu_ms=g)
                )
        self.append(f"job.{job.job_id}", ending, *settlement, correlation=job.job_id)

    def cancel(self, job_id: str) -> None:
        job = self.jobs[job_id]
        seq = self.send(f"gf.in.job.{job_id}.cancel", b'{"reason":"changed my mind"}')
        if job.ended:
            self.accepted(seq, 0, note="already finished")
            return
        self._cancel_tasks(job, "job cancelled")
        self._end_job(job, JobCancelled(at=self.now, job_id=job_id, reason="changed my mind"))
        self.accepted(seq, 1)

    def miss_deadline(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if job.ended or job.spec.deadline is None:
            return
        unfinished = sum(self.tasks[t].state not in ("completed", "dead", "cancelled") for t in job.tasks)
        self.append(
            f"job.{job_id}",
            JobDeadlineMissed(at=self.now, job_id=job_id, deadline=job.spec.deadline, unfinished=unfinished),
            correlation=job_id,
        )
        self._cancel_tasks(job, "deadline missed")
        ending: EventModel
        if job.spec.on_deadline == "fail":
            ending = JobFailed(at=self.now, job_id=job_id, reason="deadline missed")
        else:
            ending = JobCancelled(at=self.now, job_id=job_id, reason="deadline missed")
        self._end_job(job, ending)


# ---- the scripted golden story -----------------------------------------------------------------


def golden_scenario(checkpoint_every: int | None = 30) -> Sim:
    """Several jobs, retries, a provider lost mid-task, a cancelled job, forged and late reports,
    rejected inputs, a missed deadline, a drained and departed provider."""
    s = Sim(seed=7, checkpoint_every=checkpoint_every)
    s.register("gpu-a", price=1200, tflops=60.0, slots=2)
    s.register("gpu-b", price=900, tflops=30.0, slots=2, vram_mb=16384)
    s.register("cpu-c", backend="cpu", vram_mb=0, cc=0.0, price=100, tflops=0.5, slots=1)
    s.tick(1)
    s.bad_input("job")
    # j1: two sleep tasks; one completes on gpu-a, the other is on gpu-b when gpu-b is lost.
    s.submit("j1", "sleep", {"seconds": 3.0, "steps": 3}, count=2, submitter="alice")
    s.tick(0.5)
    s.lease("j1-0", "gpu-a")
    s.lease("j1-1", "gpu-b")
    s.tick(0.2)
    s.start("j1-0")
    s.start("j1-1")
    s.tick(1.0)
    s.progress("j1-0", 0.33)
    s.progress("j1-1", 0.3)
    s.tick(0.5)
    s.lose("gpu-b")
    s.tick(0.5)
    s.refuse("j1-1", "gpu-b", reason="late: the lease was revoked", lease="l2")
    s.lease("j1-1", "gpu-a")
    s.tick(0.2)
    s.start("j1-1")
    s.tick(1.3)
    s.progress("j1-0", 0.9)
    s.complete("j1-0")
    s.tick(0.5)
    s.refuse("j1-1", "cpu-c", reason="not the lease holder")
    s.tick(2.0)
    s.complete("j1-1")
    s.back_online("gpu-b")
    # j2: a matmul needing 20 GB: only gpu-a can run it; the first attempt fails and is retried.
    s.submit("j2", "matmul", {"n": 2048, "repeat": 4}, count=1, submitter="bob", min_vram_mb=20000)
    s.lease("j2-0", "gpu-a")
    s.tick(0.1)
    s.start("j2-0")
    s.tick(0.3)
    s.fail("j2-0", "worker_crashed")
    s.tick(1.0)
    s.requeue("j2-0")
    s.lease("j2-0", "gpu-a")
    s.tick(0.1)
    s.start("j2-0")
    s.tick(0.4)
    s.complete("j2-0")
    # j3: cancelled by its submitter while one task runs and one is queued.
    s.submit("j3", "stencil", {"n": 256, "steps": 100, "step_delay_s": 0.05}, count=2, submitter="alice")
    s.lease("j3-0", "gpu-b")
    s.tick(0.1)
    s.start("j3-0")
    s.tick(1.0)
    s.progress("j3-0", 0.2)
    s.cancel("j3")
    # j4: rejected (bad params); j5: a task that dies after its retries, so the job fails.
    s.submit("j4", "matmul", {"n": -3}, count=1, submitter="carol")
    s.bad_input("json")
    s.submit("j5", "montecarlo", {"samples": 1 << 20}, count=2, submitter="carol", max_attempts=2)
    s.lease("j5-0", "gpu-a")
    s.lease("j5-1", "gpu-b")
    s.tick(0.1)
    s.start("j5-0")
    s.start("j5-1")
    s.tick(0.2)
    s.complete("j5-1")
    s.fail("j5-0", "provider_error")
    s.tick(1.0)
    s.requeue("j5-0")
    s.lease("j5-0", "gpu-b")
    s.tick(0.1)
    s.start("j5-0")
    s.fail("j5-0", "kernel_error")
    # j6: a deadline that passes with a lease that expired unstarted (on_deadline = fail).
    s.submit("j6", "sleep", {"seconds": 5.0, "steps": 5}, count=1, submitter="bob", deadline_s=20.0, on_deadline="fail")
    s.lease("j6-0", "cpu-c")
    s.tick(30.0)
    s.expire("j6-0")
    s.miss_deadline("j6")
    # The CPU provider drains, then leaves; a junk subject is rejected.
    s.drain("cpu-c")
    s.tick(1.0)
    s.leave("cpu-c")
    s.bad_input("subject")
    return s


# ---- a simulated fleet -------------------------------------------------------------------------

_MIX: list[tuple[str, Callable[[random.Random], dict[str, Any]]]] = [
    ("sleep", lambda r: {"seconds": round(r.uniform(0.5, 20.0), 2), "steps": 4}),
    ("matmul", lambda r: {"n": r.choice([1024, 2048, 4096, 8192]), "repeat": r.randint(1, 20)}),
    ("stencil", lambda r: {"n": r.choice([256, 512, 1024]), "steps": r.randint(50, 2000)}),
    ("montecarlo", lambda r: {"samples": r.choice([1 << 22, 1 << 26, 1 << 30])}),
]


def random_log(
    seed: int,
    *,
    max_events: int = 2000,
    providers: int = 4,
    tasks_per_job: tuple[int, int] = (1, 6),
    progress_reports: int = 2,
    chaos: float = 1.0,
    checkpoint_every: int | None = None,
) -> Sim:
    """A discrete-event simulation of a fleet until about ``max_events`` events.

    Jobs arrive, tasks are leased to capable providers, run for their (hidden) true duration with
    progress reports, and complete, fail (retries, dead tasks) or lose their provider. ``chaos``
    scales the rates of failures, lost providers, cancellations, deadlines, forged reports and junk.
    """
    s = Sim(seed, checkpoint_every=checkpoint_every)
    r = s.rng
    for i in range(providers):
        cpu = i % 4 == 3
        s.register(
            f"p{i}",
            backend="cpu" if cpu else "cuda",
            vram_mb=0 if cpu else r.choice([16384, 24576, 81920]),
            cc=0.0 if cpu else r.choice([7.5, 8.6, 9.0]),
            slots=r.randint(1, 4),
            price=r.choice([100, 800, 1000, 2500]),
            tflops=0.5 if cpu else r.choice([20.0, 60.0, 400.0]),
            factor=r.uniform(0.7, 1.6),
        )
    timers: list[tuple[datetime, int, str, str, int]] = []
    order = 0

    def at(delay: float, action: str, key: str, epoch: int = 0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(timers, (s.now + timedelta(seconds=delay), order, action, key, epoch))

    queue: list[str] = []
    jobs = 0
    at(0.0, "arrive", "")
    at(r.expovariate(1 / 120.0), "churn", "")

    def dispatch() -> None:
        free = sum(p.caps.slots - len(p.leases) for p in s.providers.values() if p.status == "online")
        if free <= 0 or not queue:
            return
        still: list[str] = []
        for n, tid in enumerate(queue):
            if n >= 256 or free <= 0:
                still.extend(queue[n:])
                break
            t = s.tasks[tid]
            if t.state != "queued" or s.jobs[t.job_id].ended:
                continue
            cands = [p for p in s.providers.values() if s.capable(p, t)]
            if not cands:
                still.append(tid)
                continue
            p = min(cands, key=lambda p: (len(p.leases), p.caps.price_micros, p.pid))
            s.lease(tid, p.pid)
            free -= 1
            at(r.uniform(0.01, 0.2), "start", tid, t.epoch)
        queue[:] = still

    while len(s.events) < max_events and timers:
        when, _, action, key, epoch = heapq.heappop(timers)
        s.now = max(s.now, when)
        if action == "arrive":
            jobs += 1
            job_id = f"j{jobs}"
            workload, gen = _MIX[r.randrange(len(_MIX))]
            params = gen(r)
            if r.random() < 0.03 * chaos:
                params = {"n": -1} if workload == "matmul" else {"bogus": 1}
            deadline = r.uniform(5.0, 60.0) if r.random() < 0.1 * chaos else None
            ok = s.submit(
                job_id,
                workload,
                params,
                count=r.randint(*tasks_per_job),
                submitter=r.choice(["alice", "bob", "carol", "dave"]),
                min_vram_mb=r.choice([0, 0, 0, 20000]),
                backend=r.choice(["any", "any", "cuda"]),
                max_price=r.choice([None, None, 2000]),
                max_attempts=r.randint(1, 3),
                deadline_s=deadline,
                on_deadline=r.choice(["fail", "cancel"]),
            )
            if ok:
                queue.extend(s.jobs[job_id].tasks)
                if deadline is not None:
                    at(deadline, "deadline", job_id)
                if r.random() < 0.04 * chaos:
                    at(r.uniform(0.5, 30.0), "cancel", job_id)
            if r.random() < 0.02 * chaos:
                s.bad_input(r.choice(["job", "json", "subject"]))
            at(r.expovariate(1 / 2.0), "arrive", "")
        elif action == "churn":
            online = [p for p in s.providers.values() if p.status == "online"]
            if online and len(online) > 1:
                p = r.choice(online)
                queue.extend(s.lose(p.pid))
                at(r.uniform(5.0, 60.0), "back", p.pid)
            at(r.expovariate(chaos / 120.0) if chaos > 0 else 1e9, "churn", "")
        elif action == "back":
            if s.providers[key].status == "lost":
                s.back_online(key)
        elif action == "deadline":
            job = s.jobs[key]
            if not job.ended:
                s.miss_deadline(key)
        elif action == "cancel":
            s.cancel(key)
        else:
            t = s.tasks[key]
            if t.epoch != epoch or s.jobs[t.job_id].ended:
                continue
            if action == "start":
                if t.state != "leased":
                    continue
                if s.providers[t.provider or ""].status != "online" or r.random() < 0.01 * chaos:
                    at(30.0, "expire", key, t.epoch)
                    continue
                s.start(key)
                for k in range(1, progress_reports + 1):
                    at(t.duration * k / (progress_reports + 1), "progress", key, t.epoch)
                at(t.duration, "finish", key, t.epoch)
            elif action == "progress" and t.state == "running":
                k = round(((s.now - T0).total_seconds() * 7) % 1, 3)  # vary the reported fraction a bit
                s.progress(key, min(0.99, 0.1 + 0.8 * k))
            elif action == "expire" and t.state == "leased":
                s.expire(key)
                queue.append(key)
            elif action == "finish" and t.state == "running":
                if r.random() < 0.005 * chaos:
                    others = [p for p in s.providers if p != t.provider]
                    if others:
                        s.refuse(key, r.choice(others))
                if r.random() < 0.04 * chaos:
                    s.fail(key, r.choice(["worker_crashed", "out_of_memory", "timeout", "provider_error"]))
                    if t.state == "retrying":
                        at(1.0, "requeue", key, t.epoch)
                else:
                    s.complete(key)
            elif action == "requeue" and t.state == "retrying":
                s.requeue(key)
                queue.append(key)
        dispatch()
    return s
