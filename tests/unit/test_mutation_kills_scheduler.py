"""Scheduler rules that mutation testing (bench/mutation.py) found no test for.

Each test states a rule of the scheduler as its users see it, through the public API only: which
provider gets the next task (load, reputation, price, measured history), what ``capacity`` and
``predict`` answer, how providers that change or vanish are handled, and the stride rules of fair
share that the other scheduler tests leave open (a newcomer's start, the default weight, a task that
fits nowhere costs nothing, order within a submitter).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from actors.scheduler import Assignment, PendingTask, ProviderInfo, Scheduler
from events.estimates import RuntimeModel, base_seconds
from events.types import Calibration, Capabilities, Estimate, Resources

_serial = itertools.count(1)
ONE_SECOND = Estimate(fixed_seconds=1.0)


def caps(
    slots: int = 2,
    *,
    model: str = "m",
    vram_mb: int = 16_000,
    price: int = 100,
    backend: str = "cpu",
    workloads: tuple[str, ...] = (),
) -> Capabilities:
    return Capabilities(
        backend=backend,
        gpu_model=model,
        vram_mb=vram_mb,
        slots=slots,
        price_micros=price,
        workloads=workloads,
    )


def task(
    submitter: str = "alice",
    *,
    task_id: str | None = None,
    workload: str = "sleep",
    estimate: Estimate = ONE_SECOND,
    resources: Resources | None = None,
    max_price: int | None = None,
) -> PendingTask:
    return PendingTask(
        task_id or f"{submitter}.j.{next(_serial)}",
        submitter,
        5,
        workload,
        resources or Resources(),
        estimate,
        max_price,
    )


def place(s: Scheduler, t: PendingTask) -> str | None:
    """Queue ``t`` alone and return the provider it is placed on now, if any."""
    s.enqueue(t)
    got = s.assign()
    return got[0].provider_id if got else None


def one_at_a_time(s: Scheduler, n: int, provider: str = "p") -> list[Assignment]:
    """``n`` placements, each followed by the release of its slot: only the fair-share order decides."""
    out: list[Assignment] = []
    for _ in range(n):
        got = s.assign(limit=1)
        assert len(got) == 1, f"placement {len(out) + 1} found nothing"
        out += got
        s.release(provider)
    return out


def one_at_a_time_on(s: Scheduler, n: int, busy: str) -> list[Assignment]:
    """``n`` placements on provider ``busy``, whose one slot is in use: each frees it first."""
    out: list[Assignment] = []
    for _ in range(n):
        s.release(busy)
        got = s.assign()
        assert len(got) == 1, f"placement {len(out) + 1} found nothing"
        out += got
    return out


# ---- which provider of a class: load, then reputation in hundredths --------------------------------


def test_the_less_loaded_provider_of_a_class_gets_the_next_task() -> None:
    s = Scheduler()
    s.upsert_provider("a", caps(2), None, available=True)
    s.upsert_provider("b", caps(2), None, available=True)
    s.occupy("a")  # a lease on a, seen in the log
    assert place(s, task()) == "b"


def test_load_is_the_share_of_slots_in_use_not_the_count() -> None:
    # One capability class (slots are not part of it): one lease on four slots is less load than one on two.
    s = Scheduler()
    s.upsert_provider("two", caps(2), None, available=True)
    s.upsert_provider("four", caps(4), None, available=True)
    s.occupy("two")
    s.occupy("four")
    assert place(s, task()) == "four"


def test_reputation_outranks_load_within_a_class() -> None:
    s = Scheduler()
    s.upsert_provider("trusted", caps(2), None, available=True, reputation=0.9)
    s.upsert_provider("doubtful", caps(2), None, available=True, reputation=0.7)
    s.occupy("trusted")
    assert place(s, task()) == "trusted"


def test_reputation_counts_in_hundredths_so_a_sliver_of_it_does_not_beat_load() -> None:
    s = Scheduler()
    s.upsert_provider("busy", caps(2), None, available=True, reputation=0.999)
    s.upsert_provider("idle", caps(2), None, available=True, reputation=0.996)
    s.occupy("busy")
    assert place(s, task()) == "idle"


def test_a_lowered_reputation_moves_the_next_task_elsewhere() -> None:
    s = Scheduler()
    s.upsert_provider("a", caps(2), None, available=True)
    s.upsert_provider("b", caps(2), None, available=True)
    s.set_reputation("a", 0.2)
    assert place(s, task()) == "b"


# ---- which class: predicted runtime weighed by price, reputation and load -------------------------


def two_classes(**providers: dict[str, Any]) -> Scheduler:
    """The providers, each in a capability class of its own (named after it), registered in order."""
    s = Scheduler()
    for pid, spec in providers.items():
        extra = dict(spec)
        reputation = extra.pop("reputation", None)
        calibration = extra.pop("calibration", None)
        s.upsert_provider(pid, caps(model=pid, **extra), calibration, available=True, reputation=reputation)
    return s


def tflops(rate: float) -> Calibration:
    return Calibration(matmul_tflops={"fp32": rate})


def flops_task(seconds_at_one_tflops: float, max_price: int | None = None) -> PendingTask:
    return task(workload="matmul", estimate=Estimate(flops=seconds_at_one_tflops * 1e12), max_price=max_price)


def test_a_provider_twice_as_fast_wins_even_when_it_charges_the_whole_ceiling() -> None:
    s = two_classes(slow={"price": 0, "calibration": tflops(1.0)}, fast={"price": 1000, "calibration": tflops(2.0)})
    assert place(s, flops_task(10.0, max_price=1000)) == "fast"


def test_at_the_default_weights_the_whole_ceiling_in_price_weighs_a_quarter_of_the_runtime() -> None:
    # Scheduler(price_weight=0.25): charging the whole ceiling counts as 25% more runtime, so a provider
    # only 20% faster at the ceiling loses to a free one (and one twice as fast wins, above).
    s = two_classes(free={"price": 0, "calibration": tflops(1.0)}, dear={"price": 1000, "calibration": tflops(1.2)})
    assert place(s, flops_task(12.0, max_price=1000)) == "free"


def test_a_provider_half_again_as_fast_wins_over_one_with_twice_its_reputation() -> None:
    s = two_classes(
        sound={"reputation": 1.0, "calibration": tflops(1.0)},
        quick={"reputation": 0.5, "calibration": tflops(1.5)},
    )
    assert place(s, flops_task(10.0)) == "quick"


def test_between_equals_the_better_reputation_wins() -> None:
    s = two_classes(shaky={"reputation": 0.5}, solid={"reputation": 1.0})
    assert place(s, task()) == "solid"


def test_between_equals_the_class_with_the_smaller_share_in_use_wins() -> None:
    s = two_classes(half={"slots": 2}, quarter={"slots": 4})
    s.occupy("half")
    s.occupy("quarter")
    assert place(s, task()) == "quarter"


def test_load_only_breaks_ties_it_never_outweighs_a_price_difference() -> None:
    # A tenth of the ceiling in price is worth more than half the slots in use.
    s = two_classes(pricier={"price": 100}, busy_cheap={"price": 0})
    s.occupy("busy_cheap")
    assert place(s, task(max_price=1000)) == "busy_cheap"


def test_measured_history_steers_placement_and_the_eta() -> None:
    # Given history: this shape took 4x its estimate on slow, 1x on steady
    model = RuntimeModel()
    base = base_seconds(ONE_SECOND, None)
    model.observe("sleep", ONE_SECOND, None, "slow", 4.0 * base)
    model.observe("sleep", ONE_SECOND, None, "steady", 1.0 * base)
    s = Scheduler(model)
    s.upsert_provider("slow", caps(model="x", vram_mb=80_000), None, available=True)
    s.upsert_provider("steady", caps(model="y"), None, available=True)
    # Then the ETA on the only provider with the VRAM is its own history, not the fleet's
    big = Resources(min_vram_mb=40_000)
    slow = s.predict("sleep", ONE_SECOND, big)
    assert slow is not None and slow.seconds == pytest.approx(4.0 * base)
    assert slow.low < slow.seconds < slow.high  # with its interval
    # And among both, the task goes to the one measured faster (though slow registered first)
    s.enqueue(task())
    (a,) = s.assign()
    assert (a.provider_id, a.predicted_s) == ("steady", pytest.approx(base))
    assert a.low_s is not None and a.high_s is not None and a.low_s < a.predicted_s < a.high_s


# ---- capacity and predict -------------------------------------------------------------------------


def test_capacity_counts_the_slots_of_every_available_provider_that_fits() -> None:
    s = Scheduler()
    s.upsert_provider("big", caps(2, model="a", vram_mb=80_000), None, available=True)
    s.upsert_provider("mid", caps(3, model="b", vram_mb=40_000), None, available=True)
    s.upsert_provider("small", caps(4, model="c", vram_mb=16_000), None, available=True)
    s.upsert_provider("away", caps(5, model="a", vram_mb=80_000), None, available=False)
    s.upsert_provider("matmul_only", caps(7, model="d", workloads=("matmul",)), None, available=True)
    assert s.capacity(Resources(min_vram_mb=30_000), "sleep") == 2 + 3
    assert s.capacity(Resources(), "sleep") == 2 + 3 + 4
    assert s.capacity(Resources(), "matmul") == 2 + 3 + 4 + 7
    assert s.capacity(Resources(min_vram_mb=100_000), "sleep") == 0


def test_predict_is_the_fastest_matching_class_by_its_calibration() -> None:
    s = Scheduler()
    # The fast one registers first, so "the last class seen" would be the slow one.
    s.upsert_provider("fast", caps(model="f"), tflops(10.0), available=True)
    s.upsert_provider("slow", caps(model="s", vram_mb=80_000), tflops(1.0), available=True)
    fifty = Estimate(flops=50e12)
    overhead = base_seconds(Estimate(), None)
    fast = s.predict("matmul", fifty, Resources())
    assert fast is not None and fast.seconds == pytest.approx(5.0 + overhead) and fast.basis == "roofline"
    slow = s.predict("matmul", fifty, Resources(min_vram_mb=40_000))
    assert slow is not None and slow.seconds == pytest.approx(50.0 + overhead)
    assert s.predict("matmul", fifty, Resources(min_vram_mb=100_000)) is None


# ---- providers that change, vanish or were never seen ----------------------------------------------


def test_a_provider_that_changes_capabilities_leaves_its_old_class() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(2, vram_mb=80_000), None, available=True)
    s.upsert_provider("p", caps(2, vram_mb=16_000), None, available=True)
    big = Resources(min_vram_mb=40_000)
    assert s.capacity(big, "sleep") == 0
    assert place(s, task(resources=big)) is None
    assert s.capacity(Resources(), "sleep") == 2


def test_the_rest_of_a_class_keeps_getting_work_when_one_member_changes() -> None:
    s = Scheduler()
    s.upsert_provider("a", caps(2, vram_mb=80_000), None, available=True)
    s.upsert_provider("b", caps(2, vram_mb=80_000), None, available=True)
    s.upsert_provider("b", caps(2, vram_mb=16_000), None, available=True)
    big = Resources(min_vram_mb=40_000)
    assert s.capacity(big, "sleep") == 2
    assert place(s, task(resources=big)) == "a"


def test_calls_about_an_unknown_provider_change_nothing() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)
    s.set_available("ghost", False)
    s.set_reputation("ghost", 0.0)
    s.occupy("ghost")
    s.release("ghost")
    assert place(s, task()) == "p"


def test_a_release_with_nothing_leased_creates_no_slot() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)
    s.release("p")
    s.release("p")
    for _ in range(3):
        s.enqueue(task())
    assert len(s.assign()) == 1


def test_a_provider_that_takes_and_finishes_many_tasks_keeps_getting_them() -> None:
    # Hundreds of leases come and go on one provider (its queue entries are rebuilt along the way).
    s = Scheduler()
    s.upsert_provider("p", caps(2), None, available=True)
    for i in range(300):
        s.occupy("p")  # one slot busy with work seen in the log
        assert place(s, task()) == "p", f"round {i}: the free slot was not offered"
        s.release("p")
        s.release("p")


# ---- waiting aside ---------------------------------------------------------------------------------


def gpu_busy_cpu_idle() -> Scheduler:
    """A one-slot CUDA provider, busy, and an idle CPU provider that cannot take CUDA work."""
    s = Scheduler()
    s.upsert_provider("gpu", caps(1, model="g", backend="cuda"), None, available=True)
    s.upsert_provider("cpu", caps(4, model="c"), None, available=True)
    s.occupy("gpu")
    return s


def cuda_task() -> PendingTask:
    return task(resources=Resources(backend="cuda"))


def test_a_waiting_task_takes_the_free_slot_even_when_the_task_handed_back_for_it_was_cancelled() -> None:
    s = gpu_busy_cpu_idle()
    first, second = cuda_task(), cuda_task()
    s.enqueue(first)
    s.enqueue(second)
    assert s.assign() == []  # both wait aside: only the busy provider runs CUDA
    s.release("gpu")  # the slot frees: one waiting task is handed back for it...
    s.discard(first.task_id)  # ...and is cancelled before the next round
    assert [(a.task.task_id, a.provider_id) for a in s.assign()] == [(second.task_id, "gpu")]


def test_a_task_that_waited_aside_keeps_its_place_ahead_of_later_tasks() -> None:
    s = gpu_busy_cpu_idle()
    early = cuda_task()
    s.enqueue(early)
    assert s.assign() == []
    late = cuda_task()
    s.enqueue(late)
    s.release("gpu")
    assert [a.task.task_id for a in s.assign()] == [early.task_id]


def test_a_freed_slot_goes_to_the_waiting_shape_it_suits_whatever_waits_before_it() -> None:
    s = gpu_busy_cpu_idle()
    s.upsert_provider("big", caps(1, model="b", vram_mb=80_000), None, available=True)
    s.occupy("big")
    cuda, big = cuda_task(), task(resources=Resources(min_vram_mb=40_000))
    s.enqueue(cuda)  # waits aside first, for the busy CUDA provider
    s.enqueue(big)  # then this one, for the busy big-memory provider
    assert s.assign() == []
    s.release("big")
    assert [(a.task.task_id, a.provider_id) for a in s.assign()] == [(big.task_id, "big")]


def test_weights_hold_among_tasks_waiting_aside() -> None:
    s = gpu_busy_cpu_idle()
    s.set_weight("alice", 2.5)  # bob has the default weight, 1
    for _ in range(4):
        s.enqueue(task("alice", resources=Resources(backend="cuda")))
    for _ in range(2):
        s.enqueue(task("bob", resources=Resources(backend="cuda")))
    assert s.assign() == []  # all six wait aside for the one CUDA slot
    subs = [a.task.submitter for a in one_at_a_time_on(s, 6, "gpu")]
    # alice, at 2.5 times bob's weight, has three of the first four placements; bob is not starved
    assert subs[:4].count("alice") == 3, subs
    assert "bob" in subs[:3], subs


def test_a_freed_slot_goes_to_the_first_task_waiting_aside_for_it() -> None:
    s = gpu_busy_cpu_idle()
    waiting = [cuda_task() for _ in range(3)]
    for t in waiting:
        s.enqueue(t)
    assert s.assign() == []
    s.release("gpu")
    assert [a.task.task_id for a in s.assign()] == [waiting[0].task_id]


def test_a_submitters_tasks_are_placed_in_the_order_they_were_queued() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)
    tasks = [task() for _ in range(5)]
    for t in tasks:
        s.enqueue(t)
    assert [a.task.task_id for a in one_at_a_time(s, 5)] == [t.task_id for t in tasks]


# ---- fair share: the rules the stride tests leave open ---------------------------------------------


def test_a_newcomer_starts_at_the_virtual_time_ahead_of_one_already_served() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)
    for _ in range(5):
        s.enqueue(task("alice"))
    one_at_a_time(s, 1)
    s.enqueue(task("bob"))
    assert [a.task.submitter for a in one_at_a_time(s, 2)] == ["bob", "alice"]


def test_a_submitter_served_alone_keeps_her_pass_when_she_queues_again() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)
    for _ in range(3):
        s.enqueue(task("alice"))
    one_at_a_time(s, 3)  # alice alone: three placements, her queue is empty now
    s.enqueue(task("alice"))
    s.enqueue(task("bob"))
    assert [a.task.submitter for a in one_at_a_time(s, 2)] == ["bob", "alice"]


def test_a_submitter_without_a_weight_counts_as_weight_one() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)
    s.set_weight("half", 0.5)  # and "one" has no weight set
    for _ in range(20):
        s.enqueue(task("half"))
        s.enqueue(task("one"))
    subs = [a.task.submitter for a in one_at_a_time(s, 9)]
    assert (subs.count("one"), subs.count("half")) == (6, 3), subs


def test_a_task_that_fits_nowhere_costs_its_submitter_no_share() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)  # CPU only
    for t in (task("alice", resources=Resources(backend="cuda")), task("alice", resources=Resources(backend="cuda"))):
        s.enqueue(t)
    s.enqueue(task("alice", task_id="alice.fits"))
    s.enqueue(task("bob", task_id="bob.1"))
    s.enqueue(task("bob", task_id="bob.2"))
    # bob's first task goes first (a tie, and bob was backlogged first once alice's CUDA task waits aside);
    # alice's CUDA tasks fit nowhere and must not cost her a turn: her task that fits comes next
    assert [a.task.task_id for a in one_at_a_time(s, 2)] == ["bob.1", "alice.fits"]


def test_a_task_handed_back_then_set_aside_again_no_longer_holds_the_slot() -> None:
    s = gpu_busy_cpu_idle()
    waiting = [cuda_task() for _ in range(2)]
    for t in waiting:
        s.enqueue(t)
    assert s.assign() == []
    s.release("gpu")  # waiting[0] is handed back for the freed slot...
    s.occupy("gpu")  # ...which a lease seen in the log takes first: waiting[0] waits aside again
    assert s.assign() == []
    s.release("gpu")  # free again: waiting[0] must be handed back again, not counted as still queued
    assert [a.task.task_id for a in s.assign()] == [waiting[0].task_id]


def test_a_crash_while_placing_charges_nobody_and_strands_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(1), None, available=True)
    for _ in range(2):
        s.enqueue(task("alice"))
        s.enqueue(task("bob"))
    real = s._score
    calls = {"n": 0}

    def flaky(t: PendingTask, p: ProviderInfo) -> tuple[float, float]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real(t, p)

    monkeypatch.setattr(s, "_score", flaky)
    with pytest.raises(RuntimeError):
        s.assign(limit=1)
    # alice was being placed when it failed: she is not charged for it, and everything is placed.
    assert s._levels[5].passes.get("alice", 0.0) == 0.0
    assert sorted(a.task.submitter for a in one_at_a_time(s, 4)) == ["alice", "alice", "bob", "bob"]
