"""Random orchestration histories keep the invariants (hypothesis stateful testing).

The kernel below runs the real deciders and the real orchestrator core (world, reactions, scheduler,
timers) synchronously, with a fake clock: no NATS, no asyncio. Each rule is something the outside
world does; the invariants are checked after every step and at the end.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from actors.core import Core
from actors.errors import DomainError
from actors.ids import event_id, split_event_id
from actors.job import CancelJob, SubmitJob, job_decider
from actors.provider import (
    DrainProvider,
    HeartbeatLapsed,
    HeartbeatSeen,
    LeaveProvider,
    RegisterProvider,
    provider_decider,
)
from actors.reactions import Intent
from actors.task import TERMINAL, ReportCompleted, ReportFailed, ReportProgress, ReportStarted, task_decider
from actors.world import LIVE_LEASE, World
from events import Envelope, new_envelope
from events.job import CountSplit, JobSpec, ProviderCredited, SubmitterCharged, UsageMetered
from events.task import TaskCancelled, TaskCompleted, TaskFailed
from events.types import Capabilities, Resources, ResultRef, RetryPolicy
from tests.factories import T0

DECIDERS = {"job": job_decider, "task": task_decider, "provider": provider_decider}
RESULT = ResultRef(sha256="a" * 64, size=1, inline=1)


class Kernel:
    """The orchestrator core plus the deciders, run synchronously on an in-memory log."""

    def __init__(self) -> None:
        self.core = Core()
        self.log: list[Envelope] = []
        self.now = T0
        self.queue: deque[Intent] = deque()
        self.applied: dict[str, set[str]] = {}
        self.ids = itertools.count(1)
        self._scheduling = False

    @property
    def world(self) -> World:
        return self.core.world

    def state(self, kind: str, agg: str) -> Any:
        table: dict[str, Any] = {"job": self.world.jobs, "task": self.world.tasks, "provider": self.world.providers}[
            kind
        ]
        return table.get(agg) or DECIDERS[kind].initial_state()

    def run(self, kind: str, agg: str, cmd: Any) -> list[Envelope]:
        stream = f"{kind}.{agg}"
        done = self.applied.setdefault(stream, set())
        if cmd.command_id in done:
            return []
        try:
            events = DECIDERS[kind].decide(cmd, self.state(kind, agg))
        except DomainError:
            return []
        out = []
        for i, e in enumerate(events):
            env = new_envelope(stream, e, id=event_id(cmd.command_id, i), source="kernel")
            env = env.at_position(len(self.log) + 1)
            self.log.append(env)
            fx = self.core.apply(env, live=True)
            self.queue.extend(fx.intents)
            out.append(env)
        if events:
            done.add(cmd.command_id)
        self.drain()
        return out

    def drain(self) -> None:
        while self.queue:
            i = self.queue.popleft()
            self.run(i.kind, i.aggregate_id, i.command)
        if not self._scheduling:
            # Like the orchestrator, place work after every change.
            self._scheduling = True
            try:
                self.schedule()
            finally:
                self._scheduling = False

    def cid(self) -> str:
        return f"c{next(self.ids)}"

    def schedule(self) -> None:
        for a, cmd in self.core.plan_leases(self.now, 30.0, lambda: f"L{next(self.ids)}"):
            if not self.run("task", a.task.task_id, cmd):
                self.core.lease_refused(cmd.lease_id)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        for intent in self.core.due(self.now):
            self.run(intent.kind, intent.aggregate_id, intent.command)


def live_leases(w: World) -> list[tuple[str, str]]:
    return [(tid, t.lease.provider_id) for tid, t in w.tasks.items() if t.status in LIVE_LEASE and t.lease is not None]


class Orchestration(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel()
        self.jobs = 0
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
            submitter=who,
            resources=Resources(backend="cuda" if cuda else "any", min_vram_mb=10000 if cuda else 0),
            retry=RetryPolicy(max_attempts=attempts, backoff_s=1.0, max_lost_leases=3),
            deadline=self.k.now + timedelta(seconds=deadline) if deadline else None,
            max_price_micros=None,
        )
        job_id = f"j{self.jobs}"
        self.k.run("job", job_id, SubmitJob(command_id=self.k.cid(), at=self.k.now, job_id=job_id, spec=spec))

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
        self.k.run("task", tid, cmd)

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
        self.k.run("task", tid, cmd)

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
        self.k.run("task", tid, cmd)
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
        self.k.run("task", tid, cmd)

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
        if self.jobs:
            job_id = f"j{data.draw(st.integers(1, self.jobs))}"
            self.k.run("job", job_id, CancelJob(command_id=self.k.cid(), at=self.k.now, reason="user"))

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
        ids = [e.id for e in self.k.log]
        assert len(ids) == len(set(ids))
        for e in self.k.log[-20:]:
            assert split_event_id(e.id) in self.k.applied[e.subject]

    def teardown(self) -> None:
        k = self.k
        # Replaying the log gives the live state.
        replayed = World()
        for env in k.log:
            replayed.apply(env)
        assert replayed.tasks == k.world.tasks
        assert replayed.jobs == k.world.jobs
        assert replayed.providers == k.world.providers
        assert replayed.active == {p: s for p, s in k.world.active.items()}
        # Stop everything: every task must reach exactly one terminal state, and the books balance.
        for j in range(1, self.jobs + 1):
            k.run("job", f"j{j}", CancelJob(command_id=k.cid(), at=k.now, reason="teardown"))
        for tid, t in k.world.tasks.items():
            assert t.status in TERMINAL, (tid, t.status)
        for job_id, job in k.world.jobs.items():
            stream = f"job.{job_id}"
            metered = sum(
                e.data.amount_micros for e in k.log if e.subject == stream and isinstance(e.data, UsageMetered)
            )
            charged = sum(
                e.data.amount_micros for e in k.log if e.subject == stream and isinstance(e.data, SubmitterCharged)
            )
            credited = sum(
                e.data.amount_micros for e in k.log if e.subject == stream and isinstance(e.data, ProviderCredited)
            )
            assert metered == charged == credited, (job_id, job.status, metered, charged, credited)


Orchestration.TestCase.settings = settings(
    max_examples=80, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestOrchestration = Orchestration.TestCase
