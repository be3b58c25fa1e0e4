"""What a running workload sees: the backend, progress and checkpoint hooks, the cancel flag, its inputs."""

from __future__ import annotations

import io
import math
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_runtime.backend import Backend
from gpu_runtime.errors import TaskCancelled, WorkloadError
from gpu_runtime.throttle import ProgressThrottle

__all__ = ["FLOATS", "Outcome", "TaskContext", "load_arrays", "save_arrays"]

#: Precision names of the workload contracts -> NumPy dtypes (tf32 is float32 storage).
FLOATS: dict[str, Any] = {"fp64": np.float64, "fp32": np.float32, "tf32": np.float32, "fp16": np.float16}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A workload's outcome.

    ``summary`` is the result: small, JSON, reproducible (no timings), so a re-run can verify it.
    ``arrays`` holds output arrays as an ``.npz`` blob, stored in the object store. ``metrics`` are
    measurements of this run (seconds, achieved TFLOP/s) and travel in the completion report.
    """

    summary: dict[str, Any]
    arrays: bytes | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def save_arrays(arrays: dict[str, np.ndarray[Any, Any]]) -> bytes:
    """Arrays as an uncompressed ``.npz``: the format of checkpoints and array outputs."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _check_sizes(blob: bytes) -> None:
    """Refuse an ``.npz`` that would inflate past its own size: :func:`save_arrays` stores its members
    uncompressed, so a member bigger than the blob, or an array header promising more elements
    than its member holds, is a zip bomb or a lie (a stranger's checkpoint or result)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        infos = z.infolist()
        if sum(i.file_size for i in infos) > len(blob):
            raise ValueError(f"its members claim {sum(i.file_size for i in infos)} bytes in a {len(blob)}-byte blob")
        for info in infos:
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                need = math.prod(shape) * dtype.itemsize
                if need > info.file_size:
                    raise ValueError(f"{info.filename} promises {need} bytes in {info.file_size}")


def load_arrays(blob: bytes) -> dict[str, np.ndarray[Any, Any]]:
    """Inverse of :func:`save_arrays`; never unpickles, never inflates past the blob's own size."""
    try:
        _check_sizes(blob)
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise WorkloadError("invalid_params", f"not a valid .npz blob: {e}") from e


@dataclass
class TaskContext:
    """Hooks a workload calls while it runs; built by the worker for each task.

    ``send`` receives ``("progress", done, total, unit)`` and ``("checkpoint", step, blob)`` tuples.
    ``cancelled`` returns True once the task should stop.
    """

    backend: Backend
    send: Callable[[tuple[Any, ...]], None] = lambda msg: None
    cancelled: Callable[[], bool] = lambda: False
    #: Resume: the step to start from and the checkpointed arrays (None: start from zero).
    resume_step: int = 0
    resume_arrays: dict[str, np.ndarray[Any, Any]] | None = None
    #: Blobs the service fetched from the object store, by object name (custom-kernel inputs).
    blobs: dict[str, bytes] = field(default_factory=dict)
    #: The worker's own pre-throttle, so a fast loop does not flood the pipe; the service throttles
    #: what it publishes to 2 per second.
    throttle: ProgressThrottle = field(default_factory=lambda: ProgressThrottle(20.0))
    clock: Callable[[], float] = time.monotonic

    @property
    def xp(self) -> Any:
        """The array module: CuPy or NumPy."""
        return self.backend.xp

    def check_cancelled(self) -> None:
        """Raise ``TaskCancelled`` when the service asked this task to stop."""
        if self.cancelled():
            raise TaskCancelled("the task was asked to stop")

    def progress(self, done: int, total: int, unit: str = "steps") -> None:
        """Report ``done`` of ``total``; checks for cancellation; cheap when throttled."""
        self.check_cancelled()
        final = done >= total
        if self.throttle.allow(self.clock(), final=final):
            # Report work the device has finished, not work merely queued on it.
            self.backend.synchronize()
            self.send(("progress", done, total, unit))

    def checkpoint(self, step: int, arrays: dict[str, Any]) -> None:
        """Save state to resume from at ``step``; the service stores it in the object store."""
        host = {k: self.backend.to_host(v) for k, v in arrays.items()}
        host["_step"] = np.asarray(step, dtype=np.int64)
        self.send(("checkpoint", step, save_arrays(host)))
