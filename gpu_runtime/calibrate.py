"""Calibration: measure the device's matmul TFLOP/s per precision and its memory bandwidth.

It runs in a worker, on the device itself, once per service start. On the CPU it is quick (well
under two seconds); on a GPU it takes about a second after the warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from events.types import Calibration
from gpu_runtime.backend import Backend
from gpu_runtime.workloads.context import FLOATS
from gpu_runtime.workloads.dense import matmul_inputs

__all__ = ["calibrate", "measure_bandwidth", "measure_matmul"]

#: Matrix sizes that keep each measurement short but past launch overheads.
_CPU_N = {"fp64": 512, "fp32": 512, "fp16": 128}
_GPU_N = {"fp64": 4096, "fp32": 4096, "tf32": 8192, "fp16": 8192, "bf16": 8192}


def _best_time(backend: Backend, fn: Callable[[], None], *, budget_s: float, max_reps: int) -> float:
    fn()  # warm: first-call costs (cuBLAS handles, kernel loads) are not throughput
    backend.synchronize()
    best = float("inf")
    spent = 0.0
    for _ in range(max_reps):
        t0 = time.perf_counter()
        fn()
        backend.synchronize()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent > budget_s:
            break
    return best


def measure_matmul(backend: Backend, precision: str, n: int, *, budget_s: float = 0.25) -> float:
    """Achieved TFLOP/s of an n x n matmul in ``precision`` (best of a few runs)."""
    xp = backend.xp
    dtype = backend.bf16_dtype() if precision == "bf16" else FLOATS[precision]
    a, b = matmul_inputs(xp, n, 0, dtype)
    c = xp.empty((n, n), dtype=dtype)
    inner = 4 if backend.is_cuda else 1

    def run() -> None:
        for _ in range(inner):
            xp.matmul(a, b, out=c)

    with backend.tf32(precision == "tf32"):
        seconds = _best_time(backend, run, budget_s=budget_s, max_reps=5)
    return float(2.0 * n**3 * inner / seconds / 1e12)


def measure_bandwidth(backend: Backend, nbytes: int, *, budget_s: float = 0.25) -> float:
    """Achieved GB/s of a device-to-device copy of ``nbytes`` (read plus write)."""
    xp = backend.xp
    src = xp.ones(nbytes // 8, dtype=xp.float64)
    dst = xp.empty_like(src)
    seconds = _best_time(backend, lambda: xp.copyto(dst, src), budget_s=budget_s, max_reps=5)
    return float(2.0 * src.nbytes / seconds / 1e9)


def calibrate(backend: Backend) -> Calibration:
    """Measured figures for registration; ``task_overhead_s`` is measured later by the service."""
    sizes = _GPU_N if backend.is_cuda else _CPU_N
    rates: dict[str, Any] = {}
    for precision in backend.precisions():
        if precision in sizes:
            rates[precision] = round(measure_matmul(backend, precision, sizes[precision]), 6)
    gbps = measure_bandwidth(backend, (1 << 30) if backend.is_cuda else (64 << 20))
    backend.free_memory()
    return Calibration(matmul_tflops=rates, memory_gbps=round(gbps, 3))
