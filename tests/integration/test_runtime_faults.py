"""Injected faults: a segfault, a hang past its timeout, an allocation failure. One task fails; the
provider keeps serving. Fault injection needs ``GPUFLEET_FAULTS=1``, set here for this module only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from gpu_runtime import ProviderRuntime, WorkerStartError
from gpu_runtime.backend import has_cupy_gpu
from gpu_runtime.workloads import FAULT_WORKLOAD
from tests.integration.runtime_support import Orchestrator, provider, provider_config
from tests.secure import SecureServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

Env = tuple[ProviderRuntime, Orchestrator]


@pytest.fixture(scope="module")
def faults_on() -> Iterator[None]:
    old = os.environ.get("GPUFLEET_FAULTS")
    os.environ["GPUFLEET_FAULTS"] = "1"
    yield
    if old is None:
        del os.environ["GPUFLEET_FAULTS"]
    else:
        os.environ["GPUFLEET_FAULTS"] = old


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(nats_server: SecureServer, faults_on: None) -> AsyncIterator[Env]:
    async with (
        Orchestrator.connect(nats_server) as orch,
        provider(nats_server, cancel_grace_s=0.5) as rt,
    ):
        yield rt, orch


async def test_segfault_fails_only_that_task(env: Env) -> None:
    rt, orch = env
    before = rt.worker_pids()
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "segfault"})
    assert body.report == "failed" and body.reason == "worker_crashed"
    assert "SIGSEGV" in body.message
    after = await orch.run(rt.provider_id, "montecarlo", {"samples": 4096, "chunk": 1024})
    assert after.report == "completed" and after.result.inline["samples"] == 4096
    assert rt.worker_pids() and rt.worker_pids() != before  # a fresh worker took over


async def test_abrupt_exit_is_a_crash_too(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "exit"})
    assert body.report == "failed" and body.reason == "worker_crashed" and "code 3" in body.message
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"


async def test_hang_past_timeout_is_killed_and_the_slot_recovers(env: Env) -> None:
    rt, orch = env
    before = rt.worker_pids()
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "hang"}, timeout_s=0.5)
    assert body.report == "failed" and body.reason == "timeout"
    assert "killed" in body.message
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    assert rt.worker_pids() != before


async def test_allocation_failure_is_out_of_memory(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "oom"})
    assert body.report == "failed" and body.reason == "out_of_memory"
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"


async def test_unexpected_exception_is_a_provider_error(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "raise"})
    assert body.report == "failed" and body.reason == "provider_error" and "injected fault" in body.message


async def test_revoking_a_task_that_ignores_cancellation_kills_its_worker(env: Env) -> None:
    rt, orch = env
    task = await orch.grant(rt.provider_id, FAULT_WORKLOAD, {"kind": "hang"})
    await orch.wait_for(task, ("started",))
    before = rt.worker_pids()
    await orch.revoke(rt.provider_id, task)
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    assert rt.worker_pids() != before
    assert [s.kind for s in orch.of(task)] == ["started"]


@pytest.mark.skipif(has_cupy_gpu(), reason="this machine has a GPU")
async def test_asking_for_cuda_without_a_gpu_fails_clearly_instead_of_falling_back(nats_server: SecureServer) -> None:
    runtime = ProviderRuntime(provider_config(nats_server, backend="cuda"))
    with pytest.raises(WorkerStartError, match="CuPy"):
        await runtime.start()
    assert runtime.worker_pids() == []
