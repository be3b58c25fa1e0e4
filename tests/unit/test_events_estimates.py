"""The runtime model: first-principles base times, learning from history, determinism."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from events.estimates import Prediction, RuntimeModel, base_seconds, fair_share_ahead, forecast, work_seconds
from events.types import Calibration, Estimate, ProbeRun

CAL = Calibration(matmul_tflops={"fp32": 10.0, "fp16": 100.0}, memory_gbps=500.0, task_overhead_s=0.01)
MATMUL = Estimate(flops=2e12, bytes_moved=1e9, precision="fp32")
PROBED = CAL.model_copy(
    update={"probes": {"matmul": (ProbeRun(estimate=MATMUL, actual_s=0.5), ProbeRun(estimate=MATMUL, actual_s=0.6))}}
)


def test_base_is_the_slower_of_compute_and_memory_plus_fixed_costs() -> None:
    # compute 2e12 / 10e12 = 0.2 s; memory 1e9 / 500e9 = 0.002 s.
    assert base_seconds(MATMUL, CAL) == pytest.approx(0.2 + 0.01)
    memory_bound = Estimate(flops=1e6, bytes_moved=5e11)
    assert base_seconds(memory_bound, CAL) == pytest.approx(1.0 + 0.01)
    assert base_seconds(Estimate(fixed_seconds=3.0), CAL) == pytest.approx(3.01)


def test_base_uses_the_precision_rate_then_fp32() -> None:
    half = MATMUL.model_copy(update={"precision": "fp16"})
    assert base_seconds(half, CAL) == pytest.approx(0.02 + 0.01)
    unknown = MATMUL.model_copy(update={"precision": "bf16"})
    assert base_seconds(unknown, CAL) == pytest.approx(base_seconds(MATMUL, CAL))


def test_base_without_calibration_assumes_a_modest_cpu() -> None:
    slow = base_seconds(MATMUL, None)
    assert slow == pytest.approx(2e12 / 0.05e12 + 0.002)
    assert slow > base_seconds(MATMUL, CAL)


def test_an_untrained_model_predicts_the_base() -> None:
    assert RuntimeModel().predict("matmul", MATMUL, CAL, "p1") == pytest.approx(base_seconds(MATMUL, CAL))
    p = RuntimeModel().predict_interval("matmul", MATMUL, CAL, "p1")
    assert p.basis == "roofline" and p.low < p.seconds < p.high  # and says how little it knows


def test_work_seconds_is_the_roofline_without_the_overhead() -> None:
    assert work_seconds(MATMUL, CAL) == pytest.approx(0.2)
    assert base_seconds(MATMUL, CAL) - work_seconds(MATMUL, CAL) == pytest.approx(0.01)


@pytest.mark.parametrize("ratio", [0.5, 3.0, 40.0])
def test_a_shape_follows_its_recent_runs_and_ignores_an_odd_one(ratio: float) -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    for _ in range(10):  # history says the base is right...
        model.observe("matmul", MATMUL, CAL, "p1", base)
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(base)
    model.observe("matmul", MATMUL, CAL, "p1", ratio * base)  # one odd run (a busy machine) moves nothing
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(base)
    model.observe("matmul", MATMUL, CAL, "p1", ratio * base)  # ...but most of its latest runs do
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(ratio * base)


def test_a_first_observation_is_taken_at_face_value() -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    model.observe("matmul", MATMUL, CAL, "p1", 3.0 * base)
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(3.0 * base)


def test_the_model_follows_drift() -> None:
    model = RuntimeModel(alpha=0.2)
    base = base_seconds(MATMUL, CAL)
    for _ in range(50):
        model.observe("matmul", MATMUL, CAL, "p1", 2.0 * base)
    for _ in range(50):
        model.observe("matmul", MATMUL, CAL, "p1", 4.0 * base)
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(4.0 * base, rel=1e-3)


def test_noise_does_not_bias_a_shapes_prediction() -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    rng = random.Random(1)
    predictions = []
    for _ in range(2000):
        model.observe("matmul", MATMUL, CAL, "p1", base * 2.0 * math.exp(rng.gauss(0.0, 0.2)))
        predictions.append(model.predict("matmul", MATMUL, CAL, "p1"))
    assert statistics.geometric_mean(predictions) == pytest.approx(2.0 * base, rel=0.03)
    # a median of its latest runs: steadier than the runs themselves
    assert statistics.pstdev(math.log(p) for p in predictions) < 0.8 * 0.2


def test_history_is_per_provider_then_its_device_class() -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    model.observe("matmul", MATMUL, CAL, "fast", 0.5 * base, "cuda:A")
    model.observe("matmul", MATMUL, CAL, "slow", 3.0 * base, "cuda:A")
    model.observe("matmul", MATMUL, CAL, "cpu", 30.0 * base, "cpu:x")
    assert model.predict("matmul", MATMUL, CAL, "fast", "cuda:A") == pytest.approx(0.5 * base)
    assert model.predict("matmul", MATMUL, CAL, "slow", "cuda:A") == pytest.approx(3.0 * base)
    # A provider with no history gets its class's (geometric) mean for the shape, not a CPU's.
    assert model.predict("matmul", MATMUL, CAL, "new", "cuda:A") == pytest.approx(math.sqrt(1.5) * base)
    assert model.predict("matmul", MATMUL, CAL, "new", "cpu:x") == pytest.approx(30.0 * base)
    # Another workload is untouched by the shape's history (only the class's typical efficiency).
    assert model.predict_interval("fft", MATMUL, CAL, "slow", "cuda:A").basis == "roofline"


def test_meaningless_observations_are_ignored_and_ratios_are_clamped() -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    model.observe("matmul", MATMUL, CAL, "p1", 0.0)
    model.observe("matmul", MATMUL, CAL, "p1", -5.0)
    model.observe("matmul", MATMUL, CAL, "p1", math.nan)
    model.observe("matmul", MATMUL, CAL, "p1", math.inf)
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(base)
    model.observe("matmul", MATMUL, CAL, "p1", base * 1e9)
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(base * 1e4)


def test_the_model_is_deterministic() -> None:
    rng = random.Random(42)
    history = [
        (rng.choice(["matmul", "fft"]), rng.choice(["p1", "p2", "p3"]), rng.uniform(0.01, 10.0)) for _ in range(500)
    ]

    def trained() -> RuntimeModel:
        model = RuntimeModel()
        model.calibrated("p1", "cpu:x", PROBED)
        for workload, provider, actual in history:
            model.observe(workload, MATMUL, CAL, provider, actual, "cpu:x")
        return model

    a, b = trained(), trained()
    for workload in ("matmul", "fft", "sleep"):
        for provider in ("p1", "p2", "p3", "p4", None):
            pa = a.predict_interval(workload, MATMUL, CAL, provider, "cpu:x")
            assert pa == b.predict_interval(workload, MATMUL, CAL, provider, "cpu:x")  # bit for bit
    assert a == b


SMALL = Estimate(flops=2e10, bytes_moved=1e8, precision="fp32")
BIG = Estimate(flops=2e12, bytes_moved=1e10, precision="fp32")


def _law(est: Estimate, c: float = 3.0, b: float = 1.2) -> float:
    """A synthetic size law: actual = c * work^b (work: the roofline seconds)."""
    return float(c * work_seconds(est, CAL) ** b)


def _sized(flops: float) -> Estimate:
    return Estimate(flops=flops, bytes_moved=flops / 100, precision="fp32")


def test_history_of_the_same_shape_comes_first() -> None:
    model = RuntimeModel()
    for _ in range(5):
        model.observe("matmul", SMALL, CAL, "p1", 4.0 * base_seconds(SMALL, CAL))
        model.observe("matmul", BIG, CAL, "p1", 2.0 * base_seconds(BIG, CAL))
    small = model.predict_interval("matmul", SMALL, CAL, "p1")
    assert small.basis == "shape" and small.seconds == pytest.approx(4.0 * base_seconds(SMALL, CAL))
    assert model.predict("matmul", BIG, CAL, "p1") == pytest.approx(2.0 * base_seconds(BIG, CAL))
    # A shape never seen falls on the workload's size law through the two: between their times.
    other = _sized(2e11)
    p = model.predict_interval("matmul", other, CAL, "p1")
    assert p.basis == "fit"
    assert model.predict("matmul", SMALL, CAL, "p1") < p.seconds < model.predict("matmul", BIG, CAL, "p1")


def test_the_size_law_is_learned_and_interpolates_a_new_size() -> None:
    # A known law with a slope that is not 1 (a fixed cost per element grows superlinearly, say).
    model = RuntimeModel()
    rng = random.Random(7)
    for _ in range(40):
        est = _sized(10 ** rng.uniform(9.0, 13.0))
        model.observe("fft", est, CAL, "p1", _law(est), "cpu:x")
    for flops in (3.3e9, 4.7e10, 6.1e12):  # sizes never seen
        est = _sized(flops)
        p = model.predict_interval("fft", est, CAL, "p2", "cpu:x")  # another provider of the class
        assert p.basis == "fit"
        assert p.seconds == pytest.approx(_law(est), rel=0.05)
    # The roofline alone is off by a factor the law corrects.
    est = _sized(6.1e12)
    assert abs(base_seconds(est, CAL) - _law(est)) / _law(est) > 0.3


def test_calibration_probes_start_a_workloads_size_law_on_the_class() -> None:
    # Two probe runs of a workload on a device tell a first prediction of it, at any size, on that class.
    probes = {"reduction": tuple(ProbeRun(estimate=_sized(f), actual_s=_law(_sized(f))) for f in (1e9, 8e9))}
    cal = CAL.model_copy(update={"probes": probes})
    model = RuntimeModel()
    model.calibrated("p1", "cpu:x", cal)
    est = _sized(5e10)
    p = model.predict_interval("reduction", est, cal, "p1", "cpu:x")
    assert p.basis == "probe"
    # (two points' slope is shrunk towards 1 until history confirms it: close, not exact)
    assert p.seconds == pytest.approx(_law(est), rel=0.2)
    assert abs(base_seconds(est, cal) - _law(est)) / _law(est) > 0.3  # physics alone would be off
    # Another class learns nothing from them; a completed task turns the law into history.
    assert model.predict_interval("reduction", est, cal, "p9", "cuda:A").basis == "roofline"
    model.observe("reduction", _sized(2e10), cal, "p1", _law(_sized(2e10)), "cpu:x")
    assert model.predict_interval("reduction", est, cal, "p1", "cpu:x").basis == "fit"


def test_a_known_fixed_duration_is_never_scaled_by_the_class() -> None:
    model = RuntimeModel()
    for _ in range(5):  # the class runs matmul at a tenth of the roofline
        model.observe("matmul", MATMUL, CAL, "p1", 10.0 * base_seconds(MATMUL, CAL), "cpu:x")
    nap = Estimate(fixed_seconds=2.0)
    assert model.predict("sleep", nap, CAL, "p1", "cpu:x") == pytest.approx(base_seconds(nap, CAL))
    # while an unknown workload with work in it takes the class's typical efficiency
    assert model.predict("fft", BIG, CAL, "p1", "cpu:x") > 5.0 * base_seconds(BIG, CAL)


@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_intervals_cover_about_80_percent_of_noisy_outcomes(sigma: float) -> None:
    model = RuntimeModel()
    rng = random.Random(11)
    inside = total = 0
    for i in range(1500):
        est = _sized(10 ** rng.uniform(9.0, 12.0))
        actual = _law(est) * math.exp(rng.gauss(0.0, sigma))
        p = model.predict_interval("stencil", est, CAL, "p1", "cpu:x")
        if i >= 300:  # after a warm-up, every new outcome is judged against the interval given before it
            total += 1
            inside += p.contains(actual)
        model.observe("stencil", est, CAL, "p1", actual, "cpu:x")
    coverage = inside / total
    assert 0.74 <= coverage <= 0.86, coverage
    # and the interval is as wide as the noise: about +-1.28 sigma in log space
    p = model.predict_interval("stencil", _sized(1e11), CAL, "p1", "cpu:x")
    assert math.log(p.high / p.low) == pytest.approx(2 * 1.28 * sigma, rel=0.35)
    # A workload with too few residuals of its own borrows the basis's, pooled over workloads: far
    # narrower than the prior for a sure law, as wide as the noise.
    for flops in (1e9, 1e10, 1e11):
        model.observe("fft", _sized(flops), CAL, "p1", _law(_sized(flops)), "cpu:x")
    q = model.predict_interval("fft", _sized(3e10), CAL, "p1", "cpu:x")
    assert q.basis == "fit"
    assert math.log(q.high / q.low) == pytest.approx(2 * 1.28 * sigma, rel=0.35)


def test_a_basis_without_residuals_has_a_wide_prior_interval() -> None:
    model = RuntimeModel()
    raw = model.predict_interval("matmul", MATMUL, CAL, "p1")
    model.observe("matmul", MATMUL, CAL, "p1", base_seconds(MATMUL, CAL))
    seen = model.predict_interval("matmul", MATMUL, CAL, "p1")
    assert seen.basis == "shape"
    assert seen.high / seen.low < raw.high / raw.low  # a shape run before is known better than physics


def test_shape_tables_are_bounded_and_replay_evicts_alike() -> None:
    def trained() -> RuntimeModel:
        model = RuntimeModel(max_shapes=10)
        for i in range(100):
            est = Estimate(flops=1e9 * (i + 1), precision="fp32")
            model.observe("matmul", est, CAL, f"p{i % 3}", 0.01 * (i + 1))
        return model

    a, b = trained(), trained()
    assert len(a._by_shape_provider) == 10 and len(a._by_shape_class) == 10
    assert a == b
    newest = Estimate(flops=1e11, precision="fp32")
    assert a.predict("matmul", newest, CAL, "p0") == b.predict("matmul", newest, CAL, "p0")


# ---- the queue -------------------------------------------------------------------------------------


def test_forecast_list_schedules_the_work_ahead_then_the_job() -> None:
    each = Prediction(2.0, 1.0, 4.0)
    # two slots, one free now and one in 3 s; 1 task of 5 s ahead
    f = forecast([0.0, 3.0], [5.0], [5.0], 3, each)
    # ahead takes the free slot (0-5); mine: 3-5, 5-7 (slot freed at 5), 5-7 -> ends 7
    assert (f.start_s, f.finish_s) == (3.0, 7.0)
    assert f.finish_low_s < f.finish_s < f.finish_high_s
    assert (f.ahead, f.slots) == (1, 2)
    nothing = forecast([], [], [], 3, each)
    assert math.isinf(nothing.finish_s) and nothing.slots == 0


def test_forecast_of_a_huge_job_is_a_fluid() -> None:
    each = Prediction(1.0, 0.5, 2.0)
    f = forecast([0.0] * 100, [], [], 10_000_000, each)
    assert f.finish_s == pytest.approx(100_000.0)
    assert f.finish_low_s == pytest.approx(50_000.0) and f.finish_high_s == pytest.approx(200_000.0)


def test_fair_share_puts_one_of_each_peer_before_the_first_task() -> None:
    queue = {(9, "vip"): [1.0, 1.0], (5, "alice"): [2.0] * 10, (5, "bob"): [3.0] * 2, (5, "me"): [4.0], (1, "z"): [9.0]}
    first, last = fair_share_ahead(queue, 5, "me", 3)
    # higher priority whole, my own queued whole, one of each peer at my priority; nothing lower
    assert sorted(first) == sorted([1.0, 1.0, 2.0, 3.0, 4.0])
    # before my last task: as many of each peer as I have tasks (bob has only 2)
    assert sorted(last) == sorted([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 4.0])
    # the queue's own order is not needed: the same answer whatever the dict's order
    assert fair_share_ahead(dict(reversed(list(queue.items()))), 5, "me", 3) == (first, last)


def test_a_known_fixed_duration_is_added_outside_the_size_law() -> None:
    # Probes of a stencil take milliseconds at a slope above 1; a task of the same grid with a 12 s step
    # delay is 12 s plus a few milliseconds, not the law extrapolated to 12 s of "work" (minutes).
    probes = {"stencil": tuple(ProbeRun(estimate=_sized(f), actual_s=_law(_sized(f), b=1.4)) for f in (1e9, 8e9))}
    cal = CAL.model_copy(update={"probes": probes})
    model = RuntimeModel()
    model.calibrated("p1", "cpu:x", cal)
    delayed = _sized(4e9).model_copy(update={"fixed_seconds": 12.0})
    p = model.predict_interval("stencil", delayed, cal, "p1", "cpu:x")
    assert p.seconds == pytest.approx(12.0 + _law(_sized(4e9), b=1.4), rel=0.01)
    # and once it ran, the delay is not learned as work either: a smaller delayed run is predicted alike
    model.observe("stencil", delayed, cal, "p1", 12.0 + _law(_sized(4e9), b=1.4), "cpu:x")
    short = _sized(2e9).model_copy(update={"fixed_seconds": 3.0})
    assert model.predict("stencil", short, cal, "p1", "cpu:x") == pytest.approx(3.0, rel=0.01)


def test_a_provider_lying_in_its_probes_moves_no_law_with_history_and_cannot_outvote_by_recalibrating() -> None:
    honest = {"fft": tuple(ProbeRun(estimate=_sized(f), actual_s=_law(_sized(f))) for f in (1e9, 8e9))}
    lies = {"fft": tuple(ProbeRun(estimate=_sized(f), actual_s=_law(_sized(f)) / 1000) for f in (1e9, 8e9))}
    model = RuntimeModel()
    for i in range(5):
        model.calibrated(f"h{i}", "cpu:x", CAL.model_copy(update={"probes": honest}))
    for _ in range(200):  # the liar calibrates again and again: only its latest calibration counts
        model.calibrated("liar", "cpu:x", CAL.model_copy(update={"probes": lies}))
    est = _sized(3e10)
    before = model.predict("fft", est, CAL, "h0", "cpu:x")
    # each probed size counts at the median of the providers' runs: one liar among six moves nothing
    assert before == pytest.approx(_law(est), rel=0.2)
    for f in (2e9, 1e10, 1e11):  # then the network measures real work
        model.observe("fft", _sized(f), CAL, "h1", _law(_sized(f)), "cpu:x")
    for _ in range(50):
        model.calibrated("liar", "cpu:x", CAL.model_copy(update={"probes": lies}))
    assert model.predict("fft", est, CAL, "h0", "cpu:x") == pytest.approx(_law(est), rel=0.1)


def test_once_a_law_has_history_probes_no_longer_count() -> None:
    lies = {"fft": tuple(ProbeRun(estimate=_sized(f), actual_s=_law(_sized(f)) / 1000) for f in (1e9, 8e9))}
    model = RuntimeModel()
    model.calibrated("liar", "cpu:x", CAL.model_copy(update={"probes": lies}))  # the class's only prober
    est = _sized(3e10)
    assert model.predict("fft", est, CAL, "h1", "cpu:x") < _law(est) / 100  # believed, while it is all there is
    for f in (2e9, 1e10, 1e11):
        model.observe("fft", _sized(f), CAL, "h1", _law(_sized(f)), "cpu:x")
    assert model.predict("fft", est, CAL, "h2", "cpu:x") == pytest.approx(_law(est), rel=0.1)


def test_a_workloads_first_tasks_inherit_how_much_slower_real_tasks_ran_than_probes_on_the_class() -> None:
    probes = {
        w: tuple(ProbeRun(estimate=_sized(f), actual_s=_law(_sized(f))) for f in (1e9, 8e9))
        for w in ("fft", "reduction")
    }
    cal = CAL.model_copy(update={"probes": probes})
    model = RuntimeModel()
    model.calibrated("p1", "cpu:x", cal)
    est = _sized(3e10)
    first = model.predict("reduction", est, cal, "p1", "cpu:x")
    for f in (2e9, 5e9, 1e10, 2e10, 5e10, 1e11):  # real fft tasks take twice what its probes said
        model.observe("fft", _sized(f), cal, "p1", 2.0 * _law(_sized(f)), "cpu:x")
    later = model.predict_interval("reduction", est, cal, "p1", "cpu:x")
    assert later.basis == "probe"  # still nothing of its own...
    assert later.seconds == pytest.approx(2.0 * first, rel=0.15)  # ...but the class's lesson
