"""The quote, pure: a job spec against a fleet view and an ETA view fed real events (the golden log
generator's), at a given instant. No server."""

from __future__ import annotations

import math
from typing import Any

import pytest

from events.job import JobSpec
from events.metering import metered_amount
from events.placement import REQUIREMENTS, misfits, misfits_by_requirement
from events.types import Capabilities, Resources
from events.verification import VerifyPolicy
from projections.eta import EtaView
from projections.fleet import FleetView
from projections.quote import EtaSource, Quote, quote
from tests.golden.loggen import Sim


class World:
    """A simulated log, folded into a real fleet view and a real ETA view."""

    def __init__(self) -> None:
        self.sim = Sim(seed=3)
        self.fleet = FleetView()
        self.eta = EtaView()
        self._folded = 0

    def views(self) -> tuple[FleetView, EtaSource]:
        new = self.sim.events[self._folded :]
        self.fleet.fold(new)
        self.eta.fold(new)
        self._folded = len(self.sim.events)
        return self.fleet, self.eta

    def quote(self, **spec: Any) -> Quote:
        fleet, eta = self.views()
        body = {"workload": "matmul", "params": {"n": 512}, "submitter": "alice", **spec}
        verify = body.pop("default_verify", VerifyPolicy())
        return quote(
            JobSpec.model_validate(body),
            fleet=fleet.providers.values(),
            eta=eta,
            now=self.sim.now.timestamp(),
            default_verify=verify,
        )


def test_capable_classes_group_online_providers_and_the_fastest_is_best() -> None:
    w = World()
    w.sim.register("fast1", tflops=80.0, vram_mb=81920, slots=2, price=2000)
    w.sim.register("fast2", tflops=80.0, vram_mb=81920, slots=1, price=1500)
    w.sim.register("slow", tflops=5.0, vram_mb=16384, slots=4, price=100)
    w.sim.register("slow2", tflops=10.0, vram_mb=16384, slots=1, price=900)
    w.sim.register("gone", tflops=90.0, vram_mb=40960)
    w.sim.lose("gone")
    q = w.quote(split={"kind": "count", "count": 3})
    assert q.runnable and q.online == 4 and q.tasks == 3 and q.submitter == "alice"
    by_class = {o.device_class: o for o in q.options}
    assert set(by_class) == {"cuda:sim-cuda-81920", "cuda:sim-cuda-16384"}  # the lost one is not offered
    fast = by_class["cuda:sim-cuda-81920"]
    assert [(p.provider_id, p.slots, p.free, p.price_micros) for p in fast.providers] == [
        ("fast1", 2, 2, 2000),
        ("fast2", 1, 1, 1500),
    ]
    assert fast.slots == 3 and by_class["cuda:sim-cuda-16384"].slots == 5
    # The class's per-task time is its fastest provider's; at the same speed, the cheaper one's.
    assert fast.best_provider == "fast2"
    assert by_class["cuda:sim-cuda-16384"].best_provider == "slow2"
    assert q.best == "cuda:sim-cuda-81920"
    assert fast.per_task.seconds < by_class["cuda:sim-cuda-16384"].per_task.seconds
    for o in q.options:
        p = o.per_task
        assert p.low < p.seconds < p.high and p.basis == "roofline" and p.coverage == pytest.approx(0.8)
        assert o.finish_s.low <= o.finish_s.expected <= o.finish_s.high
    # Nothing queued, every slot free: it starts now, on all 8 capable slots, each task run twice
    # (paid results are spot-checked under the default policy) one run after another.
    assert q.start_s == 0.0 and q.slots == 8 and q.ahead == 0 and q.runs == 2.0
    assert q.finish_s is not None and q.finish_s.expected == pytest.approx(2 * fast.per_task.seconds)
    doc = q.to_json()
    assert Quote.from_json(doc) == q


def test_the_interval_narrows_once_the_shape_has_run() -> None:
    w = World()
    w.sim.register("a", tflops=20.0, slots=1)
    before = w.quote(params={"n": 2048, "repeat": 5})
    for i in range(4):
        w.sim.submit(f"h{i}", "matmul", {"n": 2048, "repeat": 5}, count=1)
        w.sim.lease(f"h{i}-0", "a")
        w.sim.start(f"h{i}-0")
        w.sim.tick(w.sim.tasks[f"h{i}-0"].duration)
        w.sim.complete(f"h{i}-0")
    after = w.quote(params={"n": 2048, "repeat": 5})
    assert before.per_task is not None and after.per_task is not None
    assert before.per_task.basis == "roofline" and after.per_task.basis == "shape"
    width = [p.high / p.low for p in (before.per_task, after.per_task)]
    assert width[1] < width[0]
    actual = w.sim.tasks["h3-0"].duration
    assert after.per_task.low / 1.5 <= actual <= after.per_task.high * 1.5


def test_cost_is_metered_at_the_class_price_and_counts_the_replicas() -> None:
    w = World()
    w.sim.register("paid", price=5000, slots=2)
    w.sim.register("free", backend="cpu", price=0, slots=2, tflops=1.0)

    def paid_option(q: Quote) -> Any:
        return next(o for o in q.options if o.device_class.startswith("cuda"))

    plain = w.quote(split={"kind": "count", "count": 4}, verify={"mode": "none"})
    o = paid_option(plain)
    p = o.per_task
    expected = metered_amount(math.ceil(p.seconds * 1000), 5000)
    assert o.runs == 1.0
    assert o.cost_per_task_micros.expected == expected
    assert o.cost_per_task_micros.low <= expected <= o.cost_per_task_micros.high
    assert o.cost_micros.expected == 4 * expected
    # The free class costs nothing, whatever its verification.
    free = next(x for x in plain.options if x.device_class.startswith("cpu"))
    assert free.cost_micros.high == 0
    # Three replicas, one after another: three times the cost and the time of each task.
    three = paid_option(w.quote(split={"kind": "count", "count": 4}, verify={"mode": "replicate", "replicas": 3}))
    assert three.runs == 3.0
    assert three.cost_per_task_micros.expected == 3 * expected
    assert three.finish_s.expected == pytest.approx(3 * o.finish_s.expected)
    # The network's default (auto): paid results are spot-checked, so a new provider's cost doubles.
    auto = paid_option(w.quote(split={"kind": "count", "count": 4}))
    assert auto.runs == 2.0 and auto.cost_per_task_micros.expected == 2 * expected
    # With no default policy, nothing is verified.
    assert paid_option(w.quote(split={"kind": "count", "count": 4}, default_verify=None)).runs == 1.0


def test_the_wait_grows_with_the_work_queued_ahead_and_fair_share_limits_it() -> None:
    w = World()
    w.sim.register("a", slots=2, tflops=10.0)
    # Both slots busy, for a while.
    w.sim.submit("busy", "sleep", {"seconds": 30.0, "steps": 4}, count=2, submitter="carol")
    for i in range(2):
        w.sim.lease(f"busy-{i}", "a")
        w.sim.start(f"busy-{i}")
    alone = w.quote()
    assert alone.start_s is not None and 0.0 < alone.start_s <= 30.0 * 2.5
    starts: list[float] = []
    for n in range(3):
        w.sim.submit(f"b{n}", "sleep", {"seconds": 20.0, "steps": 4}, count=2, submitter="bob")
        start = w.quote(submitter="bob").start_s
        assert start is not None
        starts.append(start)
    # Bob's own queued work all goes before his new job: each more queued job delays it.
    assert starts[0] < starts[1] < starts[2]
    assert w.quote(submitter="bob").ahead == 6
    # Alice is another submitter of the same priority: fair share puts one of bob's tasks before
    # her first, however much he queued.
    alice = w.quote(split={"kind": "count", "count": 2})
    assert alice.ahead == 1
    assert alice.start_s is not None and alice.start_s < starts[2]
    # A higher priority goes first: nothing ahead, it starts when the first slot frees.
    urgent = w.quote(priority=9)
    assert urgent.ahead == 0 and urgent.start_s == pytest.approx(alone.start_s)


def test_nothing_can_run_it_names_every_requirement_that_rules_providers_out() -> None:
    w = World()
    w.sim.register("c1", backend="cpu", vram_mb=8000, cc=0.0, price=300, slots=1, workloads=("matmul",))
    w.sim.register("c2", backend="cpu", vram_mb=16000, cc=0.0, price=100, slots=1, workloads=("matmul",))
    cuda = w.quote(resources={"backend": "cuda"})
    assert not cuda.runnable and not cuda.options and cuda.finish_s is None
    assert cuda.why == {"backend": "needs cuda; the 2 online providers are cpu"}
    assert cuda.ruled_out == {"backend": 2}
    q = w.quote(
        workload="fft",
        params={"n": 1024},
        resources={"min_vram_mb": 12000, "min_compute_capability": 7.0},
        max_price_micros=50,
    )
    assert not q.runnable
    assert q.ruled_out == {"vram": 1, "compute_capability": 2, "workload": 2, "price": 2}
    assert q.why["vram"] == "needs 12000 MB VRAM; 1 of the 2 online providers have less (at most 8000 MB)"
    assert q.why["compute_capability"].startswith("needs compute capability 7.0;")
    assert q.why["workload"] == "the 2 online providers do not run fft"
    assert q.why["price"] == "ceiling 50 micros/GPU-s; the 2 online providers charge more (the cheapest 100)"
    # One requirement alone may leave some providers: runnable, with what it ruled out said.
    some = w.quote(max_price_micros=200)
    assert some.runnable and [p.provider_id for o in some.options for p in o.providers] == ["c2"]
    assert some.ruled_out == {"price": 1}
    w.sim.lose("c1")
    w.sim.lose("c2")
    none = w.quote()
    assert not none.runnable and none.online == 0 and none.why == {"providers": "no provider is online"}


def test_the_requirements_are_the_placement_rule() -> None:
    caps = Capabilities(
        backend="cpu", gpu_model="x", vram_mb=10, price_micros=9, workloads=("noop",), packages={"numpy": "2.1.0"}
    )
    need = Resources(backend="cuda", min_vram_mb=20, min_compute_capability=1.0, packages={"scipy": ">=1"})
    by = misfits_by_requirement(caps, need, "matmul", 1)
    assert list(by.values()) == misfits(caps, need, "matmul", 1)
    # A provider that runs code, but not this submitter's: the one requirement left.
    coder = caps.model_copy(update={"workloads": ("function",), "code_from": ("bob",)})
    code = misfits_by_requirement(coder, need, "function", 1, "alice")
    assert tuple(by) == tuple(r for r in REQUIREMENTS if r != "code")
    assert set(by) | set(code) == set(REQUIREMENTS) and code["code"] == "runs no code from alice"


def test_the_answer_is_what_the_asyncapi_document_says() -> None:
    from events.asyncapi import generate_asyncapi

    doc = generate_asyncapi()
    schema = doc["components"]["messages"]["QuoteReply"]["payload"]["schema"]["oneOf"][0]
    assert doc["channels"]["quote"]["address"] == "gf.api.{role}.{name}.quote"
    w = World()
    w.sim.register("a")
    answer = w.quote().to_json()
    assert set(answer) == set(schema["properties"]) and set(schema["required"]) <= set(answer)
    (option,) = answer["options"]
    assert set(option) == set(schema["properties"]["options"]["items"]["properties"])
    assert all(type(v) is int for v in answer["cost_micros"].values())


def test_a_job_whose_tasks_differ_is_quoted_on_their_mean() -> None:
    w = World()
    w.sim.register("a", slots=1)
    small, big = (w.quote(params={"n": n}).per_task for n in (256, 2048))
    mixed = w.quote(params={}, split={"kind": "params", "params": [{"n": 256}, {"n": 2048}, {"n": 2048}]})
    assert small is not None and big is not None and mixed.per_task is not None and mixed.tasks == 3
    assert mixed.per_task.seconds == pytest.approx((small.seconds + 2 * big.seconds) / 3)
    assert mixed.finish_s is not None
    assert mixed.finish_s.expected == pytest.approx(3 * mixed.per_task.seconds * mixed.runs)
