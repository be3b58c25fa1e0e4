"""Memory-bound workloads over seeded inputs: ``reduction`` and ``elementwise``, in bounded chunks."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import numpy as np

from events.workloads import ElementwiseParams, ReductionParams
from gpu_runtime.rng import uniform, uniform_pm1
from gpu_runtime.workloads.context import FLOATS, Outcome, TaskContext

__all__ = ["CHUNK", "SAXPY_A", "elementwise_inputs", "elementwise_op", "run_elementwise", "run_reduction"]

#: Elements generated and processed at a time: bounds temporaries whatever ``n`` is.
CHUNK = 1 << 22
#: The ``a`` of saxpy: y = a * x + y.
SAXPY_A = 2.5


def _chunks(n: int) -> range:
    return range(0, n, CHUNK)


def run_reduction(ctx: TaskContext, p: ReductionParams) -> Outcome:
    """Reduce n seeded values in [-1, 1) with ``op``; partial results combine in float64."""
    xp = ctx.xp
    t0 = time.perf_counter()
    total = 0.0
    best = -math.inf if p.op == "max" else math.inf
    for start in _chunks(p.n):
        ctx.check_cancelled()
        x = uniform_pm1(xp, p.seed, 1, start, min(CHUNK, p.n - start), dtype=FLOATS[p.dtype])
        if p.op in ("sum", "mean"):
            total += float(xp.sum(x, dtype=np.float64))
        elif p.op == "norm":
            total += float(xp.sum(x.astype(np.float64) ** 2))
        elif p.op == "max":
            best = max(best, float(xp.max(x)))
        else:
            best = min(best, float(xp.min(x)))
    if p.op == "mean":
        value = total / p.n
    elif p.op == "norm":
        value = math.sqrt(total)
    else:
        value = total if p.op == "sum" else best
    summary = {"workload": "reduction", "n": p.n, "op": p.op, "dtype": p.dtype, "seed": p.seed}
    summary["value"] = value
    return Outcome(summary, metrics={"kernel_s": time.perf_counter() - t0})


def elementwise_inputs(xp: Any, p: ElementwiseParams, start: int, count: int) -> tuple[Any, Any]:
    """The seeded inputs of one chunk: x (stream 1) and y (stream 2; saxpy only)."""
    dtype = FLOATS[p.dtype]
    if p.op == "sqrt":
        return uniform(xp, p.seed, 1, start, count, dtype=dtype), None
    x = uniform_pm1(xp, p.seed, 1, start, count, dtype=dtype)
    y = uniform_pm1(xp, p.seed, 2, start, count, dtype=dtype) if p.op == "saxpy" else None
    return x, y


def elementwise_op(xp: Any, op: str, x: Any, y: Any) -> Any:
    """The map itself, in the inputs' dtype."""
    if op == "saxpy":
        return x * x.dtype.type(SAXPY_A) + y
    if op == "exp":
        return xp.exp(x)
    if op == "sigmoid":
        return 1 / (1 + xp.exp(-x))
    return xp.sqrt(x)


def run_elementwise(ctx: TaskContext, p: ElementwiseParams) -> Outcome:
    """Map n seeded values with ``op``; summarised by their sum and the sha256 of the output bytes.

    The digest covers this backend's exact output: bit-reproducible on one backend, while the sum is
    comparable across backends within floating-point tolerance.
    """
    xp = ctx.xp
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    total = 0.0
    for start in _chunks(p.n):
        ctx.check_cancelled()
        x, y = elementwise_inputs(xp, p, start, min(CHUNK, p.n - start))
        out = elementwise_op(xp, p.op, x, y)
        total += float(xp.sum(out, dtype=np.float64))
        digest.update(ctx.backend.to_host(out).tobytes())
    summary = {
        "workload": "elementwise",
        "n": p.n,
        "op": p.op,
        "dtype": p.dtype,
        "seed": p.seed,
        "sum": total,
        "digest": digest.hexdigest(),
    }
    return Outcome(summary, metrics={"kernel_s": time.perf_counter() - t0})
