"""The trivial workloads: ``noop`` (the system's own overhead) and ``sleep`` (a job of known length)."""

from __future__ import annotations

import time

from events.workloads import NoopParams, SleepParams
from gpu_runtime.workloads.context import Outcome, TaskContext

__all__ = ["run_noop", "run_sleep"]


def run_noop(ctx: TaskContext, p: NoopParams) -> Outcome:
    """Echo the payload back; touch nothing else."""
    return Outcome({"workload": "noop", "payload": p.payload})


def run_sleep(ctx: TaskContext, p: SleepParams) -> Outcome:
    """Sleep ``seconds`` in ``steps`` equal parts, reporting progress and honouring cancellation."""
    per_step = p.seconds / p.steps
    start = time.monotonic()
    for i in range(p.steps):
        ctx.check_cancelled()
        # Sleep to an absolute target so that the total does not drift with the loop's own cost.
        remaining = start + per_step * (i + 1) - time.monotonic()
        while remaining > 0:
            time.sleep(min(remaining, 0.05))
            ctx.check_cancelled()
            remaining = start + per_step * (i + 1) - time.monotonic()
        ctx.progress(i + 1, p.steps)
    return Outcome({"workload": "sleep", "seconds": p.seconds, "steps": p.steps})
