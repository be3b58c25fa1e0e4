"""The jobs view: every job and every task, with status, progress, attempts, results and cost so far.

Jobs and tasks are one fold because a job's progress, attempts and running count are sums over its
tasks; folding them together keeps one row per task instead of two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from events.envelope import Envelope
from events.estimates import run_start
from events.intake import InputRejected
from events.job import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadlineMissed,
    JobFailed,
    JobRejected,
    JobSubmitted,
    SubmitterCharged,
    UsageMetered,
)
from events.subjects import submitted_job
from events.task import (
    TERMINAL_TASK_STATES,
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
from projections.storage import Table
from projections.view import View, iso, parse_iso

__all__ = [
    "ACTIVE_TASK_STATES",
    "JOBS",
    "JOB_STATUSES",
    "TASKS",
    "TASK_STATES",
    "TERMINAL_TASK_STATES",
    "JobRow",
    "JobsView",
    "TaskRow",
]

#: submitted -> accepted | rejected; accepted -> running (first task started) -> completed | failed |
#: cancelled (an accepted job can also fail or be cancelled before it runs).
JOB_STATUSES = ("submitted", "rejected", "accepted", "running", "completed", "failed", "cancelled")
#: queued -> leased -> running -> completed; a failure retries (retrying -> queued) or kills (dead).
#: Under verification a returned result leaves the task ``verifying`` until another provider's
#: replica is leased (then leased -> running again) or the verdict completes it.
TASK_STATES = ("queued", "leased", "running", "retrying", "verifying", "completed", "dead", "cancelled")
ACTIVE_TASK_STATES = frozenset({"leased", "running"})


@dataclass(slots=True)
class JobRow:
    """One job as a submitter sees it."""

    job_id: str
    submitter: str = ""
    workload: str = ""
    priority: int = 5
    status: str = "submitted"
    #: Why it was rejected, failed or cancelled; ``reason_field`` names the rejected field.
    reason: str = ""
    reason_field: str | None = None
    failed_task: str | None = None
    task_count: int = 0
    tasks_completed: int = 0
    tasks_dead: int = 0
    tasks_cancelled: int = 0
    #: Tasks leased or running now.
    tasks_active: int = 0
    #: Mean task fraction done (a completed task counts 1).
    progress: float = 0.0
    #: Leases granted over all tasks; retries after failures; leases lost to expiry or lost providers.
    attempts: int = 0
    retries: int = 0
    lost_leases: int = 0
    #: The orchestrator's prediction of the job's duration when it accepted it, seconds.
    predicted_s: float = 0.0
    submitted_at: str = ""
    accepted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    deadline: str | None = None
    on_deadline: str = "cancel"
    deadline_missed: int = 0
    #: Metered so far (UsageMetered), and what the submitter was finally charged.
    gpu_ms: int = 0
    cost_micros: int = 0
    charged_micros: int = 0
    #: The verification policy its tasks run under (``none``, ``auto``, ``spot``, ``replicate``), and
    #: the results verification found invalid (never delivered, never paid).
    verify: str = "none"
    invalid_results: int = 0
    updated_at: str = ""
    #: Global position of the last event that changed this row.
    position: int = 0

    def why(self) -> str:
        """The reason, led by the field it names (``priority: Input should be ...``), the field once
        even when the reason already begins with it (intake refusals do); empty without a reason."""
        if not self.reason:
            return ""
        if self.reason_field and not self.reason.startswith(f"{self.reason_field}:"):
            return f"{self.reason_field}: {self.reason}"
        return self.reason


@dataclass(slots=True)
class TaskRow:
    """One task: its state, its current lease, attempts, progress, timings and result."""

    task_id: str
    job_id: str = ""
    idx: int = 0
    submitter: str = ""
    workload: str = ""
    state: str = "queued"
    #: The attempt number of the current (or last) lease; leases granted; failures; leases lost.
    attempt: int = 0
    attempts: int = 0
    failures: int = 0
    lost_leases: int = 0
    rejected_reports: int = 0
    provider_id: str | None = None
    lease_id: str | None = None
    lease_expires_at: str | None = None
    predicted_s: float = 0.0
    price_micros: int = 0
    progress: float = 0.0
    rate: float = 0.0
    unit: str = ""
    checkpoint_step: int = 0
    message: str = ""
    created_at: str = ""
    queued_at: str = ""
    leased_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    not_before: str | None = None
    #: Seconds from ``TaskStarted`` to ``TaskCompleted`` of the successful attempt.
    runtime_s: float | None = None
    gpu_ms: int = 0
    result_sha256: str | None = None
    #: The ``ResultRef`` as canonical JSON: inline value or object-store reference, and digest.
    result: str | None = None
    reason: str = ""
    #: Results returned for verification, and how many agreed with the one delivered (0: unverified).
    replicas: int = 0
    verified_by: int = 0
    updated_at: str = ""
    position: int = 0


JOBS = Table.of("jobs", JobRow, key=("job_id",), indexes=(("status",), ("submitter",)))
TASKS = Table.of("tasks", TaskRow, key=("task_id",), indexes=(("job_id",), ("state",)))


class JobsView(View):
    """Folds job and task events into the ``jobs`` and ``tasks`` tables."""

    name: ClassVar[str] = "jobs"
    #: 3: a submission refused at intake is a ``rejected`` job with its reason and field.
    version: ClassVar[int] = 3
    tables: ClassVar[tuple[Table[object], ...]] = (JOBS, TASKS)  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, JobRow] = self.data[JOBS.name]
        self.tasks: dict[str, TaskRow] = self.data[TASKS.name]
        self._dirty_jobs = self.dirty[JOBS.name]
        self._dirty_tasks = self.dirty[TASKS.name]

    # ---- helpers -------------------------------------------------------------------------------

    def _job(self, job_id: str, env: Envelope) -> JobRow | None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.updated_at = iso(env.time)
            job.position = env.sequence
            self._dirty_jobs.add(job_id)
        return job

    def _task(self, task_id: str, env: Envelope) -> TaskRow | None:
        task = self.tasks.get(task_id)
        if task is not None:
            task.updated_at = iso(env.time)
            task.position = env.sequence
            self._dirty_tasks.add(task_id)
        return task

    def _move(self, task: TaskRow, state: str, env: Envelope) -> JobRow | None:
        """Change a task's state and keep its job's counters in step."""
        old = task.state
        task.state = state
        job = self._job(task.job_id, env)
        if job is None or old == state:
            return job
        if old in ACTIVE_TASK_STATES:
            job.tasks_active -= 1
        if state in ACTIVE_TASK_STATES:
            job.tasks_active += 1
        if state == "completed":
            job.tasks_completed += 1
        elif state == "dead":
            job.tasks_dead += 1
        elif state == "cancelled":
            job.tasks_cancelled += 1
        return job

    def _progress(self, task: TaskRow, job: JobRow | None, fraction: float) -> None:
        if job is not None and job.task_count > 0 and fraction != task.progress:
            job.progress = min(1.0, max(0.0, job.progress + (fraction - task.progress) / job.task_count))
        task.progress = fraction

    # ---- job events ----------------------------------------------------------------------------

    def on_JobSubmitted(self, e: JobSubmitted, env: Envelope) -> None:
        spec = e.spec
        self.jobs[e.job_id] = JobRow(
            job_id=e.job_id,
            submitter=spec.submitter,
            workload=spec.workload,
            priority=spec.priority,
            submitted_at=iso(e.at),
            deadline=iso(spec.deadline) if spec.deadline is not None else None,
            on_deadline=spec.on_deadline,
            updated_at=iso(e.at),
            position=env.sequence,
        )
        self._dirty_jobs.add(e.job_id)

    def on_JobAccepted(self, e: JobAccepted, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.status = "accepted"
            job.task_count = e.task_count
            job.predicted_s = e.predicted_s
            job.accepted_at = iso(e.at)
            job.verify = e.verify.mode if e.verify is not None else "none"

    def on_JobRejected(self, e: JobRejected, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.status = "rejected"
            job.reason = e.reason
            job.reason_field = e.field
            job.finished_at = iso(e.at)

    def on_InputRejected(self, e: InputRejected, env: Envelope) -> None:
        """A submission refused at intake (a bad field, say) never became a job; it shows as one that
        was rejected, with the reason and field, so its submitter sees why instead of "unknown job".
        A job that exists keeps its row (a refused resubmission of it changes nothing); the latest
        refusal of a submission that never became a job replaces the one before."""
        job_id = submitted_job(e.subject)
        if job_id is None:
            return
        job = self.jobs.get(job_id)
        if job is not None and not (job.status == "rejected" and not job.workload):
            return
        at = iso(e.at)
        self.jobs[job_id] = JobRow(
            job_id=job_id,
            submitter=job_id.partition(".")[0],
            status="rejected",
            reason=e.reason,
            reason_field=e.field,
            submitted_at=at,
            finished_at=at,
            updated_at=at,
            position=env.sequence,
        )
        self._dirty_jobs.add(job_id)

    def on_UsageMetered(self, e: UsageMetered, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.gpu_ms += e.gpu_ms
            job.cost_micros += e.amount_micros

    def on_JobCompleted(self, e: JobCompleted, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.status = "completed"
            job.progress = 1.0
            job.finished_at = iso(e.at)

    def on_JobFailed(self, e: JobFailed, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.status = "failed"
            job.reason = e.reason
            job.failed_task = e.task_id
            job.finished_at = iso(e.at)

    def on_JobCancelled(self, e: JobCancelled, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.status = "cancelled"
            job.reason = e.reason
            job.finished_at = iso(e.at)

    def on_JobDeadlineMissed(self, e: JobDeadlineMissed, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.deadline_missed = 1

    def on_SubmitterCharged(self, e: SubmitterCharged, env: Envelope) -> None:
        job = self._job(e.job_id, env)
        if job is not None:
            job.charged_micros += e.amount_micros

    # ---- task events ---------------------------------------------------------------------------

    def on_TaskCreated(self, e: TaskCreated, env: Envelope) -> None:
        at = iso(e.at)
        self.tasks[e.task_id] = TaskRow(
            task_id=e.task_id,
            job_id=e.job_id,
            idx=e.index,
            submitter=e.submitter,
            workload=e.workload,
            created_at=at,
            queued_at=at,
            updated_at=at,
            position=env.sequence,
        )
        self._dirty_tasks.add(e.task_id)

    def on_TaskLeased(self, e: TaskLeased, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None:
            return
        task.attempt = e.attempt
        task.attempts += 1
        task.provider_id = e.provider_id
        task.lease_id = e.lease_id
        task.lease_expires_at = iso(e.expires_at)
        task.predicted_s = e.predicted_s
        task.price_micros = e.price_micros
        task.leased_at = iso(e.at)
        task.started_at = None
        task.not_before = None
        job = self._move(task, "leased", env)
        if job is not None:
            job.attempts += 1

    def on_TaskStarted(self, e: TaskStarted, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None:
            return
        task.started_at = iso(e.at)
        task.lease_expires_at = iso(e.expires_at)
        job = self._move(task, "running", env)
        if job is not None and job.started_at is None:
            job.started_at = iso(e.at)
            if job.status == "accepted":
                job.status = "running"

    def on_TaskProgressed(self, e: TaskProgressed, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None:
            return
        self._progress(task, self._job(task.job_id, env), e.fraction)
        task.rate = e.rate
        task.unit = e.unit
        task.message = e.message
        if e.checkpoint is not None:
            task.checkpoint_step = e.checkpoint_step

    def on_TaskCompleted(self, e: TaskCompleted, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None or task.state in TERMINAL_TASK_STATES:
            return
        job = self._move(task, "completed", env)
        self._progress(task, job, 1.0)
        task.provider_id = e.provider_id
        task.finished_at = iso(e.at)
        task.gpu_ms = e.gpu_ms
        task.result_sha256 = e.result.sha256
        task.result = e.result.model_dump_json()
        task.verified_by = e.verified_by
        began = run_start(task.leased_at, task.started_at)  # a short task's completion implies its start
        if began is not None:
            task.runtime_s = (e.at - parse_iso(began)).total_seconds()
        if job is not None and job.started_at is None:
            job.started_at = began

    def on_TaskFailed(self, e: TaskFailed, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None or task.state in TERMINAL_TASK_STATES:
            return
        task.failures += 1
        task.reason = f"{e.reason}: {e.message}" if e.message else e.reason
        if e.terminal:
            task.finished_at = iso(e.at)
            self._move(task, "dead", env)
        else:
            self._move(task, "retrying", env)

    def on_TaskRetried(self, e: TaskRetried, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None:
            return
        task.not_before = iso(e.not_before)
        job = self._job(task.job_id, env)
        if job is not None:
            job.retries += 1

    def on_TaskQueued(self, e: TaskQueued, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None or task.state in TERMINAL_TASK_STATES:
            return
        task.queued_at = iso(e.at)
        self._move(task, "queued", env)

    def on_TaskLeaseExpired(self, e: TaskLeaseExpired, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None or task.state in TERMINAL_TASK_STATES:
            return
        task.lost_leases += 1
        task.queued_at = iso(e.at)
        task.reason = f"lease {e.reason}"
        job = self._move(task, "queued", env)
        if job is not None:
            job.lost_leases += 1

    def on_TaskCancelled(self, e: TaskCancelled, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None or task.state in TERMINAL_TASK_STATES:
            return
        task.reason = e.reason
        task.finished_at = iso(e.at)
        self._move(task, "cancelled", env)

    def on_TaskResultReturned(self, e: TaskResultReturned, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None or task.state in TERMINAL_TASK_STATES:
            return
        task.replicas += 1
        task.queued_at = iso(e.at)
        self._move(task, "verifying", env)

    def on_TaskResultJudged(self, e: TaskResultJudged, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is None or e.verdict != "invalid":
            return
        job = self._job(task.job_id, env)
        if job is not None:
            job.invalid_results += 1

    def on_TaskResultRejected(self, e: TaskResultRejected, env: Envelope) -> None:
        task = self._task(e.task_id, env)
        if task is not None:
            task.rejected_reports += 1
