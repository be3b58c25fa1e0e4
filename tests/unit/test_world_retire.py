"""Jobs that are over leave the orchestrator's memory (``World(retire=True)``), and nothing else does.

The orchestrator's real shells and core over an in-memory log (the property tests' ``Kernel``), one
step at a time, so that the race the real orchestrator can meet is played out exactly: a task's
completion lands after its job failed and before its cancellation, so the job has ended and is settled
(nothing was metered yet) with every task ended, and still owes the metering of that completion.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from actors.core import Core
from actors.job import SubmitJob
from actors.provider import RegisterProvider
from actors.task import ReportCompleted, ReportFailed
from events.job import CountSplit, JobSpec, ProviderCredited, SubmitterCharged, UsageMetered
from events.subjects import task_id_of
from events.types import Capabilities, Resources, ResultRef, RetryPolicy
from tests.property.test_orchestration_invariants import Kernel

RESULT = ResultRef(sha256="a" * 64, size=1, inline=1)
JOB = "ann.j1"


@pytest.fixture
def k() -> Iterator[Kernel]:
    kernel = Kernel()
    kernel.core = Core(retire=True)
    yield kernel
    kernel.loop.close()


def run_a_job(k: Kernel) -> tuple[str, str]:
    caps = Capabilities(backend="cpu", gpu_model="x", vram_mb=8000, slots=2, workloads=("noop",))
    k.run(
        "provider", "p1", RegisterProvider(command_id=k.cid(), at=k.now, provider_id="p1", name="p1", capabilities=caps)
    )
    spec = JobSpec(
        workload="noop",
        split=CountSplit(count=2),
        resources=Resources(backend="any"),
        retry=RetryPolicy(max_attempts=1, backoff_s=1.0, max_lost_leases=3),
        max_price_micros=None,
    )
    k.run("job", JOB, SubmitJob(command_id=k.cid(), at=k.now, job_id=JOB, spec=spec, submitter="ann"))
    k.schedule()
    t0, t1 = task_id_of(JOB, 0), task_id_of(JOB, 1)
    assert k.world.tasks[t0].status == k.world.tasks[t1].status == "leased"
    return t0, t1


def report_completed(k: Kernel, task_id: str, *, react: bool) -> None:
    lease = k.world.tasks[task_id].lease
    assert lease is not None
    done = ReportCompleted(
        command_id=k.cid(), at=k.now, lease_id=lease.lease_id, provider_id="p1", result=RESULT, gpu_ms=900
    )
    k.run("task", task_id, done, react=react)


def test_a_job_leaves_memory_only_once_nothing_more_is_owed_for_it(k: Kernel) -> None:
    t0, t1 = run_a_job(k)
    lease = k.world.tasks[t0].lease
    assert lease is not None
    failed = ReportFailed(
        command_id=k.cid(), at=k.now, lease_id=lease.lease_id, provider_id="p1", reason="invalid_params"
    )
    k.run("task", t0, failed, react=False)  # terminal: the job fails
    fail_job = k.queue.popleft()
    k.run(fail_job.kind, fail_job.aggregate_id, fail_job.command, react=False)
    assert k.world.jobs[JOB].status == "failed"
    # Before the reaction cancels it, the other task's completion lands: every task has ended and the
    # job is settled (nothing metered yet), but that completion is still to be metered and charged.
    k.now += timedelta(seconds=5)  # (billed by the time it held its lease)
    report_completed(k, t1, react=False)
    assert k.world.tasks[t1].status == "completed"
    assert JOB in k.world.jobs and {t0, t1} <= k.world.tasks.keys()
    owed = list(k.queue)
    k.queue.clear()
    assert [type(i.command).__name__ for i in owed] == ["CancelTask", "MeterUsage"]
    for intent in owed:  # the cancellation (refused: it completed), then the metering
        k.run(intent.kind, intent.aggregate_id, intent.command, react=False)
    assert k.world.jobs[JOB].done == {t1} and JOB in k.world.jobs  # metered, not yet charged and credited
    k.drain()  # the settlement
    kinds = [e.type for e in k.log if e.subject == f"job.{JOB}"]
    assert {UsageMetered.__name__, SubmitterCharged.__name__, ProviderCredited.__name__} <= set(kinds), kinds
    assert JOB not in k.world.jobs and t0 not in k.world.tasks and t1 not in k.world.tasks
    assert (k.world.retired_jobs, k.world.retired_tasks) == (1, 2)
    assert k.core.reconcile(k.now) == []


def test_a_late_report_for_a_retired_task_leaves_nothing_behind(k: Kernel) -> None:
    t0, t1 = run_a_job(k)
    lease = k.world.tasks[t1].lease
    assert lease is not None
    report_completed(k, t0, react=True)
    report_completed(k, t1, react=True)
    assert JOB not in k.world.jobs and not k.world.tasks
    late = ReportCompleted(
        command_id=k.cid(), at=k.now, lease_id=lease.lease_id, provider_id="p1", result=RESULT, gpu_ms=5
    )
    k.run("task", t1, late)  # refused by the task's own stream (the shell), whatever it records
    assert JOB not in k.world.jobs and not k.world.tasks and not k.world.tasks_by_job
    # Its events delivered again (a follower's overlap, a replay) bring nothing back, and owe nothing.
    for env in [e for e in k.log if e.subject in (f"task.{t1}", f"job.{JOB}")][-3:]:
        assert k.core.apply(env, live=True).intents == []
    assert JOB not in k.world.jobs and not k.world.tasks and not k.world.tasks_by_job
    # Replayed from the whole log, a core that keeps every job sees it completed and settled.
    full = Core()
    for env in k.log:
        full.apply(env, live=False)
    assert full.world.jobs[JOB].status == "completed" and full.world.tasks[t1].status == "completed"


def test_a_rejected_job_leaves_memory_at_once(k: Kernel) -> None:
    spec = JobSpec(workload="no-such-workload", split=CountSplit(count=1))
    k.run("job", "bob.j1", SubmitJob(command_id=k.cid(), at=k.now, job_id="bob.j1", spec=spec, submitter="bob"))
    assert [e.type for e in k.log if e.subject == "job.bob.j1"][-1] == "JobRejected"
    assert "bob.j1" not in k.world.jobs and k.world.jobs_rejected == {"bob": 1}
