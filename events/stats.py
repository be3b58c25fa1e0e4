"""Plain figures that hot paths keep for metrics: no lock, no allocation, no third-party import.

``events.metrics`` (and each component's collector) reads them at scrape time, on the same thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["LATENCY_BUCKETS", "Histogram"]

#: Bucket bounds (seconds) for latencies from a tenth of a millisecond (an append to a local server)
#: to seconds (a cluster electing a leader).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Observations counted in fixed buckets, for a hot path.

    ``observe`` is one bisect and two additions: no lock, no allocation. It is read at scrape time on
    the same thread (the event loop), so it needs none.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        #: Per bound, the observations at most that bound and above the one before; then above all.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """Prometheus buckets: (upper bound, observations at most that), the last bound infinite."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
