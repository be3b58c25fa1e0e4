"""Random orchestration histories keep the invariants, and work keeps moving (hypothesis stateful testing).

The kernel below runs the orchestrator's real parts: the real ``ActorShell`` for each kind of
aggregate (FIFO per id, activation from the store, optimistic appends, exactly-once commands) over a
``MemoryEventStore`` that is as strict as JetStream, and the real ``Core`` (world, reactions, scheduler,
timers), fed from the log exactly as the orchestrator feeds it (events are applied when read back from
the store). Only the clock and the order of things are the test's: a fake clock, and one step at a
time, so hypothesis can shrink a failure to a short story.

Each rule is something the outside world does. The invariants are safety (one live lease per task,
capability, slots, one terminal event per task) and liveness: a genuine lease holder's report is
appended; no queued task waits while a capable provider has a free slot; nothing owed by a reaction
is left undone; and, at the end, once the world calms down, every job ends without being cancelled.
``crash_and_restart`` drops every in-memory state (sometimes between an append and its reactions),
rebuilds from the log with ``live=False`` and runs ``reconcile``, as the orchestrator does at start.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter, deque
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from actors.core import Core
from actors.errors import DomainError
from actors.ids import split_event_id
from actors.job import ENDED, CancelJob, SubmitJob, job_decider, unsettled
from actors.provider import (
    DrainProvider,
    HeartbeatLapsed,
    HeartbeatSeen,
    LeaveProvider,
    RegisterProvider,
    provider_decider,
)
from actors.reactions import Intent
from actors.shell import ActorShell
from actors.snapshot import SnapshotFile, restore
from actors.task import TERMINAL, ReportCompleted, ReportFailed, ReportProgress, ReportStarted, task_decider
from actors.world import LIVE_LEASE, World
from events import Envelope, MemoryEventStore
from events.job import CountSplit, JobSpec, ProviderCredited, SubmitterCharged, UsageMetered
from events.task import TaskCancelled, TaskCompleted, TaskFailed, TaskProgressed, TaskStarted
from events.types import Capabilities, Resources, ResultRef, RetryPolicy
from tests.factories import T0

DECIDERS = {"job": job_decider, "task": task_decider, "provider": provider_decider}
RESULT = ResultRef(sha256="a" * 64, size=1, inline=1)


async def _collect(it: AsyncIterator[Envelope]) -> list[Envelope]:
    return [e async for e in it]


class Crashed(Exception):
    """The kernel's process died (``Kernel.crash_after_snapshot``)."""


class Kernel:
    """The orchestrator's shells and core over one in-memory log, run one step at a time."""

    def __init__(self, store: MemoryEventStore | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.new_event_loop()
        self.store = store or MemoryEventStore()
        self.shells = {kind: ActorShell(self.store, d, source="kernel") for kind, d in DECIDERS.items()}
        self.core = Core()
        self.position = 0
        self.now = T0
        self.queue: deque[Intent] = deque()
        self.ids = itertools.count(1)
        self.live = True
        #: The core asked for a scheduling round (the orchestrator's ``_kick``).
        self.kick = False
        #: A snapshot of the core (``actors.snapshot``) and the log position it stands at; taken at
        #: the moment ``snap_at`` names: "schedule" (slots reserved for leases not in the log yet) or
        #: "follow" (after applying events whose reactions, task creations among them, are still owed).
        self.snapshot: tuple[bytes, int] | None = None
        self.snap_at = ""
        self._draining = False

    @property
    def world(self) -> World:
        return self.core.world

    @property
    def log(self) -> list[Envelope]:
        return self.loop.run_until_complete(_collect(self.store.read_all(0)))

    def state(self, kind: str, agg: str) -> Any:
        table: dict[str, Any] = {"job": self.world.jobs, "task": self.world.tasks, "provider": self.world.providers}[
            kind
        ]
        return table.get(agg) or DECIDERS[kind].initial_state()

    def follow(self) -> list[Envelope]:
        """Apply what the log holds beyond our position, as the orchestrator's follower does."""
        new = self.loop.run_until_complete(_collect(self.store.read_all(self.position)))
        for env in new:
            self.position = env.sequence
            fx = self.core.apply(env, live=self.live)
            self.queue.extend(fx.intents)
            self.kick |= fx.schedule
        if new and self.snap_at == "follow" and self.core.windows.being_created():
            self.take_snapshot()
        return new

    def take_snapshot(self) -> None:
        self.snapshot, self.snap_at = (SnapshotFile.dumps(self.core), self.position), ""
        if self.crash_after_snapshot:
            raise Crashed

    #: The process dies right after its next snapshot (what it was doing is never appended).
    crash_after_snapshot = False

    def run(self, kind: str, agg: str, cmd: Any, *, react: bool = True) -> list[Envelope]:
        """The command through the real shell; the new events are then read back and applied."""
        try:
            handled = self.loop.run_until_complete(self.shells[kind].handle(agg, cmd))
        except DomainError:
            handled = None
        self.follow()
        if react:
            self.drain()
        return list(handled.events) if handled is not None else []

    def drain(self) -> None:
        """Run every owed reaction, and a scheduling round whenever the core asks for one."""
        if self._draining:
            return
        self._draining = True
        try:
            while self.queue or self.kick:
                while self.queue:
                    i = self.queue.popleft()
                    self.run(i.kind, i.aggregate_id, i.command, react=False)
                if self.kick:
                    self.kick = False
                    self._schedule_once()
        finally:
            self._draining = False

    def cid(self) -> str:
        return f"c{next(self.ids)}"

    def schedule(self) -> None:
        self.kick = True
        self.drain()

    def _schedule_once(self) -> None:
        plans = self.core.plan_leases(self.now, 30.0, lambda: f"L{next(self.ids)}")
        if not plans:
            return
        if self.snap_at == "schedule":
            self.take_snapshot()
        results = self.loop.run_until_complete(
            self.shells["task"].handle_many([(a.task.task_id, cmd) for a, cmd in plans])
        )
        self.follow()
        for (_, cmd), r in zip(plans, results, strict=True):
            if isinstance(r, Exception) or not r.events:
                self.core.lease_refused(cmd.lease_id)
                self.kick = True

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        for intent in self.core.due(self.now):
            self.run(intent.kind, intent.aggregate_id, intent.command)

    def restart(self, *, from_snapshot: bool = False) -> Kernel:
        """A new process on the same log: rebuilt with ``live=False`` (from the snapshot, if
        ``from_snapshot``, and the log after it), then ``reconcile``."""
        k = Kernel(self.store, self.loop)
        k.now, k.ids = self.now, self.ids
        k.snapshot = self.snapshot
        if from_snapshot and self.snapshot is not None:
            body, k.position = self.snapshot
            k.core = restore(SnapshotFile.loads(body))
        k.live = False
        k.follow()
        k.live = True
        k.queue.clear()
        for intent in k.core.reconcile(k.now):
            k.run(intent.kind, intent.aggregate_id, intent.command)
        k.kick = True  # a scheduling round at start, as the orchestrator's (the tail may have been empty)
        k.drain()
        return k

    def owed(self) -> list[str]:
        """What reconcile says is owed and would still change something (it should be nothing)."""
        out = []
        for i in self.core.reconcile(self.now):
            try:
                events = DECIDERS[i.kind].decide(i.command, self.state(i.kind, i.aggregate_id))
            except DomainError:
                continue
            if events:
                out.append(
                    f"{i.kind}.{i.aggregate_id}: {type(i.command).__name__} -> {[type(e).__name__ for e in events]}"
                )
        return out


def live_leases(w: World) -> list[tuple[str, str]]:
    return [(tid, t.lease.provider_id) for tid, t in w.tasks.items() if t.status in LIVE_LEASE and t.lease is not None]


class Orchestration(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel()
        self.jobs = 0
        self.job_ids: list[str] = []
        self.providers = 0
        self.former: list[tuple[str, str, str]] = []  # (task, lease, provider) of leases that ended

    @initialize()
    def one_provider(self) -> None:
        self.join(backend="cpu", slots=2)

    # ---- the outside world -----------------------------------------------------------------------

    @rule(backend=st.sampled_from(["cpu", "cuda"]), slots=st.integers(1, 3))
    def join(self, backend: str, slots: int) -> None:
        self.providers += 1
        pid = f"p{self.providers}"
        caps = Capabilities(
            backend=backend,  # type: ignore[arg-type]
            gpu_model="x",
            vram_mb=8000 if backend == "cpu" else 40000,
            compute_capability=0.0 if backend == "cpu" else 8.0,
            slots=slots,
            workloads=("noop", "sleep"),
        )
        cmd = RegisterProvider(command_id=self.k.cid(), at=self.k.now, provider_id=pid, name=pid, capabilities=caps)
        self.k.run("provider", pid, cmd)

    @rule(
        n=st.integers(1, 4),
        who=st.sampled_from(["ann", "bob", "cat"]),
        cuda=st.sampled_from([False, False, False, True]),
        attempts=st.integers(1, 3),
        deadline=st.none() | st.integers(5, 200),
    )
    def submit(self, n: int, who: str, cuda: bool, attempts: int, deadline: int | None) -> None:
        self.jobs += 1
        spec = JobSpec(
            workload="noop",
            split=CountSplit(count=n),
            resources=Resources(backend="cuda" if cuda else "any", min_vram_mb=10000 if cuda else 0),
            retry=RetryPolicy(max_attempts=attempts, backoff_s=1.0, max_lost_leases=3),
            deadline=self.k.now + timedelta(seconds=deadline) if deadline else None,
            max_price_micros=None,
        )
        job_id = f"{who}.j{self.jobs}"
        self.job_ids.append(job_id)
        cmd = SubmitJob(command_id=self.k.cid(), at=self.k.now, job_id=job_id, spec=spec, submitter=who)
        self.k.run("job", job_id, cmd)

    @rule()
    def schedule(self) -> None:
        self.k.schedule()

    @rule(seconds=st.sampled_from([0.5, 2.0, 31.0, 120.0]))
    def time_passes(self, seconds: float) -> None:
        self.k.advance(seconds)

    def _pick(self, data: st.DataObject, status: frozenset[str] = LIVE_LEASE) -> tuple[str, Any] | None:
        tasks = sorted((tid, t) for tid, t in self.k.world.tasks.items() if t.status in status and t.lease)
        return data.draw(st.sampled_from(tasks)) if tasks else None

    @rule(data=st.data())
    def report_started(self, data: st.DataObject) -> None:
        if (picked := self._pick(data)) is None:
            return
        tid, t = picked
        cmd = ReportStarted(
            command_id=self.k.cid(), at=self.k.now, lease_id=t.lease.lease_id, provider_id=t.lease.provider_id
        )
        out = self.k.run("task", tid, cmd)
        # Liveness: the genuine holder's first start is a fact.
        assert t.status != "leased" or [type(e.data) for e in out] == [TaskStarted], out

    @rule(data=st.data(), fraction=st.floats(0.0, 1.0))
    def report_progress(self, data: st.DataObject, fraction: float) -> None:
        if (picked := self._pick(data)) is None:
            return
        tid, t = picked
        cmd = ReportProgress(
            command_id=self.k.cid(),
            at=self.k.now,
            lease_id=t.lease.lease_id,
            provider_id=t.lease.provider_id,
            fraction=fraction,
        )
        out = self.k.run("task", tid, cmd)
        assert TaskProgressed in [type(e.data) for e in out], "a genuine progress report was not recorded"

    @rule(data=st.data(), twice=st.booleans())
    def report_completed(self, data: st.DataObject, twice: bool) -> None:
        if (picked := self._pick(data)) is None:
            return
        tid, t = picked
        cmd = ReportCompleted(
            command_id=self.k.cid(),
            at=self.k.now,
            lease_id=t.lease.lease_id,
            provider_id=t.lease.provider_id,
            result=RESULT,
            gpu_ms=1200,
        )
        out = self.k.run("task", tid, cmd)
        assert [type(e.data) for e in out] == [TaskCompleted], f"a genuine completion was not recorded: {out}"
        if twice:  # the same completion again, as a new intake message: idempotent
            self.k.run(
                "task",
                tid,
                ReportCompleted(**{**cmd.__dict__, "command_id": self.k.cid()})
                if False
                else cmd.__class__(
                    command_id=self.k.cid(),
                    at=cmd.at,
                    lease_id=cmd.lease_id,
                    provider_id=cmd.provider_id,
                    result=RESULT,
                    gpu_ms=1200,
                ),
            )

    @rule(data=st.data(), reason=st.sampled_from(["worker_crashed", "timeout", "invalid_params", "out_of_memory"]))
    def report_failed(self, data: st.DataObject, reason: str) -> None:
        if (picked := self._pick(data)) is None:
            return
        tid, t = picked
        cmd = ReportFailed(
            command_id=self.k.cid(),
            at=self.k.now,
            lease_id=t.lease.lease_id,
            provider_id=t.lease.provider_id,
            reason=reason,
        )  # type: ignore[arg-type]
        out = self.k.run("task", tid, cmd)
        assert TaskFailed in [type(e.data) for e in out], f"a genuine failure was not recorded: {out}"

    @rule(data=st.data())
    def forged_or_late_report(self, data: st.DataObject) -> None:
        tasks = sorted(self.k.world.tasks)
        if not tasks:
            return
        tid = data.draw(st.sampled_from(tasks))
        lease = data.draw(st.sampled_from(["forged-lease", *(lid for t, lid, _ in self.former if t == tid)]))
        provider = data.draw(st.sampled_from([f"p{i}" for i in range(1, self.providers + 1)] + ["mallory"]))
        t = self.k.world.tasks[tid]
        if (
            t.lease is not None
            and t.lease.lease_id == lease
            and t.lease.provider_id == provider
            and t.status in LIVE_LEASE
        ):
            return  # that would be the genuine holder
        before = sum(1 for e in self.k.log if isinstance(e.data, TaskCompleted) and e.subject == f"task.{tid}")
        cmd = ReportCompleted(
            command_id=self.k.cid(), at=self.k.now, lease_id=lease, provider_id=provider, result=RESULT, gpu_ms=1
        )
        out = self.k.run("task", tid, cmd)
        after = sum(1 for e in self.k.log if isinstance(e.data, TaskCompleted) and e.subject == f"task.{tid}")
        assert after == before, "a forged or late report completed a task"
        assert all(e.type == "TaskResultRejected" for e in out)

    @rule(data=st.data())
    def lose_provider(self, data: st.DataObject) -> None:
        online = sorted(p for p, s in self.k.world.providers.items() if s.status in ("online", "draining"))
        if online:
            pid = data.draw(st.sampled_from(online))
            self._remember_leases(pid)
            self.k.run("provider", pid, HeartbeatLapsed(command_id=self.k.cid(), at=self.k.now))

    @rule(data=st.data())
    def provider_returns(self, data: st.DataObject) -> None:
        lost = sorted(p for p, s in self.k.world.providers.items() if s.status == "lost")
        if lost:
            self.k.run(
                "provider", data.draw(st.sampled_from(lost)), HeartbeatSeen(command_id=self.k.cid(), at=self.k.now)
            )

    @rule(data=st.data(), leave=st.booleans())
    def drain_or_leave(self, data: st.DataObject, leave: bool) -> None:
        live = sorted(p for p, s in self.k.world.providers.items() if s.status != "left")
        if live:
            pid = data.draw(st.sampled_from(live))
            self._remember_leases(pid)
            cmd: Any = LeaveProvider if leave else DrainProvider
            self.k.run("provider", pid, cmd(command_id=self.k.cid(), at=self.k.now))

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.job_ids:
            job_id = data.draw(st.sampled_from(self.job_ids))
            who = job_id.split(".")[0]
            self.k.run("job", job_id, CancelJob(command_id=self.k.cid(), at=self.k.now, reason="user", requester=who))

    @rule(when=st.sampled_from(["now", "schedule", "follow"]))
    def take_snapshot(self, when: str) -> None:
        """A snapshot of the core, now or in the middle of the next scheduling round or reaction."""
        if when == "now":
            self.k.take_snapshot()
        else:
            self.k.snap_at = when

    @rule(when=st.sampled_from(["schedule", "follow"]), who=st.sampled_from(["ann", "bob"]))
    def crash_right_after_a_snapshot(self, when: str, who: str) -> None:
        """A snapshot in the middle of a scheduling round (slots reserved for leases never appended) or
        of a submission's reactions (tasks being created, never appended), and the process dies then:
        restarted from the snapshot and the log after it, it is as if rebuilt from the whole log."""
        k = self.k
        k.snap_at, k.crash_after_snapshot = when, True
        try:
            self.submit(n=3, who=who, cuda=False, attempts=2, deadline=None)
        except Crashed:
            pass
        else:
            return  # nothing to snapshot in the middle of (nothing placed, or nothing owed)
        finally:
            k.crash_after_snapshot, k.snap_at = False, ""
        event(f"crashed right after a snapshot at {when}")
        self.k = k.restart(from_snapshot=True)
        full = self.k.restart()  # (on the log as the restarted one left it: owing nothing, it adds nothing)
        assert self.k.world.tasks == full.world.tasks and self.k.world.jobs == full.world.jobs
        assert self.k.world.active == full.world.active
        assert self.k.core.scheduler.queued(10_000) == full.core.scheduler.queued(10_000)
        assert self.k.core.windows.usage(who) == full.core.windows.usage(who)

    @rule(data=st.data(), mid_step=st.booleans(), from_snapshot=st.booleans())
    def crash_and_restart(self, data: st.DataObject, mid_step: bool, from_snapshot: bool) -> None:
        """The process dies and another starts on the same log; with ``mid_step``, between a genuine
        completion's append and its reactions (metering, the job's end, settlement are then owed);
        ``from_snapshot``, from the last snapshot and the log after it rather than the whole log."""
        before = len(self.k.log)
        if mid_step and (picked := self._pick(data)) is not None:
            tid, t = picked
            cmd = ReportCompleted(
                command_id=self.k.cid(),
                at=self.k.now,
                lease_id=t.lease.lease_id,
                provider_id=t.lease.provider_id,
                result=RESULT,
                gpu_ms=700,
            )
            out = self.k.run("task", tid, cmd, react=False)
            assert [type(e.data) for e in out] == [TaskCompleted]
            before += 1
        old_world = self.k.world
        expected = self.k.restart() if from_snapshot and self.k.snapshot is not None else None
        self.k = self.k.restart(from_snapshot=from_snapshot)
        if expected is not None:
            # From a snapshot, the same state as from the whole log (reconciled the same way).
            assert self.k.world.tasks == expected.world.tasks and self.k.world.jobs == expected.world.jobs
            assert self.k.world.active == expected.world.active
            assert self.k.core.scheduler.queued(10_000) == expected.core.scheduler.queued(10_000)
        log = self.k.log
        if not mid_step:
            # Nothing was owed: a restart alone must not write anything (nothing done twice).
            assert len(log) == before, [e.type for e in log[before:]]
        assert self.k.world.tasks.keys() >= old_world.tasks.keys()

    def _remember_leases(self, pid: str) -> None:
        for tid in self.k.world.active.get(pid, ()):
            t = self.k.world.tasks[tid]
            if t.lease is not None:
                self.former.append((tid, t.lease.lease_id, pid))

    # ---- invariants ------------------------------------------------------------------------------

    @invariant()
    def at_most_one_live_lease_per_task(self) -> None:
        holders: Counter[str] = Counter()
        for tids in self.k.world.active.values():
            holders.update(tids)
        assert all(n == 1 for n in holders.values()), holders
        assert {t for t, _ in live_leases(self.k.world)} == set(holders)

    @invariant()
    def leases_only_to_capable_providers(self) -> None:
        for tid, pid in live_leases(self.k.world):
            spec = self.k.world.tasks[tid].spec
            caps = self.k.world.providers[pid].capabilities
            assert spec is not None and caps is not None
            r = spec.resources
            assert r.backend in ("any", caps.backend)
            assert caps.vram_mb >= r.min_vram_mb and caps.compute_capability >= r.min_compute_capability

    @invariant()
    def no_provider_over_its_slots(self) -> None:
        for pid, tids in self.k.world.active.items():
            caps = self.k.world.providers[pid].capabilities
            assert caps is not None and len(tids) <= caps.slots, (pid, len(tids))

    @invariant()
    def at_most_one_terminal_event_per_task(self) -> None:
        terminal = Counter(
            e.subject
            for e in self.k.log
            if isinstance(e.data, TaskCompleted | TaskCancelled) or (isinstance(e.data, TaskFailed) and e.data.terminal)
        )
        assert all(n == 1 for n in terminal.values()), terminal.most_common(3)

    @invariant()
    def event_ids_are_unique_and_name_their_command(self) -> None:
        log = self.k.log
        ids = [e.id for e in log]
        assert len(ids) == len(set(ids))
        assert all(split_event_id(e.id) for e in log[-20:])

    @invariant()
    def no_queued_task_waits_while_a_capable_provider_has_a_free_slot(self) -> None:
        w = self.k.world
        for tid, t in w.tasks.items():
            if t.status != "queued" or t.spec is None:
                continue
            r = t.spec.resources
            for pid, p in w.providers.items():
                caps = p.capabilities
                if p.status != "online" or caps is None or len(w.active.get(pid, ())) >= caps.slots:
                    continue
                fits = (
                    r.backend in ("any", caps.backend)
                    and caps.vram_mb >= r.min_vram_mb
                    and caps.compute_capability >= r.min_compute_capability
                    and t.spec.workload in caps.workloads
                )
                assert not fits, f"task {tid} waits while {pid} has a free slot that fits it"

    @invariant()
    def nothing_owed_is_left_undone(self) -> None:
        assert self.k.owed() == []

    def teardown(self) -> None:
        k = self.k
        try:
            # Replaying the log gives the live state.
            replayed = World()
            for env in k.log:
                replayed.apply(env)
            assert replayed.tasks == k.world.tasks
            assert replayed.jobs == k.world.jobs
            assert replayed.providers == k.world.providers
            assert replayed.active == {p: s for p, s in k.world.active.items()}
            self._retiring_core_agrees(k.log)
            self._calm_down_until_every_job_ends()
            # Once every job is over, a retiring core (the orchestrator's) holds none of them.
            retiring = self._retiring_core_agrees(k.log)
            assert retiring.world.jobs == {} and retiring.world.tasks == {}, (retiring.world.jobs, retiring.world.tasks)
            for job_id in self.job_ids:
                stream = f"job.{job_id}"
                log = [e for e in k.log if e.subject == stream]
                metered = sum(e.data.amount_micros for e in log if isinstance(e.data, UsageMetered))
                charged = sum(e.data.amount_micros for e in log if isinstance(e.data, SubmitterCharged))
                credited = sum(e.data.amount_micros for e in log if isinstance(e.data, ProviderCredited))
                status = self.k.world.jobs[job_id].status
                assert metered == charged == credited, (job_id, status, metered, charged, credited)
        finally:
            self.k.loop.close()

    def _retiring_core_agrees(self, log: list[Envelope]) -> Core:
        """The log folded by a core that retires jobs that are over (the orchestrator's), event by event
        beside one that keeps them: after every event, each job it let go was over in the full view
        (ended, settled, every task ended and metered), and a late event of one changes nothing; at the
        end it holds the live ones exactly as the full core does, and owes and queues the same."""
        k = self.k
        full, retiring = Core(), Core(retire=True)
        for env in log:
            full.apply(env, live=False)
            retiring.apply(env, live=False)
            gone = full.world.jobs.keys() - retiring.world.jobs.keys()
            for job_id in gone - getattr(self, "_seen_gone", set()):
                job = full.world.jobs[job_id]
                assert job.status in (*ENDED, "rejected") and not unsettled(job), (job_id, job.status, env.type)
                for t in full.world.tasks_by_job.get(job_id, ()):
                    task = full.world.tasks[t]
                    assert task.status in TERMINAL and (task.status != "completed" or t in job.done), (t, env.type)
            self._seen_gone = gone
        self._seen_gone = set()
        w = retiring.world
        assert w.tasks == {t: s for t, s in k.world.tasks.items() if t in w.tasks}
        assert w.jobs == {j: s for j, s in k.world.jobs.items() if j in w.jobs}
        assert all(full.world.jobs[j].spec is None or j in w.jobs or j not in k.world.jobs for j in w.jobs)
        assert w.providers == k.world.providers and w.active == k.world.active
        assert w.retired_tasks == len(k.world.tasks) - len(w.tasks)
        assert w.intake_low == k.world.intake_low
        owed = sorted((i.kind, i.aggregate_id, type(i.command).__name__) for i in k.core.reconcile(k.now))
        assert sorted((i.kind, i.aggregate_id, type(i.command).__name__) for i in retiring.reconcile(k.now)) == owed
        assert retiring.scheduler.queued(10_000) == k.core.scheduler.queued(10_000)
        return retiring

    def _calm_down_until_every_job_ends(self) -> None:
        """Liveness: once providers come back, new capable ones join and every genuine holder finishes
        its work, every job must end by itself (completed, failed, or cancelled by its own deadline
        or its submitter), and every task with it: nobody cancels anything here."""
        k = self.k
        for pid, p in sorted(k.world.providers.items()):
            if p.status == "lost":
                k.run("provider", pid, HeartbeatSeen(command_id=k.cid(), at=k.now))
        self.join(backend="cuda", slots=3)
        self.join(backend="cpu", slots=3)
        for _ in range(60):
            if all(k.world.jobs[j].status in (*ENDED, "rejected") for j in self.job_ids):
                break
            for tid, t in sorted(k.world.tasks.items()):
                if t.status in LIVE_LEASE and t.lease is not None:
                    lease = t.lease
                    done = ReportCompleted(
                        command_id=k.cid(),
                        at=k.now,
                        lease_id=lease.lease_id,
                        provider_id=lease.provider_id,
                        result=RESULT,
                        gpu_ms=900,
                    )
                    k.run("task", tid, done)
            k.advance(31.0)
        stuck = {j: k.world.jobs[j].status for j in self.job_ids if k.world.jobs[j].status not in (*ENDED, "rejected")}
        assert not stuck, f"jobs that never end: {stuck}"
        for tid, t in k.world.tasks.items():
            assert t.status in TERMINAL, (tid, t.status)


Orchestration.TestCase.settings = settings(
    max_examples=int(os.environ.get("GPUFLEET_STATEFUL_EXAMPLES", "150")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOrchestration = Orchestration.TestCase


class LongOrchestration(Orchestration):
    """The same story, longer and many more times: ``pytest -m slow``."""


LongOrchestration.TestCase.settings = settings(
    max_examples=1000, stateful_step_count=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLongOrchestration = pytest.mark.slow(LongOrchestration.TestCase)
