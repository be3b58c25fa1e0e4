"""The scheduler's rules, pure: strict priority, weighted fair share, no starvation, capabilities, slots.

Every test drives the real ``Scheduler`` through its public API (``upsert_provider``, ``enqueue``,
``assign``, ``release``, ``set_weight``, ``discard``, ``set_available``) with no server and no asyncio.

The stride rule, stated once because several tests assert it: within a priority level each submitter
has a *pass*; a placement goes to the backlogged submitter with the lowest pass (ties to the one queued
first) and advances its pass by ``1 / weight``; a submitter that becomes backlogged starts at
``max(its own pass, the level's virtual time)``, where the virtual time is the pass of the last pick.
Two consequences, both asserted below:

- *Proportional share.* With two submitters backlogged from the same start, the one that was just
  picked had the lowest pass, so the two passes never differ by more than one stride. Solving
  ``c_a / w_a - c_b / w_b`` within ``[-1 / w_b, 1 / w_a]`` with ``c_a + c_b = n`` gives, for *every*
  prefix of ``n`` placements, ``-w_a / W <= c_a - n * w_a / W <= w_b / W`` (``W = w_a + w_b``): each
  count is strictly within one placement of its exact share.
- *No starvation, no hoarding.* A submitter arriving at a level starts at the virtual time, no later
  than anybody's pass there; with equal weights, its ``k``-th task is placed within the first ``2k``
  placements after it arrived, however long the other queue is; and it gets no credit for time it was
  idle, so it cannot take a burst of placements in a row either.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.scheduler import Assignment, PendingTask, Scheduler
from events.types import Calibration, Capabilities, Estimate, Resources

_serial = itertools.count(1)


def caps(
    slots: int = 1,
    *,
    backend: str = "cpu",
    vram_mb: int = 16_000,
    cc: float = 0.0,
    workloads: tuple[str, ...] = (),
    price: int = 100,
    model: str = "m",
) -> Capabilities:
    return Capabilities(
        backend=backend,  # type: ignore[arg-type]
        gpu_model=model,
        vram_mb=vram_mb,
        compute_capability=cc,
        slots=slots,
        price_micros=price,
        workloads=workloads,
    )


def task(
    submitter: str = "alice",
    priority: int = 5,
    *,
    task_id: str | None = None,
    workload: str = "noop",
    resources: Resources | None = None,
    max_price: int | None = None,
) -> PendingTask:
    return PendingTask(
        task_id or f"{submitter}.j.{next(_serial)}",
        submitter,
        priority,
        workload,
        resources or Resources(),
        Estimate(),
        max_price,
    )


def scheduler_with(**providers: Capabilities) -> Scheduler:
    s = Scheduler()
    for pid, c in providers.items():
        s.upsert_provider(pid, c, None, available=True)
    return s


def place_one_at_a_time(s: Scheduler, n: int, provider: str = "p") -> list[Assignment]:
    """``n`` placements, each followed by the release of its slot: capacity is never the constraint,
    so the order is the fair-share order and nothing else."""
    out: list[Assignment] = []
    for _ in range(n):
        got = s.assign(limit=1)
        assert len(got) == 1, f"placement {len(out) + 1} found nothing"
        out += got
        s.release(provider)
    return out


def who(placements: list[Assignment]) -> list[str]:
    return [a.task.submitter for a in placements]


# ---- strict priority -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    tasks=st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["ann", "bob", "cy", "di"])), min_size=2, max_size=40),
    capacity=st.integers(1, 39),
    spread=st.integers(1, 3),
)
def test_every_higher_priority_task_is_placed_before_any_lower_one(
    tasks: list[tuple[int, str]], capacity: int, spread: int
) -> None:
    # Given capacity for only some of the tasks, spread over a few providers, and tasks of random
    # priorities from random submitters, arriving in a random order
    slots = [capacity // spread + (1 if i < capacity % spread else 0) for i in range(spread)]
    s = scheduler_with(**{f"p{i}": caps(n, model=f"m{i}") for i, n in enumerate(slots) if n})
    queued = [task(sub, prio) for prio, sub in tasks]
    for t in queued:
        s.enqueue(t)
    # When the scheduler places what fits
    out = s.assign()
    # Then it fills exactly the capacity, in non-increasing priority, and every task left waiting has
    # a priority no higher than every task placed
    assert len(out) == min(capacity, len(queued))
    placed = [a.task.priority for a in out]
    assert placed == sorted(placed, reverse=True)
    left = {t.task_id for t in queued} - {a.task.task_id for a in out}
    left_prios = [t.priority for t in queued if t.task_id in left]
    if left_prios and placed:
        assert min(placed) >= max(left_prios)
    assert s.pending() == len(left)


def test_a_high_priority_task_arriving_late_takes_the_next_free_slot() -> None:
    # Given one slot, taken, and a backlog of low-priority work
    s = scheduler_with(p=caps(1))
    for _ in range(5):
        s.enqueue(task("ann", 1))
    first = s.assign()
    assert [a.task.priority for a in first] == [1]
    # When an urgent task arrives and the slot frees
    urgent = task("bob", 9)
    s.enqueue(urgent)
    s.release("p")
    # Then the urgent task gets the slot, not the low-priority backlog
    assert [a.task.task_id for a in s.assign()] == [urgent.task_id]


def test_priority_holds_while_capacity_is_saturated() -> None:
    # Given one slot and a backlog of five low-priority tasks, one of them running
    s = scheduler_with(p=caps(1))
    for _ in range(5):
        s.enqueue(task("ann", 1))
    order = [a.task.priority for a in s.assign()]
    # When two high-priority tasks arrive, and the slot is freed and refilled six times over
    s.enqueue(task("bob", 9))
    s.enqueue(task("bob", 9))
    for _ in range(6):
        s.release("p")
        order += [a.task.priority for a in s.assign()]
    # Then both high-priority tasks run before any further low-priority one
    assert order == [1, 9, 9, 1, 1, 1, 1]


# ---- weighted fair share within a level -----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(w_a=st.integers(1, 6), w_b=st.integers(1, 6), n=st.integers(50, 400))
def test_backlogged_submitters_share_placements_by_weight_within_one_placement(w_a: int, w_b: int, n: int) -> None:
    # Given two submitters of one priority, both with more work than will be placed, and weights
    s = scheduler_with(p=caps(2))
    s.set_weight("ann", w_a)
    s.set_weight("bob", w_b)
    for _ in range(n):
        s.enqueue(task("ann"))
        s.enqueue(task("bob"))
    # When n tasks are placed
    subs = who(place_one_at_a_time(s, n))
    # Then at every prefix, ann's count is within one placement of its share (see the module docstring)
    total = w_a + w_b
    ann = 0
    for k, sub in enumerate(subs, 1):
        ann += sub == "ann"
        error = ann - k * w_a / total
        assert -w_a / total - 1e-9 <= error <= w_b / total + 1e-9, (k, ann, error)


def test_three_to_one_weights_split_three_to_one_and_equal_weights_split_evenly() -> None:
    # Given 2,000 queued tasks each for ann (weight 3) and bob (weight 1), and for cy and di (default weight)
    s = scheduler_with(p=caps(2))
    s.set_weight("ann", 3)
    s.set_weight("bob", 1)
    for _ in range(2000):
        s.enqueue(task("ann"))
        s.enqueue(task("bob"))
    # When 1,000 are placed
    counts = Counter(who(place_one_at_a_time(s, 1000)))
    # Then ann gets 750 and bob 250
    assert counts == {"ann": 750, "bob": 250}
    # And with equal (default) weights the split is even
    even = scheduler_with(p=caps(2))
    for _ in range(600):
        even.enqueue(task("cy"))
        even.enqueue(task("di"))
    assert Counter(who(place_one_at_a_time(even, 1000))) == {"cy": 500, "di": 500}


def test_a_batch_assign_interleaves_submitters_by_weight() -> None:
    # Given room for 400 at once, and two backlogged submitters with weights 3 and 1
    s = scheduler_with(p=caps(400))
    s.set_weight("ann", 3)
    s.set_weight("bob", 1)
    for _ in range(1000):
        s.enqueue(task("ann"))
        s.enqueue(task("bob"))
    # When one assign fills the provider
    out = s.assign()
    # Then the split is 300 to 100
    assert len(out) == 400
    assert Counter(who(out)) == {"ann": 300, "bob": 100}


# ---- starvation ------------------------------------------------------------------------------------


def test_ten_tasks_queued_behind_ten_thousand_are_placed_within_the_first_twenty() -> None:
    # Given ann's 10,000 tasks, then bob's 10, at the same priority and weight
    s = scheduler_with(p=caps(20))
    for _ in range(10_000):
        s.enqueue(task("ann"))
    for _ in range(10):
        s.enqueue(task("bob"))
    # When twenty are placed
    out = s.assign()
    # Then bob's k-th task is among the first 2k placements, so all ten are within the first twenty
    positions = [i for i, sub in enumerate(who(out), 1) if sub == "bob"]
    assert len(positions) == 10
    assert all(pos <= 2 * k for k, pos in enumerate(positions, 1)), positions


def test_a_submitter_arriving_late_is_neither_starved_nor_credited_for_its_idle_time() -> None:
    # Given ann alone has had 3,000 placements (bob once had one, long ago)
    s = scheduler_with(p=caps(2))
    s.enqueue(task("bob"))
    for _ in range(10_000):
        s.enqueue(task("ann"))
    place_one_at_a_time(s, 3000)
    # When bob queues ten tasks
    for _ in range(10):
        s.enqueue(task("bob"))
    subs = who(place_one_at_a_time(s, 40))
    # Then bob's k-th task is placed within 2k placements of his arrival (not after ann's backlog)...
    positions = [i for i, sub in enumerate(subs, 1) if sub == "bob"]
    assert len(positions) == 10
    assert all(pos <= 2 * k for k, pos in enumerate(positions, 1)), positions
    # ...and he gets no burst for the time he was idle: at every prefix the two are within one
    # placement of an even split, until bob's queue runs out
    bob = 0
    for k, sub in enumerate(subs[:20], 1):
        bob += sub == "bob"
        assert abs(bob - k / 2) <= 1, subs[:20]


def test_ten_tasks_are_not_starved_by_ten_thousand_while_capacity_is_saturated() -> None:
    # Given one slot, running one of ann's 10,000 tasks (the rest wait for it)
    s = scheduler_with(p=caps(1))
    for _ in range(10_000):
        s.enqueue(task("ann"))
    subs = who(s.assign())
    # When bob queues ten and the slot is freed and refilled, one task at a time, 40 times
    for _ in range(10):
        s.enqueue(task("bob"))
    for _ in range(40):
        s.release("p")
        subs += who(s.assign())
    # Then bob's ten ran within the first twenty placements after his arrival
    positions = [i for i, sub in enumerate(subs[1:], 1) if sub == "bob"]
    assert len(positions) == 10 and positions[-1] <= 20, positions


def test_weights_hold_while_capacity_is_saturated() -> None:
    # Given ten slots and two backlogged submitters with weights 3 and 1
    s = scheduler_with(p=caps(10))
    s.set_weight("ann", 3)
    s.set_weight("bob", 1)
    for _ in range(2000):
        s.enqueue(task("ann"))
        s.enqueue(task("bob"))
    # When the provider runs 40 rounds, each finishing everything and taking what it can
    out = s.assign()
    subs = who(out)
    for _ in range(39):
        for _ in out:
            s.release("p")
        out = s.assign()
        subs += who(out)
    # Then the split is three to one
    assert Counter(subs) == {"ann": 300, "bob": 100}


# ---- capabilities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "fits", "does_not_fit"),
    [
        ({"resources": Resources(backend="cuda")}, caps(backend="cuda", cc=8.0), caps(backend="cpu")),
        ({"resources": Resources(min_vram_mb=24_000)}, caps(vram_mb=24_000), caps(vram_mb=23_999)),
        (
            {"resources": Resources(min_compute_capability=8.0)},
            caps(backend="cuda", cc=8.0),
            caps(backend="cuda", cc=7.5),
        ),
        ({"workload": "sleep"}, caps(workloads=("noop", "sleep")), caps(workloads=("noop",))),
        ({"workload": "custom_kernel"}, caps(backend="cuda", cc=8.0), caps(backend="cpu")),
        ({"max_price": 100}, caps(price=100), caps(price=101)),
    ],
    ids=["backend", "vram", "compute_capability", "workload", "custom_kernel_needs_cuda", "price_ceiling"],
)
def test_a_task_goes_only_to_a_provider_that_meets_its_requirement(
    requirement: dict[str, object], fits: Capabilities, does_not_fit: Capabilities
) -> None:
    # Given a provider that misses the requirement by a little, with many free slots
    s = scheduler_with(wrong=does_not_fit.model_copy(update={"slots": 8}))
    t = task(**requirement)  # type: ignore[arg-type]
    s.enqueue(t)
    # When the scheduler runs, the task is not placed
    assert s.assign() == []
    assert s.pending() == 1
    # Then a provider that meets it exactly takes it as soon as it appears
    s.upsert_provider("right", fits, None, available=True)
    out = s.assign()
    assert [(a.task.task_id, a.provider_id) for a in out] == [(t.task_id, "right")]


def test_the_cheaper_provider_wins_among_equals_and_the_lease_carries_its_price() -> None:
    # Given two providers alike but for price
    s = scheduler_with(dear=caps(price=900, model="a"), cheap=caps(price=100, model="b"))
    s.enqueue(task())
    # When one task is placed
    (a,) = s.assign()
    # Then it goes to the cheaper, at its price
    assert (a.provider_id, a.price_micros) == ("cheap", 100)


def test_the_faster_provider_wins_by_predicted_runtime() -> None:
    # Given two providers alike but for calibrated speed, and a compute-heavy task
    s = Scheduler()
    s.upsert_provider("slow", caps(model="a"), Calibration(matmul_tflops={"fp32": 1.0}), available=True)
    s.upsert_provider("fast", caps(model="b"), Calibration(matmul_tflops={"fp32": 100.0}), available=True)
    s.enqueue(PendingTask("ann.j.0", "ann", 5, "matmul", Resources(), Estimate(flops=1e13)))
    # When it is placed, it goes to the faster one, with that one's prediction
    (a,) = s.assign()
    assert a.provider_id == "fast"
    assert a.predicted_s == pytest.approx(0.1, rel=0.05)


def test_a_task_that_fits_nowhere_waits_aside_and_blocks_nothing_behind_it() -> None:
    # Given only CPU providers, a task that needs CUDA at the head of the queue, and CPU tasks of the
    # same priority behind it, from the same submitter and another
    s = scheduler_with(cpu=caps(3))
    cuda_task = task("ann", resources=Resources(backend="cuda"))
    s.enqueue(cuda_task)
    behind = [task("ann"), task("bob"), task("ann")]
    for t in behind:
        s.enqueue(t)
    # When the scheduler runs
    out = s.assign()
    # Then every task behind it is placed and the CUDA task waits
    assert {a.task.task_id for a in out} == {t.task_id for t in behind}
    assert s.pending() == 1
    # And when a CUDA provider joins, the waiting task is placed there
    s.upsert_provider("gpu", caps(1, backend="cuda", cc=8.0), None, available=True)
    assert [(a.task.task_id, a.provider_id) for a in s.assign()] == [(cuda_task.task_id, "gpu")]
    assert s.pending() == 0


# ---- slots and availability ------------------------------------------------------------------------


def test_assign_never_exceeds_slots_until_a_release() -> None:
    # Given a provider with 3 slots and 10 tasks
    s = scheduler_with(p=caps(3))
    for _ in range(10):
        s.enqueue(task())
    # When assign runs again and again, only 3 are placed
    assert len(s.assign()) == 3
    assert s.assign() == []
    assert s.assign() == []
    # Then each release frees exactly one slot
    s.release("p")
    assert len(s.assign()) == 1
    s.release("p")
    s.release("p")
    assert len(s.assign()) == 2
    assert s.assign() == []


def test_a_provider_that_becomes_unavailable_gets_nothing_until_it_is_back() -> None:
    # Given two providers, one taken out (lost or draining) after it was offered
    s = scheduler_with(a=caps(5, model="a"), b=caps(1, model="b"))
    s.set_available("a", False)
    for _ in range(4):
        s.enqueue(task())
    # When the scheduler runs, everything it places goes to the other
    out = s.assign()
    assert [x.provider_id for x in out] == ["b"]
    # And a provider registered as unavailable gets nothing either
    s.upsert_provider("c", caps(5, model="c"), None, available=False)
    assert s.assign() == []
    # Then when it is back, it takes the waiting work
    s.set_available("a", True)
    assert sorted(x.provider_id for x in s.assign()) == ["a", "a", "a"]


def test_a_discarded_task_is_never_placed() -> None:
    # Given three queued tasks, one of which is leased elsewhere or cancelled
    s = scheduler_with(p=caps(5))
    ts = [task(), task(), task()]
    for t in ts:
        s.enqueue(t)
    s.discard(ts[1].task_id)
    # When the scheduler runs, the other two are placed
    assert sorted(a.task.task_id for a in s.assign()) == sorted([ts[0].task_id, ts[2].task_id])


# ---- random histories: slots, availability, capabilities, each task once ---------------------------

_SHAPES = {
    "any-noop": ("noop", Resources()),
    "any-sleep": ("sleep", Resources()),
    "cuda": ("noop", Resources(backend="cuda")),
    "vram": ("noop", Resources(min_vram_mb=40_000)),
}
_PROVIDERS = {
    "cpu": caps(2, workloads=("noop",)),
    "cpu-all": caps(3, model="x"),
    "gpu": caps(2, backend="cuda", cc=8.0, vram_mb=48_000),
}


def _fits(c: Capabilities, workload: str, r: Resources) -> bool:
    """The capability rule, restated independently of the scheduler's code."""
    if r.backend == "cuda" and c.backend != "cuda":
        return False
    if c.vram_mb < r.min_vram_mb or c.compute_capability < r.min_compute_capability:
        return False
    return not c.workloads or workload in c.workloads


class SchedulerHistory(RuleBasedStateMachine):
    """Random interleavings of arrivals, placements, releases, discards, availability and re-registration."""

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler()
        self.caps = dict(_PROVIDERS)
        self.available = dict.fromkeys(_PROVIDERS, True)
        for pid, c in self.caps.items():
            self.s.upsert_provider(pid, c, None, available=True)
        self.leases: Counter[str] = Counter()
        self.queued: dict[str, PendingTask] = {}
        self.placed: set[str] = set()
        self.n = 0

    @rule(shape=st.sampled_from(sorted(_SHAPES)), sub=st.sampled_from(["ann", "bob"]), prio=st.integers(0, 9))
    def arrive(self, shape: str, sub: str, prio: int) -> None:
        self.n += 1
        workload, r = _SHAPES[shape]
        t = task(sub, prio, task_id=f"{sub}.j.{self.n}", workload=workload, resources=r)
        self.queued[t.task_id] = t
        self.s.enqueue(t)

    @rule()
    def assign(self) -> None:
        for a in self.s.assign():
            t = a.task
            assert t.task_id in self.queued, f"{t.task_id} placed, but it was not waiting"
            assert self.available[a.provider_id], f"{a.provider_id} is unavailable"
            assert _fits(self.caps[a.provider_id], t.workload, t.resources)
            self.leases[a.provider_id] += 1
            assert self.leases[a.provider_id] <= self.caps[a.provider_id].slots, "slot over-committed"
            del self.queued[t.task_id]
            self.placed.add(t.task_id)

    @precondition(lambda self: sum(self.leases.values()) > 0)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(p for p, n in self.leases.items() if n > 0)))
        self.leases[pid] -= 1
        self.s.release(pid)

    @precondition(lambda self: bool(self.queued))
    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.queued)))
        del self.queued[tid]
        self.s.discard(tid)

    @rule(pid=st.sampled_from(sorted(_PROVIDERS)), up=st.booleans())
    def availability(self, pid: str, up: bool) -> None:
        self.available[pid] = up
        self.s.set_available(pid, up)

    @rule(pid=st.sampled_from(sorted(_PROVIDERS)), slots=st.integers(1, 4))
    def reregister(self, pid: str, slots: int) -> None:
        # The provider comes back with another slot count (it restarted on other settings).
        self.caps[pid] = self.caps[pid].model_copy(update={"slots": slots})
        self.s.upsert_provider(pid, self.caps[pid], None, available=self.available[pid])

    @invariant()
    def pending_is_what_waits(self) -> None:
        assert self.s.pending() == len(self.queued)


SchedulerHistory.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_random_histories_never_over_commit_or_misplace = SchedulerHistory.TestCase


def test_each_freed_slot_takes_a_waiting_task_that_fits_it() -> None:
    # Given a mixed fleet, filled, and a backlog with work for every provider
    s = scheduler_with(**_PROVIDERS)
    for i in range(60):
        workload, r = _SHAPES[sorted(_SHAPES)[i % len(_SHAPES)]]
        s.enqueue(task("ann" if i % 3 else "bob", i % 10, workload=workload, resources=r))
    placed = s.assign()
    assert Counter(a.provider_id for a in placed) == {pid: c.slots for pid, c in _PROVIDERS.items()}
    # When slots free one at a time
    for a in placed * 3:
        s.release(a.provider_id)
        got = s.assign()
        # Then each is taken at once by a task that fits it, and nothing else moves
        assert [x.provider_id for x in got] == [a.provider_id]
        assert _fits(_PROVIDERS[a.provider_id], got[0].task.workload, got[0].task.resources)


# ---- one shape saturated while another has room ---------------------------------------------------


def _mixed() -> Scheduler:
    """A CUDA provider with one slot that runs only ``noop`` (saturated below), and a CPU provider with room."""
    return scheduler_with(gpu=caps(1, backend="cuda", cc=9.0, workloads=("noop",)), cpu=caps(1000))


def _cuda(submitter: str, priority: int = 5) -> PendingTask:
    return task(submitter, priority, resources=Resources(backend="cuda"))


def test_waiting_aside_keeps_priority_when_another_shape_has_room() -> None:
    # Given CUDA tasks waiting aside (the CUDA slot is busy) while CPU work still flows
    s = _mixed()
    for _ in range(5):
        s.enqueue(_cuda("ann", 1))
    s.enqueue(task("cy", workload="sleep"))
    first = s.assign()
    assert sorted(a.provider_id for a in first) == ["cpu", "gpu"]
    # When two urgent CUDA tasks arrive, wait aside too, and the CUDA slot frees six times
    s.enqueue(_cuda("bob", 9))
    s.enqueue(_cuda("bob", 9))
    s.enqueue(task("cy", workload="sleep"))
    assert [a.provider_id for a in s.assign()] == ["cpu"]
    order = []
    for _ in range(6):
        s.release("gpu")
        order += [a.task.priority for a in s.assign() if a.provider_id == "gpu"]
    # Then both urgent tasks take the CUDA slot before any further low-priority one
    assert order == [9, 9, 1, 1, 1, 1]


def test_waiting_aside_keeps_fair_share_when_another_shape_has_room() -> None:
    # Given ann's 2,000 CUDA tasks waiting aside behind a busy CUDA slot, CPU work flowing
    s = _mixed()
    for _ in range(2000):
        s.enqueue(_cuda("ann"))
    s.enqueue(task("cy", workload="sleep"))
    s.assign()
    # When bob's ten CUDA tasks arrive and the CUDA slot frees one task at a time
    for _ in range(10):
        s.enqueue(_cuda("bob"))
    s.enqueue(task("cy", workload="sleep"))
    s.assign()
    subs = []
    for _ in range(40):
        s.release("gpu")
        subs += [a.task.submitter for a in s.assign() if a.provider_id == "gpu"]
    # Then bob's ten run within the first twenty, alternating with ann's
    positions = [i for i, sub in enumerate(subs, 1) if sub == "bob"]
    assert len(positions) == 10 and positions[-1] <= 21, (positions, subs)


def test_a_saturated_round_costs_one_look_not_the_backlog() -> None:
    # Given one slot and a backlog of 10,000
    s = scheduler_with(p=caps(1))
    for _ in range(10_000):
        s.enqueue(task("ann"))
    # When a round places one and then finds the fleet full, and 100 more rounds find it full
    assert len(s.assign()) == 1
    for _ in range(100):
        assert s.assign() == []
    # Then each round looked at one task (not the whole backlog), and all the rest still wait
    assert s.decisions <= 2 + 100, s.decisions
    assert s.pending() == 9_999


def test_a_slot_handed_to_a_task_cancelled_before_it_was_placed_goes_to_the_next_one_waiting() -> None:
    """Found by the stateful orchestration test: two busy GPU providers of one class free their slots
    as a job is cancelled task by task. Each freed slot is handed to a waiting task of that job, which
    is then cancelled too; the other job's tasks must get both slots, not one."""
    s = Scheduler()
    gpu = Resources(backend="cuda")
    s.upsert_provider("c", caps(1), None, available=True)  # a free CPU: the GPU tasks wait aside
    for pid in ("g1", "g2"):
        s.upsert_provider(pid, caps(1, backend="cuda", cc=8.0), None, available=True)
        s.occupy(pid)
    doomed = [task("ann", task_id=f"ann.j1.{i}", resources=gpu) for i in range(2)]
    waiting = [task("ann", task_id=f"ann.j2.{i}", resources=gpu) for i in range(2)]
    for t in doomed + waiting:
        s.enqueue(t)
    assert s.assign() == []  # every GPU task waits aside
    s.release("g1")  # handed ann.j1.0
    s.release("g2")  # handed ann.j1.1
    for t in doomed:
        s.discard(t.task_id)  # cancelled before the next round
    placed = {a.task.task_id: a.provider_id for a in s.assign()}
    assert set(placed) == {"ann.j2.0", "ann.j2.1"} and set(placed.values()) == {"g1", "g2"}
