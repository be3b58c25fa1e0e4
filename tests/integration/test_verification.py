"""Result verification on a real network: a dishonest provider's lies never reach the submitter.

A real nats-server with credentials, the orchestrator in this process, three honest simulated
providers (p1, p2, p3, paid) that run ``montecarlo`` for real (``gpufleet.sim.montecarlo_summary``),
and one dishonest provider ``d`` (``tests.dishonest``) that lies in one way per test: a wrong
result, a fabricated one without doing the work, another provider's result object, an overclaimed
GPU time, or (some of the time) a wrong result. Every test ends with the full audit of the log.

What is checked on every log (:func:`check_books`): each completed task's result is the honest value
(computed here, independently, in one chunk); replicas of a task come from different providers;
every bill is at most what the orchestrator observed from the lease to the result, and pays only a
result judged valid. Then: the liar's lies are judged invalid (or refused), earn nothing, and cost it
its trust and reputation; under ``spot`` a newcomer is checked every time until it has earned trust;
a job that asks to verify results that cannot be compared is rejected.

``test_a_result_object_never_stored_is_never_verified_nor_delivered`` is an expected failure: it
shows a bug in the orchestrator (see its reason), and turns red once that is fixed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from actors.world import World
from events.job import JobRejected, UsageMetered
from events.metering import observed_ms
from events.store import JetStreamEventStore
from events.store.blobs import BlobStore
from events.task import (
    TaskCompleted,
    TaskCreated,
    TaskLeased,
    TaskLeaseExpired,
    TaskResultJudged,
    TaskResultRejected,
    TaskResultReturned,
)
from events.types import MAX_GPU_MS
from events.verification import TRUSTED_AFTER, SpotDraw, spot_probability
from gpu_runtime.workloads.montecarlo import count_hits
from gpufleet.sim import SimulatedProvider
from tests.dishonest import DishonestProvider, Lie, StoringProvider, fabricated
from tests.integration.audited import assert_audit_passes
from tests.integration.orchestra import Tenants, all_jobs_ended, wait_for
from tests.secure import SecureServer

# A lease not started in 2 s, or started and silent for the task's timeout (3 s) plus 1 s, expires.
FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=1.0)
HONEST = ("p1", "p2", "p3")
SAMPLES, CHUNK = 20_000, 10_000
PRICE = 100
SEEDS = range(8)


def honest_value(seed: int) -> dict[str, Any]:
    """The one right result of a task: every sample counted at once (the providers count per chunk)."""
    hits = count_hits(np, seed, 0, SAMPLES)
    return {"workload": "montecarlo", "samples": SAMPLES, "seed": seed, "hits": hits, "pi": 4.0 * hits / SAMPLES}


def montecarlo_job(seeds: Iterable[int], mode: str) -> dict[str, Any]:
    return {
        "workload": "montecarlo",
        "params": {"samples": SAMPLES, "chunk": CHUNK},
        "split": {"kind": "params", "params": [{"seed": s} for s in seeds]},
        "verify": {"mode": mode},
        "timeout_s": 3.0,
    }


@dataclass
class Fleet:
    server: SecureServer
    store: JetStreamEventStore
    tenants: Tenants
    providers: dict[str, SimulatedProvider] = field(default_factory=dict)

    async def join(self, pid: str, cls: type[SimulatedProvider] = SimulatedProvider, **kw: Any) -> Any:
        """Provider ``pid`` (its own credentials), running ``montecarlo`` at a price, once it is online."""
        kw = {"heartbeat_s": 0.2, "slots": 2, "price_micros": PRICE, "workloads": ("montecarlo",), **kw}
        sim = await (await cls.connect(self.server.access("provider", pid), **kw)).start()
        self.providers[pid] = sim
        await wait_for(self.store, lambda w: pid in w.providers and w.providers[pid].status == "online", 10, 0.1)
        return sim


@pytest.fixture
async def fleet(own_nats_server: SecureServer) -> AsyncIterator[Fleet]:
    orch = await Orchestrator.connect(own_nats_server.access("orchestrator"), config=FAST)
    store = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"))
    f = Fleet(own_nats_server, store, Tenants(own_nats_server))
    try:
        yield f
    finally:
        for sim in f.providers.values():
            await sim.kill()
        await orch.close()
        await store.close()
        await f.tenants.close()


def events(log: list[Any], kind: type[Any]) -> list[Any]:
    return [e.data for e in log if isinstance(e.data, kind)]


def check_books(log: list[Any]) -> None:
    """What holds on any log, whoever lied (see the module docstring)."""
    seeds = {e.task_id: e.params["seed"] for e in events(log, TaskCreated)}
    completed = events(log, TaskCompleted)
    assert completed and {c.task_id for c in completed} == set(seeds), "every task completed, once"
    for c in completed:
        assert c.result.object is None and c.result.inline == honest_value(seeds[c.task_id]), (c.task_id, c.result)
    # Replicas of one task: each from a different provider.
    returned = events(log, TaskResultReturned)
    for task_id in seeds:
        by = [r.provider_id for r in returned if r.task_id == task_id]
        assert len(by) == len(set(by)), (task_id, by)
    # A bill: a valid result's (or an unverified completion's), at most what was observed.
    leased = {e.lease_id: e for e in events(log, TaskLeased)}
    ended = {r.lease_id: r.at for r in returned}
    ended.update({c.lease_id: c.at for c in completed if c.lease_id not in ended})
    verdicts = {j.lease_id: j.verdict for j in events(log, TaskResultJudged)}
    metered = events(log, UsageMetered)
    assert metered
    for m in metered:
        lease_id = m.lease_id or next(c.lease_id for c in completed if c.task_id == m.task_id)
        assert m.lease_id is None or verdicts.get(m.lease_id) == "valid", (m, verdicts.get(m.lease_id))
        assert leased[lease_id].provider_id == m.provider_id
        assert m.gpu_ms <= observed_ms(leased[lease_id].at, ended[lease_id]), m
    paid = Counter(m.lease_id for m in metered if m.lease_id is not None)
    assert all(n == 1 for n in paid.values()), paid
    assert set(paid) == {lease for lease, v in verdicts.items() if v == "valid"}


def judged(log: list[Any], provider_id: str, verdict: str) -> set[str]:
    return {j.lease_id for j in events(log, TaskResultJudged) if j.provider_id == provider_id and j.verdict == verdict}


def assert_distrusted(w: World, log: list[Any], pid: str) -> None:
    """``pid`` earned nothing, has no trust, and its reputation is below every honest provider's."""
    assert not [m for m in events(log, UsageMetered) if m.provider_id == pid]
    rep = w.reputation[pid]
    assert rep.consecutive_valid == 0, rep
    honest = {p: w.reputation[p].value for p in HONEST}
    assert rep.value < min(honest.values()), (rep.value, honest)
    assert all(w.reputation[p].consecutive_valid > 0 for p in HONEST if w.reputation[p].completed)


def trailing_valid(log: list[Any], pid: str) -> int:
    """Valid verdicts on ``pid``'s results since its last invalid one, in log order."""
    n = 0
    for j in events(log, TaskResultJudged):
        if j.provider_id == pid and j.verdict != "inconclusive":
            n = n + 1 if j.verdict == "valid" else 0
    return n


@pytest.mark.parametrize(
    ("lie", "fraction", "mode"),
    [
        ("wrong", 1.0, "replicate"),
        ("instant", 1.0, "replicate"),
        ("copy", 1.0, "replicate"),
        ("wrong", 0.5, "replicate"),
        # A newcomer under spot checks is checked every time: its lies are caught just the same.
        ("wrong", 1.0, "spot"),
    ],
)
async def test_a_lying_provider_is_caught_earns_nothing_and_loses_reputation(
    fleet: Fleet, lie: Lie, fraction: float, mode: str
) -> None:
    # Seed 3's draws: a lie first, then the truth (fraction 0.5).
    d: DishonestProvider = await fleet.join("d", DishonestProvider, lie=lie, cheat_fraction=fraction, seed=3)
    for pid in HONEST:
        await fleet.join(pid)
    await fleet.tenants.submit("alice", "pi", montecarlo_job(SEEDS, mode))
    w, log = await wait_for(fleet.store, all_jobs_ended(1), timeout=40, poll=0.2)
    assert w.jobs["alice.pi"].status == "completed"
    check_books(log)
    assert d.lied, ("the liar was never given a task", d.describe())
    if lie == "instant":  # what it made up is in fact wrong (else this test would prove nothing)
        assert all(fabricated("montecarlo", honest_value(s)) != honest_value(s) for s in SEEDS)
    rep = w.reputation["d"]
    if lie == "copy":
        # Another provider's object is not this provider's result: refused, never held, never judged.
        refusals = [r for r in events(log, TaskResultRejected) if r.provider_id == "d"]
        assert {r.lease_id for r in refusals} == d.lied, (refusals, d.describe())
        assert all("is not stored under provider d's name" in r.reason and not r.late for r in refusals)
        assert not [r for r in events(log, TaskResultReturned) if r.provider_id == "d"]
        assert d.lied <= {e.lease_id for e in events(log, TaskLeaseExpired)}
        assert (rep.refused, rep.invalid) == (len(d.lied), 0), rep
    else:
        assert judged(log, "d", "invalid") == d.lied, d.describe()
        assert judged(log, "d", "valid") == d.honest, d.describe()
        assert (rep.refused, rep.invalid) == (0, len(d.lied)), rep
    assert rep.consecutive_valid == trailing_valid(log, "d"), rep
    if fraction == 1.0:
        assert_distrusted(w, log, "d")
    else:
        assert d.honest, d.describe()
        assert {m.lease_id for m in events(log, UsageMetered) if m.provider_id == "d"} == d.honest
    await assert_audit_passes(fleet.store)


async def test_an_overclaimed_time_never_raises_a_bill(fleet: Fleet) -> None:
    d: DishonestProvider = await fleet.join("d", DishonestProvider, lie="overclaim")
    for pid in HONEST:
        await fleet.join(pid)
    await fleet.tenants.submit("alice", "pi", montecarlo_job(SEEDS, "replicate"))
    w, log = await wait_for(fleet.store, all_jobs_ended(1), timeout=40, poll=0.2)
    assert w.jobs["alice.pi"].status == "completed"
    check_books(log)
    assert d.lied, d.describe()
    # Its results are right, so it is paid: for the time observed, never the week it claims.
    assert judged(log, "d", "valid") == d.lied
    leased = {e.lease_id: e for e in events(log, TaskLeased)}
    returned = {r.lease_id: r for r in events(log, TaskResultReturned)}
    bills = {m.lease_id: m for m in events(log, UsageMetered) if m.provider_id == "d"}
    assert set(bills) == d.lied
    for lease_id, m in bills.items():
        assert m.gpu_ms == observed_ms(leased[lease_id].at, returned[lease_id].at) < MAX_GPU_MS, m
    await assert_audit_passes(fleet.store)


async def test_under_spot_a_new_provider_is_always_checked_until_it_has_earned_trust(fleet: Fleet) -> None:
    # Two providers only: every checked task is run by both, so each earns one valid result per task.
    for pid in HONEST[:2]:
        await fleet.join(pid, slots=4)
    await fleet.tenants.submit("alice", "new", montecarlo_job(range(TRUSTED_AFTER), "spot"))
    w, log = await wait_for(fleet.store, all_jobs_ended(1), timeout=30, poll=0.2)
    assert w.jobs["alice.new"].status == "completed"
    check_books(log)
    draws = spot_draws(log)
    assert len(draws) == TRUSTED_AFTER
    assert all(d.p == 1.0 and d.checked and d.consecutive_valid < TRUSTED_AFTER for d in draws), draws
    assert all(c.verified_by == 2 and c.spot is None for c in events(log, TaskCompleted))
    assert {p: w.reputation[p].consecutive_valid for p in HONEST[:2]} == {"p1": TRUSTED_AFTER, "p2": TRUSTED_AFTER}

    # Now trusted: checked with probability 1 / consecutive_valid, by the orchestrator's own draw.
    await fleet.tenants.submit("alice", "trusted", montecarlo_job(range(100, 104), "spot"))
    w, log = await wait_for(fleet.store, all_jobs_ended(2), timeout=30, poll=0.2)
    assert w.jobs["alice.trusted"].status == "completed"
    check_books(log)
    later = spot_draws(log)[TRUSTED_AFTER:]
    assert len(later) == 4
    for d in later:
        assert d.consecutive_valid >= TRUSTED_AFTER and d.p == spot_probability(d.consecutive_valid) < 1.0, d
        assert d.checked == (d.draw < d.p), d
    await assert_audit_passes(fleet.store)


def spot_draws(log: list[Any]) -> list[SpotDraw]:
    """Every spot draw, in log order: on the first result of a checked task, or on an unchecked completion."""
    return [e.data.spot for e in log if isinstance(e.data, TaskResultReturned | TaskCompleted) and e.data.spot]


@pytest.mark.parametrize("mode", ["replicate", "spot"])
async def test_verifying_results_that_cannot_be_compared_is_rejected(fleet: Fleet, mode: str) -> None:
    spec = {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 2}}
    await fleet.tenants.submit("alice", "nap", {**spec, "verify": {"mode": mode}})
    w, log = await wait_for(fleet.store, all_jobs_ended(1), timeout=15, poll=0.2)
    assert w.jobs["alice.nap"].status == "rejected"
    [rejected] = events(log, JobRejected)
    assert rejected.field == "verify.mode", rejected
    assert not events(log, TaskCreated)
    await assert_audit_passes(fleet.store)


async def test_a_result_object_never_stored_is_never_verified_nor_delivered(fleet: Fleet) -> None:
    # The lazy uploader returns first: the honest digest under its own name, but no object.
    d: DishonestProvider = await fleet.join("d", DishonestProvider, lie="unstored")
    await fleet.tenants.submit("alice", "big", montecarlo_job([0], "replicate"))
    await wait_for(
        fleet.store, lambda w: any(c.provider_id == "d" for t in w.tasks.values() for c in t.candidates), 15, 0.1
    )
    for pid in HONEST[:2]:  # then two honest providers that store their results
        await fleet.join(pid, StoringProvider)
    w, log = await wait_for(fleet.store, all_jobs_ended(1), timeout=20, poll=0.2)
    assert w.jobs["alice.big"].status == "completed"
    assert d.lied
    assert not judged(log, "d", "valid"), "a result nobody could read was judged valid"
    assert not [m for m in events(log, UsageMetered) if m.provider_id == "d"]
    [done] = events(log, TaskCompleted)
    assert done.result.object is not None and done.provider_id != "d", done
    alice = BlobStore(await fleet.tenants.nc("submitter", "alice"), "submitter", "alice")
    assert json.loads(await alice.get(done.result.object)) == honest_value(0)
    await assert_audit_passes(fleet.store)
