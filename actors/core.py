"""The orchestrator's synchronous core: world, scheduler, timers and reactions, with no I/O.

The async ``Orchestrator`` feeds it the log and carries out what it asks for; the property tests
drive it directly, so the logic they check is the logic that runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from actors.ids import derive_id
from actors.job import ENDED, JobState, MissDeadline
from actors.provider import ProviderState
from actors.reactions import Intent, create_task, react, reconcile
from actors.scheduler import Assignment, PendingTask, ProviderInfo, Scheduler
from actors.task import ExpireLease, ExpireVerification, LeaseTask, QueueTask, TaskState
from actors.timers import Timers
from actors.window import DEFAULT_WINDOW, Windows
from actors.world import LIVE_LEASE, Change, World
from events import Envelope, InvalidPayload
from events.estimates import (
    Prediction,
    RuntimeModel,
    device_class,
    fair_share_ahead,
    forecast,
    handoff_sample,
    run_start,
)
from events.job import JobSpec
from events.provider import ProviderCalibrated
from events.subjects import task_id_of
from events.task import TaskCancelled, TaskCompleted, TaskLeaseExpired
from events.verification import VerifyPolicy, expected_replicas
from events.workloads import WORKLOADS, validate_params

__all__ = ["MIN_LEASE_START_S", "Core", "Effects", "Revoke"]

#: The least time a lease gives its provider to start (the orchestrator's ``lease_start_timeout_s``
#: may not be lower). The provenance audit holds every recorded lease to it: a lease that expires as it
#: is made would let an orchestrator starve a provider of every task with a clean log.
MIN_LEASE_START_S = 1.0

#: The most queued tasks a job's ETA counts ahead of it: an acceptance costs at most that, however long
#: the queue (beyond it, the ETA is optimistic).
_QUEUE_LOOKED_AT = 5_000


@dataclass(frozen=True, slots=True)
class Revoke:
    """Tell ``provider_id`` to stop the task under ``lease_id``."""

    task_id: str
    lease_id: str
    provider_id: str
    reason: str


@dataclass(slots=True)
class Effects:
    """What applying events asks the shell to do."""

    intents: list[Intent] = field(default_factory=list)
    revokes: list[Revoke] = field(default_factory=list)
    #: The scheduler may have work to place now.
    schedule: bool = False
    #: A timer was armed: the timer loop should look again.
    timers: bool = False

    def merge(self, other: Effects) -> None:
        """Add ``other`` into this."""
        self.intents += other.intents
        self.revokes += other.revokes
        self.schedule |= other.schedule
        self.timers |= other.timers


class Core:
    """World, scheduler and timers, kept consistent with the log."""

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        default_verify: VerifyPolicy | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        materialise: bool = True,
        retire: bool = False,
    ) -> None:
        #: The network's verification policy for jobs that name none (``events.verification``).
        self.default_verify = default_verify
        #: ``retire``: jobs that are over leave memory with their tasks (``actors.world``): the
        #: orchestrator's memory is bounded by live work. Off for readers that must see every job.
        self.world = World(retire=retire)
        self.runtime = RuntimeModel()
        self.scheduler = Scheduler(self.runtime)
        #: Each submitter's window of tasks that exist, and its usage (``actors.window``).
        self.windows = Windows(window)
        #: Create jobs' tasks as their windows free up (the orchestrator does; the audit's replayer
        #: judges each creation by the rule instead, ``actors.provenance``).
        self.materialise = materialise
        for who, w in (weights or {}).items():
            self.scheduler.set_weight(who, w)
        self.timers = Timers()
        self.reserved: dict[str, Assignment] = {}
        #: Accepted jobs whose tasks are not all created yet: job -> (priority, submitter, tasks still
        #: to come, predicted seconds each). A burst of jobs is accepted before the first one's tasks
        #: reach the queue; each later job's ETA must still count the earlier ones' work.
        self.promised: dict[str, tuple[int, str, int, float]] = {}
        #: provider -> when a lease on it last ended (epoch seconds): the start of a handover.
        self._freed: dict[str, float] = {}

    # ---- the log ---------------------------------------------------------------------------------

    def apply(self, env: Envelope, *, live: bool) -> Effects:
        """Fold one event in; when ``live``, also the reactions it owes."""
        fx = Effects()
        change = self.world.apply(env)
        if change is None:
            return fx
        if change.kind == "task":
            self._task_changed(change, fx, live)
        elif change.kind == "provider":
            self._provider_changed(
                change.aggregate_id,
                change.after,  # type: ignore[arg-type]
                isinstance(change.event, ProviderCalibrated),
            )
            fx.schedule = True
        elif change.kind == "job":
            fx.timers |= self._job_changed(change.aggregate_id, change.before, change.after)  # type: ignore[arg-type]
        if live:
            fx.intents += react(change, self.world, self.predict_job, self.default_verify)
            if self.materialise:
                fx.intents += self._create(self.windows.plan(), getattr(env.data, "at", env.time), env.id)
        if self.world.retiring:
            for job_id in self.world.retire():
                self.promised.pop(job_id, None)
        return fx

    def reconcile(self, now: datetime) -> list[Intent]:
        """Whatever reactions still owe after a restart, and the tasks whose windows have room."""
        out = reconcile(self.world, now, self.predict_job, self.default_verify)
        if self.materialise:
            tasks = self.world.tasks_by_job
            made = self.windows.holes(lambda job_id, index: task_id_of(job_id, index) in tasks.get(job_id, ()))
            self.windows.refill_all()
            out += self._create(made + self.windows.plan(), now, None)
        return out

    def _create(self, plan: list[tuple[str, int]], at: datetime, cause: str | None) -> list[Intent]:
        out: list[Intent] = []
        for job_id, index in plan:
            job = self.world.jobs.get(job_id)
            if job is not None and job.spec is not None:
                out.append(create_task(job_id, job.spec, index, at, cause, job.verify))
        return out

    def predict_job(self, spec: JobSpec, now: datetime, job_id: str = "") -> Prediction | None:
        """Seconds from ``now`` until the whole job should be done, with an interval: the queue fair
        share puts ahead of it, then its tasks (replicas one after another) on the slots that can run
        them as they free up (``events.estimates.forecast``). None when nothing can run it now."""
        c = WORKLOADS.get(spec.workload)
        if c is None:
            return None
        try:
            estimate = c.estimate(validate_params(spec.workload, spec.task_params(0)))
        except InvalidPayload:
            return None
        per_task = self.scheduler.predict(
            spec.workload, estimate, spec.resources, spec.max_price_micros, spec.submitter
        )
        if per_task is None:
            return None
        # Replicas run one after another: a verified task takes as many runs as it gathers results.
        # "auto" verification spot-checks paid attempts only: paid when no capable provider is free.
        capable = self.scheduler.eligible(spec.resources, spec.workload, spec.max_price_micros, spec.submitter)
        paid = bool(capable) and min(p.capabilities.price_micros for p in capable) > 0
        policy = spec.verify if spec.verify is not None else self.default_verify
        runs = expected_replicas(policy, paid, c.compare)
        # Each run also holds its slot while the network hands it over to the next.
        handoff = min((self.runtime.handoff(p.dclass) for p in capable), default=0.0)
        per_task = per_task.plus(handoff).scaled(runs)
        free_at = self._slots_free_at(capable, now)
        queue = self.scheduler.queued(_QUEUE_LOOKED_AT)
        room = _QUEUE_LOOKED_AT - sum(len(v) for v in queue.values())
        for promised, (prio, who, left, each) in self.promised.items():
            if room <= 0:
                break
            if promised == job_id:
                continue  # the job itself
            queue.setdefault((prio, who), []).extend([each] * min(left, room))
            room -= min(left, room)
        first, last = fair_share_ahead(queue, spec.priority, spec.submitter, spec.task_count())
        f = forecast(free_at, first, last, spec.task_count(), per_task)
        if not math.isfinite(f.finish_s):
            return None
        return Prediction(f.finish_s, f.finish_low_s, f.finish_high_s, per_task.basis, per_task.coverage)

    def _slots_free_at(self, capable: list[ProviderInfo], now: datetime) -> list[float]:
        """Seconds from ``now`` until each slot of the ``capable`` providers is free (0: free now)."""
        out: list[float] = []
        for p in capable:
            out += [0.0] * max(0, p.free)
            for task_id in sorted(self.world.active.get(p.provider_id, ())):
                t = self.world.tasks.get(task_id)
                lease = t.lease if t is not None else None
                if lease is None:
                    continue
                elapsed = (now - lease.started_at).total_seconds() if lease.started_at is not None else 0.0
                # A task past its prediction is taken to need a tenth of it more, not nothing.
                out.append(max(lease.predicted_s - elapsed, 0.1 * lease.predicted_s))
        return out

    def _task_changed(self, c: Change, fx: Effects, live: bool) -> None:
        task_id = c.aggregate_id
        before: TaskState = c.before  # type: ignore[assignment]
        after: TaskState = c.after  # type: ignore[assignment]
        spec = after.spec
        if spec is None:
            return
        if before.status != after.status:
            self.windows.task_changed(spec.job_id, spec.index, before.status, after.status)
        if before.status == "none" and after.status != "none":
            self._created(spec.job_id)
        if after.status == "queued" and before.status != "queued":
            self.scheduler.enqueue(
                PendingTask(
                    task_id,
                    spec.submitter,
                    spec.priority,
                    spec.workload,
                    spec.resources,
                    spec.estimate,
                    spec.max_price_micros,
                    exclude=after.excluded,
                ),
                front=bool(after.excluded),
            )
            fx.schedule = True
        elif before.status == "queued" and after.status != "queued":
            self.scheduler.discard(task_id)
        old = before.lease if before.status in LIVE_LEASE else None
        new = after.lease if after.status in LIVE_LEASE else None
        started_lease = new is not None and (old is None or old.lease_id != new.lease_id)
        if new is not None and started_lease and self.reserved.pop(new.lease_id, None) is None:
            self.scheduler.occupy(new.provider_id)  # leased elsewhere, or before a restart
            self.scheduler.started(spec.submitter)
        if old is not None and (new is None or new.lease_id != old.lease_id):
            self._freed[old.provider_id] = c.envelope.time.timestamp()
            self.scheduler.release(old.provider_id)
            self.scheduler.ended(spec.submitter)
            rep = self.world.reputation.get(old.provider_id)
            if rep is not None:  # (a lease recorded for a provider the log never registered: forged)
                self.scheduler.set_reputation(old.provider_id, rep.value)
            fx.schedule = True
            if live and isinstance(c.event, TaskCancelled | TaskLeaseExpired):
                fx.revokes.append(Revoke(task_id, old.lease_id, old.provider_id, c.event.reason))
        if (
            new is not None
            and old is not None
            and old.lease_id == new.lease_id
            and old.started_at is None
            and new.started_at is not None
            and new.leased_at is not None
        ):
            # The lease started: how long its slot took to hand over (``events.estimates``).
            p = self.world.providers.get(new.provider_id)
            self.runtime.observe_handoff(
                device_class(p.capabilities if p else None),
                handoff_sample(self._freed.get(new.provider_id), new.leased_at.timestamp(), new.started_at.timestamp()),
            )
        if new is not None:
            self.timers.arm(f"lease:{task_id}", new.expires_at, _expiry(task_id, new.lease_id, new.expires_at))
            fx.timers = True
        elif old is not None:
            self.timers.cancel(f"lease:{task_id}")
        # A task holding results waits a bounded time for another provider to take its next replica.
        if after.status == "queued" and after.waiting_since is not None and spec.verify is not None:
            due = after.waiting_since + timedelta(seconds=spec.verify.wait_s)
            self.timers.arm(f"verify:{task_id}", due, _verification_expiry(task_id, after.waiting_since))
            fx.timers = True
        elif before.waiting_since is not None:  # leased, or ended: the wait is over
            self.timers.cancel(f"verify:{task_id}")
        if after.status == "waiting" and after.not_before is not None:
            self.timers.arm(f"queue:{task_id}", after.not_before, _requeue(task_id, after.failures))
            fx.timers = True
        # The run that completed a task teaches the runtime model. A result held for verification does
        # not (nor, so, do verified tasks): a liar that returns garbage at once would otherwise look
        # fast, be offered more work, and skew every provider's estimates for the workload.
        began = run_start(old.leased_at, old.started_at) if old is not None else None
        if isinstance(c.event, TaskCompleted) and old is not None and began is not None:
            actual = (c.event.at - began).total_seconds()
            p = self.world.providers.get(old.provider_id)
            calibration = p.calibration if p else None
            dclass = device_class(p.capabilities if p else None)
            self.runtime.observe(spec.workload, spec.estimate, calibration, old.provider_id, actual, dclass)

    def _provider_changed(self, provider_id: str, p: ProviderState, calibrated: bool) -> None:
        if calibrated:
            # Its probe runs join its class's size laws (in log order, as every reader of the log does).
            self.runtime.calibrated(provider_id, device_class(p.capabilities), p.calibration)
        if p.capabilities is None:
            return
        rep = self.world.reputation.get(provider_id)
        self.scheduler.upsert_provider(
            provider_id,
            p.capabilities,
            p.calibration,
            available=p.status == "online",
            reputation=rep.value if rep is not None else None,
        )

    def _created(self, job_id: str) -> None:
        promise = self.promised.get(job_id)
        if promise is not None:
            prio, who, left, each = promise
            if left <= 1:
                del self.promised[job_id]
            else:
                self.promised[job_id] = (prio, who, left - 1, each)

    def _job_changed(self, job_id: str, before: JobState, j: JobState) -> bool:
        spec = j.spec
        if before.status != j.status:
            if before.status == "none" and spec is not None:
                self.windows.job_submitted(job_id, spec.submitter, spec.priority, spec.task_count())
            if j.status == "accepted":
                self.windows.job_accepted(job_id, j.task_count)
            elif j.status in ENDED or j.status == "rejected":
                self.windows.job_ended(job_id)
        # Promised from the submission on: a burst of submissions is decided (and each one's ETA
        # taken) before the first one's acceptance, let alone its tasks, is in the log.
        if j.status in ("submitted", "accepted") and spec is not None and job_id not in self.promised:
            left = j.task_count or spec.task_count()
            if left > 0 and not self.world.tasks_by_job.get(job_id):
                c = WORKLOADS.get(spec.workload)
                each = None
                if c is not None:
                    with contextlib.suppress(InvalidPayload):
                        estimate = c.estimate(validate_params(spec.workload, spec.task_params(0)))
                        each = self.scheduler.predict(
                            spec.workload, estimate, spec.resources, spec.max_price_micros, spec.submitter
                        )
                self.promised[job_id] = (spec.priority, spec.submitter, left, each.seconds if each else 0.0)
        elif j.status not in ("submitted", "accepted"):
            self.promised.pop(job_id, None)
        if j.status == "accepted" and spec is not None and spec.deadline is not None:
            self.timers.arm(
                f"deadline:{job_id}",
                spec.deadline,
                partial(_deadline, job_id),
            )
            return True
        if j.status in ("completed", "failed", "cancelled"):
            self.timers.cancel(f"deadline:{job_id}")
        return False

    # ---- decisions -------------------------------------------------------------------------------

    def plan_leases(
        self, now: datetime, start_timeout_s: float, new_lease_id: Callable[[], str]
    ) -> list[tuple[Assignment, LeaseTask]]:
        """Place what fits now; each placement reserves its slot until the lease is seen or refused."""
        if start_timeout_s < MIN_LEASE_START_S:
            raise ValueError(f"a lease gives at least {MIN_LEASE_START_S:g} s to start, not {start_timeout_s:g}")
        out = []
        for a in self.scheduler.assign():
            lease_id = new_lease_id()
            self.reserved[lease_id] = a
            cmd = LeaseTask(
                command_id=f"ls-{lease_id}",
                at=now,
                lease_id=lease_id,
                provider_id=a.provider_id,
                expires_at=now + timedelta(seconds=start_timeout_s),
                predicted_s=a.predicted_s,
                predicted_low_s=a.low_s,
                predicted_high_s=a.high_s,
                price_micros=a.price_micros,
            )
            out.append((a, cmd))
        return out

    def lease_refused(self, lease_id: str) -> None:
        """The lease command was refused or failed: free its slot, and queue the task again if it waits."""
        a = self.reserved.pop(lease_id, None)
        if a is None:
            return
        self.scheduler.release(a.provider_id)
        self.scheduler.ended(a.task.submitter)
        t = self.world.tasks.get(a.task.task_id)
        if t is not None and t.status == "queued":
            self.scheduler.enqueue(a.task)

    def due(self, now: datetime) -> list[Intent]:
        """The intents of every timer due at ``now``."""
        intents: list[Intent] = self.timers.pop_due(now)
        return intents


# The command ids are derived when a timer fires, not when it is armed: a lease's timer is armed again at
# every progress report, and most timers never fire.


# Timers hold partials of module functions, not closures: a snapshot of the core (``actors.snapshot``)
# pickles them.


def _expiry(task_id: str, lease_id: str, due: datetime) -> Callable[[datetime], Intent]:
    return partial(_expire_lease, task_id, lease_id, due)


def _expire_lease(task_id: str, lease_id: str, due: datetime, now: datetime) -> Intent:
    cmd_id = derive_id("ex-", lease_id, due.isoformat())
    return Intent("task", task_id, ExpireLease(command_id=cmd_id, at=now, lease_id=lease_id, reason="expired"))


def _verification_expiry(task_id: str, since: datetime) -> Callable[[datetime], Intent]:
    return partial(_expire_verification, task_id, since)


def _expire_verification(task_id: str, since: datetime, now: datetime) -> Intent:
    return Intent("task", task_id, ExpireVerification(command_id=derive_id("xv-", task_id, since.isoformat()), at=now))


def _requeue(task_id: str, failures: int) -> Callable[[datetime], Intent]:
    return partial(_queue_again, task_id, failures)


def _queue_again(task_id: str, failures: int, now: datetime) -> Intent:
    return Intent("task", task_id, QueueTask(command_id=derive_id("qt-", task_id, failures), at=now))


def _deadline(job_id: str, now: datetime) -> Intent:
    return Intent("job", job_id, MissDeadline(command_id=derive_id("dl-", job_id), at=now))
