"""Every workload through a real provider on the NumPy backend, checked against an independent reference."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from events.dispatch import START_REPORT_S, Heartbeat
from events.intake import decode_intake
from gpu_runtime import ProviderRuntime
from gpu_runtime.results import canonical_json, sha256_hex
from tests.integration.audited import eventually
from tests.integration.runtime_support import Orchestrator, provider
from tests.runtime_reference import ref_hits, ref_pm1, ref_stencil, ref_uniform
from tests.secure import SecureServer

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(nats_server: SecureServer) -> AsyncIterator[tuple[ProviderRuntime, Orchestrator]]:
    async with Orchestrator.connect(nats_server) as orch, provider(nats_server, calibrate=True) as rt:
        yield rt, orch


async def run(env: tuple[ProviderRuntime, Orchestrator], workload: str, params: dict[str, Any]) -> Any:
    rt, orch = env
    body = await orch.run(rt.provider_id, workload, params)
    value = await orch.result(body)
    # The digest is over the canonical JSON of the result, wherever it travels.
    assert body.result.sha256 == sha256_hex(canonical_json(value))
    assert body.result.size == len(canonical_json(value))
    return value


async def test_registration_reports_the_cpu_honestly(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    rt, orch = env
    regs = [b for s, b in orch.intake if s == f"gf.in.provider.{rt.provider_id}.register"]
    if not regs:  # registered before the orchestrator subscribed: read it back from the stream
        msg = await orch.js.get_last_msg("GF_INTAKE", f"gf.in.provider.{rt.provider_id}.register")
        regs = [decode_intake(msg.subject, msg.data).body]
    reg = regs[-1]
    caps = reg.capabilities
    assert caps.backend == "cpu"
    assert caps.compute_capability == 0.0 and caps.sm_count == 0 and caps.cuda_version == ""
    assert caps.vram_mb > 0  # RAM, reported as such
    assert caps.extra["array_module"].startswith("numpy")
    assert "custom_kernel" not in caps.workloads and "stencil" in caps.workloads
    cal = reg.calibration
    assert cal is not None
    assert set(cal.matmul_tflops) == {"fp64", "fp32", "fp16"}
    assert all(v > 0 for v in cal.matmul_tflops.values())
    assert cal.memory_gbps > 0 and 0 < cal.task_overhead_s < 0.5


async def test_heartbeat_is_in_the_kv_bucket(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    rt, orch = env
    kv = await orch.js.key_value("gf_heartbeats")
    first = Heartbeat.model_validate_json((await kv.get(rt.provider_id)).value)
    assert first.provider_id == rt.provider_id and first.slots == 1 and not first.draining

    async def newer() -> bool:
        return Heartbeat.model_validate_json((await kv.get(rt.provider_id)).value).at > first.at

    await eventually(newer, "a newer heartbeat (one every 0.2 s)", timeout=5)


async def test_noop_echoes_its_payload(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    value = await run(env, "noop", {"payload": {"a": [1, 2.5, "x"]}})
    assert value == {"workload": "noop", "payload": {"a": [1, 2.5, "x"]}}


async def test_sleep_reports_progress_and_takes_its_time(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    rt, orch = env
    task = await orch.grant(rt.provider_id, "sleep", {"seconds": 0.6, "steps": 3})
    body = await orch.finished(task)
    assert body.report == "completed" and body.metrics["wall_s"] >= 0.6
    kinds = [s.kind for s in orch.of(task)]
    assert kinds[0] == "progress" and kinds[-1] == "completed"  # its first progress implies its start
    assert orch.of(task, "progress")[-1].body.fraction == 1.0


async def test_a_short_run_implies_its_start_and_a_long_run_reports_it(
    env: tuple[ProviderRuntime, Orchestrator],
) -> None:
    rt, orch = env
    short = await orch.grant(rt.provider_id, "noop", {})
    long = await orch.grant(rt.provider_id, "sleep", {"seconds": 2.5, "steps": 1})
    assert (await orch.finished(short)).report == "completed"
    assert [s.kind for s in orch.of(short)] == ["completed"]  # one report: the completion implies the start
    assert (await orch.finished(long)).report == "completed"
    seen = orch.of(long)
    # A run still going START_REPORT_S after it began reports its start (extending its lease to the
    # task's timeout), well before its end.
    assert seen[0].kind == "started", [s.kind for s in seen]
    assert START_REPORT_S * 0.9 <= seen[0].at - orch.granted_at[seen[0].body.lease_id] < 2.4
    assert seen[-1].at - seen[0].at > 1.0


@pytest.mark.parametrize(("dtype", "rtol"), [("fp64", 1e-12), ("fp32", 1e-5), ("fp16", 5e-3)])
async def test_matmul_matches_numpy_reference(
    env: tuple[ProviderRuntime, Orchestrator], dtype: str, rtol: float
) -> None:
    n, seed = 40, 11
    value = await run(env, "matmul", {"n": n, "dtype": dtype, "seed": seed, "repeat": 2})
    np_dtype = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float16}[dtype]
    a = ref_pm1(seed, 1, n * n).astype(np_dtype).astype(np.float64).reshape(n, n)
    b = ref_pm1(seed, 2, n * n).astype(np_dtype).astype(np.float64).reshape(n, n)
    c = a @ b
    assert value["checksum"] == pytest.approx(c.sum(), abs=rtol * np.abs(c).sum())
    assert value["fro"] == pytest.approx(np.linalg.norm(c), rel=rtol)
    assert (value["n"], value["dtype"], value["repeat"]) == (n, dtype, 2)


@pytest.mark.parametrize(("dtype", "rtol"), [("complex128", 1e-12), ("complex64", 1e-5)])
async def test_fft_matches_numpy_reference(env: tuple[ProviderRuntime, Orchestrator], dtype: str, rtol: float) -> None:
    n, batch, seed = 256, 3, 5
    value = await run(env, "fft", {"n": n, "batch": batch, "dtype": dtype, "seed": seed})
    real = np.float32 if dtype == "complex64" else np.float64
    x = ref_pm1(seed, 1, n * batch).astype(real) + ref_pm1(seed, 2, n * batch).astype(real) * 1j
    spectrum = np.fft.fft(x.astype(np.complex128).reshape(batch, n), axis=-1)
    energy = float((np.abs(spectrum) ** 2).sum())
    assert value["energy"] == pytest.approx(energy, rel=rtol)
    assert value["energy"] == pytest.approx(n * value["input_energy"], rel=rtol)  # Parseval
    scale = np.abs(spectrum).sum()
    assert value["checksum_re"] == pytest.approx(spectrum.real.sum(), abs=rtol * scale)
    assert value["checksum_im"] == pytest.approx(spectrum.imag.sum(), abs=rtol * scale)
    assert value["dc"] == pytest.approx([spectrum[0, 0].real, spectrum[0, 0].imag], rel=rtol, abs=rtol)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "norm"])
@pytest.mark.parametrize("dtype", ["fp64", "fp32"])
async def test_reduction_matches_reference(env: tuple[ProviderRuntime, Orchestrator], op: str, dtype: str) -> None:
    n, seed = 5000, 3
    value = (await run(env, "reduction", {"n": n, "op": op, "dtype": dtype, "seed": seed}))["value"]
    x = ref_pm1(seed, 1, n).astype(np.float32 if dtype == "fp32" else np.float64).astype(np.float64)
    expect = {"sum": x.sum(), "mean": x.mean(), "max": x.max(), "min": x.min(), "norm": np.sqrt((x * x).sum())}[op]
    assert value == pytest.approx(expect, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("op", ["saxpy", "exp", "sigmoid", "sqrt"])
async def test_elementwise_matches_reference(env: tuple[ProviderRuntime, Orchestrator], op: str) -> None:
    n, seed = 5000, 9
    value = await run(env, "elementwise", {"n": n, "op": op, "seed": seed})
    x = ref_uniform(seed, 1, n) if op == "sqrt" else ref_pm1(seed, 1, n)
    out = {
        "saxpy": lambda: 2.5 * x + ref_pm1(seed, 2, n),
        "exp": lambda: np.exp(x),
        "sigmoid": lambda: 1 / (1 + np.exp(-x)),
        "sqrt": lambda: np.sqrt(x),
    }[op]()
    assert value["sum"] == pytest.approx(out.sum(), rel=1e-12)
    # Same backend, same inputs, same operations: the output bytes are identical.
    assert value["digest"] == hashlib.sha256(out.tobytes()).hexdigest()


async def test_montecarlo_is_bit_exact(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    rt, orch = env
    samples, seed = 20_000, 7
    task = await orch.grant(rt.provider_id, "montecarlo", {"samples": samples, "seed": seed, "chunk": 2048})
    body = await orch.finished(task)
    value = await orch.result(body)
    hits = ref_hits(seed, samples)
    assert value["hits"] == hits
    assert value["pi"] == 4.0 * hits / samples
    progress = orch.of(task, "progress")
    assert progress and progress[-1].body.fraction == 1.0 and progress[-1].body.unit == "samples"


async def test_stencil_matches_reference(env: tuple[ProviderRuntime, Orchestrator]) -> None:
    n, steps, alpha = 24, 30, 0.2
    value = await run(env, "stencil", {"n": n, "steps": steps, "alpha": alpha, "checkpoint_every": 10})
    u = ref_stencil(n, steps, alpha)
    assert value["sum"] == pytest.approx(u.sum(), rel=1e-12)
    assert value["l2"] == pytest.approx(np.linalg.norm(u), rel=1e-12)
    assert value["center"] == pytest.approx(u[n // 2, n // 2], rel=1e-12)
    assert (value["resumed_from_step"], value["steps_run"]) == (0, steps)
