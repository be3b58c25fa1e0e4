"""The array backend: CuPy on a CUDA GPU or NumPy on the CPU, chosen and reported honestly.

This is the only module of gpufleet that imports CuPy, lazily and guarded: importing it costs about
two seconds and a CUDA context, which only worker processes should pay. Everything else uses the
``xp`` array module a :class:`Backend` hands out, plus the few device helpers below.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import numpy as np

from events.types import Capabilities, FailureReason
from gpu_runtime.errors import BackendUnavailable

__all__ = [
    "Backend",
    "BackendChoice",
    "has_cupy",
    "has_cupy_gpu",
    "select_backend",
]

BackendChoice = Literal["auto", "cuda", "cpu"]

#: Exception class names (CuPy's, by name, so this module needs no CuPy to classify) and reasons.
_KERNEL_ERRORS = {"CompileException", "NVRTCError", "CUDADriverError", "CUDARuntimeError", "CUBLASError"}
#: Errors after which the CUDA context may be unusable: the worker must be restarted.
_STICKY_ERRORS = {"CUDADriverError", "CUDARuntimeError"}


@functools.cache
def has_cupy() -> bool:
    """True when CuPy is installed (it is not imported to find out)."""
    return importlib.util.find_spec("cupy") is not None


@functools.cache
def has_cupy_gpu() -> bool:
    """True when CuPy imports and sees at least one CUDA device. Imports CuPy: workers only."""
    if not has_cupy():
        return False
    try:
        cp = _cupy()
        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def _cupy() -> Any:
    import cupy  # type: ignore[import-not-found,unused-ignore]  # the one CuPy import in gpufleet

    return cupy


def _version(v: int) -> str:
    """CUDA encodes versions as 1000 * major + 10 * minor."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_mb() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20))
    except (ValueError, OSError, AttributeError):
        return 0


def _nvidia_driver() -> str:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            words = f.readline().split()
    except OSError:
        return ""
    for w in words:
        if w[:1].isdigit() and "." in w:
            return w
    return ""


@dataclass
class Backend:
    """One device's array module and helpers: ``name`` is ``cuda`` (CuPy) or ``cpu`` (NumPy)."""

    name: Literal["cuda", "cpu"]
    xp: ModuleType
    device_index: int = 0
    _cp: Any = field(default=None, repr=False)

    @property
    def is_cuda(self) -> bool:
        """True on a CUDA device through CuPy."""
        return self.name == "cuda"

    @property
    def array_module(self) -> str:
        """The array library and its version, for example ``numpy 2.1.0``."""
        return f"{self.xp.__name__} {self.xp.__version__}"

    def device_count(self) -> int:
        """CUDA devices visible to CuPy; 1 on the CPU."""
        return int(self._cp.cuda.runtime.getDeviceCount()) if self.is_cuda else 1

    def compute_capability(self) -> float:
        """The device's compute capability (8.0, 9.0, ...), 0.0 on the CPU."""
        if not self.is_cuda:
            return 0.0
        props = self._cp.cuda.runtime.getDeviceProperties(self.device_index)
        return float(props["major"]) + float(props["minor"]) / 10.0

    def precisions(self) -> tuple[str, ...]:
        """Matmul precisions this device runs natively: never an emulation passed off as support."""
        found = ["fp64", "fp32", "fp16"]
        if self.is_cuda and self.compute_capability() >= 8.0:
            found.append("tf32")
            if self.bf16_dtype() is not None:
                found.append("bf16")
        return tuple(found)

    def bf16_dtype(self) -> Any:
        """A bfloat16 dtype the array module accepts, or None (CuPy needs ``ml_dtypes`` support)."""
        if not self.is_cuda or importlib.util.find_spec("ml_dtypes") is None:
            return None
        try:
            import ml_dtypes  # type: ignore[import-not-found,unused-ignore]

            probe = self.xp.ones((2, 2), dtype=ml_dtypes.bfloat16)
            self.xp.matmul(probe, probe)
            return ml_dtypes.bfloat16
        except Exception:
            return None

    def capabilities(self, *, slots: int = 1, workloads: tuple[str, ...] = ()) -> Capabilities:
        """What this device is, as detected. A CPU is reported as ``cpu``, never disguised."""
        if not self.is_cuda:
            return Capabilities(
                backend="cpu",
                gpu_model=_cpu_model()[:200],
                vram_mb=_ram_mb(),
                compute_capability=0.0,
                sm_count=0,
                slots=slots,
                workloads=workloads,
                extra={
                    "array_module": self.array_module,
                    "cpu_count": str(os.cpu_count() or 0),
                    "precisions": ",".join(self.precisions()),
                },
            )
        rt = self._cp.cuda.runtime
        props = rt.getDeviceProperties(self.device_index)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        driver_api = _version(int(rt.driverGetVersion()))
        return Capabilities(
            backend="cuda",
            gpu_model=name[:200],
            vram_mb=int(props["totalGlobalMem"]) // (1 << 20),
            compute_capability=self.compute_capability(),
            sm_count=int(props["multiProcessorCount"]),
            cuda_version=_version(int(rt.runtimeGetVersion())),
            driver_version=_nvidia_driver() or driver_api,
            slots=slots,
            workloads=workloads,
            extra={
                "array_module": self.array_module,
                "cuda_driver_api": driver_api,
                "device_count": str(self.device_count()),
                "precisions": ",".join(self.precisions()),
            },
        )

    def total_memory(self) -> int:
        """Device memory in bytes (RAM on the CPU)."""
        if self.is_cuda:
            return int(self._cp.cuda.runtime.getDeviceProperties(self.device_index)["totalGlobalMem"])
        return _ram_mb() << 20

    def synchronize(self) -> None:
        """Wait for all queued device work; a no-op on the CPU."""
        if self.is_cuda:
            self._cp.cuda.Device(self.device_index).synchronize()

    def to_host(self, a: Any) -> np.ndarray[Any, Any]:
        """A NumPy copy (or view, on the CPU) of ``a``."""
        if self.is_cuda:
            return np.asarray(self._cp.asnumpy(a))
        return np.asarray(a)

    def from_host(self, a: np.ndarray[Any, Any]) -> Any:
        """``a`` on the device."""
        return self.xp.asarray(a)

    def array_api(self) -> Any:
        """The Array-API-compatible namespace of this backend (``array_api_compat``'s wrapper of
        NumPy or CuPy): what a submitter's function gets as ``xp``. Imported here, lazily, because
        ``array_api_compat.cupy`` imports CuPy."""
        if self.is_cuda:
            import array_api_compat.cupy as compat_cupy  # type: ignore[import-untyped,unused-ignore]

            return compat_cupy
        import array_api_compat.numpy as compat_numpy  # type: ignore[import-untyped,unused-ignore]

        return compat_numpy

    def set_memory_limit(self, nbytes: int | None) -> None:
        """Cap the device memory one task may hold, through CuPy's memory-pool limit (0 = none).

        On the CPU, NumPy allocates from the process heap and there is no pool to cap.
        """
        if self.is_cuda:
            self._cp.get_default_memory_pool().set_limit(size=int(nbytes or 0))

    def memory_limit(self) -> int:
        """The pool limit in bytes; 0 when none is set or on the CPU."""
        if self.is_cuda:
            return int(self._cp.get_default_memory_pool().get_limit())
        return 0

    def memory_in_use(self) -> tuple[int, int] | None:
        """(bytes in use, bytes in all) on this GPU, by every process (as the driver counts them);
        None on the CPU, which has no device memory to count."""
        if not self.is_cuda:
            return None
        with self._cp.cuda.Device(self.device_index):
            free, total = self._cp.cuda.runtime.memGetInfo()
        return int(total) - int(free), int(total)

    def free_memory(self) -> None:
        """Give cached device memory back to the driver."""
        if self.is_cuda:
            self._cp.get_default_memory_pool().free_all_blocks()
            self._cp.get_default_pinned_memory_pool().free_all_blocks()

    @contextlib.contextmanager
    def tf32(self, enabled: bool = True) -> Iterator[None]:
        """Let float32 matmuls use TF32 tensor cores (compute capability 8.0+) inside the block."""
        if not self.is_cuda or not enabled:
            yield
            return
        linalg = importlib.import_module("cupy._core._routines_linalg")
        tf32 = getattr(linalg, "COMPUTE_TYPE_TF32", 7)
        default = getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1)
        linalg.set_compute_type(np.float32, tf32)
        try:
            yield
        finally:
            linalg.set_compute_type(np.float32, default)

    def compile_kernel(self, source: str, name: str, options: tuple[str, ...] = ()) -> Callable[..., Any]:
        """Compile CUDA C ``source`` with NVRTC (``cupy.RawKernel``); returns the launchable kernel.

        Compile errors surface here, as CuPy's ``CompileException`` (classified ``kernel_error``).
        """
        if not self.is_cuda:
            raise BackendUnavailable("custom kernels need a CUDA device; this backend is cpu (NumPy)")
        kernel = self._cp.RawKernel(source, name, options=tuple(options))
        kernel.compile()
        launch: Callable[..., Any] = kernel
        return launch

    def classify(self, exc: BaseException) -> FailureReason | None:
        """The failure reason of a library exception: out of memory, kernel error, or None."""
        kind = type(exc).__name__
        if isinstance(exc, MemoryError) or kind == "OutOfMemoryError":
            return "out_of_memory"
        if kind in _KERNEL_ERRORS:
            return "kernel_error"
        return None

    def is_sticky(self, exc: BaseException) -> bool:
        """True when the error may leave the CUDA context unusable (restart the worker)."""
        return self.is_cuda and type(exc).__name__ in _STICKY_ERRORS


def select_backend(choice: BackendChoice = "auto", device_index: int = 0) -> Backend:
    """CuPy on device ``device_index`` when asked for (or ``auto`` and a GPU is there), else NumPy.

    ``cuda`` without a usable GPU raises ``BackendUnavailable``: never a silent fall back to the CPU.
    """
    if choice == "cpu" or (choice == "auto" and not has_cupy_gpu()):
        return Backend(name="cpu", xp=np)
    if not has_cupy():
        raise BackendUnavailable("cuda requested but CuPy is not installed (pip install cupy-cuda13x)")
    if not has_cupy_gpu():
        raise BackendUnavailable("backend cuda requested but CuPy sees no CUDA device")
    cp = _cupy()
    count = int(cp.cuda.runtime.getDeviceCount())
    if not 0 <= device_index < count:
        raise BackendUnavailable(f"CUDA device {device_index} does not exist ({count} visible)")
    cp.cuda.Device(device_index).use()
    module: ModuleType = cp
    return Backend(name="cuda", xp=module, device_index=device_index, _cp=cp)
