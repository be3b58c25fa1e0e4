"""gpufleet's provider runtime: detect and calibrate the device, register, take leases, run workloads.

Workloads are written once against ``xp`` (CuPy on a GPU, NumPy on the CPU) and run in warm worker
processes, one per slot. Only :mod:`gpu_runtime.backend` imports CuPy.
"""

from gpu_runtime.admission import DeviceFacts, admit
from gpu_runtime.backend import Backend, BackendChoice, has_cupy, has_cupy_gpu, select_backend
from gpu_runtime.calibrate import calibrate
from gpu_runtime.errors import (
    BackendUnavailable,
    RuntimeServiceError,
    TaskCancelled,
    WorkerStartError,
    WorkloadError,
)
from gpu_runtime.results import INLINE_LIMIT, canonical_json, json_safe, sha256_hex
from gpu_runtime.service import RUNTIME_VERSION, ProviderRuntime, RuntimeConfig
from gpu_runtime.supervisor import Completed, Failed, WorkerPool, WorkerProcess
from gpu_runtime.throttle import ProgressThrottle
from gpu_runtime.worker import TaskSpec, WorkerOptions
from gpu_runtime.workloads import IMPLEMENTATIONS, Outcome, TaskContext, run_workload

__all__ = [
    "IMPLEMENTATIONS",
    "INLINE_LIMIT",
    "RUNTIME_VERSION",
    "Backend",
    "BackendChoice",
    "BackendUnavailable",
    "Completed",
    "DeviceFacts",
    "Failed",
    "Outcome",
    "ProgressThrottle",
    "ProviderRuntime",
    "RuntimeConfig",
    "RuntimeServiceError",
    "TaskCancelled",
    "TaskContext",
    "TaskSpec",
    "WorkerOptions",
    "WorkerPool",
    "WorkerProcess",
    "WorkerStartError",
    "WorkloadError",
    "admit",
    "calibrate",
    "canonical_json",
    "has_cupy",
    "has_cupy_gpu",
    "json_safe",
    "run_workload",
    "select_backend",
    "sha256_hex",
]
