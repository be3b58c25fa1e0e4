"""The runtime model: first-principles base times, learning from history, determinism."""

from __future__ import annotations

import itertools
import random

import pytest

from events.estimates import RuntimeModel, base_seconds, shape_of
from events.types import Calibration, Estimate

CAL = Calibration(matmul_tflops={"fp32": 10.0, "fp16": 100.0}, memory_gbps=500.0, task_overhead_s=0.01)
MATMUL = Estimate(flops=2e12, bytes_moved=1e9, precision="fp32")


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
    assert RuntimeModel().predict("matmul", MATMUL, CAL, "p1") == base_seconds(MATMUL, CAL)


@pytest.mark.parametrize("ratio", [0.5, 3.0, 40.0])
def test_the_model_converges_to_the_observed_ratio(ratio: float) -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    for _ in range(10):  # history says the base is right...
        model.observe("matmul", MATMUL, CAL, "p1", base)
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(base)
    errors = []
    for _ in range(80):  # ...then the provider turns out to take `ratio` times as long
        model.observe("matmul", MATMUL, CAL, "p1", ratio * base)
        errors.append(abs(model.predict("matmul", MATMUL, CAL, "p1") - ratio * base))
    assert all(b < a for a, b in itertools.pairwise(errors[:40]))  # strictly closer each time
    assert errors[0] > 0.1 * abs(ratio - 1.0) * base  # one observation does not jump all the way
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(ratio * base, rel=1e-6)


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


def test_noisy_observations_average_out() -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    rng = random.Random(1)
    for _ in range(2000):
        model.observe("matmul", MATMUL, CAL, "p1", base * 2.0 * rng.uniform(0.8, 1.2))
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(2.0 * base, rel=0.15)


def test_history_is_per_provider_falling_back_to_the_workload() -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    model.observe("matmul", MATMUL, CAL, "fast", 0.5 * base)
    model.observe("matmul", MATMUL, CAL, "slow", 3.0 * base)
    assert model.predict("matmul", MATMUL, CAL, "fast") == pytest.approx(0.5 * base)
    assert model.predict("matmul", MATMUL, CAL, "slow") == pytest.approx(3.0 * base)
    # A provider with no history gets the workload's mean so far.
    assert model.predict("matmul", MATMUL, CAL, "new") == pytest.approx(1.75 * base)
    assert model.predict("matmul", MATMUL, CAL) == pytest.approx(1.75 * base)
    # Another workload is untouched.
    assert model.predict("fft", MATMUL, CAL, "slow") == pytest.approx(base)


def test_meaningless_observations_are_ignored_and_ratios_are_clamped() -> None:
    model = RuntimeModel()
    base = base_seconds(MATMUL, CAL)
    model.observe("matmul", MATMUL, CAL, "p1", 0.0)
    model.observe("matmul", MATMUL, CAL, "p1", -5.0)
    assert model.predict("matmul", MATMUL, CAL, "p1") == base
    model.observe("matmul", MATMUL, CAL, "p1", base * 1e9)
    assert model.predict("matmul", MATMUL, CAL, "p1") == pytest.approx(base * 1e4)


def test_the_model_is_deterministic() -> None:
    rng = random.Random(42)
    history = [
        (rng.choice(["matmul", "fft"]), rng.choice(["p1", "p2", "p3"]), rng.uniform(0.01, 10.0)) for _ in range(500)
    ]

    def trained() -> RuntimeModel:
        model = RuntimeModel()
        for workload, provider, actual in history:
            model.observe(workload, MATMUL, CAL, provider, actual)
        return model

    a, b = trained(), trained()
    for workload in ("matmul", "fft", "sleep"):
        for provider in ("p1", "p2", "p3", "p4", None):
            pa = a.predict(workload, MATMUL, CAL, provider)
            assert pa == b.predict(workload, MATMUL, CAL, provider)  # bit for bit, not approx
    assert a == b


SMALL = Estimate(flops=2e10, bytes_moved=1e8, precision="fp32")
BIG = Estimate(flops=2e12, bytes_moved=1e10, precision="fp32")


def test_history_of_the_same_shape_comes_first() -> None:
    # The workload's estimate is off by 4x for small tasks (fixed costs) and 2x for big ones.
    model = RuntimeModel()
    for _ in range(5):
        model.observe("matmul", SMALL, CAL, "p1", 4.0 * base_seconds(SMALL, CAL))
        model.observe("matmul", BIG, CAL, "p1", 2.0 * base_seconds(BIG, CAL))
    assert model.predict("matmul", SMALL, CAL, "p1") == pytest.approx(4.0 * base_seconds(SMALL, CAL))
    assert model.predict("matmul", BIG, CAL, "p1") == pytest.approx(2.0 * base_seconds(BIG, CAL))
    # A shape never seen falls back to the workload's history on this provider: between the two.
    other = Estimate(flops=2e11, bytes_moved=1e9, precision="fp32")
    ratio = model._by_provider[("matmul", "p1")].value
    assert 2.0 < ratio < 4.0
    assert model.predict("matmul", other, CAL, "p1") == pytest.approx(ratio * base_seconds(other, CAL))


def test_a_shape_new_to_a_provider_scales_its_workload_history_by_the_shape_s() -> None:
    model = RuntimeModel()
    for _ in range(5):  # on p1 both shapes; the small one costs twice the workload's average ratio
        model.observe("matmul", SMALL, CAL, "p1", 4.0 * base_seconds(SMALL, CAL))
        model.observe("matmul", BIG, CAL, "p1", 1.0 * base_seconds(BIG, CAL))
    for _ in range(5):  # p2 is 3x slower than p1 on the big shape and has never run the small one
        model.observe("matmul", BIG, CAL, "p2", 3.0 * base_seconds(BIG, CAL))
    p2 = model._by_provider[("matmul", "p2")].value
    shape = model._by_shape[shape_of("matmul", SMALL)].value
    workload = model._by_workload["matmul"].value
    assert (p2, shape) == (pytest.approx(3.0), pytest.approx(4.0))
    assert model.predict("matmul", SMALL, CAL, "p2") == pytest.approx(base_seconds(SMALL, CAL) * p2 * shape / workload)
    # Without history of its own, a provider gets the shape's history from anywhere.
    assert model.predict("matmul", SMALL, CAL, "p3") == pytest.approx(4.0 * base_seconds(SMALL, CAL))


def test_shape_tables_are_bounded_and_replay_evicts_alike() -> None:
    def trained() -> RuntimeModel:
        model = RuntimeModel(max_shapes=10)
        for i in range(100):
            est = Estimate(flops=1e9 * (i + 1), precision="fp32")
            model.observe("matmul", est, CAL, f"p{i % 3}", 0.01 * (i + 1))
        return model

    a, b = trained(), trained()
    assert len(a._by_shape) == 10 and len(a._by_shape_provider) == 10
    assert a == b
    newest = Estimate(flops=1e11, precision="fp32")
    assert a.predict("matmul", newest, CAL, "p0") == b.predict("matmul", newest, CAL, "p0")
