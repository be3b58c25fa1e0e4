"""Windows: a job's tasks come into existence as capacity frees up, not all when it is accepted.

Accepting a job costs a constant number of appends, whatever its task count: ``JobAccepted`` records
the count, and nothing else is written for its tasks then. Each submitter has a window: about
``window`` of its tasks exist and wait to be leased at once, shared evenly by its jobs (each job at
least one, so a job whose tasks no provider can run now never holds back its submitter's others).
As its tasks are leased (or end), the window has room again, and the next tasks of its jobs are
created (``TaskCreated``, the same event as ever, so every reader of the log still sees every task
that exists), in batches. The scheduler's fair share and priorities do the rest: one submitter's
10,000,000 tasks are never more than a window's worth of entries in its queue, and another
submitter's one task is created at once.

``Windows`` also keeps each submitter's usage (jobs in flight, tasks waiting, running), which the
quotas (``events.quotas``) are checked against. It is pure and synchronous: the orchestrator's core
feeds it the log's transitions; the counts are a cache of the log, rebuilt from it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_WINDOW", "Usage", "Windows"]

#: Tasks of one submitter that exist and wait to be leased at once, by default.
DEFAULT_WINDOW = 1_000

_UNLEASED = frozenset({"none", "queued", "waiting"})
_RUNNING = frozenset({"leased", "running"})


@dataclass(slots=True)
class Usage:
    """What one submitter holds of the network now."""

    #: Jobs submitted or accepted, not yet ended.
    jobs: int = 0
    #: Tasks of its jobs not leased and not ended: created already, or still to be.
    waiting: int = 0
    #: Tasks leased or running.
    running: int = 0
    #: Tasks created (or being created) and waiting to be leased: what its window holds.
    materialised: int = 0


@dataclass(slots=True)
class _Job:
    submitter: str
    priority: int
    order: int
    task_count: int = 0
    #: Every index below it is created, or being created (or, with several writers, a hole that a
    #: restart's reconciliation fills).
    next: int = 0
    created: int = 0
    #: Indices this process asked to create that the log does not show yet.
    planned: set[int] = field(default_factory=set)
    #: Its tasks created (or being created) and not leased, not ended; and its tasks leased or running.
    unleased: int = 0
    running: int = 0
    open: bool = False
    ended: bool = False


class Windows:
    """Every submitter's window and usage, kept current from the log."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"a window holds at least 1 task (got {window})")
        self.window = window
        self._jobs: dict[str, _Job] = {}
        self._usage: dict[str, Usage] = {}
        #: submitter -> its accepted jobs with tasks still to create.
        self._open: dict[str, dict[str, _Job]] = {}
        self._dirty: set[str] = set()
        self._order = 0

    # ---- what the log says -------------------------------------------------------------------------

    def usage(self, submitter: str) -> Usage:
        """``submitter``'s usage now (a zero usage for one with nothing)."""
        return self._usage.get(submitter) or Usage()

    def submitters(self) -> list[str]:
        """Submitters with something in flight."""
        return sorted(self._usage)

    def to_create(self, job_id: str) -> int:
        """Tasks of an accepted job not created yet (nor being created)."""
        j = self._jobs.get(job_id)
        return 0 if j is None or not j.open else j.task_count - j.created - len(j.planned)

    def _use(self, submitter: str) -> Usage:
        u = self._usage.get(submitter)
        if u is None:
            u = self._usage[submitter] = Usage()
        return u

    def _forget_idle(self, submitter: str) -> None:
        u = self._usage.get(submitter)
        if u is not None and u == Usage():
            del self._usage[submitter]

    def job_submitted(self, job_id: str, submitter: str, priority: int, task_count: int) -> None:
        """A job of ``task_count`` tasks was submitted: it is in flight, and its tasks wait, until it
        ends (or is rejected)."""
        if job_id in self._jobs:
            return
        self._order += 1
        self._jobs[job_id] = _Job(submitter, priority, self._order, task_count)
        u = self._use(submitter)
        u.jobs += 1
        u.waiting += task_count

    def job_accepted(self, job_id: str, task_count: int) -> None:
        """The job was accepted with ``task_count`` tasks: they may be created from now on."""
        j = self._jobs.get(job_id)
        if j is None or j.open or j.ended:
            return
        u = self._use(j.submitter)
        u.waiting += task_count - j.task_count  # (the same count: the decider accepts the spec's)
        j.task_count = task_count
        j.open = True
        if j.next < task_count:
            self._open.setdefault(j.submitter, {})[job_id] = j
        self._dirty.add(j.submitter)

    def job_ended(self, job_id: str) -> None:
        """The job was rejected, completed, failed or cancelled: nothing more of it is created, and its
        tasks never created stop counting. Its tasks that exist count until they end (cancelled)."""
        j = self._jobs.get(job_id)
        if j is None or j.ended:
            return
        u = self._use(j.submitter)
        u.jobs -= 1
        u.waiting -= max(0, j.task_count - j.created - len(j.planned))
        j.open = False
        j.ended = True
        opened = self._open.get(j.submitter)
        if opened is not None:
            opened.pop(job_id, None)
            if not opened:
                del self._open[j.submitter]
        self._forget_ended(job_id, j)
        self._dirty.add(j.submitter)  # its share of the window goes to the submitter's other jobs
        self._forget_idle(j.submitter)

    def _forget_ended(self, job_id: str, j: _Job) -> None:
        """An ended job is forgotten once none of its tasks is being created, waiting or running."""
        if j.ended and not j.planned and j.unleased <= 0 and j.running <= 0:
            del self._jobs[job_id]

    def task_changed(self, job_id: str, index: int, before: str, after: str) -> None:
        """A task of ``job_id`` went from status ``before`` to ``after`` (``none`` before it existed)."""
        j = self._jobs.get(job_id)
        if j is None:
            return  # (a task of a job the log never had: forged, and the audit names it)
        u = self._use(j.submitter)
        if before == "none" and after != "none":
            j.created += 1
            j.next = max(j.next, index + 1)
            if index in j.planned:
                j.planned.discard(index)  # counted when it was planned
            else:
                if j.ended or j.created + len(j.planned) > j.task_count:
                    u.waiting += 1  # created after its job ended (or past its count): counted until it ends
                u.materialised += 1
                j.unleased += 1
            if j.open and j.next >= j.task_count:
                opened = self._open.get(j.submitter)
                if opened is not None:
                    opened.pop(job_id, None)
                    if not opened:
                        del self._open[j.submitter]
        was_unleased = before in _UNLEASED
        now_unleased = after in _UNLEASED
        if was_unleased and not now_unleased:
            u.waiting -= 1
            u.materialised -= 1
            j.unleased -= 1
            self._dirty.add(j.submitter)
        elif not was_unleased and now_unleased and before != "none":
            u.waiting += 1
            u.materialised += 1
            j.unleased += 1
        if before in _RUNNING and after not in _RUNNING:
            u.running -= 1
            j.running -= 1
        elif after in _RUNNING and before not in _RUNNING:
            u.running += 1
            j.running += 1
        self._forget_ended(job_id, j)
        self._forget_idle(j.submitter)

    # ---- what to create ------------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, int]]:
        """(job, index) of the tasks to create now, for every submitter whose window has room."""
        if not self._dirty:
            return []  # (most events change no window: this runs for every event applied)
        out: list[tuple[str, int]] = []
        dirty, self._dirty = self._dirty, set()
        for submitter in sorted(dirty):
            out += self._fill(submitter)
        return out

    def _fill(self, submitter: str) -> list[tuple[str, int]]:
        opened = self._open.get(submitter)
        if not opened:
            return []
        # The window is shared evenly by the jobs with tasks still to create, each at least one.
        share = max(1, self.window // len(opened))
        chunk = max(1, share // 8)
        u = self._use(submitter)
        # What a job holds past its share (the share shrank as jobs came) never holds back the others.
        total = self.window - u.materialised + sum(max(0, j.unleased - share) for j in opened.values())
        out: list[tuple[str, int]] = []
        for job_id, j in sorted(opened.items(), key=lambda kv: (-kv[1].priority, kv[1].order)):
            left = j.task_count - j.next
            room = min(share - j.unleased, left, total)
            if j.unleased <= 0:
                room = max(room, 1)  # every job has one task waiting, whatever the others hold
            elif room <= 0 or (room < chunk and left > room):
                continue  # full, or wait for a fuller batch (there are tasks enough to fill one)
            for index in range(j.next, j.next + room):
                j.planned.add(index)
                out.append((job_id, index))
            j.next += room
            j.unleased += room
            u.materialised += room
            total -= room
            if j.next >= j.task_count:
                del opened[job_id]
        if not opened:
            del self._open[submitter]
        return out

    def holes(self, exists: Callable[[str, int], bool]) -> list[tuple[str, int]]:
        """(job, index) of tasks below a job's ``next`` that are neither created nor being created: a
        creation lost with a crash. Reconciliation creates them (they count in the window again)."""
        out: list[tuple[str, int]] = []
        for job_id, j in self._jobs.items():
            if not j.open or j.created + len(j.planned) >= j.next:
                continue
            u = self._use(j.submitter)
            for index in range(j.next):
                if index not in j.planned and not exists(job_id, index):
                    j.planned.add(index)
                    j.unleased += 1
                    u.materialised += 1
                    out.append((job_id, index))
        return out

    def being_created(self) -> int:
        """Tasks this process is creating that the log does not show yet."""
        return sum(len(j.planned) for j in self._jobs.values())

    def forget_planned(self) -> None:
        """Let go of the tasks this process was creating that the log does not show (after a restart
        from a snapshot: they may never have been appended). ``holes`` finds those still missing."""
        for j in self._jobs.values():
            if j.planned:
                u = self._use(j.submitter)
                j.unleased -= len(j.planned)
                u.materialised -= len(j.planned)
                j.planned.clear()

    def refill_all(self) -> None:
        """Look at every submitter's window at the next ``plan`` (after a restart)."""
        self._dirty.update(self._open)
