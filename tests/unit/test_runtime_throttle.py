"""The progress throttle: at most two reports a second per task, the final one always through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpu_runtime.throttle import ProgressThrottle


def test_first_report_passes_then_spacing_is_enforced() -> None:
    t = ProgressThrottle(2.0)
    assert t.allow(10.0)
    assert not t.allow(10.1)
    assert not t.allow(10.49)
    assert t.allow(10.5)
    assert not t.allow(10.6)


def test_final_always_passes_and_restarts_the_interval() -> None:
    t = ProgressThrottle(2.0)
    assert t.allow(0.0)
    assert t.allow(0.01, final=True)
    assert not t.allow(0.3)
    assert t.allow(0.51)


def test_ready_does_not_consume() -> None:
    t = ProgressThrottle(4.0)
    assert t.ready(0.0) and t.ready(0.0)
    assert t.allow(0.0)
    assert not t.ready(0.2) and t.ready(0.25)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ProgressThrottle(0.0)


@given(st.lists(st.floats(min_value=0.0, max_value=20.0, allow_nan=False), min_size=1, max_size=300))
def test_no_window_of_one_second_holds_more_than_two(times: list[float]) -> None:
    t = ProgressThrottle(2.0)
    sent = [now for now in sorted(times) if t.allow(now)]
    for i, start in enumerate(sent):
        assert sum(1 for s in sent[i:] if s < start + 1.0) <= 2
