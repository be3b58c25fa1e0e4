"""The counter-based RNG: matches a plain-Python splitmix64 reference, slices independently, exact."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_runtime.rng import hash_u64, uniform, uniform_pm1
from gpu_runtime.workloads.montecarlo import count_hits
from tests.runtime_reference import ref_hash, ref_hits, ref_pm1, ref_uniform


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    stream=st.integers(0, 8),
    start=st.integers(0, 2**40),
    count=st.integers(1, 40),
)
def test_hash_matches_the_python_reference(seed: int, stream: int, start: int, count: int) -> None:
    got = hash_u64(np, seed, stream, start, count)
    assert got.dtype == np.uint64
    assert got.tolist() == [ref_hash(seed, stream, start + i) for i in range(count)]


def test_any_slice_is_the_same_as_the_whole_sequence() -> None:
    whole = hash_u64(np, 42, 1, 0, 1000)
    for start, count in [(0, 1), (10, 5), (999, 1), (123, 456)]:
        assert np.array_equal(hash_u64(np, 42, 1, start, count), whole[start : start + count])


def test_seeds_and_streams_give_different_sequences() -> None:
    a = hash_u64(np, 1, 1, 0, 64)
    assert not np.array_equal(a, hash_u64(np, 2, 1, 0, 64))
    assert not np.array_equal(a, hash_u64(np, 1, 2, 0, 64))
    assert len(set(a.tolist())) == 64


def test_uniform_is_exact_and_in_range() -> None:
    u = uniform(np, 3, 1, 0, 10_000)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert np.array_equal(u, ref_uniform(3, 1, 10_000))
    assert abs(u.mean() - 0.5) < 0.01
    v = uniform_pm1(np, 3, 1, 0, 1000, dtype=np.float32)
    assert v.dtype == np.float32 and v.min() >= -1.0 and v.max() < 1.0
    assert np.array_equal(v, ref_pm1(3, 1, 1000).astype(np.float32))


def test_monte_carlo_hits_are_exact_and_chunking_does_not_matter() -> None:
    assert count_hits(np, 5, 0, 3000) == ref_hits(5, 3000)
    whole = count_hits(np, 9, 0, 50_000)
    parts = sum(count_hits(np, 9, s, min(7_000, 50_000 - s)) for s in range(0, 50_000, 7_000))
    assert whole == parts
    assert abs(4.0 * whole / 50_000 - np.pi) < 0.05
