"""How long a task will take on a provider: the workload's estimate, the device's calibration, history.

The scheduler scores providers with it and records its prediction in ``TaskLeased.predicted_s``; the
ETA view folds the same history. It is pure and deterministic: the same observations in the same
order give the same predictions, so replay reproduces every ETA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

from events.types import Calibration, Estimate

__all__ = ["RuntimeModel", "Shape", "base_seconds", "shape_of"]

K = TypeVar("K")

#: Assumed when a provider has not calibrated: a modest CPU.
_DEFAULT_TFLOPS = 0.05
_DEFAULT_GBPS = 10.0
_DEFAULT_OVERHEAD_S = 0.002


def base_seconds(estimate: Estimate, calibration: Calibration | None) -> float:
    """A first-principles duration: the slower of compute and memory traffic, plus fixed costs."""
    cal = calibration or Calibration()
    # Only positive, finite rates count: a rate of 0 is "not measured", never an infinitely slow (or,
    # divided by, an infinitely fast) device.
    rates = {k: v for k, v in cal.matmul_tflops.items() if v > 0 and math.isfinite(v)}
    tflops = rates.get(estimate.precision) or rates.get("fp32") or max(rates.values(), default=_DEFAULT_TFLOPS)
    gbps = cal.memory_gbps if cal.memory_gbps > 0 and math.isfinite(cal.memory_gbps) else _DEFAULT_GBPS
    overhead = cal.task_overhead_s or _DEFAULT_OVERHEAD_S
    compute = estimate.flops / (tflops * 1e12)
    memory = estimate.bytes_moved / (gbps * 1e9)
    return max(compute, memory) + estimate.fixed_seconds + overhead


@dataclass
class _Ratio:
    value: float = 1.0
    n: int = 0

    def observe(self, ratio: float, alpha: float) -> None:
        # Mean of the first observations, then an exponential average that follows drift.
        self.n += 1
        weight = max(alpha, 1.0 / self.n)
        self.value += weight * (ratio - self.value)


#: One task shape: its workload and its estimate (tasks of one split usually share it exactly).
Shape = tuple[str, float, float, int, float, str]


def shape_of(workload: str, estimate: Estimate) -> Shape:
    """The shape of a task: its workload and its estimate (the tasks of one split usually share it)."""
    e = estimate
    return (workload, e.flops, e.bytes_moved, e.memory_bytes, e.fixed_seconds, e.precision)


@dataclass
class RuntimeModel:
    """Corrects ``base_seconds`` by the observed actual/base ratio of similar tasks.

    "Similar" is, from the closest to the loosest:

    1. the same shape (workload and estimate) on the same provider;
    2. the same workload on the same provider, scaled by how this shape's ratio compares with the
       workload's (both over every provider): the first-principles estimate of a workload is off by
       a different factor at different sizes, dtypes and ops (fixed costs, seeded-input generation),
       and the shape's own history says by how much;
    3. the same shape anywhere; 4. the same workload on the same provider; 5. the same workload
       anywhere; else the base itself.

    The shape tables keep the ``max_shapes`` most recently observed shapes, so a stream of unique
    shapes cannot grow them without bound; eviction follows the observations, so replay evicts alike.
    """

    alpha: float = 0.2
    max_shapes: int = 50_000
    _by_provider: dict[tuple[str, str], _Ratio] = field(default_factory=dict)
    _by_workload: dict[str, _Ratio] = field(default_factory=dict)
    _by_shape: dict[Shape, _Ratio] = field(default_factory=dict)
    _by_shape_provider: dict[tuple[Shape, str], _Ratio] = field(default_factory=dict)

    def predict(
        self,
        workload: str,
        estimate: Estimate,
        calibration: Calibration | None,
        provider_id: str | None = None,
    ) -> float:
        """Predicted seconds for one task of ``workload`` on this provider."""
        base = base_seconds(estimate, calibration)
        shape = shape_of(workload, estimate)
        provider = provider_id or ""
        own = self._by_shape_provider.get((shape, provider))
        if own is not None:
            return base * own.value
        here = self._by_provider.get((workload, provider))
        anywhere = self._by_shape.get(shape)
        workload_ratio = self._by_workload.get(workload)
        if here is not None and anywhere is not None and workload_ratio is not None:
            return base * here.value * (anywhere.value / workload_ratio.value)
        ratio = anywhere or here or workload_ratio
        return base * (ratio.value if ratio else 1.0)

    def observe(
        self,
        workload: str,
        estimate: Estimate,
        calibration: Calibration | None,
        provider_id: str,
        actual_s: float,
    ) -> None:
        """Learn from one finished task: its actual duration against the first-principles base."""
        base = base_seconds(estimate, calibration)
        if base <= 0.0 or actual_s <= 0.0:
            return
        ratio = min(max(actual_s / base, 1e-3), 1e4)
        self._by_provider.setdefault((workload, provider_id), _Ratio()).observe(ratio, self.alpha)
        self._by_workload.setdefault(workload, _Ratio()).observe(ratio, self.alpha)
        shape = shape_of(workload, estimate)
        _recent(self._by_shape, shape, self.max_shapes).observe(ratio, self.alpha)
        _recent(self._by_shape_provider, (shape, provider_id), self.max_shapes).observe(ratio, self.alpha)


def _recent(table: dict[K, _Ratio], key: K, limit: int) -> _Ratio:
    """``table[key]``, moved to the newest end; the oldest entry goes when the table is full."""
    r = table.pop(key, None)
    if r is None:
        r = _Ratio()
        if len(table) >= limit:
            del table[next(iter(table))]
    table[key] = r
    return r
