"""Under any verification outcome the books balance (hypothesis).

A job of a few comparable tasks runs under a random policy (the spec's, or the network's default)
through the real task and job deciders and the real reactions, folded by the orchestrator's own core
(its ``World``, reactions and task windows) as the orchestrator folds the log; only the outside
world is random: which provider gets each lease, at what price, whether it returns a right or a
wrong result (wrong ones may agree with each other: colluders), how long it bills, whether its
attempt fails or its lease is lost, the spot-check draw and its trust, and whether the submitter
cancels. Whatever happens:

* every result returned is in exactly one place: metered (paid, when judged valid), forfeited (judged
  invalid or inconclusive), or still held in escrow (not judged yet, and its task still open);
* an invalid or inconclusive result is never metered, and a verified task is metered by share only;
* every ``TaskResultReturned`` gets at most one ``TaskResultJudged``, and every verdict names one;
* a task completes at most once, on a valid result, verified by exactly the results judged valid;
* what the submitter is charged equals what the providers are credited, and once the job has ended
  and is settled, that is exactly what was metered, provider by provider.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.core import Core
from actors.errors import DomainError
from actors.job import CancelJob, SubmitJob, job_decider
from actors.reactions import Intent
from actors.task import (
    TERMINAL,
    ExpireLease,
    LeaseTask,
    QueueTask,
    ReportCompleted,
    ReportFailed,
    task_decider,
)
from actors.world import World
from events import new_envelope
from events.job import (
    CountSplit,
    JobSpec,
    ProviderCredited,
    SubmitterCharged,
    UsageMetered,
)
from events.metering import metered_amount
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskResultJudged,
    TaskResultReturned,
)
from events.types import EventModel, JsonValue, ResultRef, RetryPolicy
from events.verification import MAX_REPLICAS, VerifyPolicy, inline_sha256
from tests.factories import T0

JOB = "alice.j1"
PROVIDERS = tuple(f"p{i}" for i in range(MAX_REPLICAS + 3))


@st.composite
def policies(draw: st.DrawFn) -> VerifyPolicy:
    top = draw(st.integers(2, MAX_REPLICAS))
    replicas = draw(st.integers(2, top))
    quorum = draw(st.integers(2, replicas))
    mode = draw(st.sampled_from(["auto", "none", "replicate", "replicate", "spot", "spot"]))
    return VerifyPolicy(mode=mode, replicas=replicas, quorum=quorum, max_replicas=top)


@dataclass(frozen=True)
class Step:
    """One thing the outside world does to task ``task`` (leasing it first if it is queued)."""

    task: int
    action: str
    #: 0 is the right result; 1 and 2 are wrong ones (two providers returning 1 agree: they collude).
    value: int
    jitter: bool
    provider: int
    price: int
    gpu_ms: int
    elapsed_ms: int
    draw: float
    trust: int


steps = st.builds(
    Step,
    task=st.integers(0, 2),
    action=st.sampled_from(["report"] * 8 + ["fail", "lost", "cancel"]),
    value=st.sampled_from([0, 0, 0, 1, 1, 2]),
    jitter=st.booleans(),
    provider=st.integers(0, len(PROVIDERS) - 1),
    price=st.sampled_from([0, 1, 7, 333, 1_000_000]),
    gpu_ms=st.integers(0, 10_000),
    elapsed_ms=st.integers(0, 8_000),
    draw=st.floats(0.0, 1.0, exclude_max=True),
    trust=st.integers(0, 40),
)


def result(value: int, jitter: bool, workload: str) -> ResultRef:
    v: JsonValue
    if workload == "montecarlo":  # exact: integer hit counts
        v = {"hits": 3141 + 100 * value, "samples": 4000}
    else:  # tolerance: within the default rtol when jittered, so still the same result
        v = {"sum": 1.0 + value + (1e-9 if jitter else 0.0), "n": 16}
    return ResultRef(sha256=inline_sha256(v), size=len(json.dumps(v)), inline=v)


@dataclass
class Net:
    """The orchestrator's deciders, world and reactions, one command at a time, exactly once each."""

    default_verify: VerifyPolicy | None
    core: Core = field(default_factory=Core)
    log: list[EventModel] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    now: Any = T0
    n: int = 0

    def __post_init__(self) -> None:
        self.core.default_verify = self.default_verify

    @property
    def world(self) -> World:
        return self.core.world

    def run(self, kind: str, aggregate: str, command: Any) -> None:
        work: deque[Intent] = deque([Intent(kind, aggregate, command)])
        while work:
            intent = work.popleft()
            cmd = intent.command
            if cmd.command_id in self.seen:
                continue  # the shells apply a command id once
            self.seen.add(cmd.command_id)
            if intent.kind == "task":
                state: Any = self.world.tasks.get(intent.aggregate_id) or task_decider.initial_state()
                decide: Any = task_decider.decide
            else:
                state = self.world.jobs.get(intent.aggregate_id) or job_decider.initial_state()
                decide = job_decider.decide
            try:
                events = decide(cmd, state)
            except DomainError:
                continue
            for e in events:
                self.n += 1
                env = new_envelope(f"{intent.kind}.{intent.aggregate_id}", e, id=f"ev-{self.n}", source="tests")
                self.log.append(e)
                # The orchestrator's core: the world, the reactions, and the windows that create tasks.
                work.extend(self.core.apply(env, live=True).intents)

    def settle_all(self) -> None:
        """What reconciliation finds owed, until nothing is (as the orchestrator does at start)."""
        for _ in range(10):
            before = len(self.log)
            for intent in self.core.reconcile(self.now):
                self.run(intent.kind, intent.aggregate_id, intent.command)
            if len(self.log) == before:
                return
        raise AssertionError("reconciliation does not settle")

    def tick(self, ms: int) -> Any:
        self.now = self.now + timedelta(milliseconds=ms)
        return self.now


def play(net: Net, workload: str, tasks: int, script: list[Step]) -> None:
    task_ids = [f"{JOB}.{i}" for i in range(tasks)]
    k = 0
    for s in script:
        k += 1
        task_id = task_ids[s.task % tasks]
        t = net.world.tasks.get(task_id)
        if t is None or t.status in TERMINAL:
            continue
        if s.action == "cancel":
            net.run("job", JOB, CancelJob(command_id=f"cx{k}", at=net.tick(1)))
            continue
        if t.status == "waiting":
            assert t.not_before is not None
            net.now = max(net.now, t.not_before)
            net.run("task", task_id, QueueTask(command_id=f"q{k}", at=net.tick(1)))
            t = net.world.tasks[task_id]
        if t.status == "queued":
            free = [p for p in PROVIDERS if p not in t.excluded]
            assert free, "more providers than results a task can gather"
            provider = free[s.provider % len(free)]
            lease = f"L{k}"
            at = net.tick(1)
            cmd = LeaseTask(
                command_id=f"l{k}",
                at=at,
                lease_id=lease,
                provider_id=provider,
                expires_at=at + timedelta(seconds=60),
                price_micros=s.price,
            )
            net.run("task", task_id, cmd)
            t = net.world.tasks[task_id]
        if t.lease is None or t.status not in ("leased", "running"):
            continue
        lease_id, provider = t.lease.lease_id, t.lease.provider_id
        at = net.tick(s.elapsed_ms)
        if s.action == "report":
            report = ReportCompleted(
                command_id=f"r{k}",
                at=at,
                lease_id=lease_id,
                provider_id=provider,
                result=result(s.value, s.jitter, workload),
                gpu_ms=s.gpu_ms,
                draw=s.draw,
                trust=s.trust,
            )
            net.run("task", task_id, report)
        elif s.action == "fail":
            failed = ReportFailed(
                command_id=f"f{k}", at=at, lease_id=lease_id, provider_id=provider, reason="worker_crashed"
            )
            net.run("task", task_id, failed)
        else:
            net.run("task", task_id, ExpireLease(command_id=f"x{k}", at=at, lease_id=lease_id, reason="provider_lost"))
    net.settle_all()


def check_books(net: Net) -> None:
    log = net.log
    returned = {(e.task_id, e.lease_id): e for e in log if isinstance(e, TaskResultReturned)}
    assert len(returned) == sum(isinstance(e, TaskResultReturned) for e in log), "a lease returned twice"
    judged = [e for e in log if isinstance(e, TaskResultJudged)]
    verdicts: dict[tuple[str, str], str] = {}
    for j in judged:
        key = (j.task_id, j.lease_id)
        assert key in returned, f"a verdict on nothing returned: {key}"
        assert key not in verdicts, f"judged twice: {key}"
        assert j.provider_id == returned[key].provider_id and j.gpu_ms == returned[key].gpu_ms
        verdicts[key] = j.verdict
    usage = [e for e in log if isinstance(e, UsageMetered)]
    by_share: dict[tuple[str, str], UsageMetered] = {}
    for u in usage:
        assert u.amount_micros == metered_amount(u.gpu_ms, u.price_micros)
        if u.lease_id is not None:
            key = (u.task_id, u.lease_id)
            assert key not in by_share, f"a share metered twice: {key}"
            by_share[key] = u
    verified_tasks = {task for task, _ in returned}
    assert not [u for u in usage if u.lease_id is None and u.task_id in verified_tasks], (
        "a verified task metered as a whole"
    )

    # Each returned result is in exactly one place: paid, forfeited, or held.
    paid = forfeited = held = 0
    for key, r in returned.items():
        amount = metered_amount(r.gpu_ms, r.price_micros)
        verdict = verdicts.get(key)
        if verdict == "valid":
            share = by_share.get(key)
            assert share is not None, f"a valid result was not metered: {key}"
            assert (share.provider_id, share.gpu_ms, share.price_micros) == (r.provider_id, r.gpu_ms, r.price_micros)
            paid += share.amount_micros
        elif verdict in ("invalid", "inconclusive"):
            assert key not in by_share, f"an {verdict} result was metered: {key}"
            forfeited += amount
        else:
            assert verdict is None
            assert net.world.tasks[key[0]].status not in TERMINAL, f"a result held after its task ended: {key}"
            held += amount
    total = sum(metered_amount(r.gpu_ms, r.price_micros) for r in returned.values())
    assert total == paid + forfeited + held
    assert paid == sum(u.amount_micros for u in by_share.values())
    assert set(by_share) <= set(returned), "a share metered for a result never returned"

    # One ending per task; a verified completion rests on the results judged valid.
    endings = Counter(
        e.task_id
        for e in log
        if isinstance(e, TaskCompleted | TaskCancelled) or (isinstance(e, TaskFailed) and e.terminal)
    )
    assert all(n == 1 for n in endings.values()), endings
    valid_by_task: dict[str, set[str]] = defaultdict(set)
    for (task, lease), v in verdicts.items():
        if v == "valid":
            valid_by_task[task].add(lease)
    created = {e.task_id: e for e in log if isinstance(e, TaskCreated)}
    per_task = Counter(task for task, _ in returned)
    for task, n in per_task.items():
        policy = created[task].verify
        assert policy is not None
        assert n <= max(2, policy.max_replicas), (task, n, policy)
    for done in (e for e in log if isinstance(e, TaskCompleted)):
        if done.task_id in verified_tasks:
            valid = valid_by_task[done.task_id]
            assert done.lease_id in valid and done.verified_by == len(valid)
            assert done.verified_by >= returned[(done.task_id, done.lease_id)].quorum
        else:
            assert done.verified_by == 0
    for task in valid_by_task:
        assert any(isinstance(e, TaskCompleted) and e.task_id == task for e in log), "valid, but never completed"

    # Double entry: charged equals credited; once ended and settled, equal to what was metered.
    charged = sum(e.amount_micros for e in log if isinstance(e, SubmitterCharged))
    credits: Counter[str] = Counter()
    for e in log:
        if isinstance(e, ProviderCredited):
            credits[e.provider_id] += e.amount_micros
    assert charged == sum(credits.values())
    job = net.world.jobs[JOB]
    if job.status in ("completed", "failed", "cancelled"):
        owed: Counter[str] = Counter()
        for u in usage:
            owed[u.provider_id] += u.amount_micros
        assert +credits == +owed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec_policy=st.none() | policies(),
    default_policy=st.none() | policies(),
    workload=st.sampled_from(["montecarlo", "reduction"]),
    tasks=st.integers(1, 3),
    attempts=st.integers(1, 4),
    script=st.lists(steps, max_size=40),
)
def test_books_balance_under_any_verification_outcome(
    spec_policy: VerifyPolicy | None,
    default_policy: VerifyPolicy | None,
    workload: str,
    tasks: int,
    attempts: int,
    script: list[Step],
) -> None:
    spec = JobSpec(
        workload=workload,
        params={"seed": 1} if workload == "montecarlo" else {"n": 16},
        split=CountSplit(count=tasks),
        submitter="alice",
        retry=RetryPolicy(max_attempts=attempts, backoff_s=0.0, max_lost_leases=3),
        timeout_s=5.0,
        verify=spec_policy,
    )
    net = Net(default_policy)
    net.run("job", JOB, SubmitJob(command_id="submit", at=T0, job_id=JOB, spec=spec, submitter="alice"))
    assert len(net.world.tasks) == tasks
    play(net, workload, tasks, script)
    check_books(net)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=policies().filter(lambda p: p.mode in ("replicate", "spot")),
    values=st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=MAX_REPLICAS),
    prices=st.lists(st.integers(0, 5_000_000), min_size=MAX_REPLICAS, max_size=MAX_REPLICAS),
    billed=st.lists(st.integers(0, 60_000), min_size=MAX_REPLICAS, max_size=MAX_REPLICAS),
)
def test_a_single_task_pays_exactly_its_valid_results(
    policy: VerifyPolicy, values: list[int], prices: list[int], billed: list[int]
) -> None:
    """The simplest story, every replica reporting in turn until the task settles: the paid and the
    forfeited add up to everything returned, and each provider is credited its valid results only."""
    spec = JobSpec(
        workload="montecarlo",
        params={"seed": 1},
        split=CountSplit(count=1),
        submitter="alice",
        timeout_s=60.0,
        verify=policy,
    )
    net = Net(None)
    net.run("job", JOB, SubmitJob(command_id="submit", at=T0, job_id=JOB, spec=spec, submitter="alice"))
    script = [
        Step(0, "report", v, False, 0, prices[i % MAX_REPLICAS], billed[i % MAX_REPLICAS], 60_000, 0.0, 0)
        for i, v in enumerate(values * MAX_REPLICAS)
    ]
    play(net, "montecarlo", 1, script)
    check_books(net)
    task = net.world.tasks[f"{JOB}.0"]
    assert task.status in ("completed", "dead")
    expected: Counter[str] = Counter()
    for c in task.candidates:
        if c.verdict == "valid":
            expected[c.provider_id] += metered_amount(c.gpu_ms, c.price_micros)
    credited: Counter[str] = Counter()
    for e in net.log:
        if isinstance(e, ProviderCredited):
            credited[e.provider_id] += e.amount_micros
    if task.candidates:
        assert +credited == +expected
