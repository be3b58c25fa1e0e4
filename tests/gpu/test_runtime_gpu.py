"""The CuPy path: detection, every workload against the NumPy backend, custom kernels, the memory cap."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from events.store.blobs import BlobStore
from events.subjects import OBJECTS_STREAM, object_name
from events.types import ObjectRef
from events.workloads import validate_params
from gpu_runtime import ProviderRuntime
from gpu_runtime.backend import Backend
from gpu_runtime.errors import WorkloadError
from gpu_runtime.results import sha256_hex
from gpu_runtime.rng import hash_u64
from gpu_runtime.worker import TaskSpec, execute
from gpu_runtime.workloads import TaskContext, load_arrays, run_workload
from tests.integration.runtime_support import Orchestrator, new_id, provider
from tests.secure import SecureServer

pytestmark = pytest.mark.gpu

SAXPY = r"""
extern "C" __global__ void saxpy(const float a, const float* x, const float* y, float* out, const int n) {
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i];
}
"""


def run_on(backend: Backend, name: str, params: dict[str, Any], **ctx: Any) -> dict[str, Any]:
    outcome = run_workload(TaskContext(backend, **ctx), name, validate_params(name, params))
    return outcome.summary


def test_device_is_detected_honestly(cuda: Backend) -> None:
    caps = cuda.capabilities()
    assert caps.backend == "cuda" and caps.gpu_model and caps.vram_mb > 1024
    assert caps.compute_capability >= 3.0 and caps.sm_count > 0
    assert caps.cuda_version and caps.driver_version
    assert caps.extra["array_module"].startswith("cupy")
    assert "tf32" in cuda.precisions() or caps.compute_capability < 8.0


def test_rng_bits_are_identical_on_both_backends(cuda: Backend, cpu: Backend) -> None:
    on_gpu = cuda.to_host(hash_u64(cuda.xp, 123, 4, 10**9, 1 << 20))
    assert np.array_equal(on_gpu, hash_u64(np, 123, 4, 10**9, 1 << 20))


def test_monte_carlo_is_bit_exact_across_backends(cuda: Backend, cpu: Backend) -> None:
    params = {"samples": 3_000_000, "seed": 99, "chunk": 1 << 20}
    assert run_on(cuda, "montecarlo", params) == run_on(cpu, "montecarlo", params)


@pytest.mark.parametrize(
    "case",
    [
        ("matmul", {"n": 512, "dtype": "fp64"}, ("checksum", "fro"), 1e-9),
        ("matmul", {"n": 512, "dtype": "fp32"}, ("fro",), 1e-4),
        ("matmul", {"n": 512, "dtype": "fp16"}, ("fro",), 2e-2),
        ("fft", {"n": 4096, "batch": 8, "dtype": "complex128"}, ("energy", "checksum_re", "checksum_im"), 1e-9),
        ("fft", {"n": 4096, "batch": 8, "dtype": "complex64"}, ("energy",), 1e-4),
        ("reduction", {"n": 1 << 22, "op": "sum"}, ("value",), 1e-9),
        ("reduction", {"n": 1 << 22, "op": "norm", "dtype": "fp32"}, ("value",), 1e-5),
        ("reduction", {"n": 1 << 22, "op": "max"}, ("value",), 0.0),
        ("elementwise", {"n": 1 << 20, "op": "sigmoid"}, ("sum",), 1e-9),
        ("elementwise", {"n": 1 << 20, "op": "saxpy", "dtype": "fp32"}, ("sum",), 1e-4),
        ("stencil", {"n": 128, "steps": 100, "checkpoint_every": 1000}, ("sum", "l2", "center"), 1e-9),
    ],
)
def test_workloads_agree_with_numpy(
    cuda: Backend, cpu: Backend, case: tuple[str, dict[str, Any], tuple[str, ...], float]
) -> None:
    name, params, keys, rtol = case
    gpu, ref = run_on(cuda, name, params), run_on(cpu, name, params)
    for key in keys:
        assert gpu[key] == pytest.approx(ref[key], rel=rtol, abs=rtol), key


def test_tf32_runs_and_stays_close_to_fp32(cuda: Backend) -> None:
    if "tf32" not in cuda.precisions():
        pytest.skip("TF32 needs compute capability 8.0")
    tf32 = run_on(cuda, "matmul", {"n": 1024, "dtype": "tf32"})
    fp32 = run_on(cuda, "matmul", {"n": 1024, "dtype": "fp32"})
    assert tf32["fro"] == pytest.approx(fp32["fro"], rel=1e-2)


def test_stencil_resumes_exactly_on_the_gpu(cuda: Backend) -> None:
    sent: list[tuple[Any, ...]] = []
    params = {"n": 64, "steps": 40, "checkpoint_every": 15}
    whole = run_on(cuda, "stencil", params, send=sent.append)
    blob = next(m[2] for m in sent if m[0] == "checkpoint" and m[1] == 30)
    resumed = run_on(cuda, "stencil", params, resume_step=30, resume_arrays=load_arrays(blob))
    assert resumed["resumed_from_step"] == 30
    assert (resumed["sum"], resumed["l2"]) == (whole["sum"], whole["l2"])


def test_custom_kernel_compiles_and_runs(cuda: Backend) -> None:
    n = 1000
    x = np.arange(n, dtype=np.float32)
    y_blob = np.full(n, 0.5, dtype=np.float32).tobytes()
    y_name = object_name("submitter", "alice", sha256_hex(y_blob))
    ref = {"bucket": OBJECTS_STREAM, "name": y_name, "sha256": sha256_hex(y_blob), "size": len(y_blob)}
    params: dict[str, Any] = {
        "source": SAXPY,
        "name": "saxpy",
        "grid": [(n + 127) // 128],
        "block": [128],
        "args": [
            {"kind": "scalar", "dtype": "float32", "value": 2.0},
            {"kind": "array", "dtype": "float32", "value": x.tolist()},
            {"kind": "array", "dtype": "float32", "ref": ref},
            {"kind": "array", "dtype": "float32", "size": n, "output": True},
            {"kind": "scalar", "dtype": "int32", "value": n},
        ],
    }
    outcome = run_workload(
        TaskContext(cuda, blobs={y_name: y_blob}), "custom_kernel", validate_params("custom_kernel", params)
    )
    expect = 2.0 * x + 0.5
    out = outcome.summary["outputs"]["arg3"]
    assert out["sha256"] == sha256_hex(expect.tobytes()) and out["head"] == expect[:8].tolist()
    assert outcome.arrays is not None
    with np.load(io.BytesIO(outcome.arrays)) as npz:
        assert np.array_equal(npz["arg3"], expect)


def test_custom_kernel_compile_error_is_a_clear_kernel_error(cuda: Backend) -> None:
    params = {
        "source": 'extern "C" __global__ void k(float* x) { x[0] = undefined_name; }',
        "name": "k",
        "grid": [1],
        "block": [1],
        "args": [{"kind": "array", "size": 1, "output": True}],
    }
    with pytest.raises(WorkloadError) as e:
        run_workload(TaskContext(cuda), "custom_kernel", validate_params("custom_kernel", params))
    assert e.value.reason == "kernel_error"
    assert "undefined_name" in e.value.message and "compile" in e.value.message


def test_memory_cap_turns_a_big_allocation_into_out_of_memory(cuda: Backend) -> None:
    flag = type("Flag", (), {"value": 0})()
    big = validate_params("matmul", {"n": 8192, "dtype": "fp32"})  # ~1.3 GiB with its seeded inputs
    small = validate_params("matmul", {"n": 1024, "dtype": "fp32"})
    try:
        result = execute(cuda, TaskSpec(1, "t", "matmul", big, memory_limit=256 << 20), lambda m: None, flag)
        assert result[0] == "error" and result[2] == "out_of_memory", result
        assert cuda.memory_limit() == 256 << 20
        ok = execute(cuda, TaskSpec(2, "t", "matmul", small, memory_limit=256 << 20), lambda m: None, flag)
        assert ok[0] == "result"
        uncapped = execute(cuda, TaskSpec(3, "t", "matmul", big), lambda m: None, flag)
        assert uncapped[0] == "result"
    finally:
        cuda.set_memory_limit(None)
        cuda.free_memory()


# ---- end to end, through NATS, a CUDA provider --------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(nats_server: SecureServer, cuda: Backend) -> AsyncIterator[tuple[ProviderRuntime, Orchestrator]]:
    async with (
        Orchestrator.connect(nats_server) as orch,
        provider(nats_server, backend="cuda", memory_limit_mb=512, calibrate=True, worker_start_timeout_s=180.0) as rt,
    ):
        yield rt, orch


@pytest.mark.asyncio(loop_scope="module")
async def test_cuda_provider_registers_calibrated_figures(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    rt, _ = env
    assert rt.capabilities is not None and rt.capabilities.backend == "cuda"
    assert "custom_kernel" in rt.capabilities.workloads
    assert rt.calibration is not None and rt.calibration.matmul_tflops["fp16"] > 1.0
    assert rt.calibration.memory_gbps > 100.0


@pytest.mark.asyncio(loop_scope="module")
async def test_custom_kernel_end_to_end_with_object_store_input(
    env: tuple[ProviderRuntime, Orchestrator], nats_server: SecureServer
) -> None:
    rt, orch = env
    n = 4096
    y = np.linspace(0, 1, n, dtype=np.float32)
    # The input is the submitter's object, stored under its own name; the provider reads it by digest.
    submitter = new_id("s")
    async with nats_server.connection("submitter", submitter) as nc:
        stored = await BlobStore(nc, "submitter", submitter).put(y.tobytes())
    assert stored.name == object_name("submitter", submitter, sha256_hex(y.tobytes())) and stored.size == y.nbytes
    ref = stored.model_dump(mode="json")
    params: dict[str, Any] = {
        "source": SAXPY,
        "name": "saxpy",
        "grid": [n // 256],
        "block": [256],
        "args": [
            {"kind": "scalar", "dtype": "float32", "value": 3.0},
            {"kind": "array", "dtype": "float32", "value": [1.0] * n},
            {"kind": "array", "dtype": "float32", "ref": ref},
            {"kind": "array", "dtype": "float32", "size": n, "output": True},
            {"kind": "scalar", "dtype": "int32", "value": n},
        ],
    }
    body = await orch.run(rt.provider_id, "custom_kernel", params)
    value = await orch.result(body)
    arrays = await orch.get_object(ObjectRef.model_validate(value["arrays"]))
    with np.load(io.BytesIO(arrays)) as npz:
        assert np.array_equal(npz["arg3"], 3.0 + y)
    bad = {**params, "source": 'extern "C" __global__ void saxpy( {'}
    failed = await orch.run(rt.provider_id, "custom_kernel", bad)
    assert failed.report == "failed" and failed.reason == "kernel_error"


@pytest.mark.asyncio(loop_scope="module")
async def test_memory_cap_through_the_service(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    rt, orch = env
    over = await orch.run(rt.provider_id, "matmul", {"n": 8192, "dtype": "fp32"})  # 768 MiB > 512 MiB cap
    assert over.report == "failed" and over.reason == "out_of_memory"
    under = await orch.run(rt.provider_id, "matmul", {"n": 2048, "dtype": "fp32"})
    assert under.report == "completed"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_warm_worker_serves_noop_after_noop(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    rt, orch = env
    await orch.run(rt.provider_id, "noop", {})
    warm = rt.worker_pids()
    for _ in range(20):
        assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    # The same warm worker served every one (how fast it does is the benchmarks' business).
    assert warm and rt.worker_pids() == warm
