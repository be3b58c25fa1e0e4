"""Admission of a lease: parameters validated before running, device limits checked, clear reasons."""

from __future__ import annotations

from typing import Any

import pytest

from events.workloads import MatmulParams, StencilParams
from gpu_runtime.admission import DeviceFacts, admit
from gpu_runtime.errors import WorkloadError

CPU = DeviceFacts(backend="cpu", precisions=("fp64", "fp32", "fp16"), total_memory=8 << 30)
GPU = DeviceFacts(backend="cuda", precisions=("fp64", "fp32", "fp16", "tf32"), total_memory=80 << 30)


def reason_of(workload: str, params: dict[str, object], device: DeviceFacts = CPU) -> tuple[str, str]:
    with pytest.raises(WorkloadError) as e:
        admit(workload, params, device)  # type: ignore[arg-type]
    return e.value.reason, e.value.message


def test_valid_params_come_back_as_the_contract_model() -> None:
    p = admit("matmul", {"n": 128, "dtype": "fp16"}, CPU)
    assert isinstance(p, MatmulParams) and (p.n, p.dtype) == (128, "fp16")
    assert isinstance(admit("stencil", {}, CPU), StencilParams)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n": "128"}, "params.n"),  # strict: a string is not an int
        ({"n": 0}, "params.n"),
        ({"dtype": "int8"}, "params.dtype"),
        ({"extra": 1}, "params.extra"),
    ],
)
def test_invalid_params_name_the_field(params: dict[str, object], field: str) -> None:
    reason, message = reason_of("matmul", params)
    assert reason == "invalid_params" and message.startswith(field)


def test_unknown_workload_is_invalid() -> None:
    reason, message = reason_of("nope", {})
    assert reason == "invalid_params" and "unknown workload" in message


def test_fault_workload_needs_the_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUFLEET_FAULTS", raising=False)
    armed = DeviceFacts(backend="cpu", precisions=(), total_memory=1 << 30, faults=True)
    assert reason_of("_fault", {"kind": "segfault"}, armed)[0] == "invalid_params"
    monkeypatch.setenv("GPUFLEET_FAULTS", "1")
    assert reason_of("_fault", {"kind": "segfault"}, CPU)[0] == "invalid_params"  # config not armed
    assert admit("_fault", {"kind": "segfault"}, armed).kind == "segfault"  # type: ignore[attr-defined]


def test_custom_kernel_is_refused_on_cpu_but_admitted_on_cuda() -> None:
    params: dict[str, Any] = {"source": 'extern "C" __global__ void k() {}', "name": "k", "grid": [1], "block": [32]}
    reason, message = reason_of("custom_kernel", params)
    assert reason == "unsupported" and "CUDA" in message and "cpu" in message
    assert admit("custom_kernel", params, GPU) is not None


def test_precisions_the_device_lacks_are_unsupported() -> None:
    assert reason_of("matmul", {"dtype": "tf32"})[0] == "unsupported"
    assert reason_of("matmul", {"dtype": "bf16"}, GPU)[0] == "unsupported"
    assert admit("matmul", {"dtype": "tf32"}, GPU) is not None


def test_memory_estimates_are_checked() -> None:
    reason, message = reason_of("matmul", {"n": 65536, "dtype": "fp64"})
    assert reason == "out_of_memory" and "MiB" in message
    capped = DeviceFacts(backend="cpu", precisions=("fp64",), total_memory=8 << 30, memory_limit=16 << 20)
    assert reason_of("stencil", {"n": 2048}, capped)[0] == "out_of_memory"
    assert admit("stencil", {"n": 256}, capped) is not None
    # On a GPU the cap is the memory pool's to enforce, at allocation: admission does not guess.
    gpu_capped = DeviceFacts(backend="cuda", precisions=("fp64",), total_memory=80 << 30, memory_limit=16 << 20)
    assert admit("stencil", {"n": 2048}, gpu_capped) is not None
