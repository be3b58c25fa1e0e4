"""``stencil``: 2-D heat diffusion by Jacobi steps, with real progress, checkpoints and resume."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from events.workloads import StencilParams
from gpu_runtime.errors import WorkloadError
from gpu_runtime.workloads.context import FLOATS, Outcome, TaskContext

__all__ = ["initial_grid", "jacobi_step", "run_stencil"]


def initial_grid(xp: Any, n: int, dtype: Any) -> Any:
    """The fixed start: a hot top edge (1.0) and a warm square (0.5) in a cold plate."""
    u = xp.zeros((n, n), dtype=dtype)
    u[0, :] = 1.0
    u[n // 4 : n // 2, n // 4 : n // 2] = 0.5
    return u


def jacobi_step(u: Any, out: Any, alpha: float) -> None:
    """One explicit step of the interior into ``out``; the edges are fixed (Dirichlet)."""
    c = u[1:-1, 1:-1]
    lap = u[:-2, 1:-1] + u[2:, 1:-1]
    lap += u[1:-1, :-2]
    lap += u[1:-1, 2:]
    lap -= 4 * c
    lap *= alpha
    lap += c
    out[1:-1, 1:-1] = lap


def run_stencil(ctx: TaskContext, p: StencilParams) -> Outcome:
    """Run ``steps`` Jacobi steps, checkpointing every ``checkpoint_every``; resume from a checkpoint."""
    xp = ctx.xp
    dtype = np.dtype(FLOATS[p.dtype])
    start = ctx.resume_step
    if ctx.resume_arrays is not None and start > 0:
        saved = ctx.resume_arrays.get("u")
        if saved is None or saved.shape != (p.n, p.n) or saved.dtype != dtype:
            raise WorkloadError("invalid_params", f"checkpoint does not fit a {p.n}x{p.n} {p.dtype} grid")
        if start > p.steps:
            raise WorkloadError("invalid_params", f"resume_step {start} is past steps {p.steps}")
        u = ctx.backend.from_host(saved)
    else:
        start = 0
        u = initial_grid(xp, p.n, dtype)
    v = u.copy()  # the edges never change, so both buffers carry them
    alpha = dtype.type(p.alpha)
    t0 = time.perf_counter()
    for step in range(start + 1, p.steps + 1):
        jacobi_step(u, v, alpha)
        u, v = v, u
        if p.step_delay_s:
            time.sleep(p.step_delay_s)
        if step % p.checkpoint_every == 0 and step < p.steps:
            ctx.checkpoint(step, {"u": u})
        ctx.progress(step, p.steps)
    ctx.check_cancelled()
    c = p.n // 2
    summary = {
        "workload": "stencil",
        "n": p.n,
        "steps": p.steps,
        "alpha": p.alpha,
        "dtype": p.dtype,
        "resumed_from_step": start,
        "steps_run": p.steps - start,
        "sum": float(xp.sum(u, dtype=np.float64)),
        "l2": float(xp.linalg.norm(u.astype(np.float64, copy=False))),
        "center": float(u[c, c].item()),
    }
    return Outcome(summary, metrics={"kernel_s": time.perf_counter() - t0})
