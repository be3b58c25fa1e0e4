"""The jobs view: jobs and tasks, status, progress, attempts, results and cost so far."""

from __future__ import annotations

import json

from projections.jobs import JobsView
from tests.golden.loggen import Sim, golden_scenario


def two_providers() -> Sim:
    s = Sim(seed=1)
    s.register("a", price=1000)
    s.register("b", price=500)
    return s


def test_submission_acceptance_and_task_creation() -> None:
    s = two_providers()
    s.submit("j1", count=3, submitter="zoe")
    v = JobsView()
    v.fold(s.events)
    job = v.jobs["j1"]
    assert (job.status, job.task_count, job.submitter, job.workload) == ("accepted", 3, "zoe", "sleep")
    assert job.predicted_s > 0
    assert sorted(v.tasks) == ["j1-0", "j1-1", "j1-2"]
    assert {t.state for t in v.tasks.values()} == {"queued"}
    assert v.tasks["j1-2"].idx == 2


def test_rejected_job_names_the_field() -> None:
    s = two_providers()
    s.submit("bad", "matmul", {"n": -1})
    v = JobsView()
    v.fold(s.events)
    job = v.jobs["bad"]
    assert job.status == "rejected"
    assert job.reason_field == "params.n"
    assert job.finished_at is not None
    assert "bad-0" not in v.tasks


def test_lease_start_progress_and_completion_with_result_and_cost() -> None:
    s = two_providers()
    s.submit("j1", count=2)
    s.lease("j1-0", "a")
    s.tick(1)
    s.start("j1-0")
    v = JobsView()
    v.fold(s.events)
    assert v.jobs["j1"].status == "running"
    assert v.jobs["j1"].tasks_active == 1
    n = len(s.events)
    s.tick(1)
    s.progress("j1-0", 0.5)
    v.fold(s.events[n:])
    assert v.tasks["j1-0"].progress == 0.5
    assert v.jobs["j1"].progress == 0.25
    n = len(s.events)
    s.tick(2)
    s.complete("j1-0")
    v.fold(s.events[n:])
    task, job = v.tasks["j1-0"], v.jobs["j1"]
    assert task.state == "completed" and task.provider_id == "a"
    assert task.runtime_s == 3.0
    assert task.result is not None and json.loads(task.result)["sha256"] == task.result_sha256
    assert (job.tasks_completed, job.tasks_active, job.progress) == (1, 0, 0.5)
    assert job.cost_micros == -(-task.gpu_ms * 1000 // 1000) > 0
    assert job.status == "running"  # one task to go


def test_retry_then_success_counts_attempts_and_retries() -> None:
    s = two_providers()
    s.submit("j1", count=1, max_attempts=3)
    s.lease("j1-0", "a")
    s.start("j1-0")
    s.fail("j1-0", "worker_crashed")
    v = JobsView()
    v.fold(s.events)
    assert v.tasks["j1-0"].state == "retrying"
    assert v.tasks["j1-0"].not_before is not None
    n = len(s.events)
    s.tick(2)
    s.requeue("j1-0")
    s.lease("j1-0", "b")
    s.start("j1-0")
    s.complete("j1-0")
    v.fold(s.events[n:])
    task, job = v.tasks["j1-0"], v.jobs["j1"]
    assert (task.state, task.attempts, task.failures, task.provider_id) == ("completed", 2, 1, "b")
    assert (job.status, job.attempts, job.retries, job.progress) == ("completed", 2, 1, 1.0)
    assert job.charged_micros == job.cost_micros > 0


def test_lost_provider_requeues_and_terminal_failure_fails_the_job() -> None:
    s = two_providers()
    s.submit("j1", count=2, max_attempts=1)
    s.lease("j1-0", "a")
    s.lease("j1-1", "b")
    s.start("j1-0")
    s.lose("b")
    v = JobsView()
    v.fold(s.events)
    assert v.tasks["j1-1"].state == "queued"
    assert v.tasks["j1-1"].lost_leases == 1 and v.jobs["j1"].lost_leases == 1
    n = len(s.events)
    s.fail("j1-0", "kernel_error")  # max_attempts=1: dead, the job fails, j1-1 is cancelled
    v.fold(s.events[n:])
    job = v.jobs["j1"]
    assert (job.status, job.failed_task, job.tasks_dead, job.tasks_cancelled) == ("failed", "j1-0", 1, 1)
    assert v.tasks["j1-0"].state == "dead" and v.tasks["j1-1"].state == "cancelled"
    assert job.tasks_active == 0


def test_refused_report_changes_nothing_but_its_count() -> None:
    s = two_providers()
    s.submit("j1", count=1)
    s.lease("j1-0", "a")
    s.start("j1-0")
    v = JobsView()
    v.fold(s.events)
    before = (v.tasks["j1-0"].state, v.tasks["j1-0"].provider_id, v.tasks["j1-0"].progress)
    n = len(s.events)
    s.refuse("j1-0", "b")
    v.fold(s.events[n:])
    assert (v.tasks["j1-0"].state, v.tasks["j1-0"].provider_id, v.tasks["j1-0"].progress) == before
    assert v.tasks["j1-0"].rejected_reports == 1


def test_cancel_and_deadline() -> None:
    s = two_providers()
    s.submit("j1", count=2)
    s.submit("j2", count=1, deadline_s=10.0, on_deadline="fail")
    s.lease("j1-0", "a")
    s.cancel("j1")
    s.tick(20)
    s.miss_deadline("j2")
    v = JobsView()
    v.fold(s.events)
    assert v.jobs["j1"].status == "cancelled" and v.jobs["j1"].tasks_cancelled == 2
    assert v.jobs["j2"].status == "failed" and v.jobs["j2"].deadline_missed == 1
    assert v.jobs["j2"].reason == "deadline missed"


def test_golden_story_every_job_ends_as_told() -> None:
    v = JobsView()
    v.fold(golden_scenario().events)
    status = {j: row.status for j, row in v.jobs.items()}
    assert status == {
        "j1": "completed",
        "j2": "completed",
        "j3": "cancelled",
        "j4": "rejected",
        "j5": "failed",
        "j6": "failed",
    }
    assert all(t.state in ("completed", "dead", "cancelled") for t in v.tasks.values())
