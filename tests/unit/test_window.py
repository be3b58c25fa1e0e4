"""Windows (``actors.window``): a job's tasks come into existence as its submitter's window frees up.

Driven through the orchestrator's own core (``actors.core.Core``) and the real deciders: every
command runs once, as the actor shells run it, and every event is folded as the log would fold it.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.core import Core
from actors.errors import DomainError
from actors.job import CancelJob, SubmitJob, job_decider
from actors.reactions import Intent
from actors.task import CancelTask, CreateTask, LeaseTask, task_decider
from actors.window import Windows
from events import new_envelope
from events.job import MAX_TASKS_PER_JOB, JobSpec
from events.subjects import task_id_of
from tests.factories import T0


class Net:
    """The core, fed one command at a time; ``hold`` keeps task creations back (a crash loses them)."""

    def __init__(self, window: int = 8) -> None:
        self.core = Core(window=window)
        self.n = 0
        self.appends = 0
        self.held: list[Intent] = []
        self.hold = False
        self.log: list[Any] = []

    @property
    def world(self) -> Any:
        return self.core.world

    def run(self, intent: Intent) -> None:
        work: deque[Intent] = deque([intent])
        while work:
            i = work.popleft()
            if self.hold and isinstance(i.command, CreateTask):
                self.held.append(i)
                continue
            decider: Any = task_decider if i.kind == "task" else job_decider
            table = self.world.tasks if i.kind == "task" else self.world.jobs
            try:
                events = decider.decide(i.command, table.get(i.aggregate_id) or decider.initial_state())
            except DomainError:
                continue
            if events:
                self.appends += 1
            for e in events:
                self.n += 1
                env = new_envelope(f"{i.kind}.{i.aggregate_id}", e, id=f"ev-{self.n}", source="tests")
                self.log.append(env)
                work.extend(self.core.apply(env, live=True).intents)

    def submit(self, who: str, name: str, count: int, priority: int = 5) -> str:
        job_id = f"{who}.{name}"
        spec = JobSpec.model_validate(
            {"workload": "noop", "split": {"kind": "count", "count": count}, "priority": priority, "timeout_s": 1.0}
        )
        cmd = SubmitJob(command_id=f"in-{self.n}", at=T0, job_id=job_id, spec=spec, submitter=who)
        self.run(Intent("job", job_id, cmd))
        return job_id

    def cancel(self, job_id: str) -> None:
        self.run(Intent("job", job_id, CancelJob(command_id=f"cx-{job_id}", at=T0, reason="test")))

    def lease(self, task_id: str) -> None:
        cmd = LeaseTask(
            command_id=f"ls-{task_id}",
            at=T0,
            lease_id=f"l-{task_id.replace('.', '-')}",
            provider_id="p1",
            expires_at=T0 + timedelta(seconds=30),
            predicted_s=1.0,
            price_micros=0,
        )
        self.run(Intent("task", task_id, cmd))

    def end(self, task_id: str) -> None:
        self.run(Intent("task", task_id, CancelTask(command_id=f"end-{task_id}", at=T0, reason="test")))

    def created(self, job_id: str) -> list[int]:
        return sorted(self.world.tasks[t].spec.index for t in self.world.tasks_by_job.get(job_id, ()))

    def queued(self, job_id: str) -> list[str]:
        return sorted(t for t in self.world.tasks_by_job.get(job_id, ()) if self.world.tasks[t].status == "queued")


def test_a_job_of_ten_million_tasks_is_accepted_with_constant_appends_and_a_window_of_tasks() -> None:
    net = Net(window=8)
    job = net.submit("alice", "huge", MAX_TASKS_PER_JOB)
    assert net.world.jobs[job].status == "accepted" and net.world.jobs[job].task_count == MAX_TASKS_PER_JOB
    # Submitted, accepted, and one window of creations: nothing grows with the task count.
    assert net.created(job) == list(range(8))
    assert net.appends == 2 + 8
    u = net.core.windows.usage("alice")
    assert (u.jobs, u.waiting, u.running, u.materialised) == (1, MAX_TASKS_PER_JOB, 0, 8)


def test_leasing_frees_the_window_and_the_next_tasks_are_created_in_index_order() -> None:
    net = Net(window=8)
    job = net.submit("alice", "big", 100)
    for t in net.queued(job)[:5]:
        net.lease(t)
    assert net.created(job) == list(range(13))  # 8, then 5 more as 5 were leased
    u = net.core.windows.usage("alice")
    assert (u.waiting, u.running, u.materialised) == (95, 5, 8)
    for t in sorted(net.world.tasks_by_job[job]):
        if net.world.tasks[t].status == "leased":
            net.end(t)
    assert net.core.windows.usage("alice").running == 0


def test_another_submitters_one_task_is_created_at_once_beside_a_flood() -> None:
    net = Net(window=8)
    for i in range(20):
        net.submit("mallory", f"j{i}", 100_000)
    victim = net.submit("victim", "one", 1)
    assert net.created(victim) == [0]
    assert net.world.tasks[task_id_of(victim, 0)].status == "queued"
    # The flood holds its window (shared by its jobs, one each at least), not its 2,000,000 tasks.
    flood = sum(len(net.world.tasks_by_job.get(f"mallory.j{i}", ())) for i in range(20))
    assert flood <= _bound(8, 20)


def test_a_job_that_cannot_run_never_holds_back_its_submitters_next_job() -> None:
    net = Net(window=8)
    stuck = net.submit("alice", "stuck", 1_000)  # nothing leases it (no provider fits, say)
    later = net.submit("alice", "later", 3)
    assert len(net.created(stuck)) >= 1
    assert net.created(later) == [0, 1, 2]


def test_a_full_window_still_gives_a_new_job_one_task() -> None:
    net = Net(window=8)
    full = net.submit("alice", "full", 8)  # all created, none leased: the window is full
    assert net.created(full) == list(range(8))
    later = net.submit("alice", "later", 3)
    assert net.created(later) == [0]


def test_a_cancelled_job_creates_nothing_more_and_stops_counting() -> None:
    net = Net(window=8)
    job = net.submit("alice", "big", 1_000)
    net.cancel(job)
    assert net.created(job) == list(range(8))
    assert all(net.world.tasks[t].status == "cancelled" for t in net.world.tasks_by_job[job])
    u = net.core.windows.usage("alice")
    assert (u.jobs, u.waiting, u.running, u.materialised) == (0, 0, 0, 0)
    assert net.core.windows.submitters() == []


def test_reconciling_after_a_crash_creates_the_lost_tasks_once() -> None:
    net = Net(window=8)
    job = net.submit("alice", "big", 100)
    net.hold = True
    for t in net.queued(job)[:4]:
        net.lease(t)
    assert len(net.held) == 4  # the creations of indices 8..11, lost with the process
    assert net.created(job) == list(range(8))
    # A restarted orchestrator: a fresh core folds the log (nothing planned), then reconciles.
    fresh = Core(window=8)
    for env in net.log:
        fresh.apply(env, live=False)
    owed = [i.command.created.index for i in fresh.reconcile(T0) if isinstance(i.command, CreateTask)]
    assert sorted(owed) == [8, 9, 10, 11]
    assert fresh.reconcile(T0) == [], "asked for once: not again"


def test_a_creation_lost_between_others_is_a_hole_that_reconciliation_fills() -> None:
    net = Net(window=8)
    job = net.submit("alice", "big", 100)
    net.hold = True
    for t in net.queued(job)[:4]:
        net.lease(t)
    net.hold = False
    net.run(net.held[3])  # index 11 landed; 8..10 were lost
    fresh = Core(window=8)
    for env in net.log:
        fresh.apply(env, live=False)
    owed = [i.command.created.index for i in fresh.reconcile(T0) if isinstance(i.command, CreateTask)]
    assert sorted(owed) == [8, 9, 10]


def _bound(window: int, jobs: int) -> float:
    """The most tasks a submitter with ``jobs`` jobs holds created and unleased: each job took at most
    its share when it was filled (window/k for the k-th), and shares only shrink: a harmonic sum."""
    return window * sum(1 / k for k in range(1, jobs + 1)) + jobs


@pytest.mark.parametrize("window", [0, -1])
def test_a_window_holds_at_least_one_task(window: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Windows(window)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["submit", "lease", "end", "cancel"]), st.integers(0, 2), st.integers(1, 40)),
        max_size=40,
    )
)
def test_usage_always_matches_the_log(steps: list[tuple[str, int, int]]) -> None:
    """Whatever happens, each submitter's usage is what the log says, and its window is bounded."""
    net = Net(window=6)
    jobs: list[str] = []
    for n, (op, who_i, k) in enumerate(steps):
        who = f"s{who_i}"
        if op == "submit":
            jobs.append(net.submit(who, f"j{n}", k))
        elif jobs and op == "cancel":
            net.cancel(jobs[k % len(jobs)])
        elif jobs:
            job = jobs[k % len(jobs)]
            ts = sorted(net.world.tasks_by_job.get(job, ()))
            if not ts:
                continue
            t = ts[k % len(ts)]
            status = net.world.tasks[t].status
            if op == "lease" and status == "queued":
                net.lease(t)
            elif op == "end" and status in ("queued", "leased"):
                net.end(t)
    for who_i in range(3):
        who = f"s{who_i}"
        mine = [j for j in net.world.jobs.values() if j.spec is not None and j.spec.submitter == who]
        live = [j for j in mine if j.status in ("submitted", "accepted")]
        tasks = [t for t in net.world.tasks.values() if t.spec is not None and t.spec.submitter == who]
        created_by_job: dict[str, int] = {}
        for t in tasks:
            created_by_job[t.spec.job_id] = created_by_job.get(t.spec.job_id, 0) + 1  # type: ignore[union-attr]
        uncreated = sum(j.task_count - created_by_job.get(j.job_id, 0) for j in live if j.status == "accepted")
        waiting = sum(1 for t in tasks if t.status in ("queued", "waiting")) + uncreated
        running = sum(1 for t in tasks if t.status in ("leased", "running"))
        u = net.core.windows.usage(who)
        assert (u.jobs, u.waiting, u.running) == (len(live), waiting, running)
        assert u.materialised == sum(1 for t in tasks if t.status in ("queued", "waiting"))
        # The window: shared by its jobs (each at least one); what a job took before more jobs came
        # and its share shrank is bounded too.
        assert u.materialised <= _bound(6, len(live))
        for t in tasks:
            assert t.spec is not None and 0 <= t.spec.index < net.world.jobs[t.spec.job_id].task_count
