"""The worker process: one per slot, warm (backend imported, kernels loaded), running one task at a time.

It talks to the service over a ``multiprocessing`` pipe. In: a :class:`TaskSpec`, or ``None`` to
stop. Out: ``("ready", info)`` once, then per task any number of ``("progress", seq, done, total,
unit)`` and ``("checkpoint", seq, step, blob)``, then on a GPU ``("memory", seq, used, total)`` (device
bytes), and finally ``("result", seq, summary, arrays, metrics, gpu_ms)`` or ``("error", seq, reason,
message, restart)``. Cancellation is a shared integer the service sets to the sequence number of the
task to stop.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from events.workloads import (
    ElementwiseParams,
    FftParams,
    MatmulParams,
    MonteCarloParams,
    NoopParams,
    ReductionParams,
    StencilParams,
)
from gpu_runtime.backend import Backend, BackendChoice, select_backend
from gpu_runtime.calibrate import calibrate
from gpu_runtime.errors import WorkloadError
from gpu_runtime.pdeathsig import die_with_parent
from gpu_runtime.results import json_safe
from gpu_runtime.workloads import TaskContext, load_arrays, run_workload

__all__ = ["TaskSpec", "WorkerOptions", "execute", "warm_up", "worker_main"]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker sets itself up."""

    backend: BackendChoice = "auto"
    device_index: int = 0
    calibrate: bool = False


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task as the worker receives it: validated parameters and every input it needs."""

    seq: int
    task_id: str
    workload: str
    params: BaseModel
    memory_limit: int | None = None
    resume_step: int = 0
    resume_blob: bytes | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)


def warm_up(backend: Backend) -> None:
    """Run every workload once at a toy size: imports, cuBLAS/cuFFT handles and kernels are loaded
    now, not during the first real task."""
    ctx = TaskContext(backend)
    toy: list[tuple[str, BaseModel]] = [
        ("noop", NoopParams()),
        *(("matmul", MatmulParams(n=64, dtype=p)) for p in backend.precisions()),  # type: ignore[arg-type]
        ("fft", FftParams(n=64)),
        *(("reduction", ReductionParams(n=64, op=op)) for op in ("sum", "max", "min", "norm")),
        *(("elementwise", ElementwiseParams(n=64, op=op)) for op in ("saxpy", "exp", "sigmoid", "sqrt")),
        ("montecarlo", MonteCarloParams(samples=1024, chunk=1024)),
        ("stencil", StencilParams(n=8, steps=2, checkpoint_every=1_000)),
    ]
    for name, params in toy:
        run_workload(ctx, name, params)
    backend.synchronize()


def execute(backend: Backend, spec: TaskSpec, send: Any, cancel: Any) -> tuple[Any, ...]:
    """Run one task; the returned tuple is the worker's final message for it."""
    seq = spec.seq

    def forward(msg: tuple[Any, ...]) -> None:
        send((msg[0], seq, *msg[1:]))

    t0 = time.perf_counter()
    try:
        arrays = load_arrays(spec.resume_blob) if spec.resume_blob is not None else None
        ctx = TaskContext(
            backend,
            send=forward,
            cancelled=lambda: bool(cancel.value == seq),
            resume_step=spec.resume_step if arrays is not None else 0,
            resume_arrays=arrays,
            blobs=spec.blobs,
        )
        backend.set_memory_limit(spec.memory_limit)
        outcome = run_workload(ctx, spec.workload, spec.params)
        backend.synchronize()
        summary = json_safe(outcome.summary)
    except WorkloadError as e:
        return ("error", seq, e.reason, e.message, False)
    except Exception as e:
        reason = backend.classify(e) or "provider_error"
        if reason == "out_of_memory":
            backend.free_memory()
        message = f"{type(e).__name__}: {e}".strip()
        return ("error", seq, reason, message, backend.is_sticky(e))
    gpu_ms = int((time.perf_counter() - t0) * 1000)
    return ("result", seq, summary, outcome.arrays, outcome.metrics, gpu_ms)


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the service dies, even inside a long kernel that never reads the pipe.

    Elsewhere, the broken pipe still ends the worker at its next report."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    # Spawned by the service, which told us its pid; a parent already gone ends this worker at once.
    die_with_parent(parent.pid if parent is not None and parent.pid else os.getppid())


def worker_main(conn: Any, cancel: Any, options: WorkerOptions) -> None:
    """Entry point of the worker process (spawned, never forked)."""
    _die_with_parent()
    # The service owns shutdown: a Ctrl-C in its terminal must not kill a task mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        backend = select_backend(options.backend, options.device_index)
        warm_up(backend)
        info: dict[str, Any] = {
            "backend": backend.name,
            "capabilities": backend.capabilities().model_dump(mode="json"),
            "precisions": list(backend.precisions()),
            "device_count": backend.device_count(),
            "total_memory": backend.total_memory(),
            "memory_in_use": backend.memory_in_use(),
        }
        if options.calibrate:
            info["calibration"] = calibrate(backend).model_dump(mode="json")
    except Exception as e:
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        outcome = execute(backend, spec, conn.send, cancel)
        memory = _memory_in_use(backend)
        if memory is not None:  # before the outcome: the service reads it while it waits for that
            conn.send(("memory", spec.seq, *memory))
        conn.send(outcome)


def _memory_in_use(backend: Backend) -> tuple[int, int] | None:
    try:
        return backend.memory_in_use()
    except Exception:  # a figure for metrics is never worth a task's outcome
        return None
