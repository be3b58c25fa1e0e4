"""Admission: is a lease's workload known, are its parameters valid, can this device run it?"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from events.errors import InvalidPayload
from events.types import JsonValue
from events.workloads import MatmulParams, contract, validate_params
from gpu_runtime.errors import WorkloadError
from gpu_runtime.workloads import FAULT_WORKLOAD, FaultParams, faults_enabled

__all__ = ["DeviceFacts", "admit"]


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What admission needs to know about the device."""

    backend: str
    precisions: tuple[str, ...]
    total_memory: int
    #: The per-task memory cap, bytes; None for none.
    memory_limit: int | None = None
    faults: bool = False


def admit(workload: str, params: dict[str, JsonValue], device: DeviceFacts) -> BaseModel:
    """The validated parameters, or ``WorkloadError`` with reason ``invalid_params``, ``unsupported``
    or ``out_of_memory`` and a one-line message naming the problem."""
    if workload == FAULT_WORKLOAD and device.faults and faults_enabled():
        try:
            return FaultParams.model_validate_json(json.dumps(params))
        except ValidationError as e:
            raise WorkloadError("invalid_params", str(e.errors()[0]["msg"])) from e
    try:
        model = validate_params(workload, params)
    except InvalidPayload as e:
        raise WorkloadError("invalid_params", str(e)) from e
    c = contract(workload)
    if c.requires_cuda and device.backend != "cuda":
        raise WorkloadError(
            "unsupported", f"{workload} needs a CUDA GPU; this provider's backend is {device.backend} (NumPy)"
        )
    if isinstance(model, MatmulParams) and model.dtype not in device.precisions:
        supported = ", ".join(device.precisions)
        raise WorkloadError(
            "unsupported",
            f"params.dtype: {model.dtype} is not supported on this device (supported: {supported})",
        )
    need = c.estimate(model).memory_bytes
    if need > device.total_memory:
        raise WorkloadError(
            "out_of_memory",
            f"the task needs about {need >> 20} MiB; the device has {device.total_memory >> 20} MiB",
        )
    if device.backend == "cpu" and device.memory_limit is not None and need > device.memory_limit:
        # NumPy has no memory pool to cap: on the CPU the cap is enforced on the workload's estimate.
        cap = device.memory_limit >> 20
        raise WorkloadError(
            "out_of_memory", f"the task needs about {need >> 20} MiB, over the per-task cap of {cap} MiB"
        )
    return model
