"""The scheduler: which queued task goes to which live provider, fairly, without over-commitment.

Matching:
- Providers are indexed by capability class (backend, VRAM, compute capability, workloads, price).
  A task's requirements select the eligible classes once per task shape (cached); inside a class, a
  heap orders providers with a free slot by reputation, then load. One decision costs
  O(classes + log providers), not a scan of the fleet.
- Among the eligible classes' best providers, the score is the predicted runtime (the workload's
  estimate, the provider's calibration, the history of similar tasks), weighted by price under the
  task's ceiling and by reputation. Only providers with a free slot are candidates, so the queue wait
  of the chosen one is zero and a slot is never over-committed.

Fairness:
- Strict priority levels (9 first). Within a level, submitters share by weight (stride scheduling):
  each placed task advances its submitter's pass by 1/weight and the lowest pass goes next, so one
  submitter's 10,000 tasks cannot starve another's 10.
- A task that fits no provider now waits aside by shape and never blocks the tasks behind it. Aside,
  the tasks of one shape keep their order: priority first, then each submitter's fair-share tag
  (start-time fair queueing: a submitter's k-th waiting task is tagged k/weight after its pass), so
  a freed slot goes to the task that fair share would have placed next, not to the one that waited
  longest.
- When no provider at all has a free slot, a round stops at once and leaves every task in its fair
  queue: a saturated fleet costs nothing per round, and the order is exactly the fair order.
- A submitter at its ``tasks_running`` quota (``events.quotas``) is parked: its queue keeps its
  place, it is skipped at no cost, and it comes back when one of its leases ends. Priority never
  takes it past the quota.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from events.estimates import Prediction, RuntimeModel, device_class
from events.placement import misfits
from events.types import Calibration, Capabilities, Estimate, Resources
from events.workloads import CODE_WORKLOAD

__all__ = ["Assignment", "PendingTask", "ProviderInfo", "Scheduler"]

_LEVELS = range(9, -1, -1)


@dataclass(slots=True)
class PendingTask:
    """A queued task as the scheduler needs it."""

    task_id: str
    submitter: str
    priority: int
    workload: str
    resources: Resources
    estimate: Estimate
    max_price_micros: int | None = None
    order: int = 0
    #: Set aside until its shape can be placed (in a ``_Waiting`` heap, not in its fair queue).
    aside: bool = False
    #: Its fair-share tag among the tasks waiting aside, kept if it has to wait aside again.
    tag: float | None = None
    #: Providers it must not go to: a replica under verification goes to a provider (an owner) that
    #: has not returned a result for this task yet.
    exclude: frozenset[str] = frozenset()
    #: The provider whose free slot it was handed back from waiting aside for (see ``_unblock``).
    handed_to: str | None = None

    @property
    def shape(self) -> tuple[object, ...]:
        """What decides which providers can take it."""
        r = self.resources
        # Code runs only on providers that opted in to its submitter: the submitter is part of the
        # shape of a code task, and of nothing else's.
        code_of = self.submitter if self.workload == CODE_WORKLOAD else ""
        packages = tuple(sorted(r.packages.items())) if r.packages else ()
        return (
            r.backend,
            r.min_vram_mb,
            r.min_compute_capability,
            self.workload,
            self.max_price_micros,
            self.exclude,
            code_of,
            packages,
        )


@dataclass(slots=True)
class ProviderInfo:
    """A provider as the scheduler tracks it."""

    provider_id: str
    capabilities: Capabilities
    calibration: Calibration | None
    used: int = 0
    reputation: float = 1.0
    available: bool = True
    key: tuple[object, ...] = ()
    #: Its device class, which its runtime history is pooled in (``events.estimates.device_class``).
    dclass: str = ""
    #: Tasks handed back from waiting aside for this provider's free slots, not yet placed.
    handed: list[PendingTask] = field(default_factory=list)

    @property
    def free(self) -> int:
        """Slots not leased or reserved."""
        return self.capabilities.slots - self.used


@dataclass(frozen=True, slots=True)
class Assignment:
    """A decision: lease ``task`` to ``provider_id``, predicted to take ``predicted_s`` (``low_s`` to
    ``high_s``)."""

    task: PendingTask
    provider_id: str
    predicted_s: float
    price_micros: int
    low_s: float | None = None
    high_s: float | None = None


@dataclass(slots=True)
class _Class:
    key: tuple[object, ...]
    capabilities: Capabilities
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    members: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Level:
    queues: dict[str, deque[PendingTask]] = field(default_factory=dict)
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    passes: dict[str, float] = field(default_factory=dict)
    vtime: float = 0.0


@dataclass(slots=True)
class _Waiting:
    """Tasks of one shape that no provider can take now, in the order they should go when one can."""

    heap: list[tuple[int, float, int, PendingTask]] = field(default_factory=list)
    #: (priority, submitter) -> the fair-share tag of its last task waiting here.
    tags: dict[tuple[int, str], float] = field(default_factory=dict)


def _class_key(c: Capabilities) -> tuple[object, ...]:
    return (
        c.backend,
        c.vram_mb,
        c.compute_capability,
        tuple(sorted(c.workloads)),
        c.price_micros,
        c.gpu_model,
        tuple(sorted(c.code_from)),
        tuple(sorted(c.packages.items())),
    )


class Scheduler:
    """Pure, in-memory and single-threaded: the orchestrator feeds it what the log says."""

    def __init__(
        self,
        runtime: RuntimeModel | None = None,
        *,
        price_weight: float = 0.25,
        reputation_weight: float = 0.5,
    ) -> None:
        self.runtime = runtime or RuntimeModel()
        self.price_weight = price_weight
        self.reputation_weight = reputation_weight
        self.providers: dict[str, ProviderInfo] = {}
        self._classes: dict[tuple[object, ...], _Class] = {}
        self._eligible: dict[tuple[object, ...], list[_Class]] = {}
        self._levels = {p: _Level() for p in _LEVELS}
        self._blocked: dict[tuple[object, ...], _Waiting] = {}
        self._pending: dict[str, PendingTask] = {}
        self._weights: dict[str, float] = {}
        self._seq = itertools.count()
        self.decisions = 0
        #: The most tasks each submitter may have leased (or reserved) at once (``tasks_running``).
        self.running_limit: Callable[[str], int] = _no_running_limit
        #: Tasks of each submitter leased, running or reserved now.
        self.running: dict[str, int] = {}
        #: Submitters at their limit: the levels where their queue waits, out of the level's heap.
        self._parked: dict[str, set[int]] = {}

    # ---- providers -------------------------------------------------------------------------------

    def upsert_provider(
        self,
        provider_id: str,
        capabilities: Capabilities,
        calibration: Calibration | None,
        *,
        available: bool,
        reputation: float | None = None,
    ) -> None:
        """Add or update a provider; ``available`` is false while it is lost, draining or gone."""
        p = self.providers.get(provider_id)
        if p is None:
            p = ProviderInfo(provider_id, capabilities, calibration)
            self.providers[provider_id] = p
        elif p.capabilities != capabilities:
            self._leave_class(p)
            p.capabilities = capabilities
        p.calibration = calibration
        p.dclass = device_class(capabilities)
        p.available = available
        if reputation is not None:
            p.reputation = reputation
        self._join_class(p)
        self._offer(p)

    def set_available(self, provider_id: str, available: bool) -> None:
        """Take a provider out of (or back into) consideration without forgetting its leases."""
        p = self.providers.get(provider_id)
        if p is None or p.available == available:
            return
        p.available = available
        self._offer(p)

    def set_reputation(self, provider_id: str, reputation: float) -> None:
        """Update a provider's reputation in [0, 1]."""
        p = self.providers.get(provider_id)
        if p is not None and abs(p.reputation - reputation) > 1e-9:
            p.reputation = reputation
            self._offer(p)

    def occupy(self, provider_id: str) -> None:
        """A lease started using one of the provider's slots (seen in the log, or reserved here)."""
        p = self.providers.get(provider_id)
        if p is not None:
            p.used += 1
            self._offer(p)

    def release(self, provider_id: str) -> None:
        """A lease on this provider ended, or a reservation was not used."""
        p = self.providers.get(provider_id)
        if p is not None and p.used > 0:
            p.used -= 1
            self._offer(p)

    def _join_class(self, p: ProviderInfo) -> None:
        key = _class_key(p.capabilities)
        if p.key == key and key in self._classes:
            return
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = _Class(key, p.capabilities)
            self._eligible.clear()  # a new class may suit shapes that fit none before
        cls.members.add(p.provider_id)
        p.key = key

    def _leave_class(self, p: ProviderInfo) -> None:
        cls = self._classes.get(p.key)
        if cls is not None:
            cls.members.discard(p.provider_id)
            if not cls.members:
                del self._classes[p.key]
                self._eligible.clear()
        p.key = ()

    def _rank(self, p: ProviderInfo) -> float:
        # Lower is better: reputation first, then the share of slots in use (spreads the load).
        return -round(p.reputation, 2) * 1000.0 + p.used / p.capabilities.slots

    def _offer(self, p: ProviderInfo, *, unblock: bool = True) -> None:
        """(Re)enter the provider in its class heap if it can take work; stale entries are skipped."""
        if p.available and p.free > 0 and p.key in self._classes:
            cls = self._classes[p.key]
            heapq.heappush(cls.heap, (self._rank(p), next(self._seq), p.provider_id))
            if len(cls.heap) > 4 * len(cls.members) + 64:
                self._compact(cls)
            if unblock:
                self._unblock(self._classes[p.key], p)

    def _compact(self, cls: _Class) -> None:
        """Rebuild a heap grown stale (amortised O(1) per push): one live entry per provider."""
        live = []
        for pid in cls.members:
            q = self.providers[pid]
            if q.available and q.free > 0:
                live.append((self._rank(q), next(self._seq), pid))
        heapq.heapify(live)
        cls.heap = live

    def _best_in(self, cls: _Class) -> ProviderInfo | None:
        heap = cls.heap
        while heap:
            rank, _, pid = heap[0]
            p = self.providers.get(pid)
            if p is not None and p.available and p.free > 0 and p.key == cls.key and abs(rank - self._rank(p)) < 1e-12:
                return p
            heapq.heappop(heap)  # stale: full, gone, or ranked differently since
        return None

    # ---- tasks -----------------------------------------------------------------------------------

    def started(self, submitter: str) -> None:
        """A lease of ``submitter``'s that this scheduler did not place began (seen in the log)."""
        self.running[submitter] = self.running.get(submitter, 0) + 1

    def ended(self, submitter: str) -> None:
        """A lease (or a reservation) of ``submitter``'s ended: it may run one more."""
        n = self.running.get(submitter, 0) - 1
        if n > 0:
            self.running[submitter] = n
        else:
            self.running.pop(submitter, None)
        levels = self._parked.get(submitter)
        if levels and max(n, 0) < self.running_limit(submitter):
            del self._parked[submitter]
            for prio in levels:
                level = self._levels[prio]
                if level.queues.get(submitter):
                    start = max(level.passes.get(submitter, 0.0), level.vtime)
                    level.passes[submitter] = start
                    heapq.heappush(level.heap, (start, next(self._seq), submitter))

    def _capped(self, submitter: str) -> bool:
        return self.running.get(submitter, 0) >= self.running_limit(submitter)

    def set_weight(self, submitter: str, weight: float) -> None:
        """A submitter's fair-share weight (default 1)."""
        self._weights[submitter] = max(weight, 1e-6)

    def enqueue(self, task: PendingTask, *, front: bool = False) -> None:
        """Queue a task (again); a task already pending is left where it is.

        ``front``: at the head of its submitter's queue (a replica under verification: a result is
        held for it, and the job cannot finish until it runs).
        """
        if task.task_id in self._pending:
            return
        if not task.order:
            task.order = next(self._seq)
        task.aside = False
        self._pending[task.task_id] = task
        self._push(task, front=front)

    def discard(self, task_id: str) -> None:
        """Forget a task (leased elsewhere, cancelled); its queue entry is dropped lazily.

        A task handed back for a provider's free slot and forgotten before it was placed leaves that
        slot owed to the tasks still waiting aside: they are offered it again now (else the slot
        would stay free while they wait, until another slot frees up).
        """
        t = self._pending.pop(task_id, None)
        if t is None or t.handed_to is None:
            return
        p = self.providers.get(t.handed_to)
        t.handed_to = None
        if p is not None and p.available and p.key in self._classes:
            self._unblock(self._classes[p.key], p)

    def pending(self) -> int:
        """Tasks waiting for a provider."""
        return len(self._pending)

    def pending_by_class(self) -> dict[tuple[str, str], int]:
        """Tasks waiting for a provider by the class of provider they need: (backend, workload).

        One pass over the queue: for a scrape, not for the hot path.
        """
        out: dict[tuple[str, str], int] = {}
        for t in self._pending.values():
            key = (t.resources.backend, t.workload)
            out[key] = out.get(key, 0) + 1
        return out

    def _push(self, task: PendingTask, *, front: bool) -> None:
        level = self._levels[task.priority]
        q = level.queues.get(task.submitter)
        if q is None:
            q = level.queues[task.submitter] = deque()
        was_empty = not q
        if front:
            q.appendleft(task)
        else:
            q.append(task)
        if was_empty:
            start = max(level.passes.get(task.submitter, 0.0), level.vtime)
            level.passes[task.submitter] = start
            heapq.heappush(level.heap, (start, next(self._seq), task.submitter))

    def _owed(self, p: ProviderInfo) -> int:
        """Free slots of ``p`` that no task handed back for them is already queued to take.

        A task handed back for ``p``, set aside again, then handed back for another provider's slot
        is that provider's now (``handed_to``): counted here too, it would keep ``p``'s free slot
        from the tasks still waiting aside (a queued task waiting beside a free slot that fits it).
        """
        if p.handed:
            p.handed = [
                t
                for t in p.handed
                if self._pending.get(t.task_id) is t and not t.aside and t.handed_to == p.provider_id
            ]
        return p.free - len(p.handed)

    def _unblock(self, cls: _Class, p: ProviderInfo) -> None:
        """``p`` in ``cls`` has free slots: give back that many waiting tasks of each shape it suits.

        Only as many as could fit: releasing every waiting task on every freed slot would make a
        backlog cost O(n) per completion. Tasks already handed back for ``p`` and still queued count
        against its free slots, so a slot is never offered twice (which would let the second task in
        line overtake the first at the front of the queue).
        """
        if not self._blocked:
            return
        free = self._owed(p)
        if free <= 0:
            return
        for shape in list(self._blocked):
            waiting = self._blocked[shape]
            if cls not in self._eligible_classes(shape, waiting.heap[0][3]):
                continue
            back: list[PendingTask] = []
            while waiting.heap and len(back) < free:
                t = heapq.heappop(waiting.heap)[3]
                if self._pending.get(t.task_id) is t:
                    t.aside = False
                    back.append(t)
            if not waiting.heap:
                del self._blocked[shape]
            p.handed.extend(back)
            for t in reversed(back):
                t.handed_to = p.provider_id
                self._push(t, front=True)

    def _wait_aside(self, shape: tuple[object, ...], t: PendingTask, level: _Level) -> None:
        """Set ``t`` aside until its shape can be placed, tagged by priority and fair share."""
        waiting = self._blocked.get(shape)
        if waiting is None:
            waiting = self._blocked[shape] = _Waiting()
        t.aside = True
        if t.tag is None:
            key = (t.priority, t.submitter)
            start = max(level.passes.get(t.submitter, 0.0), level.vtime, waiting.tags.get(key, 0.0))
            t.tag = start + 1.0 / self._weights.get(t.submitter, 1.0)
            waiting.tags[key] = t.tag
        # A task handed back and set aside again keeps its place: it does not go behind those that
        # waited after it.
        heapq.heappush(waiting.heap, (-t.priority, t.tag, t.order, t))

    def _any_free(self) -> bool:
        """Whether any available provider has a free slot (one look per class)."""
        return any(self._best_in(cls) is not None for cls in list(self._classes.values()))

    def _reoffer(self) -> None:
        """Give waiting tasks back to every class that has a free slot now.

        ``_unblock`` returns only as many tasks as a freed slot can take; if one of those is then
        cancelled before the next round, the slot would stay free while the tasks behind it still
        wait aside. Looking again at the start of each round closes that gap, at the cost of one pass
        over the classes (few) for the waiting shapes.
        """
        if not self._blocked:
            return
        for cls in list(self._classes.values()):
            p = self._best_in(cls)
            if p is not None:
                self._unblock(cls, p)

    def _eligible_classes(self, shape: tuple[object, ...], t: PendingTask) -> list[_Class]:
        found = self._eligible.get(shape)
        if found is None:
            found = [
                c
                for c in self._classes.values()
                if not misfits(c.capabilities, t.resources, t.workload, t.max_price_micros, t.submitter)
            ]
            self._eligible[shape] = found
        return found

    def _score(self, t: PendingTask, p: ProviderInfo) -> tuple[float, float]:
        predicted = self.runtime.predict(t.workload, t.estimate, p.calibration, p.provider_id, p.dclass)
        price = p.capabilities.price_micros
        # Price relative to the ceiling, or to 1 credit per GPU-second when there is none.
        ceiling = t.max_price_micros or 1_000_000
        factor = (
            1.0
            + self.price_weight * (price / max(ceiling, 1))
            + self.reputation_weight * (1.0 - p.reputation)
            + 0.01 * p.used / p.capabilities.slots
        )
        return predicted * factor, predicted

    def _allowed_in(self, cls: _Class, exclude: frozenset[str]) -> ProviderInfo | None:
        """The best provider of ``cls`` with a free slot that is not excluded: O(members), only for
        replicas (the heap's best is excluded)."""
        best: ProviderInfo | None = None
        for pid in cls.members:
            if pid in exclude:
                continue
            p = self.providers[pid]
            if (
                p.available
                and p.free > 0
                and (best is None or (self._rank(p), pid) < (self._rank(best), best.provider_id))
            ):
                best = p
        return best

    def _place(self, t: PendingTask) -> Assignment | None:
        best: tuple[float, float, ProviderInfo] | None = None
        for cls in self._eligible_classes(t.shape, t):
            p = self._best_in(cls)
            if p is not None and p.provider_id in t.exclude:
                p = self._allowed_in(cls, t.exclude)
            if p is None:
                continue
            score, predicted = self._score(t, p)
            if best is None or score < best[0]:
                best = (score, predicted, p)
        if best is None:
            return None
        _, _, p = best
        eta = self.runtime.predict_interval(t.workload, t.estimate, p.calibration, p.provider_id, p.dclass)
        cls = self._classes[p.key]
        top = self._best_in(cls)
        p.used += 1
        if top is p:
            heapq.heappop(cls.heap)
        # else: its heap entry (if any) is stale now (its rank changed) and is skipped when met.
        self._offer(p, unblock=False)
        return Assignment(t, p.provider_id, eta.seconds, p.capabilities.price_micros, eta.low, eta.high)

    def _next(self, level: _Level) -> PendingTask | None:
        """Pop the next task of this level by fair share, or None when the level is empty.

        The submitter leaves the heap until :meth:`_requeue` puts it back, charged or not.
        """
        while level.heap:
            pass_, _, submitter = heapq.heappop(level.heap)
            q = level.queues.get(submitter)
            if not q or abs(level.passes.get(submitter, 0.0) - pass_) > 1e-12:
                continue
            level.vtime = pass_
            while q:
                task = q.popleft()
                if task.task_id in self._pending:
                    return task
            # Only discarded tasks were left: the submitter is idle.
        return None

    def _requeue(self, level: _Level, submitter: str, *, charge: bool) -> None:
        if charge:
            level.passes[submitter] = level.passes.get(submitter, level.vtime) + 1.0 / self._weights.get(submitter, 1.0)
        if level.queues.get(submitter):
            heapq.heappush(level.heap, (level.passes[submitter], next(self._seq), submitter))

    def assign(self, limit: int = 1_000_000) -> list[Assignment]:
        """Place as many queued tasks as providers can take now (up to ``limit``); reserves slots."""
        out: list[Assignment] = []
        full: set[tuple[object, ...]] = set()  # shapes that found no provider in this round
        self._reoffer()
        for prio in _LEVELS:
            level = self._levels[prio]
            while len(out) < limit:
                t = self._next(level)
                if t is None:
                    break
                if self._capped(t.submitter):
                    # At its running quota: parked, its queue untouched, until one of its leases ends.
                    level.queues[t.submitter].appendleft(t)
                    self._parked.setdefault(t.submitter, set()).add(prio)
                    continue
                shape = t.shape
                try:
                    a = None if shape in full else self._place(t)
                except BaseException:
                    # A bug while placing must not strand the queue: the task and its submitter go
                    # back where they were, uncharged, before the error goes up.
                    level.queues[t.submitter].appendleft(t)
                    self._requeue(level, t.submitter, charge=False)
                    raise
                self.decisions += 1
                if a is None:
                    full.add(shape)
                    if not self._any_free():
                        # Saturated: nothing can be placed this round. The task goes back to the head
                        # of its fair queue, uncharged, and the round ends.
                        level.queues[t.submitter].appendleft(t)
                        self._requeue(level, t.submitter, charge=False)
                        return out
                    self._wait_aside(shape, t, level)
                    self._requeue(level, t.submitter, charge=False)
                    continue
                del self._pending[t.task_id]
                self.running[t.submitter] = self.running.get(t.submitter, 0) + 1
                self._requeue(level, t.submitter, charge=True)
                out.append(a)
            if len(out) >= limit:
                break
        return out

    def predict(
        self,
        workload: str,
        estimate: Estimate,
        resources: Resources,
        max_price_micros: int | None = None,
        submitter: str = "",
    ) -> Prediction | None:
        """The prediction for one such task of ``submitter``'s on the fastest class that may run it
        (under the price ceiling; one available member of each looked at), or None if none may."""
        probe = PendingTask("", submitter, 5, workload, resources, estimate, max_price_micros)
        best: Prediction | None = None
        for cls in self._eligible_classes(probe.shape, probe):
            live = [m for m in cls.members if self.providers[m].available]
            for pid in [min(live)] if live else []:
                p = self.providers[pid]
                s = self.runtime.predict_interval(workload, estimate, p.calibration, pid, p.dclass)
                if best is None or s.seconds < best.seconds:
                    best = s
        return best

    def eligible(
        self, resources: Resources, workload: str, max_price_micros: int | None = None, submitter: str = ""
    ) -> list[ProviderInfo]:
        """Available providers that could run such a task of ``submitter``'s, free or busy (by id)."""
        probe = PendingTask("", submitter, 5, workload, resources, Estimate(), max_price_micros)
        found = [
            self.providers[m]
            for cls in self._eligible_classes(probe.shape, probe)
            for m in cls.members
            if self.providers[m].available
        ]
        return sorted(found, key=lambda p: p.provider_id)

    def queued(self, limit: int = 5_000) -> dict[tuple[int, str], list[float]]:
        """(priority, submitter) -> the predicted seconds of its queued tasks, in the order they were
        queued (the first ``limit`` tasks in all, so a job's acceptance costs at most that; each on the
        fastest class that could run it)."""
        out: dict[tuple[int, str], list[float]] = {}
        seconds: dict[tuple[object, ...], float] = {}
        for n, t in enumerate(self._pending.values()):
            if n >= limit:
                break
            e = t.estimate
            key = (*t.shape, e.flops, e.bytes_moved, e.fixed_seconds, e.precision)
            d = seconds.get(key)
            if d is None:
                p = self.predict(t.workload, t.estimate, t.resources, t.max_price_micros)
                d = seconds[key] = p.seconds if p is not None else 0.0
            out.setdefault((t.priority, t.submitter), []).append(d)
        return out

    def capacity(self, resources: Resources, workload: str, submitter: str = "") -> int:
        """Slots across available providers that could run such a task of ``submitter``'s."""
        return sum(p.capabilities.slots for p in self.eligible(resources, workload, None, submitter))


def _no_running_limit(submitter: str) -> int:
    """No limit on a submitter's running tasks (a module function: a snapshot pickles the scheduler)."""
    return 1 << 62
