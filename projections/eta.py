"""The ETA view: predicted durations of tasks and jobs, and each prediction recorded against reality.

A task's prediction comes from the workload's own estimate, the provider's calibration and the
history of similar tasks (``events.estimates.RuntimeModel``, the model the scheduler uses):

- queued: the model's prediction for the workload, with no provider yet;
- leased: the lease's ``predicted_s`` (the scheduler's), else the model's for that provider;
- running: after 5% progress, the rate so far extrapolated (elapsed * (1 - f) / f), else the
  prediction minus the elapsed time.

Every prediction has an interval (p10 to p90): the lease's recorded one, else the model's. A running
task's interval narrows with its progress: the remaining time times the prediction's low/point and
high/point ratios, pulled towards 1 by the fraction done.

A job's remaining time is the remaining work of its unfinished tasks divided by how many run now
(likewise its low and high ends); before any task is leased it is the orchestrator's own
``JobAccepted.predicted_s`` and interval, which count the queue ahead of the job.

The view also answers, for the quote service (``projections.quote``), what the queue holds now
(``queue``) and when each busy provider's slots should free up (``busy``).

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
from events.estimates import RuntimeModel, device_class, handoff_sample, run_start
from events.job import JobAccepted, JobCancelled, JobCompleted, JobFailed, JobRejected, JobSubmitted
from events.provider import ProviderCalibrated, ProviderRegistered
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
    "ETA_PROVIDERS",
    "ETA_TASKS",
    "MIN_FRACTION_FOR_RATE",
    "EtaCalibrationRow",
    "EtaError",
    "EtaJobRow",
    "EtaProviderRow",
    "EtaTaskRow",
    "EtaView",
    "eta_error",
    "progress_remaining",
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
    #: Its interval (p10 to p90): the lease's, else the model's.
    predicted_low_s: float = 0.0
    predicted_high_s: float = 0.0
    started_ts: float | None = None
    finished_ts: float | None = None
    actual_s: float | None = None
    abs_rel_error: float | None = None
    remaining_s: float = 0.0
    remaining_low_s: float = 0.0
    remaining_high_s: float = 0.0
    eta_ts: float | None = None
    #: Global position of the completion; orders the model's observations after a restart.
    completed_pos: int = 0
    #: The device class of the provider that completed it, as it was then (the model learns by class).
    device_class: str = ""
    #: When its current lease was made (epoch seconds).
    leased_ts: float = 0.0
    #: Its job's priority and submitter: the queue's order (``queue``).
    priority: int = 5
    submitter: str = ""


@dataclass(slots=True)
class EtaJobRow:
    """One job's ETA, and once finished its actual duration against the orchestrator's prediction."""

    job_id: str
    status: str = "accepted"
    task_count: int = 0
    predicted_s: float = 0.0
    predicted_low_s: float = 0.0
    predicted_high_s: float = 0.0
    accepted_ts: float = 0.0
    unfinished: int = 0
    active: int = 0
    leased_any: int = 0
    remaining_work_s: float = 0.0
    remaining_low_s: float = 0.0
    remaining_high_s: float = 0.0
    eta_s: float = 0.0
    eta_ts: float | None = None
    #: The ETA's interval, as times (p10 to p90).
    eta_low_ts: float | None = None
    eta_high_ts: float | None = None
    as_of_ts: float = 0.0
    finished_ts: float | None = None
    actual_s: float | None = None
    abs_rel_error: float | None = None
    priority: int = 5
    submitter: str = ""


@dataclass(slots=True)
class EtaCalibrationRow:
    """A provider calibration, kept by the position of its event so old predictions stay replayable."""

    position: int
    provider_id: str = ""
    calibration: str = "{}"
    #: The provider's device class when it calibrated (its probes join that class's size laws).
    device_class: str = ""


@dataclass(slots=True)
class EtaProviderRow:
    """A provider's device class (``events.estimates.device_class``), as last registered."""

    provider_id: str
    device_class: str = ""
    #: When a lease on it last ended (epoch seconds; 0: never): the start of a handover.
    freed_ts: float = 0.0


@dataclass(slots=True)
class EtaClassRow:
    """A device class's learned handover (``events.estimates.RuntimeModel.handoffs``)."""

    device_class: str
    handoff_s: float = 0.0
    handoffs: int = 0


ETA_TASKS = Table.of("eta_tasks", EtaTaskRow, key=("task_id",), indexes=(("job_id",),))
ETA_JOBS = Table.of("eta_jobs", EtaJobRow, key=("job_id",))
ETA_CALIBRATIONS = Table.of("eta_calibrations", EtaCalibrationRow, key=("position",))
ETA_PROVIDERS = Table.of("eta_providers", EtaProviderRow, key=("provider_id",))
ETA_CLASSES = Table.of("eta_classes", EtaClassRow, key=("device_class",))


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


def _narrowed(remaining: float, predicted: float, low: float, high: float, done: float) -> tuple[float, float]:
    """The interval of ``remaining`` seconds of a task predicted ``predicted`` (``low`` to ``high``)
    with ``done`` of it done: the prediction's relative spread, pulled towards 1 as the work is done."""
    if predicted <= 0.0 or remaining <= 0.0:
        return remaining, remaining
    left = 1.0 - min(max(done, 0.0), 1.0)
    lo = 1.0 - (1.0 - low / predicted) * left
    hi = 1.0 + (high / predicted - 1.0) * left
    return remaining * max(lo, 0.0), remaining * max(hi, 1.0)


def progress_remaining(t: EtaTaskRow, at_ts: float, fraction: float) -> tuple[float, float, float]:
    """Seconds left of running task ``t`` (point, low, high) as of ``at_ts``, when it is ``fraction``
    done: the rate so far extrapolated once the fraction is enough, else its prediction counted down.
    The view applies it to the log's progress; the dashboard to live progress (``events.live``), which
    the log does not hold."""
    elapsed = at_ts - (t.started_ts or 0.0)
    f = fraction
    if f >= MIN_FRACTION_FOR_RATE and elapsed > 0.0:
        remaining = elapsed * (1.0 - f) / f
    else:
        remaining = max(t.predicted_s - elapsed, 0.0)
    low, high = _narrowed(remaining, t.predicted_s, t.predicted_low_s, t.predicted_high_s, f)
    return remaining, low, high


#: The most queued tasks ``queue`` reports (a forecast beyond it is a fluid).
MAX_QUEUE_REPORTED = 20_000


class EtaView(View):
    """Folds task, job and provider events into predictions and recorded errors."""

    name: ClassVar[str] = "eta"
    version: ClassVar[int] = 4
    tables: ClassVar[tuple[Table[object], ...]] = (  # type: ignore[assignment]
        ETA_TASKS,
        ETA_JOBS,
        ETA_CALIBRATIONS,
        ETA_PROVIDERS,
        ETA_CLASSES,
    )

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[str, EtaTaskRow] = self.data[ETA_TASKS.name]
        self.jobs: dict[str, EtaJobRow] = self.data[ETA_JOBS.name]
        self.calibrations: dict[int, EtaCalibrationRow] = self.data[ETA_CALIBRATIONS.name]
        self.providers: dict[str, EtaProviderRow] = self.data[ETA_PROVIDERS.name]
        self.classes: dict[str, EtaClassRow] = self.data[ETA_CLASSES.name]
        self._dirty_tasks = self.dirty[ETA_TASKS.name]
        self._dirty_jobs = self.dirty[ETA_JOBS.name]
        self.model = RuntimeModel()
        # Caches derived from rows: parsed estimates and calibrations, each provider's latest one.
        self._estimates: dict[str, Estimate] = {}
        self._cals: dict[int, Calibration] = {}
        self._latest_cal: dict[str, int] = {}
        # Indexes derived from rows: queued tasks in queue order, and each provider's live tasks.
        self._queued: dict[str, None] = {}
        self._active: dict[str, set[str]] = {}
        #: job -> its tasks created so far: a job's tasks are created in windows (``actors.window``),
        #: and those not created yet still count in its ETA (rebuilt from the task rows at load).
        self._created: dict[str, int] = {}
        # calibration position -> tasks whose lease used it (a superseded one no task used goes).
        self._cal_users: dict[int, int] = {}

    def loaded(self) -> None:
        """Rebuild the runtime model by replaying calibrations and completions in log order."""
        self.model = RuntimeModel()
        self._estimates.clear()
        self._cals.clear()
        self._latest_cal.clear()
        self._queued.clear()
        self._active.clear()
        self._created.clear()
        for t in self.tasks.values():
            self._created[t.job_id] = self._created.get(t.job_id, 0) + 1
        for pos in sorted(self.calibrations):
            self._latest_cal[self.calibrations[pos].provider_id] = pos
        steps: list[tuple[int, EtaCalibrationRow | EtaTaskRow]] = [(p, c) for p, c in self.calibrations.items()]
        steps += [(t.completed_pos, t) for t in self.tasks.values() if t.completed_pos]
        for c in self.classes.values():  # the handovers' means, as they stood
            self.model.restore_handoff(c.device_class, c.handoff_s, c.handoffs)
        for _, row in sorted(steps, key=lambda step: step[0]):
            if isinstance(row, EtaCalibrationRow):
                self.model.calibrated(row.provider_id, row.device_class, self._calibration(row.position))
            else:
                self._observe(row)
        self._cal_users.clear()
        for t in self.tasks.values():
            self._index(t, t.state)
            if t.calibration_pos:
                self._cal_users[t.calibration_pos] = self._cal_users.get(t.calibration_pos, 0) + 1

    # ---- for the quote service -----------------------------------------------------------------

    def device_class(self, provider_id: str) -> str:
        """The provider's device class as last registered ("" if unknown)."""
        row = self.providers.get(provider_id)
        return row.device_class if row is not None else ""

    def queue(self) -> dict[tuple[int, str], list[float]]:
        """(priority, submitter) -> the predicted seconds of each of its queued tasks, in queue order
        (at most ``MAX_QUEUE_REPORTED`` tasks in all)."""
        out: dict[tuple[int, str], list[float]] = {}
        for n, task_id in enumerate(self._queued):
            if n >= MAX_QUEUE_REPORTED:
                break
            t = self.tasks[task_id]
            out.setdefault((t.priority, t.submitter), []).append(t.remaining_s)
        return out

    def busy(self, now: float) -> dict[str, list[float]]:
        """provider -> seconds from ``now`` (epoch) until each of its leased or running tasks should
        be done (a task past its prediction is taken to need a tenth of it more)."""
        out: dict[str, list[float]] = {}
        for provider_id, ids in self._active.items():
            left = []
            for task_id in sorted(ids):
                t = self.tasks[task_id]
                due = (t.eta_ts or now) - now
                left.append(max(due, 0.1 * t.predicted_s))
            if left:
                out[provider_id] = left
        return out

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
                t.device_class,
            )

    def _queued_prediction(self, t: EtaTaskRow) -> tuple[float, float, float]:
        p = self.model.predict_interval(t.workload, self._estimate(t.estimate), None, None)
        return p.seconds, p.low, p.high

    def _job_eta(self, job: EtaJobRow, now: float) -> None:
        job.as_of_ts = now
        if job.finished_ts is not None:
            return
        if not job.leased_any and job.predicted_s > 0.0:
            since = now - job.accepted_ts
            job.eta_s = max(0.0, job.predicted_s - since)
            low = max(0.0, (job.predicted_low_s or job.predicted_s) - since)
            high = max(0.0, (job.predicted_high_s or job.predicted_s) - since)
        else:
            slots = max(1, job.active)
            work, work_low, work_high = job.remaining_work_s, job.remaining_low_s, job.remaining_high_s
            # Tasks not created yet (windows) wait as queued ones do: each like the job's unfinished
            # ones on average, or, with none unfinished now, its share of the job's prediction.
            uncreated = max(0, job.task_count - self._created.get(job.job_id, 0))
            if uncreated:
                if job.unfinished > 0:
                    each = (work / job.unfinished, work_low / job.unfinished, work_high / job.unfinished)
                else:
                    n = max(1, job.task_count)
                    top = job.predicted_high_s or job.predicted_s
                    each = (job.predicted_s / n, (job.predicted_low_s or job.predicted_s) / n, top / n)
                work += uncreated * each[0]
                work_low += uncreated * each[1]
                work_high += uncreated * each[2]
            job.eta_s = max(0.0, work) / slots
            low = max(0.0, work_low) / slots
            high = max(0.0, work_high) / slots
        job.eta_ts = now + job.eta_s
        job.eta_low_ts = now + min(low, job.eta_s)
        job.eta_high_ts = now + max(high, job.eta_s)

    def _index(self, t: EtaTaskRow, state: str) -> None:
        if state == "queued":
            self._queued.setdefault(t.task_id, None)
        else:
            self._queued.pop(t.task_id, None)
        if t.provider_id is not None:
            live = self._active.setdefault(t.provider_id, set())
            if state in ("leased", "running"):
                live.add(t.task_id)
            else:
                live.discard(t.task_id)

    def _update(self, t: EtaTaskRow, state: str, remaining: tuple[float, float, float], env: Envelope) -> None:
        """Set a task's state and remaining time (point, low, high); keep its job's sums and ETA in step."""
        now = env.time.timestamp()
        point, low, high = remaining
        self._dirty_tasks.add(t.task_id)
        if t.provider_id is not None and state not in ("leased", "running"):
            self._active.get(t.provider_id, set()).discard(t.task_id)
            if t.state in ("leased", "running"):  # its lease ended: the slot hands over from now
                row = self.providers.get(t.provider_id)
                if row is not None:
                    row.freed_ts = now
                    self.dirty[ETA_PROVIDERS.name].add(t.provider_id)
        job = self.jobs.get(t.job_id)
        if job is not None:
            old_active = t.state in ("leased", "running")
            new_active = state in ("leased", "running")
            job.active += int(new_active) - int(old_active)
            if state == "done" and t.state != "done":
                job.unfinished -= 1
            if new_active:
                job.leased_any = 1
            job.remaining_work_s += point - t.remaining_s
            job.remaining_low_s += low - t.remaining_low_s
            job.remaining_high_s += high - t.remaining_high_s
            if job.unfinished <= 0:
                job.remaining_work_s = job.remaining_low_s = job.remaining_high_s = 0.0
            self._job_eta(job, now)
            self._dirty_jobs.add(job.job_id)
        t.state = state
        t.remaining_s = point
        t.remaining_low_s = low
        t.remaining_high_s = high
        t.eta_ts = now + point if state != "done" else None
        self._index(t, state)

    # ---- events --------------------------------------------------------------------------------

    def on_ProviderRegistered(self, e: ProviderRegistered, env: Envelope) -> None:
        old = self.providers.get(e.provider_id)
        self.providers[e.provider_id] = EtaProviderRow(
            e.provider_id, device_class(e.capabilities), old.freed_ts if old is not None else 0.0
        )
        self.dirty[ETA_PROVIDERS.name].add(e.provider_id)

    def on_ProviderCalibrated(self, e: ProviderCalibrated, env: Envelope) -> None:
        dclass = self.device_class(e.provider_id)
        previous = self._latest_cal.get(e.provider_id)
        if previous is not None and not self._cal_users.get(previous):
            # Superseded, and no task's lease used it: nothing will look it up again (the model keeps
            # one calibration per provider, the latest).
            self.calibrations.pop(previous, None)
            self._cals.pop(previous, None)
            self.dirty[ETA_CALIBRATIONS.name].add(previous)
        self.calibrations[env.sequence] = EtaCalibrationRow(
            env.sequence, e.provider_id, e.calibration.model_dump_json(), dclass
        )
        self.dirty[ETA_CALIBRATIONS.name].add(env.sequence)
        self._cals[env.sequence] = e.calibration
        self._latest_cal[e.provider_id] = env.sequence
        self.model.calibrated(e.provider_id, dclass, e.calibration)

    def on_JobSubmitted(self, e: JobSubmitted, env: Envelope) -> None:
        job = self.jobs.get(e.job_id) or EtaJobRow(e.job_id, status="submitted")
        job.priority = e.spec.priority
        job.submitter = e.spec.submitter
        self.jobs[e.job_id] = job
        self._dirty_jobs.add(e.job_id)

    def on_JobRejected(self, e: JobRejected, env: Envelope) -> None:
        # Never accepted: nothing to predict (its row, kept from the submission, goes).
        job = self.jobs.get(e.job_id)
        if job is not None and job.status == "submitted":
            del self.jobs[e.job_id]
            self._dirty_jobs.add(e.job_id)

    def on_JobAccepted(self, e: JobAccepted, env: Envelope) -> None:
        job = self.jobs.get(e.job_id) or EtaJobRow(e.job_id)
        job.status = "accepted"
        job.task_count = e.task_count
        job.predicted_s = e.predicted_s
        job.predicted_low_s = e.predicted_low_s or 0.0
        job.predicted_high_s = e.predicted_high_s or 0.0
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
        job.eta_ts = job.eta_low_ts = job.eta_high_ts = now
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
        if e.task_id not in self.tasks:
            self._created[e.job_id] = self._created.get(e.job_id, 0) + 1
        t = EtaTaskRow(e.task_id, e.job_id, e.workload, e.estimate.model_dump_json())
        self._estimates.setdefault(t.estimate, e.estimate)
        self.tasks[e.task_id] = t
        job = self.jobs.get(e.job_id)
        if job is None:
            job = self.jobs[e.job_id] = EtaJobRow(e.job_id, accepted_ts=e.at.timestamp())
        t.priority = job.priority
        t.submitter = job.submitter
        job.unfinished += 1
        self._update(t, "queued", self._queued_prediction(t), env)

    def on_TaskLeased(self, e: TaskLeased, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        if t.provider_id is not None and t.provider_id != e.provider_id:
            self._active.get(t.provider_id, set()).discard(t.task_id)
        t.provider_id = e.provider_id
        if t.calibration_pos:
            self._cal_users[t.calibration_pos] -= 1
        t.calibration_pos = self._latest_cal.get(e.provider_id, 0)
        if t.calibration_pos:
            self._cal_users[t.calibration_pos] = self._cal_users.get(t.calibration_pos, 0) + 1
        t.lease_predicted_s = e.predicted_s
        t.leased_ts = e.at.timestamp()
        model = self.model.predict_interval(
            t.workload,
            self._estimate(t.estimate),
            self._calibration(t.calibration_pos),
            e.provider_id,
            self.device_class(e.provider_id),
        )
        t.model_predicted_s = model.seconds
        if e.predicted_s > 0.0:
            t.predicted_s = e.predicted_s
            t.predicted_low_s = e.predicted_low_s if e.predicted_low_s is not None else e.predicted_s
            t.predicted_high_s = e.predicted_high_s if e.predicted_high_s is not None else e.predicted_s
        else:
            t.predicted_s, t.predicted_low_s, t.predicted_high_s = model.seconds, model.low, model.high
        t.started_ts = None
        self._update(t, "leased", (t.predicted_s, t.predicted_low_s, t.predicted_high_s), env)

    def on_TaskStarted(self, e: TaskStarted, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        t.started_ts = e.at.timestamp()
        if t.state == "leased" and t.provider_id is not None:
            # As the orchestrator learns it: how long the slot took to hand over to this task.
            row = self.providers.get(t.provider_id)
            dclass = row.device_class if row is not None else ""
            freed = row.freed_ts if row is not None and row.freed_ts else None
            self.model.observe_handoff(dclass, handoff_sample(freed, t.leased_ts, t.started_ts))
            h = self.model.handoffs.get(dclass)
            if h is not None:
                self.classes[dclass] = EtaClassRow(dclass, h.value, h.n)
                self.dirty[ETA_CLASSES.name].add(dclass)
        self._update(t, "running", (t.predicted_s, t.predicted_low_s, t.predicted_high_s), env)

    def on_TaskProgressed(self, e: TaskProgressed, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state != "running" or t.started_ts is None:
            return
        self._update(t, "running", progress_remaining(t, e.at.timestamp(), e.fraction), env)

    def on_TaskCompleted(self, e: TaskCompleted, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        t.finished_ts = e.at.timestamp()
        # A completion under a lease that never reported its start implies it (``run_start``).
        began = t.started_ts if t.state != "leased" else run_start(t.leased_ts, t.started_ts)
        if began is not None:
            t.actual_s = t.finished_ts - began
            if t.actual_s > 0.0 and t.predicted_s > 0.0:
                t.abs_rel_error = abs(t.predicted_s - t.actual_s) / t.actual_s
            if t.state in ("running", "leased"):
                # The model learns the runs the orchestrator's learns (``actors.core``): a completion
                # under a live lease. A result first held for verification teaches neither: a liar
                # returning garbage at once would look fast.
                t.completed_pos = env.sequence
                t.device_class = self.device_class(t.provider_id or "")
                self._observe(t)
        self._update(t, "done", (0.0, 0.0, 0.0), env)

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
            self._update(t, "done", (0.0, 0.0, 0.0), env)
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
            self._update(t, "queued", (t.remaining_s, t.remaining_low_s, t.remaining_high_s), env)

    def on_TaskCancelled(self, e: TaskCancelled, env: Envelope) -> None:
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return
        t.finished_ts = e.at.timestamp()
        self._update(t, "done", (0.0, 0.0, 0.0), env)
