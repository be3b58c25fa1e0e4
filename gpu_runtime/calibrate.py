"""Calibration: measure the device's matmul TFLOP/s per precision, its memory bandwidth, and how each
catalogue workload runs on it at two small sizes (probes).

It runs in a worker, on the device itself, once per service start. On the CPU it takes about two
seconds; on a GPU about two after the warm-up. The probes let the first prediction of a workload on
this device rest on a measurement of that workload here, not on peak rates alone: a NumPy
elementwise map runs at a thirtieth of what the copy bandwidth suggests, a matmul of seeded inputs at
a fifth of the peak (``events.estimates``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from events.types import Calibration, ProbeRun
from events.workloads import WORKLOADS, validate_params
from gpu_runtime.backend import Backend
from gpu_runtime.workloads import TaskContext, run_workload
from gpu_runtime.workloads.context import FLOATS
from gpu_runtime.workloads.dense import matmul_inputs

__all__ = ["PROBES", "calibrate", "measure_bandwidth", "measure_matmul", "probe_workloads"]

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


#: Workload -> its probe parameters at two sizes, (CPU, GPU): small enough to take milliseconds, large
#: enough to be past fixed costs and out of the caches, four to eight times apart so that the two
#: points give the workload's size law a slope.
PROBES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "matmul": (
        [{"n": 256, "dtype": "fp32"}, {"n": 512, "dtype": "fp32"}],
        [{"n": 2048, "dtype": "fp32"}, {"n": 4096, "dtype": "fp32"}],
    ),
    "fft": (
        [{"n": 1 << 14, "batch": 8}, {"n": 1 << 17, "batch": 8}],
        [{"n": 1 << 18, "batch": 8}, {"n": 1 << 21, "batch": 8}],
    ),
    "reduction": (
        [{"n": 1 << 19, "dtype": "fp64"}, {"n": 1 << 22, "dtype": "fp64"}],
        [{"n": 1 << 23, "dtype": "fp64"}, {"n": 1 << 26, "dtype": "fp64"}],
    ),
    "elementwise": (
        [{"n": 1 << 19, "dtype": "fp64"}, {"n": 1 << 22, "dtype": "fp64"}],
        [{"n": 1 << 23, "dtype": "fp64"}, {"n": 1 << 26, "dtype": "fp64"}],
    ),
    "montecarlo": (
        [{"samples": 1 << 19, "chunk": 1 << 19}, {"samples": 1 << 22, "chunk": 1 << 20}],
        [{"samples": 1 << 23, "chunk": 1 << 22}, {"samples": 1 << 26, "chunk": 1 << 24}],
    ),
    "stencil": (
        [{"n": 128, "steps": 16, "checkpoint_every": 1000}, {"n": 384, "steps": 16, "checkpoint_every": 1000}],
        [{"n": 1024, "steps": 16, "checkpoint_every": 1000}, {"n": 4096, "steps": 16, "checkpoint_every": 1000}],
    ),
}
#: A probe slower than this skips its larger size (a slow device keeps calibration short).
_PROBE_SLOW_S = 0.5


def probe_workloads(backend: Backend, workloads: tuple[str, ...] | None = None) -> dict[str, tuple[ProbeRun, ...]]:
    """Run each catalogue workload at its probe sizes (best of two, after a warm run of the smaller):
    its contract's estimate and the seconds it took on this device."""
    out: dict[str, tuple[ProbeRun, ...]] = {}
    for name, (cpu, gpu) in PROBES.items():
        if workloads is not None and name not in workloads:
            continue
        runs: list[ProbeRun] = []
        for i, raw in enumerate(gpu if backend.is_cuda else cpu):
            params = validate_params(name, raw)
            ctx = TaskContext(backend)

            def once(params: Any = params, ctx: TaskContext = ctx, name: str = name) -> None:
                run_workload(ctx, name, params)

            if i == 0:
                once()  # warm: kernel compilation and first-call costs are not the workload's time
                backend.synchronize()
            seconds = _timed(backend, once)
            runs.append(ProbeRun(estimate=WORKLOADS[name].estimate(params), actual_s=max(seconds, 1e-6)))
            if seconds > _PROBE_SLOW_S:
                break
        backend.free_memory()
        out[name] = tuple(runs)
    return out


def _timed(backend: Backend, fn: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        backend.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(backend: Backend, *, probes: bool = True) -> Calibration:
    """Measured figures for registration; ``task_overhead_s`` is measured later by the service."""
    sizes = _GPU_N if backend.is_cuda else _CPU_N
    rates: dict[str, Any] = {}
    gbps = 0.0
    # Two passes, the best of each: a burst of load elsewhere on the machine during one measurement
    # (a multi-threaded BLAS sharing two cores) once cut a provider's fp64 figure to a tenth, and a
    # calibration stays in the log for as long as the provider runs.
    for _ in range(2):
        for precision in backend.precisions():
            if precision in sizes:
                rate = round(measure_matmul(backend, precision, sizes[precision]), 6)
                rates[precision] = max(rate, rates.get(precision, 0.0))
        gbps = max(gbps, measure_bandwidth(backend, (1 << 30) if backend.is_cuda else (64 << 20)))
    backend.free_memory()
    measured = probe_workloads(backend) if probes else {}
    return Calibration(matmul_tflops=rates, memory_gbps=round(gbps, 3), probes=measured)
