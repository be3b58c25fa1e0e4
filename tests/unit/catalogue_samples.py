"""One valid, fully populated instance of every event in the catalogue, for round-trip tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from events.audit import AuditCheckpointed
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
    ParamsSplit,
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
    TaskResultJudged,
    TaskResultRejected,
    TaskResultReturned,
    TaskRetried,
    TaskStarted,
)
from events.types import (
    Calibration,
    Capabilities,
    Estimate,
    EventModel,
    ObjectRef,
    Resources,
    ResultRef,
    RetryPolicy,
)
from events.verification import SpotDraw

__all__ = ["SAMPLES", "T0"]

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
# A non-UTC instant: the models normalise it, so its encoding must still be stable.
_CET = datetime(2026, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=1)))
_SHA = "ab" * 32
_REF = ObjectRef(bucket="gf_objects", name="inputs/j1", sha256=_SHA, size=1 << 20)
_CAPS = Capabilities(
    backend="cuda",
    gpu_model="NVIDIA H100 80GB HBM3",
    vram_mb=81559,
    compute_capability=9.0,
    sm_count=132,
    cuda_version="12.4",
    driver_version="550.54",
    slots=2,
    price_micros=1500,
    workloads=("matmul", "noop"),
    extra={"mig": "off"},
)
_CAL = Calibration(matmul_tflops={"fp32": 51.2, "fp16": 700.5}, memory_gbps=2900.0, task_overhead_s=0.004)
_SPEC = JobSpec(
    workload="matmul",
    params={"n": 512, "dtype": "fp16", "nested": {"a": [1, 2.5, None, True, "x"]}},
    split=ParamsSplit(params=[{"seed": 1}, {"seed": 2}]),
    resources=Resources(min_vram_mb=1024, min_compute_capability=8.0, backend="cuda"),
    max_price_micros=2_000_000,
    deadline=_CET,
    priority=7,
    retry=RetryPolicy(max_attempts=5),
    timeout_s=30.0,
    submitter="alice@example.org",
    labels={"team": "ml", "ünïcode": "✓"},
)

#: type name -> a valid instance; every catalogue type appears exactly once.
SAMPLES: dict[str, EventModel] = {
    e.type: e  # type: ignore[attr-defined]
    for e in (
        JobSubmitted(at=T0, job_id="j1", spec=_SPEC),
        JobAccepted(at=T0, job_id="j1", task_count=2, predicted_s=1.25),
        JobRejected(at=T0, job_id="j1", reason="unknown workload 'x'", field="workload"),
        JobCompleted(at=T0, job_id="j1", tasks=2, gpu_ms=1234, cost_micros=987654),
        JobFailed(at=T0, job_id="j1", reason="task j1-0 is dead", task_id="j1-0"),
        JobCancelled(at=T0, job_id="j1", reason="submitter asked"),
        JobDeadlineMissed(at=T0, job_id="j1", deadline=_CET, unfinished=1),
        TaskCreated(
            at=T0,
            task_id="j1-0",
            job_id="j1",
            index=0,
            submitter="alice",
            workload="matmul",
            params={"n": 512, "seed": 1},
            resources=Resources(min_vram_mb=1024),
            estimate=Estimate(flops=2.0 * 512**3, bytes_moved=3.0 * 512 * 512 * 2, precision="fp16"),
            max_price_micros=10,
            timeout_s=30.0,
            deadline=_CET,
            input=_REF,
            shard=(0, 2),
        ),
        TaskQueued(at=T0, task_id="j1-0"),
        TaskLeased(
            at=T0,
            task_id="j1-0",
            lease_id="l1",
            provider_id="p1",
            attempt=2,
            expires_at=T0 + timedelta(seconds=30),
            predicted_s=0.5,
            price_micros=1500,
            resume_from=_REF,
            resume_step=100,
        ),
        TaskStarted(at=T0, task_id="j1-0", lease_id="l1", provider_id="p1", expires_at=_CET),
        TaskProgressed(
            at=T0,
            task_id="j1-0",
            lease_id="l1",
            provider_id="p1",
            fraction=0.375,
            rate=123.456,
            unit="steps",
            message="step 3/8 — ok",
            checkpoint=_REF,
            checkpoint_step=3,
        ),
        TaskCompleted(
            at=T0,
            task_id="j1-0",
            lease_id="l1",
            provider_id="p1",
            result=ResultRef(sha256=_SHA, size=12, inline={"sum": 1.5, "shape": [2, 2]}, object=_REF),
            gpu_ms=42,
            metrics={"tflops": 12.5},
        ),
        TaskFailed(
            at=T0,
            task_id="j1-0",
            lease_id="l1",
            provider_id="p1",
            reason="out_of_memory",
            message="CUDA OOM",
            attempt=3,
            terminal=True,
        ),
        TaskRetried(at=T0, task_id="j1-0", failures=1, not_before=T0 + timedelta(seconds=2)),
        TaskLeaseExpired(at=T0, task_id="j1-0", lease_id="l1", provider_id="p1", reason="provider_lost"),
        TaskCancelled(at=T0, task_id="j1-0", reason="job cancelled", lease_id="l1", provider_id="p1"),
        TaskResultRejected(
            at=T0, task_id="j1-0", lease_id="old", provider_id="p9", report="completed", reason="stale lease"
        ),
        TaskResultReturned(
            at=T0,
            task_id="j1-0",
            lease_id="l1",
            provider_id="p1",
            result=ResultRef(sha256="ab" * 32, size=2, inline=3.14),
            gpu_ms=1200,
            price_micros=1500,
            replica=1,
            replicas=2,
            quorum=2,
            spot=SpotDraw(p=1.0, draw=0.25, consecutive_valid=0, checked=True),
        ),
        TaskResultJudged(
            at=T0, task_id="j1-0", lease_id="l1", provider_id="p1", verdict="valid", canonical="l1", gpu_ms=1200
        ),
        ProviderRegistered(at=T0, provider_id="p1", name="lab box", capabilities=_CAPS, runtime_version="0.1"),
        ProviderCalibrated(at=T0, provider_id="p1", calibration=_CAL),
        ProviderOnline(at=T0, provider_id="p1"),
        ProviderLost(at=T0, provider_id="p1"),
        ProviderDraining(at=T0, provider_id="p1", reason="maintenance"),
        ProviderLeft(at=T0, provider_id="p1", reason="bye"),
        UsageMetered(
            at=T0,
            job_id="j1",
            task_id="j1-0",
            provider_id="p1",
            submitter="alice",
            gpu_ms=42,
            price_micros=1500,
            amount_micros=63,
        ),
        SubmitterCharged(at=T0, job_id="j1", submitter="alice", amount_micros=63, gpu_ms=42),
        ProviderCredited(at=T0, job_id="j1", provider_id="p1", amount_micros=60, gpu_ms=42),
        InputAccepted(at=T0, intake_seq=7, subject="gf.in.job.j1.submit", facts=1, note="ok"),
        InputRejected(
            at=T0,
            intake_seq=8,
            subject="gf.in.job.j2.submit",
            reason="Input should be a valid integer",
            field="priority",
            excerpt='{"priority":"5"}',
        ),
        AuditCheckpointed(at=T0, position=100, digest=_SHA, events=100),
    )
}
