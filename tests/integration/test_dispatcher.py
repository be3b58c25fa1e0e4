"""The dispatcher (``actors.dispatcher``) on a real nats-server: leases planned by a real core from the
real log, granted through the task shell, and read back by each provider, with its own credentials,
from the dispatch consumer the dispatcher made for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from actors.core import Core
from actors.dispatcher import Dispatcher, grant
from actors.ids import new_id
from actors.job import job_decider
from actors.provider import RegisterProvider, provider_decider
from actors.runner import MIN_BATCH, Runner
from actors.shell import ActorShell
from actors.task import CreateTask, task_decider
from events.dispatch import LeaseGranted
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.store.topology import Topology
from events.subjects import dispatch_consumer
from events.types import Capabilities, utc_now
from tests.secure import SecureServer
from tests.unit.test_shell import created

#: Two providers' slots: a round that fills them all is one atomic batch (``MIN_BATCH`` leases or more).
SLOTS = {"p1": 12, "p2": 8}


@dataclass
class Rig:
    server: SecureServer
    topology: Topology
    nc: NATS
    store: JetStreamEventStore
    core: Core
    tasks: ActorShell[Any, Any]
    runner: Runner
    dispatcher: Dispatcher
    leading: bool = True

    async def catch_up(self) -> None:
        """The core learns what is in the log (as the orchestrator's follower does)."""
        async for env in self.store.read_all(self.core.world.position):
            self.core.apply(env, live=False)

    async def drained(self) -> None:
        while self.runner.inflight:
            await asyncio.wait(list(self.runner.inflight), timeout=10)

    async def dispatched(self, provider_id: str, *, expect: int, wait_s: float = 5.0) -> list[dict[str, Any]]:
        """What ``provider_id`` reads from its dispatch consumer, with its own credentials."""
        nc = await connect_nats(self.server.access("provider", provider_id), name="test-provider")
        try:
            sub = await nc.jetstream().pull_subscribe_bind(
                dispatch_consumer(provider_id), self.topology.dispatch_stream
            )
            out: list[dict[str, Any]] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while loop.time() < deadline and len(out) < expect + 1:
                try:
                    msgs = await sub.fetch(batch=16, timeout=0.5 if len(out) >= expect else 1.0)
                except TimeoutError:
                    if len(out) >= expect:
                        break
                    continue
                for m in msgs:
                    out.append(json.loads(m.data))
                    await m.ack()
            return out
        finally:
            await nc.close()


@pytest.fixture
async def rig(own_nats_server: SecureServer) -> AsyncIterator[Rig]:
    topology = await own_nats_server.ensure_topology()
    nc = await connect_nats(own_nats_server.access("orchestrator"), name="test-dispatcher")
    store = JetStreamEventStore(nc, settings=topology.events)
    await store.ensure()
    core = Core()
    shells = [ActorShell(store, d, source="test") for d in (job_decider, task_decider, provider_decider)]  # type: ignore[arg-type]
    runner = Runner(*shells)
    holder: list[Rig] = []
    dispatcher = Dispatcher(
        nc.jetstream(), topology, core, shells[1], runner, leading=lambda: holder[0].leading, lease_start_timeout_s=30.0
    )
    r = Rig(own_nats_server, topology, nc, store, core, shells[1], runner, dispatcher)
    holder.append(r)
    try:
        yield r
    finally:
        await r.drained()
        await nc.close()


async def fleet_with_work(r: Rig, tasks: int) -> list[str]:
    """Providers ``SLOTS`` registered, with their dispatch consumers; ``tasks`` queued."""
    now = utc_now()
    for pid, slots in SLOTS.items():
        await r.dispatcher.open_dispatch(pid)
        caps = Capabilities(backend="cpu", gpu_model="cpu", vram_mb=0, slots=slots)
        await r.runner.shell("provider").handle(
            pid, RegisterProvider(command_id=f"reg-{pid}", at=now, provider_id=pid, name=pid, capabilities=caps)
        )
    ids = [f"ann.j.{i}" for i in range(tasks)]
    for t in ids:
        await r.tasks.handle(
            t, CreateTask(command_id=f"ct-{t}", at=now, created=created(t).model_copy(update={"at": now}))
        )
    await r.catch_up()
    return ids


async def test_a_round_of_leases_reaches_each_provider_in_one_message(rig: Rig) -> None:
    ids = await fleet_with_work(rig, sum(SLOTS.values()))
    assert len(ids) >= MIN_BATCH
    # Not the leader: nothing is placed, however often it is kicked.
    rig.leading = False
    loop = asyncio.create_task(rig.dispatcher.schedule_loop())
    try:
        rig.dispatcher.kick.set()
        await asyncio.sleep(0.3)
        assert rig.dispatcher.leases_granted == 0 and not rig.core.reserved
        # The leader places them all in one round, granted as one atomic batch.
        rig.leading = True
        rig.dispatcher.kick.set()
        await asyncio.sleep(0.1)
        await rig.drained()
    finally:
        loop.cancel()
    assert rig.dispatcher.leases_granted == len(ids)
    grants: list[LeaseGranted] = []
    for pid, slots in SLOTS.items():
        got = await rig.dispatched(pid, expect=1)
        # One dispatch message for each provider, whatever it got: a LeaseBatch of its grants.
        assert [(m["type"], m["provider_id"], len(m["items"])) for m in got] == [("LeaseBatch", pid, slots)]
        grants += [LeaseGranted.model_validate_json(json.dumps(i)) for i in got[0]["items"]]
    assert sorted(g.task_id for g in grants) == sorted(ids)
    await rig.catch_up()
    for g in grants:  # each says what the log says of its lease
        t = rig.core.world.tasks[g.task_id]
        assert t.status == "leased" and t.lease is not None
        assert (g.lease_id, g.provider_id, g.expires_at) == (t.lease.lease_id, t.lease.provider_id, t.lease.expires_at)
        assert g == grant(g.task_id, t)


async def test_a_small_round_goes_out_lease_by_lease(rig: Rig) -> None:
    await fleet_with_work(rig, 3)
    plans = rig.core.plan_leases(utc_now(), 30.0, lambda: new_id("l"))
    assert len(plans) == 3
    loop = asyncio.create_task(rig.dispatcher.schedule_loop())
    try:
        rig.dispatcher.kick.set()
        await asyncio.sleep(0.1)
        await rig.drained()
    finally:
        loop.cancel()
    # Below MIN_BATCH each lease is its own concurrent append, and its own dispatch message.
    # (The core reserved the three slots above: the loop placed nothing more.)
    assert rig.dispatcher.leases_granted == 0
    for a, cmd in plans:
        rig.runner.spawn(rig.dispatcher.lease([(a, cmd)]))
    await rig.drained()
    assert rig.dispatcher.leases_granted == 3
    got = [m for pid in SLOTS for m in await rig.dispatched(pid, expect=1, wait_s=2.0)]
    assert sorted((m["type"], m["lease_id"]) for m in got) == sorted(("LeaseGranted", cmd.lease_id) for _, cmd in plans)


async def test_a_refused_lease_frees_its_slot_and_kicks_the_queue_again(rig: Rig) -> None:
    await fleet_with_work(rig, 1)
    plans = rig.core.plan_leases(utc_now(), 30.0, lambda: "lease-1")
    assert [cmd.lease_id for _, cmd in plans] == ["lease-1"] and "lease-1" in rig.core.reserved
    # Another writer leased it first (another orchestrator): the task shell refuses this one.
    a, cmd = plans[0]
    await rig.tasks.handle(a.task.task_id, replace(cmd, command_id="ls-other", lease_id="other"))
    rig.dispatcher.kick.clear()
    await rig.dispatcher.lease(plans)
    assert rig.dispatcher.leases_granted == 0
    assert "lease-1" not in rig.core.reserved and rig.dispatcher.kick.is_set()
    await rig.drained()
    assert await rig.dispatched(a.provider_id, expect=0, wait_s=1.0) == []


async def test_after_a_restart_live_leases_are_sent_again_and_a_revocation_follows(rig: Rig) -> None:
    await fleet_with_work(rig, 1)
    plans = rig.core.plan_leases(utc_now(), 30.0, lambda: "lease-2")
    a, cmd = plans[0]
    await rig.tasks.handle(a.task.task_id, cmd)  # granted, but the dispatch was lost (a crash)
    await rig.catch_up()
    rig.dispatcher.redispatch()
    rig.dispatcher.revoke(a.task.task_id, "lease-2", a.provider_id, "x" * 2000)
    await rig.drained()
    got = await rig.dispatched(a.provider_id, expect=2)
    assert [(m.get("type", "LeaseGranted"), m["lease_id"]) for m in got] == [
        ("LeaseGranted", "lease-2"),
        ("LeaseRevoked", "lease-2"),
    ]
    assert len(got[1]["reason"]) == 500  # a revocation's reason is cut to what the message holds
