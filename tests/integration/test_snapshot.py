"""A restart reads the core's snapshot and the log after it, not the whole log; a snapshot the log or
this code does not vouch for is set aside, and the orchestrator rebuilds from the whole log as before.
A real nats-server, real credentials, a real simulated provider, real files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.core import Core
from actors.orchestrator import Orchestrator, OrchestratorConfig
from events.store import JetStreamEventStore
from gpufleet.sim import SimulatedProvider
from tests.integration.orchestra import Tenants, all_jobs_ended, wait_for
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=2.0, lease_start_timeout_s=2.0, lease_grace_s=5.0, snapshot_every=1)
JOB = {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 3}}


@contextlib.asynccontextmanager
async def network(server: SecureServer, state: Path, **config: object) -> AsyncIterator[tuple[Orchestrator, Tenants]]:
    orch = await Orchestrator.connect(
        server.access("orchestrator"), config=dataclasses.replace(FAST, state_dir=state, **config)
    )
    sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), heartbeat_s=0.2, slots=2)).start()
    tenants = Tenants(server)
    try:
        yield orch, tenants
    finally:
        await sim.kill()
        await tenants.close()
        await orch.close()


async def run_jobs(server: SecureServer, store: JetStreamEventStore, state: Path, names: list[str], ended: int) -> int:
    """``names`` to completion on a network with a snapshotting orchestrator, which then stops; the
    position it read on from at its start."""
    async with network(server, state) as (orch, tenants):
        for name in names:
            await tenants.submit("alice", name, JOB)
        await wait_for(store, all_jobs_ended(ended), timeout=60)
        return orch.rebuilt_from


def snapshot_path(state: Path) -> Path:
    (path,) = state.glob("orchestrator.*.snapshot")
    return path


async def full_fold(store: JetStreamEventStore) -> Core:
    core = Core(retire=True)
    async for env in store.read_all():
        core.apply(env, live=False)
    return core


@pytest.fixture
async def store(own_nats_server: SecureServer) -> AsyncIterator[JetStreamEventStore]:
    s = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"))
    yield s
    await s.close()


async def test_a_restart_reads_the_snapshot_and_only_the_log_after_it(
    own_nats_server: SecureServer, store: JetStreamEventStore, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert await run_jobs(own_nats_server, store, state, ["a", "b"], 2) == 0  # no snapshot yet: the whole log
    path = snapshot_path(state)
    assert path.stat().st_mode & 0o777 == 0o600
    head = await store.head()
    async with network(own_nats_server, state) as (orch, tenants):
        assert orch.rebuilt_from == head  # stopped cleanly: the snapshot stands at the head
        # The same state as a fold of the whole log, and the network goes on from it.
        full = await full_fold(store)
        assert orch.world.tasks == full.world.tasks and orch.world.jobs == full.world.jobs
        assert orch.world.providers == full.world.providers
        assert orch.world.retired_jobs == full.world.retired_jobs == 2
        await tenants.submit("alice", "c", JOB)
        await wait_for(store, all_jobs_ended(3), timeout=60)


@pytest.mark.parametrize("damage", ["body", "position", "writable", "config"])
async def test_a_snapshot_nothing_vouches_for_is_set_aside(
    own_nats_server: SecureServer, store: JetStreamEventStore, tmp_path: Path, damage: str
) -> None:
    state = tmp_path / "state"
    await run_jobs(own_nats_server, store, state, ["a"], 1)
    path = snapshot_path(state)
    raw = path.read_bytes()
    header, _, body = raw.partition(b"\n")
    config: dict[str, object] = {}
    if damage == "body":  # a flipped byte: its digest no longer matches
        path.write_bytes(header + b"\n" + body[:-1] + bytes([body[-1] ^ 1]))
    elif damage == "position":  # it claims another position: the log holds another event there
        fields = json.loads(header.partition(b" ")[2])
        fields["position"] -= 1
        path.write_bytes(header.partition(b" ")[0] + b" " + json.dumps(fields).encode() + b"\n" + body)
    elif damage == "writable":  # anyone may have written it: pickle would run their code
        os.chmod(path, 0o666)
    else:  # the orchestrator now runs with other fair-share weights
        config = {"weights": {"alice": 2.0}}
    async with network(own_nats_server, state, **config) as (orch, tenants):
        assert orch.rebuilt_from == 0  # rebuilt from the whole log, as without a snapshot
        full = await full_fold(store)
        assert orch.world.jobs == full.world.jobs and orch.world.tasks == full.world.tasks
        await tenants.submit("alice", "b", JOB)
        await wait_for(store, all_jobs_ended(2), timeout=60)
