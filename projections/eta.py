"""The ETA view: predicted durations of tasks and jobs, and each prediction recorded against reality.

A task's prediction comes from the workload's own estimate, the provider's calibration and the
history of similar tasks (``events.estimates.RuntimeModel``, the model the scheduler uses):

- queued: the model's prediction for the workload, with no provider yet;
- leased: the lease's ``predicted_s`` (the scheduler's), else the model's for that provider;
- running: after 5% progress, the rate so far extrapolated (elapsed * (1 - f) / f), else the
  prediction minus the elapsed time.

A job's remaining time is the remaining work of its unfinished tasks divided by how many run now;
before any task is leased it is the orchestrator's own ``JobAccepted.predicted_s``.

When a task completes, its actual duration (``TaskStarted`` to ``TaskCompleted``) is recorded
beside the lease's prediction, and the model learns from it. ``eta_error`` summarises the recorded
pairs as the median and 90th percentile of ``|predicted - actual| / actual``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from events.envelope import Envelope
from events.estimates import RuntimeModel
from events.job import JobAccepted, JobCancelled, JobCompleted, JobFailed
from events.provider import ProviderCalibrated
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskProgressed,
    TaskQueued,
    TaskResultReturned,
    TaskStarted,
)
from events.types import Calibration, Estimate
from projections.storage import Table
from projections.view import View

__all__ = [
    "ETA_CALIBRATIONS",
    "ETA_JOBS",
    "ETA_TASKS",
    "MIN_FRACTION_FOR_RATE",
    "EtaCalibrationRow",
    "EtaError",
    "EtaJobRow",
    "EtaTaskRow",
    "EtaView",
    "eta_error",
]

#: Below this fraction done, progress is too thin to extrapolate a rate from.
MIN_FRACTION_FOR_RATE = 0.05


@dataclass(slots=True)
class EtaTaskRow:
    """One task's prediction and, once it completed, its actual duration. Times are epoch seconds."""

    task_id: str
    job_id: str = ""
    workload: str = ""
    #: The workload's estimate as canonical JSON.
    estimate: str = "{}"
    state: str = "queued"
    provider_id: str | None = None
    #: Position of the provider calibration used for this attempt (0: none).
    calibration_pos: int = 0
    lease_predicted_s: float = 0.0
    model_predicted_s: float = 0.0
    #: The prediction measured against reality: the lease's, else the model's.
    predicted_s: float = 0.0
    started_ts: float | None = None
    finished_ts: float | None = None
    actual_s: float | None = None
    abs_rel_error: float | None = None
    remaining_s: float = 0.0
    eta_ts: float | None = None
    #: Global position of the completion; orders the model's observations after a restart.
    completed_pos: int = 0


@dataclass(slots=True)
class EtaJobRow:
    """One job's ETA, and once finished its actual duration against the orchestrator's prediction."""

    job_id: str
    status: str = "accepted"
    task_count: int = 0
    predicted_s: float = 0.0
    accepted_ts: float = 0.0
    unfinished: int = 0
    active: int = 0
    leased_any: int = 0
    remaining_work_s: float = 0.0
    eta_s: float = 0.0
    eta_ts: float | None = None
    as_of_ts: float = 0.0
    finished_ts: float | None = None
    actual_s: float | None = None
    abs_rel_error: float | None = None


@dataclass(slots=True)
class EtaCalibrationRow:
    """A provider calibration, kept by the position of its event so old predictions stay replayable."""

    position: int
    provider_id: str = ""
    calibration: str = "{}"


ETA_TASKS = Table.of("eta_tasks", EtaTaskRow, key=("task_id",), indexes=(("job_id",),))
ETA_JOBS = Table.of("eta_jobs", EtaJobRow, key=("job_id",))
ETA_CALIBRATIONS = Table.of("eta_calibrations", EtaCalibrationRow, key=("position",))


@dataclass(frozen=True, slots=True)
class EtaError:
    """Relative error |predicted - actual| / actual over ``n`` finished tasks."""

    n: int
    median: float
    p90: float
    mean: float

    def __str__(self) -> str:
        if self.n == 0:
            return "no finished tasks with a prediction"
        return f"n={self.n} median={self.median:.1%} p90={self.p90:.1%} mean={self.mean:.1%}"


def _quantile(sorted_values: list[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), without numpy.
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def eta_error(pairs: Iterable[tuple[float, float]]) -> EtaError:
    """Median, p90 and mean of |predicted - actual| / actual over (predicted, actual) pairs.

    Pairs without a prediction (0) or with a zero actual duration are left out.
    """
    errors = sorted(abs(p - a) / a for p, a in pairs if p > 0.0 and a > 0.0)
    if not errors:
        return EtaError(0, math.nan, math.nan, math.nan)
    return EtaError(len(errors), _quantile(errors, 0.5), _quantile(errors, 0.9), sum(errors) / len(errors))


class EtaView(View):
    """Folds task, job and calibration events into predictions and recorded errors."""

    name: ClassVar[str] = "eta"
    version: ClassVar[int] = 2
    tables: ClassVar[tuple[Table[object], ...]] = (ETA_TASKS, ETA_JOBS, ETA_CALIBRATIONS)  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[str, EtaTaskRow] = self.data[ETA_TASKS.name]
        self.jobs: dict[str, EtaJobRow] = self.data[ETA_JOBS.name]
        self.calibrations: dict[int, EtaCalibrationRow] = self.data[ETA_CALIBRATIONS.name]
        self._dirty_tasks = self.dirty[ETA_TASKS.name]
        self._dirty_jobs = self.dirty[ETA_JOBS.name]
        self.model = RuntimeModel()
        # Caches derived from rows: parsed estimates and calibrations, each provider's latest one.
        self._estimates: dict[str, Estimate] = {}
        self._cals: dict[int, Calibration] = {}
        self._latest_cal: dict[str, int] = {}

    def loaded(self) -> None:
        """Rebuild the runtime model by observing the completed tasks again, in log order."""
        self.model = RuntimeModel()
        self._estimates.clear()
        self._cals.clear()
        self._latest_cal.clear()
        for pos in sorted(self.calibrations):
            self._latest_cal[self.calibrations[pos].provider_id] = pos
        done = sorted((t for t in self.tasks.values() if t.completed_pos), key=lambda t: t.completed_pos)
        for t in done:
            self._observe(t)

    # ---- helpers -------------------------------------------------------------------------------

    def _estimate(self, text: str) -> Estimate:
        est = self._estimates.get(text)
        if est is None:
            est = self._estimates[text] = Estimate.model_validate_json(text)
        return est

    def _calibration(self, pos: int) -> Calibration | None:
        if pos == 0:
            return None
        cal = self._cals.get(pos)
        if cal is None:
            row = self.calibrations.get(pos)
            if row is None:
                return None
            cal = self._cals[pos] = Calibration.model_validate_json(row.calibration)
        return cal

    def _observe(self, t: EtaTaskRow) -> None:
        if t.actual_s is not None and t.provider_id is not None:
            self.model.observe(
                t.workload,
                self._estimate(t.estimate),
                self._calibration(t.calibration_pos),
                t.provider_id,
                t.actual_s,
            )

    def _queued_prediction(self, t: EtaTaskRow) -> float:
        return self.model.predict(t.workload, self._estimate(t.estimate), None, None)

    def _job_eta(self, job: EtaJobRow, now: float) -> None:
        job.as_of_ts = now
        if job.finished_ts is not None:
            return
        if not job.leased_any and job.predicted_s > 0.0:
            job.eta_s = max(0.0, job.accepted_ts + job.predicted_s - now)
        else:
            job.eta_s = max(0.0, job.remaining_work_s) / max(1, job.active)
        job.eta_ts = now + job.eta_s

    def _update(self, t: EtaTaskRow, state: str, remaining: float, env: Envelope) -> None:
        """Set a task's state and remaining time; keep its job's sums and ETA in step."""
        now = env.time.timestamp()
        self._dirty_tasks.add(t.task_id)
        job = self.jobs.get(t.job_id)
        if job is not None:
            old_active = t.state in ("leased", "running")
            new_active = state in ("leased", "running")
            job.active += int(new_active) - int(old_active)
            if state == "done" and t.state != "done":
                job.unfinished -= 1
            if new_active:
                job.leased_any = 1
            job.remaining_work_s += remaining - t.remaining_s
            if job.unfinished <= 0:
                job.remaining_work_s = 0.0
            self._job_eta(job, now)
            self._dirty_jobs.add(job.job_id)
        t.state = state
        t.remaining_s = remaining
        t.eta_ts = now + remaining if state != "done" else None

    # ---- events --------------------------------------------------------------------------------

    def on_ProviderCalibrated(self, e: ProviderCalibrated, env: Envelope) -> None:
        self.calibrations[env.sequence] = EtaCalibrationRow(
            env.sequence, e.provider_id, e.calibration.model_dump_json()
        )
        self.dirty[ETA_CALIBRATIONS.name].add(env.sequence)
        self._cals[env.sequence] = e.calibration
        self._latest_cal[e.provider_id] = env.sequence

    def on_JobAccepted(self, e: JobAccepted, env: Envelope) -> None:
        job = self.jobs.get(e.job_id) or EtaJobRow(e.job_id)
        job.task_count = e.task_count
        job.predicted_s = e.predicted_s
        job.accepted_ts = e.at.timestamp()
        self.jobs[e.job_id] = job
        self._dirty_jobs.add(e.job_id)
        self._job_eta(job, job.accepted_ts)

    def _finish_job(self, job_id: str, status: str, env: Envelope) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.finished_ts is not None:
            return
        now = env.time.timestamp()
        job.status = status
        job.finished_ts = now
        job.eta_s = 0.0
        job.eta_ts = now
        job.as_of_ts = now
        job.actual_s = now - job.accepted_ts
        if status == "completed" and job.predicted_s > 0.0 and job.actual_s > 0.0:
            job.abs_rel_error = abs(job.predicted_s - job.actual_s) / job.actual_s
        self._dirty_jobs.add(job_id)

    def on_JobCompleted(self, e: JobCompleted, env: Envelope) -> None:
        self._finish_job(e.job_id, "completed", env)

    def on_JobFailed(self, e: JobFailed, env: Envelope) -> None:
        self._finish_job(e.job_id, "failed", env)

    def on_JobCancelled(self, e: JobCancelled, env: Envelope) -> None:
        self._finish_job(e.job_id, "cancelled", env)

    def on_TaskCreated(self, e: TaskCreated, env: Envelope) -> None:
        t = EtaTaskRow(e.task_id, e.job_id, e.workload, e.estimate.model_dump_json())
        self._estimates.setdefault(t.estimate, e.estimate)
        self.tasks[e.task_id] = t
        job = self.jobs.get(e.job_id)
        if job is None:
            job = self.jobs[e.job_id] = EtaJobRow(e.job_id, accepted_ts=e.at.timestamp())
        job.unfinished += 1
        self._update(t, "queued", self._queued_prediction(t), env)

    def on_TaskLeased(self, e: TaskLeased, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        t.provider_id = e.provider_id
        t.calibration_pos = self._latest_cal.get(e.provider_id, 0)
        t.lease_predicted_s = e.predicted_s
        t.model_predicted_s = self.model.predict(
            t.workload, self._estimate(t.estimate), self._calibration(t.calibration_pos), e.provider_id
        )
        t.predicted_s = e.predicted_s if e.predicted_s > 0.0 else t.model_predicted_s
        t.started_ts = None
        self._update(t, "leased", t.predicted_s, env)

    def on_TaskStarted(self, e: TaskStarted, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        t.started_ts = e.at.timestamp()
        self._update(t, "running", t.predicted_s, env)

    def on_TaskProgressed(self, e: TaskProgressed, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state != "running" or t.started_ts is None:
            return
        elapsed = e.at.timestamp() - t.started_ts
        f = e.fraction
        if f >= MIN_FRACTION_FOR_RATE and elapsed > 0.0:
            remaining = elapsed * (1.0 - f) / f
        else:
            remaining = max(t.predicted_s - elapsed, 0.0)
        self._update(t, "running", remaining, env)

    def on_TaskCompleted(self, e: TaskCompleted, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        t.finished_ts = e.at.timestamp()
        if t.started_ts is not None:
            t.actual_s = t.finished_ts - t.started_ts
            if t.actual_s > 0.0 and t.predicted_s > 0.0:
                t.abs_rel_error = abs(t.predicted_s - t.actual_s) / t.actual_s
            t.completed_pos = env.sequence
            self._observe(t)
        self._update(t, "done", 0.0, env)

    def _requeue(self, task_id: str, env: Envelope) -> None:
        t = self.tasks.get(task_id)
        if t is None or t.state == "done":
            return
        t.started_ts = None
        self._update(t, "queued", self._queued_prediction(t), env)

    def on_TaskFailed(self, e: TaskFailed, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        if e.terminal:
            t.finished_ts = e.at.timestamp()
            self._update(t, "done", 0.0, env)
        else:
            self._requeue(e.task_id, env)

    def on_TaskLeaseExpired(self, e: TaskLeaseExpired, env: Envelope) -> None:
        self._requeue(e.task_id, env)

    def on_TaskResultReturned(self, e: TaskResultReturned, env: Envelope) -> None:
        # A result held for verification: the task waits for its next replica, as if queued again. Its
        # run's start is kept: when this result settles the verification, the completion that follows
        # at once measures this run (the next lease, if any, clears it).
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        self._update(t, "queued", self._queued_prediction(t), env)

    def on_TaskQueued(self, e: TaskQueued, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is not None and t.state == "queued":
            self._update(t, "queued", t.remaining_s, env)

    def on_TaskCancelled(self, e: TaskCancelled, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        t.finished_ts = e.at.timestamp()
        self._update(t, "done", 0.0, env)
