"""``montecarlo``: estimate pi with integer arithmetic only, so hit counts are bit-exact on any backend."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from events.workloads import MonteCarloParams
from gpu_runtime.rng import hash_u64
from gpu_runtime.workloads.context import Outcome, TaskContext

__all__ = ["count_hits", "run_montecarlo"]

_BITS = np.uint64(33)  # keep 31 bits per coordinate: x*x + y*y < 2**63, no overflow
_RADIUS2 = np.uint64(1 << 62)


def count_hits(xp: Any, seed: int, start: int, count: int) -> int:
    """Points ``start .. start+count`` that fall inside the quarter circle (exact integer test)."""
    x = hash_u64(xp, seed, 1, start, count) >> _BITS
    y = hash_u64(xp, seed, 2, start, count) >> _BITS
    x *= x
    y *= y
    x += y
    return int(xp.count_nonzero(x < _RADIUS2))


def run_montecarlo(ctx: TaskContext, p: MonteCarloParams) -> Outcome:
    """Count hits over ``samples`` points in chunks of ``chunk``, reporting progress per chunk."""
    xp = ctx.xp
    t0 = time.perf_counter()
    hits = 0
    for start in range(0, p.samples, p.chunk):
        count = min(p.chunk, p.samples - start)
        hits += count_hits(xp, p.seed, start, count)
        ctx.progress(start + count, p.samples, "samples")
    summary = {
        "workload": "montecarlo",
        "samples": p.samples,
        "seed": p.seed,
        "hits": hits,
        "pi": 4.0 * hits / p.samples,
    }
    return Outcome(summary, metrics={"kernel_s": time.perf_counter() - t0})
