"""Fault injection for tests: a hidden workload that crashes, hangs or exhausts memory on purpose.

It exists only when ``GPUFLEET_FAULTS=1`` is set in the environment of both the service and its
workers; without it the name is unknown and a lease for it fails as ``invalid_params``.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpu_runtime.errors import WorkloadError
from gpu_runtime.workloads.context import Outcome, TaskContext

__all__ = ["FAULTS_ENV", "FAULT_WORKLOAD", "FaultParams", "faults_enabled", "run_fault"]

FAULTS_ENV = "GPUFLEET_FAULTS"
FAULT_WORKLOAD = "_fault"


def faults_enabled() -> bool:
    """True only when the environment opts in: ``GPUFLEET_FAULTS=1``."""
    return os.environ.get(FAULTS_ENV) == "1"


class FaultParams(BaseModel):
    """What to break, after how long."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["segfault", "oom", "hang", "exit", "raise"]
    after_s: float = Field(default=0.0, ge=0.0, le=60.0)


def run_fault(ctx: TaskContext, p: FaultParams) -> Outcome:
    """Break the worker as asked: a real segfault, a real allocation failure, a hang that ignores
    the cancel flag, an abrupt exit, or an unexpected exception."""
    if not faults_enabled():
        raise WorkloadError("invalid_params", "fault injection is disabled")
    time.sleep(p.after_s)
    if p.kind == "segfault":
        ctypes.string_at(0)
    elif p.kind == "oom":
        ctx.xp.empty(1 << 62, dtype=ctx.xp.uint8)
    elif p.kind == "hang":
        while True:  # deliberately deaf to cancellation: only SIGKILL ends it
            time.sleep(0.01)
    elif p.kind == "exit":
        os._exit(3)
    raise RuntimeError("injected fault")
