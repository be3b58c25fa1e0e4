"""How long a task will take on a provider: the workload's estimate, the device's calibration, history.

The scheduler scores providers with it and records its prediction in ``TaskLeased.predicted_s``; the
ETA view folds the same history. It is pure and deterministic: the same observations in the same
order give the same predictions, so replay reproduces every ETA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from events.types import Calibration, Estimate

__all__ = ["RuntimeModel", "base_seconds"]

#: Assumed when a provider has not calibrated: a modest CPU.
_DEFAULT_TFLOPS = 0.05
_DEFAULT_GBPS = 10.0
_DEFAULT_OVERHEAD_S = 0.002


def base_seconds(estimate: Estimate, calibration: Calibration | None) -> float:
    """A first-principles duration: the slower of compute and memory traffic, plus fixed costs."""
    cal = calibration or Calibration()
    rates = cal.matmul_tflops
    tflops = rates.get(estimate.precision) or rates.get("fp32") or max(rates.values(), default=_DEFAULT_TFLOPS)
    gbps = cal.memory_gbps or _DEFAULT_GBPS
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


@dataclass
class RuntimeModel:
    """Corrects ``base_seconds`` by the observed actual/base ratio of similar tasks.

    "Similar" is the same workload on the same provider, falling back to the same workload anywhere.
    """

    alpha: float = 0.2
    _by_provider: dict[tuple[str, str], _Ratio] = field(default_factory=dict)
    _by_workload: dict[str, _Ratio] = field(default_factory=dict)

    def predict(
        self,
        workload: str,
        estimate: Estimate,
        calibration: Calibration | None,
        provider_id: str | None = None,
    ) -> float:
        """Predicted seconds for one task of ``workload`` on this provider."""
        base = base_seconds(estimate, calibration)
        key = (workload, provider_id or "")
        ratio = self._by_provider.get(key) or self._by_workload.get(workload)
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
