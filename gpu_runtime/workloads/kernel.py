"""``custom_kernel``: CUDA C compiled on the provider with NVRTC, launched on the submitter's grid."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from events.workloads import CustomKernelParams, KernelArg
from gpu_runtime.errors import WorkloadError
from gpu_runtime.results import sha256_hex
from gpu_runtime.workloads.context import Outcome, TaskContext, save_arrays

__all__ = ["run_custom_kernel"]

_HEAD = 8


def _array(ctx: TaskContext, i: int, arg: KernelArg) -> Any:
    dtype = np.dtype(arg.dtype)
    if arg.ref is not None:
        blob = ctx.blobs.get(arg.ref.name)
        if blob is None:
            raise WorkloadError("invalid_params", f"args.{i}.ref: object {arg.ref.name!r} was not provided")
        if len(blob) % dtype.itemsize:
            raise WorkloadError("invalid_params", f"args.{i}.ref: {len(blob)} bytes is not a whole {dtype}")
        host = np.frombuffer(blob, dtype=dtype)
    elif arg.value is not None:
        if not isinstance(arg.value, list):
            raise WorkloadError("invalid_params", f"args.{i}.value: an array argument needs a list")
        try:
            host = np.asarray(arg.value, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as e:
            raise WorkloadError("invalid_params", f"args.{i}.value: {e}") from e
        if host.ndim != 1:
            raise WorkloadError("invalid_params", f"args.{i}.value: a flat list of numbers is expected")
    else:
        return ctx.xp.zeros(arg.size, dtype=dtype)
    if arg.size and arg.size > host.size:
        padded = np.zeros(arg.size, dtype=dtype)
        padded[: host.size] = host
        host = padded
    return ctx.backend.from_host(np.ascontiguousarray(host))


def _scalar(i: int, arg: KernelArg) -> Any:
    if not isinstance(arg.value, (int, float)) or isinstance(arg.value, bool):
        raise WorkloadError("invalid_params", f"args.{i}.value: a scalar argument needs a number")
    try:
        return np.dtype(arg.dtype).type(arg.value)
    except (OverflowError, ValueError) as e:
        raise WorkloadError("invalid_params", f"args.{i}.value: {e}") from e


def run_custom_kernel(ctx: TaskContext, p: CustomKernelParams) -> Outcome:
    """Compile, launch once, and return the output arrays (an ``.npz``) with their digests."""
    if not ctx.backend.is_cuda:
        raise WorkloadError("unsupported", "custom_kernel needs a CUDA device; this provider is cpu (NumPy)")
    args = [_array(ctx, i, a) if a.kind == "array" else _scalar(i, a) for i, a in enumerate(p.args)]
    t0 = time.perf_counter()
    try:
        kernel = ctx.backend.compile_kernel(p.source, p.name, p.options)
    except Exception as e:
        if ctx.backend.classify(e) is None:
            raise
        raise WorkloadError("kernel_error", f"NVRTC could not compile {p.name!r}: {e}") from e
    compile_s = time.perf_counter() - t0
    ctx.check_cancelled()
    t1 = time.perf_counter()
    kernel(tuple(p.grid), tuple(p.block), tuple(args), shared_mem=p.shared_mem)
    ctx.backend.synchronize()
    run_s = time.perf_counter() - t1
    outputs: dict[str, np.ndarray[Any, Any]] = {}
    described: dict[str, Any] = {}
    for i, (arg, value) in enumerate(zip(p.args, args, strict=True)):
        if arg.kind != "array" or not arg.output:
            continue
        host = ctx.backend.to_host(value)
        key = f"arg{i}"
        outputs[key] = host
        described[key] = {
            "dtype": str(host.dtype),
            "size": int(host.size),
            "sha256": sha256_hex(host.tobytes()),
            "sum": float(host.sum(dtype=np.float64)),
            "head": host[:_HEAD].tolist(),
        }
    summary = {
        "workload": "custom_kernel",
        "kernel": p.name,
        "grid": list(p.grid),
        "block": list(p.block),
        "outputs": described,
    }
    blob = save_arrays(outputs) if outputs else None
    return Outcome(summary, blob, metrics={"compile_s": compile_s, "kernel_s": run_s})
