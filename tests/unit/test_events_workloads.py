"""Workload contracts: parameter validation, unknown workloads, and the size of each estimate."""

from __future__ import annotations

import math
from typing import Any

import pytest

from events import InvalidPayload
from events.types import Estimate, JsonValue
from events.workloads import (
    WORKLOADS,
    CustomKernelParams,
    ElementwiseParams,
    FftParams,
    FunctionParams,
    MatmulParams,
    MonteCarloParams,
    NoopParams,
    ReductionParams,
    SleepParams,
    StencilParams,
    contract,
    validate_params,
)

CODE = {"bucket": "gf-objects", "name": "submitter.alice." + "a" * 64, "sha256": "a" * 64, "size": 900}
KERNEL = {"source": 'extern "C" __global__ void k(float* x) {}', "name": "k", "grid": [4, 2], "block": [128]}

VALID: dict[str, tuple[dict[str, JsonValue], type]] = {
    "noop": ({"payload": {"a": [1, 2, None]}}, NoopParams),
    "sleep": ({"seconds": 2.5, "steps": 5}, SleepParams),
    "matmul": ({"n": 256, "dtype": "fp16", "repeat": 3}, MatmulParams),
    "fft": ({"n": 4096, "batch": 8, "dtype": "complex128"}, FftParams),
    "reduction": ({"n": 1000, "op": "norm", "dtype": "fp32"}, ReductionParams),
    "elementwise": ({"n": 1000, "op": "sigmoid"}, ElementwiseParams),
    "montecarlo": ({"samples": 1 << 20, "seed": 7, "chunk": 4096}, MonteCarloParams),
    "stencil": ({"n": 64, "steps": 100, "checkpoint_every": 10, "step_delay_s": 0.01}, StencilParams),
    "custom_kernel": (
        {**KERNEL, "args": [{"kind": "array", "dtype": "float32", "size": 1024, "output": True},
                            {"kind": "scalar", "dtype": "int32", "value": 3}]},
        CustomKernelParams,
    ),
    "function": (
        {"code": CODE, "entry": "pkg.saxpy:saxpy_sum", "args": {"a": 2.0, "n": 10, "tag": [1, "x"]},
         "arrays": {"x": {**CODE, "name": "submitter.alice." + "b" * 64, "sha256": "b" * 64}}, "seed": 3},
        FunctionParams,
    ),
}  # fmt: skip

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("noop", {"extra": 1}, "params.extra"),
    ("sleep", {"seconds": -1.0}, "params.seconds"),
    ("sleep", {"steps": "10"}, "params.steps"),
    ("matmul", {"n": "8"}, "params.n"),  # strict: "8" is not an int
    ("matmul", {"n": 8.0}, "params.n"),
    ("matmul", {"n": 0}, "params.n"),
    ("matmul", {"dtype": "int8"}, "params.dtype"),
    ("matmul", {"repeat": 10_001}, "params.repeat"),
    ("fft", {"n": 1}, "params.n"),
    ("fft", {"dtype": "fp32"}, "params.dtype"),
    ("reduction", {"op": "median"}, "params.op"),
    ("elementwise", {"n": 0}, "params.n"),
    ("montecarlo", {"chunk": 10}, "params.chunk"),
    ("montecarlo", {"seed": 2**32}, "params.seed"),
    ("stencil", {"alpha": 0.5}, "params.alpha"),
    ("stencil", {"n": 2}, "params.n"),
    ("custom_kernel", {**KERNEL, "name": "1k"}, "params.name"),
    ("custom_kernel", {"name": "k", "grid": [1], "block": [1]}, "params.source"),
    ("custom_kernel", {**KERNEL, "args": [{"kind": "pointer"}]}, "params.args.0.kind"),
    ("custom_kernel", {**KERNEL, "shared_mem": 1 << 30}, "params.shared_mem"),
    ("function", {"entry": "m:f"}, "params.code"),
    ("function", {"code": CODE, "entry": "m.f"}, "params.entry"),  # no function named
    ("function", {"code": CODE, "entry": "m:f;import os"}, "params.entry"),
    ("function", {"code": CODE, "entry": "../m:f"}, "params.entry"),
    ("function", {"code": CODE, "entry": "m:f", "args": {"1x": 1}}, "params.args.1x.[key]"),
    ("function", {"code": CODE, "entry": "m:f", "args": {"xp": 1}}, "params"),  # reserved: the provider's
    ("function", {"code": CODE, "entry": "m:f", "args": {"a": 1}, "arrays": {"a": CODE}}, "params"),
    ("function", {"code": {**CODE, "size": (8 << 20) + 1}, "entry": "m:f"}, "params"),  # archive too big
    ("function", {"code": CODE, "entry": "m:f", "expected_s": -1.0}, "params.expected_s"),
]


def test_every_workload_has_a_valid_case_here() -> None:
    assert set(VALID) == set(WORKLOADS)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_params(name: str) -> None:
    params, model = VALID[name]
    got = validate_params(name, params)
    assert type(got) is model
    assert contract(name).params is model
    dumped = got.model_dump(mode="json")
    for key, value in params.items():
        if key != "args":
            assert dumped[key] == value, key


@pytest.mark.parametrize("name", sorted(VALID))
def test_defaults_alone_are_valid_except_for_custom_kernels(name: str) -> None:
    if name in ("custom_kernel", "function"):  # code is never defaulted
        with pytest.raises(InvalidPayload):
            validate_params(name, {})
    else:
        assert type(validate_params(name, {})) is VALID[name][1]


@pytest.mark.parametrize(("name", "params", "field"), INVALID)
def test_invalid_params_name_the_field(name: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        validate_params(name, params)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_the_field_prefix_can_be_chosen() -> None:
    with pytest.raises(InvalidPayload) as info:
        validate_params("matmul", {"n": "8"}, field="spec.params")
    assert info.value.field == "spec.params.n"


@pytest.mark.parametrize("call", [lambda: contract("quantum"), lambda: validate_params("quantum", {})])
def test_an_unknown_workload_lists_the_known_ones(call: Any) -> None:
    with pytest.raises(InvalidPayload) as info:
        call()
    assert info.value.field == "workload"
    message = str(info.value)
    assert "'quantum'" in message
    for name in WORKLOADS:
        assert name in message


def test_contracts_describe_themselves() -> None:
    for name, c in WORKLOADS.items():
        assert c.name == name and c.summary and c.progress in ("steps", "none")
    assert WORKLOADS["custom_kernel"].requires_cuda
    assert WORKLOADS["stencil"].checkpoints
    assert not any(c.requires_cuda for n, c in WORKLOADS.items() if n != "custom_kernel")


def estimate(name: str, **params: JsonValue) -> Estimate:
    return contract(name).estimate(validate_params(name, params))


def test_a_functions_estimate_is_the_submitters_guess_and_its_arrays() -> None:
    params = {**VALID["function"][0], "expected_s": 2.5}
    est = contract("function").estimate(validate_params("function", params))
    # Nothing else is known about a stranger's function: no flops are invented.
    assert (est.fixed_seconds, est.flops, est.memory_bytes) == (2.5, 0.0, 900)


@pytest.mark.parametrize("name", sorted(set(VALID) - {"noop", "sleep", "function"}))
def test_estimates_are_positive(name: str) -> None:
    est = contract(name).estimate(validate_params(name, VALID[name][0]))
    assert est.flops > 0 and est.bytes_moved > 0 and est.memory_bytes > 0


def test_noop_costs_nothing_and_sleep_costs_its_seconds() -> None:
    assert estimate("noop") == Estimate()
    assert estimate("sleep", seconds=3.5) == Estimate(fixed_seconds=3.5)


@pytest.mark.parametrize(("n", "repeat"), [(1, 1), (64, 1), (1024, 3), (4096, 10)])
def test_matmul_flops_are_2n3_times_repeat(n: int, repeat: int) -> None:
    est = estimate("matmul", n=n, repeat=repeat, dtype="fp64")
    assert est.flops == 2.0 * n**3 * repeat
    assert est.memory_bytes == 3 * n * n * 8  # three n x n fp64 matrices, whatever the repeat
    # Three n x n matrices per product, plus generating the two seeded inputs once (20 8-byte passes).
    assert est.bytes_moved == 3.0 * n * n * 8 * repeat + 2.0 * n * n * 160
    assert est.precision == "fp64"


def test_matmul_memory_scales_with_dtype() -> None:
    assert estimate("matmul", n=100, dtype="fp16").memory_bytes * 2 == estimate("matmul", n=100).memory_bytes


def test_fft_flops_are_5_n_log2_n_per_transform() -> None:
    one = estimate("fft", n=1024)
    assert one.flops == 5.0 * 1024 * 10
    assert estimate("fft", n=1024, batch=4).flops == 4 * one.flops
    assert estimate("fft", n=1024, dtype="complex128").memory_bytes == 2 * one.memory_bytes


@pytest.mark.parametrize("name", ["reduction", "elementwise"])
def test_streaming_workloads_are_linear_in_n(name: str) -> None:
    a, b = estimate(name, n=1000), estimate(name, n=3000)
    assert b.flops == 3 * a.flops and b.bytes_moved == 3 * a.bytes_moved
    assert estimate(name, n=1000, dtype="fp32").bytes_moved * 2 == a.bytes_moved


def test_montecarlo_is_linear_in_samples_and_memory_is_bounded_by_the_chunk() -> None:
    a, b = estimate("montecarlo", samples=1 << 20), estimate("montecarlo", samples=1 << 22)
    assert b.flops == 4 * a.flops
    assert a.memory_bytes == b.memory_bytes
    assert estimate("montecarlo", chunk=1 << 21).memory_bytes == 2 * a.memory_bytes


def test_stencil_scales_with_cells_and_steps_and_counts_its_delay() -> None:
    a = estimate("stencil", n=64, steps=10)
    assert estimate("stencil", n=128, steps=10).flops == 4 * a.flops
    assert estimate("stencil", n=64, steps=30).flops == 3 * a.flops
    assert estimate("stencil", n=64, steps=10, step_delay_s=0.5).fixed_seconds == 5.0
    assert a.fixed_seconds == 0.0


def test_custom_kernel_counts_threads_and_array_memory() -> None:
    params, _ = VALID["custom_kernel"]
    est = contract("custom_kernel").estimate(validate_params("custom_kernel", params))
    assert est.flops == math.prod([4, 2]) * 128 * 10.0
    assert est.memory_bytes == 1024 * 8  # the scalar takes none
