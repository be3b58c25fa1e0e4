"""The provider service on a real nats-server: results, admission, cancellation, timeouts, throttling."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from events.dispatch import Heartbeat, LeaseRevoked
from gpu_runtime import ProviderRuntime
from gpu_runtime.results import canonical_json, sha256_hex
from gpufleet.natsserver import NatsServer
from tests.integration.runtime_support import Orchestrator, provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

Env = tuple[ProviderRuntime, Orchestrator]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(nats_server: NatsServer) -> AsyncIterator[Env]:
    async with (
        provider(nats_server.url, cancel_grace_s=1.0, memory_limit_mb=64) as rt,
        Orchestrator.connect(nats_server.url) as orch,
    ):
        yield rt, orch


async def test_small_result_is_inline_with_its_digest(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, "noop", {"payload": "small"})
    assert body.report == "completed" and body.result.object is None
    assert body.result.inline == {"workload": "noop", "payload": "small"}
    assert body.result.sha256 == sha256_hex(canonical_json(body.result.inline))


async def test_large_result_goes_to_the_object_store(env: Env) -> None:
    rt, orch = env
    payload = "x" * 20_000  # over the 16 KiB inline limit
    body = await orch.run(rt.provider_id, "noop", {"payload": payload})
    assert body.report == "completed" and body.result.inline is None
    ref = body.result.object
    assert ref is not None and ref.bucket == "gf_objects" and ref.name.startswith("results/")
    data = await orch.get_object(ref)
    assert sha256_hex(data) == ref.sha256 == body.result.sha256 and len(data) == ref.size == body.result.size
    assert json.loads(data) == {"workload": "noop", "payload": payload}


@pytest.mark.parametrize(
    ("workload", "params", "reason", "needle"),
    [
        ("custom_kernel", {"source": "x", "name": "k", "grid": [1], "block": [1]}, "unsupported", "CUDA"),
        ("matmul", {"n": 64, "dtype": "tf32"}, "unsupported", "tf32"),
        ("matmul", {"n": "64"}, "invalid_params", "params.n"),
        ("stencil", {"n": 64, "bogus": 1}, "invalid_params", "params.bogus"),
        ("warp_drive", {}, "invalid_params", "unknown workload"),
        ("_fault", {"kind": "segfault"}, "invalid_params", "unknown workload"),  # no GPUFLEET_FAULTS here
        ("matmul", {"n": 65536, "dtype": "fp64"}, "out_of_memory", "MiB"),
        ("stencil", {"n": 4096}, "out_of_memory", "cap of 64 MiB"),
    ],
)
async def test_refusals_are_classified(
    env: Env, workload: str, params: dict[str, object], reason: str, needle: str
) -> None:
    rt, orch = env
    task = await orch.grant(rt.provider_id, workload, params)
    body = await orch.finished(task)
    assert body.report == "failed" and body.reason == reason
    assert needle in body.message
    assert not orch.of(task, "started")  # refused before it ever ran


async def test_revoke_cancels_and_silences_the_task(env: Env) -> None:
    rt, orch = env
    task = await orch.grant(rt.provider_id, "sleep", {"seconds": 30, "steps": 300})
    await orch.wait_for(task, ("progress",))
    await orch.revoke(rt.provider_id, task)
    # The slot frees quickly (cooperative stop), and the revoked task reports nothing more.
    nxt = await orch.run(rt.provider_id, "noop", {})
    assert nxt.report == "completed"
    count = len(orch.of(task))
    await asyncio.sleep(0.8)
    assert len(orch.of(task)) == count
    assert not orch.of(task, "completed") and not orch.of(task, "failed")


async def test_revoke_right_behind_the_lease_never_lets_it_run(env: Env) -> None:
    rt, orch = env
    lease = orch.lease(rt.provider_id, "sleep", {"seconds": 30, "steps": 300})
    await orch.send(lease)
    await orch.send(LeaseRevoked(task_id=lease.task_id, lease_id=lease.lease_id, provider_id=rt.provider_id))
    t0 = time.monotonic()
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    assert time.monotonic() - t0 < 5.0  # the slot was not held by the revoked sleep
    assert not orch.of(lease.task_id, "completed") and not orch.of(lease.task_id, "failed")


async def test_timeout_fails_the_task_and_the_slot_serves_on(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, "sleep", {"seconds": 30, "steps": 30}, timeout_s=0.5)
    assert body.report == "failed" and body.reason == "timeout" and "0.5s" in body.message
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"


async def test_progress_is_throttled_to_two_per_second(env: Env) -> None:
    rt, orch = env
    task = await orch.grant(rt.provider_id, "sleep", {"seconds": 2.2, "steps": 220})
    await orch.finished(task)
    progress = orch.of(task, "progress")
    fractions = [s.body.fraction for s in progress]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    non_final = [s.at for s in progress if s.body.fraction < 1.0]
    assert 3 <= len(non_final) <= 6  # 220 steps in 2.2 s, at most 2 a second get through
    for i in range(len(non_final) - 2):
        # any three consecutive non-final reports span more than a second (small receive jitter)
        assert non_final[i + 2] - non_final[i] > 0.9
    assert all(s.body.rate > 0 for s in progress) and progress[-1].body.unit == "steps"


async def test_slots_in_heartbeat_follow_running_tasks(env: Env) -> None:
    rt, orch = env
    kv = await orch.js.key_value("gf_heartbeats")
    task = await orch.grant(rt.provider_id, "sleep", {"seconds": 1.0, "steps": 10})
    await orch.wait_for(task, ("progress",))
    await asyncio.sleep(0.3)
    hb = Heartbeat.model_validate_json((await kv.get(rt.provider_id)).value)
    assert hb.running == 1 and hb.slots == 1
    await orch.finished(task)


async def test_duplicate_lease_runs_once(env: Env) -> None:
    rt, orch = env
    lease = orch.lease(rt.provider_id, "sleep", {"seconds": 0.2, "steps": 2})
    await orch.send(lease)
    await orch.send(lease)
    await orch.finished(lease.task_id)
    await orch.send(lease)  # a redelivery after the end must not run it again either
    await asyncio.sleep(0.4)
    assert len(orch.of(lease.task_id, "started")) == 1
    assert len(orch.of(lease.task_id, "completed")) == 1
