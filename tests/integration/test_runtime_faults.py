"""Injected faults: a segfault, a hang past its timeout, an allocation failure. One task fails; the
provider keeps serving. Fault injection needs ``GPUFLEET_FAULTS=1``, set here for this module only.

Each test ends with the audit of what the runtime reported (``Orchestrator.assert_contract_kept``: the
leases here are granted by a test double, outside any log); the last one has the real orchestrator
decide and record the same kinds of fault, and ends with the full audit of its log.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from actors.orchestrator import OrchestratorConfig
from actors.world import World
from gpu_runtime import ProviderRuntime, WorkerStartError
from gpu_runtime.backend import has_cupy_gpu
from gpu_runtime.workloads import FAULT_WORKLOAD
from tests.integration.audited import assert_audit_passes
from tests.integration.orchestra import Tenants, orchestrated, wait_for
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
    await orch.assert_contract_kept(rt)


async def test_abrupt_exit_is_a_crash_too(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "exit"})
    assert body.report == "failed" and body.reason == "worker_crashed" and "code 3" in body.message
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    await orch.assert_contract_kept(rt)


async def test_hang_past_timeout_is_killed_and_the_slot_recovers(env: Env) -> None:
    rt, orch = env
    before = rt.worker_pids()
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "hang"}, timeout_s=0.5)
    assert body.report == "failed" and body.reason == "timeout"
    assert "killed" in body.message
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    assert rt.worker_pids() != before
    await orch.assert_contract_kept(rt)


async def test_allocation_failure_is_out_of_memory(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "oom"})
    assert body.report == "failed" and body.reason == "out_of_memory"
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    await orch.assert_contract_kept(rt)


async def test_unexpected_exception_is_a_provider_error(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, FAULT_WORKLOAD, {"kind": "raise"})
    assert body.report == "failed" and body.reason == "provider_error" and "injected fault" in body.message
    await orch.assert_contract_kept(rt)


async def test_revoking_a_task_that_ignores_cancellation_kills_its_worker(env: Env) -> None:
    rt, orch = env
    task = await orch.grant(rt.provider_id, FAULT_WORKLOAD, {"kind": "hang"})
    await orch.wait_for(task, ("started",))
    before = rt.worker_pids()
    await orch.revoke(rt.provider_id, task)
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    assert rt.worker_pids() != before
    # The audit's barrier (the runtime idle, then one more lease ended) comes before the last look:
    # nothing of the revoked task may have come after it.
    await orch.assert_contract_kept(rt)
    assert [s.kind for s in orch.of(task)] == ["started"]


@pytest.mark.skipif(has_cupy_gpu(), reason="this machine has a GPU")
async def test_asking_for_cuda_without_a_gpu_fails_clearly_instead_of_falling_back(nats_server: SecureServer) -> None:
    runtime = ProviderRuntime(provider_config(nats_server, backend="cuda"))
    with pytest.raises(WorkerStartError, match="CuPy"):
        await runtime.start()
    assert runtime.worker_pids() == []


#: A provider silent for 1.5 s is lost; a lease not started within 5 s expires.
FAST = OrchestratorConfig(heartbeat_timeout_s=1.5, lease_start_timeout_s=5.0, lease_grace_s=5.0)
NO_RETRY = {"max_attempts": 1, "max_lost_leases": 0}


async def test_faults_decided_by_the_orchestrator_leave_a_log_that_passes_its_audit(
    own_nats_server: SecureServer,
) -> None:
    """A worker killed mid-task (the task is retried, from its checkpoint), a task running past its
    timeout (stopped; with no retry left its job fails), a refusal for memory, a running task
    cancelled: the provider keeps serving throughout, and the full audit of the log passes."""
    server = own_nats_server
    tenants = Tenants(server)
    job = {
        "crash": {
            "workload": "stencil",
            "params": {"n": 32, "steps": 120, "checkpoint_every": 20, "step_delay_s": 0.01},
            "retry": {"max_attempts": 2, "backoff_s": 0.0},
        },
        "slow": {"workload": "sleep", "params": {"seconds": 30, "steps": 30}, "timeout_s": 0.5, "retry": NO_RETRY},
        "oom": {"workload": "stencil", "params": {"n": 4096}, "retry": NO_RETRY},
        "cancel": {"workload": "sleep", "params": {"seconds": 30, "steps": 30}, "retry": NO_RETRY},
    }

    def status(w: World, name: str) -> str:
        j = w.jobs.get(f"alice.{name}")
        return j.status if j is not None else "absent"

    def running(name: str, step: int = 0) -> Callable[[World], bool]:
        def check(w: World) -> bool:
            t = w.tasks.get(f"alice.{name}.0")
            return t is not None and t.status == "running" and t.checkpoint_step >= step

        return check

    async with orchestrated(server, FAST) as store, provider(server, memory_limit_mb=64, cancel_grace_s=0.5) as rt:
        try:
            await tenants.submit("alice", "crash", job["crash"])
            await wait_for(store, running("crash", step=20), timeout=30, poll=0.1)
            (pid,) = rt.worker_pids()
            os.kill(pid, signal.SIGKILL)  # the worker dies mid-task
            for name in ("slow", "oom"):
                await tenants.submit("alice", name, job[name])
            ended = ("completed", "failed")
            w, _ = await wait_for(
                store, lambda w: all(status(w, n) in ended for n in ("crash", "slow", "oom")), timeout=30, poll=0.1
            )
            assert [status(w, n) for n in ("crash", "slow", "oom")] == ["completed", "failed", "failed"]
            crash = w.tasks["alice.crash.0"]
            assert crash.attempt == 2 and crash.checkpoint_step >= 20
            await tenants.submit("alice", "cancel", job["cancel"])
            await wait_for(store, running("cancel"), timeout=30, poll=0.1)
            await tenants.cancel("alice", "cancel", "changed my mind")
            w, log = await wait_for(store, lambda w: status(w, "cancel") == "cancelled", timeout=30, poll=0.1)
        finally:
            await tenants.close()
        failed = sorted((e.subject, e.data.reason, e.data.terminal) for e in log if e.type == "TaskFailed")  # type: ignore[union-attr]
        assert failed == [
            ("task.alice.crash.0", "worker_crashed", False),
            ("task.alice.oom.0", "out_of_memory", True),
            ("task.alice.slow.0", "timeout", True),
        ], failed
        # The retry resumed from the newest checkpoint recorded before the worker died.
        _, second = [e.data for e in log if e.subject == "task.alice.crash.0" and e.type == "TaskLeased"]
        assert second.resume_from is not None and second.resume_step >= 20, second  # type: ignore[union-attr]
        await assert_audit_passes(store)
