"""Dense workloads: ``matmul`` in each precision the device has, and batched 1-D ``fft``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from events.workloads import FftParams, MatmulParams
from gpu_runtime.errors import WorkloadError
from gpu_runtime.rng import uniform_pm1
from gpu_runtime.workloads.context import FLOATS, Outcome, TaskContext

__all__ = ["matmul_inputs", "run_fft", "run_matmul"]


def _dtype(ctx: TaskContext, precision: str) -> Any:
    if precision not in ctx.backend.precisions():
        raise WorkloadError(
            "unsupported",
            f"matmul in {precision} is not supported on this device "
            f"({ctx.backend.name}; supported: {', '.join(ctx.backend.precisions())})",
        )
    return ctx.backend.bf16_dtype() if precision == "bf16" else FLOATS[precision]


def matmul_inputs(xp: Any, n: int, seed: int, dtype: Any) -> tuple[Any, Any]:
    """The seeded inputs A (stream 1) and B (stream 2): uniform in [-1, 1), identical on any backend."""
    a = uniform_pm1(xp, seed, 1, 0, n * n, dtype=dtype).reshape(n, n)
    b = uniform_pm1(xp, seed, 2, 0, n * n, dtype=dtype).reshape(n, n)
    return a, b


def run_matmul(ctx: TaskContext, p: MatmulParams) -> Outcome:
    """C = A @ B, ``repeat`` times into one output buffer; progress after each product."""
    xp = ctx.xp
    dtype = _dtype(ctx, p.dtype)
    a, b = matmul_inputs(xp, p.n, p.seed, dtype)
    c = xp.empty((p.n, p.n), dtype=dtype)
    ctx.backend.synchronize()
    t0 = time.perf_counter()
    with ctx.backend.tf32(p.dtype == "tf32"):
        for r in range(p.repeat):
            xp.matmul(a, b, out=c)
            ctx.progress(r + 1, p.repeat, "matmuls")
        ctx.backend.synchronize()
    seconds = time.perf_counter() - t0
    acc = np.float64 if p.dtype == "fp64" else np.float32
    summary = {
        "workload": "matmul",
        "n": p.n,
        "dtype": p.dtype,
        "repeat": p.repeat,
        "seed": p.seed,
        "checksum": float(xp.sum(c, dtype=np.float64)),
        "fro": float(xp.linalg.norm(c.astype(acc, copy=False))),
    }
    flops = 2.0 * p.n**3 * p.repeat
    return Outcome(summary, metrics={"kernel_s": seconds, "tflops": flops / max(seconds, 1e-12) / 1e12})


def run_fft(ctx: TaskContext, p: FftParams) -> Outcome:
    """Forward FFT of ``batch`` seeded complex signals of length ``n``, summarised."""
    xp = ctx.xp
    real = np.float32 if p.dtype == "complex64" else np.float64
    total = p.n * p.batch
    x = xp.empty((p.batch, p.n), dtype=p.dtype)
    x.real = uniform_pm1(xp, p.seed, 1, 0, total, dtype=real).reshape(p.batch, p.n)
    x.imag = uniform_pm1(xp, p.seed, 2, 0, total, dtype=real).reshape(p.batch, p.n)
    ctx.check_cancelled()
    ctx.backend.synchronize()
    t0 = time.perf_counter()
    spectrum = xp.fft.fft(x, axis=-1)
    ctx.backend.synchronize()
    seconds = time.perf_counter() - t0
    dc = complex(spectrum[0, 0].item())
    summary = {
        "workload": "fft",
        "n": p.n,
        "batch": p.batch,
        "dtype": p.dtype,
        "seed": p.seed,
        # Parseval: energy == n * sum |x|^2, a check any reader can make from the inputs.
        "energy": float(xp.sum(xp.abs(spectrum) ** 2, dtype=np.float64)),
        "input_energy": float(xp.sum(xp.abs(x) ** 2, dtype=np.float64)),
        "checksum_re": float(xp.sum(spectrum.real, dtype=np.float64)),
        "checksum_im": float(xp.sum(spectrum.imag, dtype=np.float64)),
        "dc": [dc.real, dc.imag],
    }
    return Outcome(summary, metrics={"kernel_s": seconds})
