"""The workload catalogue's implementations, each written once against ``xp`` (CuPy or NumPy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from gpu_runtime.workloads.basic import run_noop, run_sleep
from gpu_runtime.workloads.context import Outcome, TaskContext, load_arrays, save_arrays
from gpu_runtime.workloads.dense import run_fft, run_matmul
from gpu_runtime.workloads.faults import FAULT_WORKLOAD, FaultParams, faults_enabled, run_fault
from gpu_runtime.workloads.kernel import run_custom_kernel
from gpu_runtime.workloads.montecarlo import run_montecarlo
from gpu_runtime.workloads.stencil import run_stencil
from gpu_runtime.workloads.streaming import run_elementwise, run_reduction

__all__ = [
    "FAULT_WORKLOAD",
    "IMPLEMENTATIONS",
    "FaultParams",
    "Outcome",
    "TaskContext",
    "faults_enabled",
    "load_arrays",
    "run_workload",
    "save_arrays",
]

Runner = Callable[[TaskContext, Any], Outcome]

#: Workload name (as in ``events.workloads.WORKLOADS``) -> implementation.
IMPLEMENTATIONS: dict[str, Runner] = {
    "noop": run_noop,
    "sleep": run_sleep,
    "matmul": run_matmul,
    "fft": run_fft,
    "reduction": run_reduction,
    "elementwise": run_elementwise,
    "montecarlo": run_montecarlo,
    "stencil": run_stencil,
    "custom_kernel": run_custom_kernel,
}


def run_workload(ctx: TaskContext, name: str, params: BaseModel) -> Outcome:
    """Run workload ``name`` with already-validated ``params``."""
    if name == FAULT_WORKLOAD and isinstance(params, FaultParams):
        return run_fault(ctx, params)
    return IMPLEMENTATIONS[name](ctx, params)
