"""The ledger view: double entry in integer micros; the books balance per job, submitter, provider."""

from __future__ import annotations

from events import new_envelope
from events.job import ProviderCredited
from projections.ledger import LedgerView, metered_amount
from tests.golden.loggen import Sim, golden_scenario, random_log


def test_metered_amount_rounds_up_in_integers() -> None:
    assert metered_amount(1, 1) == 1  # 0.001 micros rounds up to 1
    assert metered_amount(1000, 1000) == 1000
    assert metered_amount(1500, 333) == 500  # 499.5 -> 500
    assert metered_amount(0, 10**9) == 0
    assert metered_amount(10**12, 10**6) == 10**15  # no float anywhere


def settled_job() -> Sim:
    s = Sim()
    s.register("a", price=1200)
    s.register("b", price=700)
    s.submit("j1", count=3, submitter="alice")
    s.lease("j1-0", "a")
    s.lease("j1-1", "b")
    s.lease("j1-2", "a")
    for t in ("j1-0", "j1-1", "j1-2"):
        s.start(t)
        s.tick(1.234)
        s.complete(t)
    return s


def test_settlement_posts_balanced_entries_and_empties_the_escrow() -> None:
    v = LedgerView()
    v.fold(settled_job().events)
    job = v.jobs["j1"]
    assert job.metered_tasks == 3 and job.settlements == 1 and job.balanced == 1
    assert job.charged_micros == job.metered_micros == job.credited_micros > 0
    escrow = v.accounts["escrow:j1"]
    assert escrow.debit_micros == escrow.credit_micros == job.charged_micros
    alice = v.accounts["submitter:alice"]
    assert alice.debit_micros == alice.settled_metered_micros == job.metered_micros
    for pid in ("a", "b"):
        acc = v.accounts[f"provider:{pid}"]
        share = v.shares[("j1", pid)]
        assert acc.credit_micros == share.credited_micros == share.metered_micros > 0
    # 1 charge + 2 credits, two legs each, debits == credits
    assert len(v.postings) == 6
    assert sum(p.debit_micros for p in v.postings.values()) == sum(p.credit_micros for p in v.postings.values())


def test_cost_so_far_before_settlement_is_not_yet_charged() -> None:
    s = settled_job()
    before_end = [e for e in s.events if e.type not in ("SubmitterCharged", "ProviderCredited")]
    v = LedgerView()
    v.fold(before_end)
    job = v.jobs["j1"]
    assert job.metered_micros > 0 and job.charged_micros == 0 and job.balanced == 0
    assert v.accounts["submitter:alice"].debit_micros == 0


def test_a_forged_extra_credit_unbalances_the_job() -> None:
    s = settled_job()
    v = LedgerView()
    v.fold(s.events)
    forged = new_envelope(
        "job.j1",
        ProviderCredited(at=s.now, job_id="j1", provider_id="b", amount_micros=1, gpu_ms=0),
        id="forged-1",
        source="mallory",
    ).at_position(len(s.events) + 1)
    v.evolve(forged)
    assert v.jobs["j1"].balanced == 0
    assert v.shares[("j1", "b")].credited_micros == v.shares[("j1", "b")].metered_micros + 1


def test_books_balance_over_a_simulated_fleet() -> None:
    s = random_log(11, max_events=4000)
    v = LedgerView()
    v.fold(s.events)
    settled = [j for j in v.jobs.values() if j.settlements]
    assert len(settled) > 20
    assert all(j.balanced for j in settled)
    debits = sum(a.debit_micros for a in v.accounts.values())
    credits = sum(a.credit_micros for a in v.accounts.values())
    assert debits == credits > 0
    for acc in v.accounts.values():
        if acc.kind == "submitter":
            assert acc.debit_micros == acc.settled_metered_micros
        elif acc.kind == "provider":
            assert acc.credit_micros == acc.settled_metered_micros
        else:
            assert acc.debit_micros == acc.credit_micros


def test_golden_cancelled_job_with_usage_is_billed_for_what_ran() -> None:
    v = LedgerView()
    v.fold(golden_scenario().events)
    # j5 failed after one task completed on gpu-b: that task is billed and credited.
    j5 = v.jobs["j5"]
    assert j5.metered_tasks == 1 and j5.balanced == 1
    assert v.shares[("j5", "gpu-b")].credited_micros == j5.charged_micros
    assert "j3" not in v.jobs  # cancelled before anything completed: nothing metered, nothing settled
