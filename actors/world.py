"""The orchestrator's view of the whole log: every aggregate's state, folded with the deciders' evolve.

It is a cache of the log, rebuilt from it at start-up and kept current by following it. Reactions,
timers, the scheduler and liveness all read it; nothing here is authoritative (the actor shells
are), so a stale view only costs a refused command and a retry.

The orchestrator's world retires what is over (``World(retire=True)``): a job that ended, was
settled and whose every task ended (and was metered, if it completed) leaves memory with its tasks,
once the reactions to its last event ran (``retire``). Nothing more is owed for it, and the actor
shells, not this cache, judge whatever still comes for it (a late report is refused from the
aggregate's own stream). So its memory is bounded by the live work, not by the log's history. A
reader that must see every job (the client's view of one job, the audit's replay) keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.job import ENDED, JobState, job_decider, unsettled
from actors.provider import ProviderState, provider_decider
from actors.task import TERMINAL, TaskState, task_decider
from events import Envelope
from events.intake import InputAccepted, InputRejected
from events.job import JobRejected, JobSubmitted
from events.reputation import Record, counts_against
from events.subjects import job_owner
from events.task import TaskCreated, TaskFailed, TaskLeaseExpired, TaskResultJudged, TaskResultRejected
from events.types import EventModel

__all__ = ["LIVE_LEASE", "Change", "World"]

LIVE_LEASE = frozenset({"leased", "running"})
#: A job in one of these states takes nothing more on (rejected: it never did).
_OVER = ENDED | {"rejected"}


@dataclass(frozen=True, slots=True)
class Change:
    """One event applied to one aggregate: its state before and after."""

    kind: str
    aggregate_id: str
    event: EventModel
    envelope: Envelope
    before: object
    after: object


class World:
    """Every job, task and provider, plus the indexes the orchestrator needs."""

    def __init__(self, *, retire: bool = False) -> None:
        #: Forget jobs that are over, with their tasks (see the module's docstring).
        self.retiring = retire
        #: Jobs to look at in ``retire``: something of theirs ended since.
        self._retire_next: set[str] = set()
        #: Jobs retired so far (with their tasks).
        self.retired_jobs = 0
        self.retired_tasks = 0
        self.tasks: dict[str, TaskState] = {}
        self.jobs: dict[str, JobState] = {}
        self.providers: dict[str, ProviderState] = {}
        self.tasks_by_job: dict[str, set[str]] = {}
        #: provider -> tasks it holds a live lease on.
        self.active: dict[str, set[str]] = {}
        #: Each provider's record (``events.reputation``): one rule for the scheduler and the fleet view.
        self.reputation: dict[str, Record] = {}
        self._intake_seen: set[int] = set()
        #: The lowest intake sequence without a recorded outcome.
        self.intake_low = 1
        #: Intake messages refused (``InputRejected``), by sender: ``<role>.<name>`` (the outcome
        #: stream's name after ``intake.``), or "" for outcomes recorded before per-sender streams.
        self.intake_refusals: dict[str, int] = {}
        #: Jobs refused when decided (``JobRejected``), by submitter ("" for jobs before identities).
        self.jobs_rejected: dict[str, int] = {}
        self.position = 0
        self.events = 0

    def intake_done(self, seq: int) -> bool:
        """True when intake message ``seq`` already has an accepted or rejected outcome."""
        return seq < self.intake_low or seq in self._intake_seen

    def apply(self, env: Envelope) -> Change | None:
        """Fold one event in; returns what changed (None for events outside the aggregates)."""
        if env.sequence:
            self.position = max(self.position, env.sequence)
        self.events += 1
        if env.id.startswith("in-"):
            # Facts of an accepted intake message carry its sequence: in-<seq>.<n>.
            seq = env.id[3:].split(".", 1)[0]
            if seq.isascii() and seq.isdigit():  # (int() refuses some unicode digits, '²')
                self._intake(int(seq))
        kind, _, agg = env.subject.partition(".")
        e = env.data
        if kind == "task":
            known_t = self.tasks.get(agg)
            if known_t is None and self.retiring and not isinstance(e, TaskCreated):
                return None  # of a task retired with its job (or never created: forged); the shell judges it
            before_t = known_t or task_decider.initial_state()
            after_t = task_decider.evolve(before_t, e)
            self.tasks[agg] = after_t
            self._index_task(agg, before_t, after_t, e)
            if self.retiring and after_t.status in TERMINAL and after_t.spec is not None:
                self._retire_next.add(after_t.spec.job_id)
            return Change(kind, agg, e, env, before_t, after_t)
        if kind == "job":
            if isinstance(e, JobRejected):
                owner = job_owner(agg) or ""
                self.jobs_rejected[owner] = self.jobs_rejected.get(owner, 0) + 1
            known_j = self.jobs.get(agg)
            if known_j is None and self.retiring and not isinstance(e, JobSubmitted | JobRejected):
                return None  # of a job retired (or never submitted: forged); the shell judges it
            before_j = known_j or job_decider.initial_state()
            after_j = job_decider.evolve(before_j, e)
            self.jobs[agg] = after_j
            if self.retiring and after_j.status in _OVER:
                self._retire_next.add(agg)
            return Change(kind, agg, e, env, before_j, after_j)
        if kind == "provider":
            before_p = self.providers.get(agg) or provider_decider.initial_state()
            after_p = provider_decider.evolve(before_p, e)
            self.providers[agg] = after_p
            self.reputation.setdefault(agg, Record())
            return Change(kind, agg, e, env, before_p, after_p)
        if isinstance(e, InputAccepted | InputRejected):
            self._intake(e.intake_seq)
            if isinstance(e, InputRejected):
                sender = agg if kind == "intake" and "." in agg else ""
                self.intake_refusals[sender] = self.intake_refusals.get(sender, 0) + 1
        return None

    def retire(self) -> list[str]:
        """Forget the jobs that are over, with their tasks; returns their ids. A job is over once it
        ended, its usage is settled, and each of its tasks ended (a completed one metered): nothing is
        owed for it (``actors.reactions.reconcile`` would find nothing). Called after the reactions to
        the events just applied ran: they read the job as it ended."""
        out: list[str] = []
        for job_id in sorted(self._retire_next):
            job = self.jobs.get(job_id)
            if job is None or job.status not in _OVER or unsettled(job):
                continue
            task_ids = self.tasks_by_job.get(job_id, set())
            if any(_owed(task_id, self.tasks[task_id], job) for task_id in task_ids):
                continue
            for task_id in task_ids:
                del self.tasks[task_id]
            self.retired_tasks += len(task_ids)
            self.tasks_by_job.pop(job_id, None)
            del self.jobs[job_id]
            self.retired_jobs += 1
            out.append(job_id)
        self._retire_next.clear()
        return out

    def _intake(self, seq: int) -> None:
        if seq < self.intake_low:
            return
        self._intake_seen.add(seq)
        while self.intake_low in self._intake_seen:
            self._intake_seen.discard(self.intake_low)
            self.intake_low += 1

    def _index_task(self, task_id: str, before: TaskState, after: TaskState, e: EventModel) -> None:
        if after.spec is not None and before.spec is None:
            self.tasks_by_job.setdefault(after.spec.job_id, set()).add(task_id)
        old = before.lease.provider_id if before.lease and before.status in LIVE_LEASE else None
        new = after.lease.provider_id if after.lease and after.status in LIVE_LEASE else None
        if old != new:
            if old is not None:
                self.active.get(old, set()).discard(task_id)
            if new is not None:
                self.active.setdefault(new, set()).add(task_id)
        # Reputation (events.reputation): completions, and what counts against the provider.
        if after.status == "completed" and before.status != "completed" and after.lease is not None:
            self._rep(after.lease.provider_id).completed += 1
        elif isinstance(e, TaskFailed) and e.provider_id and counts_against(e):
            self._rep(e.provider_id).failed += 1
        elif isinstance(e, TaskLeaseExpired) and counts_against(e):
            self._rep(e.provider_id).expired += 1
        elif isinstance(e, TaskResultRejected) and counts_against(e):
            self._rep(e.provider_id).refused += 1
        elif isinstance(e, TaskResultJudged):
            self._rep(e.provider_id).judged(e)

    def _rep(self, provider_id: str) -> Record:
        return self.reputation.setdefault(provider_id, Record())

    def job_tasks(self, job_id: str) -> list[str]:
        """The job's tasks, in index order."""
        return sorted(self.tasks_by_job.get(job_id, ()), key=self._index)

    def _index(self, task_id: str) -> int:
        spec = self.tasks[task_id].spec
        return spec.index if spec is not None else 0

    def unfinished(self) -> int:
        """Tasks not yet in a terminal state."""
        return sum(1 for t in self.tasks.values() if t.status not in TERMINAL)


def _owed(task_id: str, t: TaskState, job: JobState) -> bool:
    """Something may still come of task ``t`` for its ended ``job``: it runs, or its completion is
    not metered yet."""
    return t.status not in TERMINAL or (t.status == "completed" and task_id not in job.done)
