"""The provider service on a real, secured nats-server: results, admission, cancellation, timeouts,
throttling, and what its credentials let it (and others) do."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from events.dispatch import Heartbeat, LeaseGranted, LeaseRevoked
from events.store.connection import denied_subjects
from events.subjects import DISPATCH_STREAM, OBJECTS_STREAM, dispatch_consumer, object_name
from gpu_runtime import ProviderRuntime, RuntimeConfig, RuntimeServiceError
from gpu_runtime.results import canonical_json, sha256_hex
from tests.integration.audited import eventually
from tests.integration.runtime_support import Orchestrator, new_id, provider
from tests.secure import SecureServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

Env = tuple[ProviderRuntime, Orchestrator]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(nats_server: SecureServer) -> AsyncIterator[Env]:
    async with (
        Orchestrator.connect(nats_server) as orch,
        provider(nats_server, cancel_grace_s=1.0, memory_limit_mb=64) as rt,
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
    # Stored under the provider's own name (the only place its credentials let it write), by digest.
    assert ref is not None and ref.bucket == OBJECTS_STREAM
    assert ref.name == object_name("provider", rt.provider_id, ref.sha256)
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
    # The slot frees quickly (cooperative stop): the next lease runs on it. The runtime sends its reports
    # in order on one connection, and the revoked task's run ended before this one began, so whatever it
    # sent is here already; it sends nothing more, not up to the audit's barrier (the runtime idle, then
    # one more lease ended) either.
    nxt = await orch.run(rt.provider_id, "noop", {})
    assert nxt.report == "completed"
    count = len(orch.of(task))
    await orch.assert_contract_kept(rt)
    assert len(orch.of(task)) == count
    assert not orch.of(task, "completed") and not orch.of(task, "failed")


async def test_revoke_right_behind_the_lease_never_lets_it_run(env: Env) -> None:
    rt, orch = env
    lease = orch.lease(rt.provider_id, "sleep", {"seconds": 30, "steps": 300})
    await orch.send(lease)
    await orch.send(LeaseRevoked(task_id=lease.task_id, lease_id=lease.lease_id, provider_id=rt.provider_id))
    # The one slot serves the next lease (had the revoked sleep kept it, this would wait out its 30 s
    # and the sleep would report its end); after the barrier, the revoked lease has said nothing more
    # than that it started, if it got that far.
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    await orch.assert_contract_kept(rt)
    assert [s.kind for s in orch.of(lease.task_id)] in ([], ["started"])


async def test_timeout_fails_the_task_and_the_slot_serves_on(env: Env) -> None:
    rt, orch = env
    body = await orch.run(rt.provider_id, "sleep", {"seconds": 30, "steps": 30}, timeout_s=0.5)
    assert body.report == "failed" and body.reason == "timeout" and "0.5s" in body.message
    assert (await orch.run(rt.provider_id, "noop", {})).report == "completed"
    await orch.assert_contract_kept(rt)


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

    async def heartbeat() -> Heartbeat:
        return Heartbeat.model_validate_json((await kv.get(rt.provider_id)).value)

    task = await orch.grant(rt.provider_id, "sleep", {"seconds": 1.0, "steps": 10})
    await orch.wait_for(task, ("progress",))
    # The task runs for a second: heartbeats every 0.2 s say so while it does, ...
    hb = await eventually(
        lambda: heartbeat_if(heartbeat, lambda h: h.running == 1), "a heartbeat with the task running", timeout=5
    )
    assert hb.slots == 1
    await orch.finished(task)
    # ... and, once it has ended, that the slot is free again.
    await eventually(
        lambda: heartbeat_if(heartbeat, lambda h: h.running == 0), "a heartbeat with the slot free", timeout=5
    )


async def test_a_lease_batch_runs_each_of_its_grants_and_no_other_providers(env: Env) -> None:
    rt, orch = env
    first = orch.lease(rt.provider_id, "noop", {"payload": 1})
    foreign = orch.lease(new_id("p"), "noop", {})  # misrouted: it names another provider
    last = orch.lease(rt.provider_id, "sleep", {"seconds": 0.1, "steps": 1})
    doomed = orch.lease(rt.provider_id, "sleep", {"seconds": 30.0, "steps": 1})
    stop = LeaseRevoked(task_id=doomed.task_id, lease_id=doomed.lease_id, provider_id=rt.provider_id, reason="x")
    await orch.send_batch(rt.provider_id, [first, foreign, last, doomed, stop])  # applied in order
    assert (await orch.finished(first.task_id)).report == "completed"
    assert (await orch.finished(last.task_id)).report == "completed"
    await orch.assert_contract_kept(rt)
    assert orch.of(foreign.task_id) == []
    assert [s.kind for s in orch.of(doomed.task_id)] in ([], ["started"])  # revoked at once: never ended
    assert rt.running == 0


async def test_duplicate_lease_runs_once(env: Env) -> None:
    rt, orch = env
    lease = orch.lease(rt.provider_id, "sleep", {"seconds": 0.2, "steps": 2})
    await orch.send(lease)
    await orch.send(lease)
    await orch.finished(lease.task_id)
    await orch.send(lease)  # a redelivery after the end must not run it again either
    # The barrier: dispatch is read in order, so the runtime took the redelivery before the audit's
    # next lease, and would have reported running it before that lease's end.
    await orch.assert_contract_kept(rt)
    assert len(orch.of(lease.task_id, "started")) <= 1  # a short run's completion implies its start
    assert len(orch.of(lease.task_id, "completed")) == 1


# ---- identity: the credentials are the provider ------------------------------------------------


async def heartbeat_if(read: Any, condition: Any) -> Heartbeat | None:
    """The heartbeat ``read()`` returns, if ``condition`` holds for it."""
    hb = await read()
    return hb if condition(hb) else None


async def _pull(nc: NATS, consumer: str, timeout: float = 1.0) -> list[LeaseGranted]:
    """What a fetch from ``consumer`` on the dispatch stream gets on connection ``nc`` (nothing on a timeout)."""
    sub = await nc.jetstream().pull_subscribe_bind(consumer, DISPATCH_STREAM)
    try:
        msgs = await sub.fetch(batch=4, timeout=timeout)
    except nats.errors.TimeoutError:
        msgs = []
    for m in msgs:
        await m.ack()
    return [LeaseGranted.model_validate_json(m.data) for m in msgs]


async def _denied(nc: NATS, subject: str, timeout: float = 2.0) -> bool:
    """True once the server has reported a permission violation on ``subject`` to ``nc``."""
    deadline = time.monotonic() + timeout
    while subject.lower() not in denied_subjects(nc):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_another_provider_cannot_read_this_providers_dispatch(env: Env, nats_server: SecureServer) -> None:
    rt, orch = env
    thief = new_id("p")
    x = dispatch_consumer(rt.provider_id)
    async with nats_server.connection("provider", thief) as nc:
        # While provider X's runtime serves, Y asks X's consumer for X's leases: the server refuses.
        stolen = asyncio.create_task(_pull(nc, x, timeout=2.0))
        lease = orch.lease(rt.provider_id, "sleep", {"seconds": 0.3, "steps": 3})
        await orch.send(lease)
        assert await stolen == []
        assert await _denied(nc, f"$JS.API.CONSUMER.MSG.NEXT.{DISPATCH_STREAM}.{x}")
        # X got its lease and ran it; Y saw none of it.
        assert (await orch.finished(lease.task_id)).report == "completed"
        assert len(orch.of(lease.task_id, "completed")) == 1

        # Nor can Y make a consumer of its own on X's dispatch subject (providers create no consumers).
        config = orch.topology.dispatch_consumer_config(rt.provider_id)
        config.durable_name = dispatch_consumer(thief)
        with pytest.raises(nats.errors.Error):
            await nc.jetstream().add_consumer(DISPATCH_STREAM, config=config, timeout=1.0)
        assert any(s.startswith("$js.api.consumer.") and "create" in s for s in denied_subjects(nc))

        # With nobody serving provider Z, a lease for Z waits in Z's queue: Y still gets nothing of it,
        # and Z's own credentials get it (so only the permissions stood between Y and the lease).
        z = new_id("p")
        parked = orch.lease(z, "noop", {})
        await orch.send(parked)
        assert await _pull(nc, dispatch_consumer(z)) == []
        assert await _denied(nc, f"$JS.API.CONSUMER.MSG.NEXT.{DISPATCH_STREAM}.{dispatch_consumer(z)}")
        async with nats_server.connection("provider", z) as own:
            assert [g.lease_id for g in await _pull(own, dispatch_consumer(z))] == [parked.lease_id]
            assert not denied_subjects(own)
    # The runtime itself never strayed outside what its credentials allow, and kept its contract.
    assert not denied_subjects(rt._nc)
    await orch.assert_contract_kept(rt)


@pytest.mark.parametrize("role", ["submitter", "auditor"])
async def test_a_runtime_with_credentials_of_another_role_refuses_to_start(
    nats_server: SecureServer, role: str
) -> None:
    access = nats_server.access(role, new_id("s"))
    with pytest.raises(RuntimeServiceError, match=f"are {role} credentials, not a provider's"):
        ProviderRuntime(RuntimeConfig(nats_url=access.url, creds=access.creds))


async def test_a_runtime_is_the_provider_its_credentials_name(nats_server: SecureServer) -> None:
    name = new_id("p")
    access = nats_server.access("provider", name)
    assert RuntimeConfig(nats_url=access.url, creds=access.creds).provider_id == name
    with pytest.raises(RuntimeServiceError, match=f"the credentials are provider '{name}'"):
        RuntimeConfig(nats_url=access.url, creds=access.creds, provider_id=new_id("p"))
