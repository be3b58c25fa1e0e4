"""Durability on a cluster: the network as ``gpufleet up --cluster 3`` runs it (three real nats-servers
routed into one JetStream cluster, every stream and bucket R3), an orchestrator and simulated providers
at work, and real faults: the events stream's leader killed with SIGKILL mid-run, and a follower's
message block damaged on disk while it is down. Nothing acknowledged is lost, every job finishes
exactly once, and the audit of the whole log passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from actors.orchestrator import OrchestratorConfig
from actors.world import World
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.subjects import EVENTS_STREAM, INTAKE_STREAM, intake_subject
from gpufleet.cluster import CLUSTER_NAME, ClusterError, LocalCluster, check_cluster_size, check_store_layout
from gpufleet.natsserver import NatsServer
from gpufleet.network import LocalNetwork, NetworkConfig
from gpufleet.sim import SimulatedProvider
from tests.integration.audited import assert_audit_passes
from tests.integration.orchestra import all_jobs_ended, assert_exactly_once, intake_outcomes, read_world, wait_for

FAST = OrchestratorConfig(heartbeat_timeout_s=3.0, lease_start_timeout_s=10.0, lease_grace_s=10.0)
ROOT = Path(__file__).resolve().parents[2]
JOB = {"workload": "sleep", "params": {"seconds": 0.05}, "split": {"kind": "count", "count": 3}}


@dataclass
class Run:
    """A 3-node network at work, and what was acknowledged to whom."""

    net: LocalNetwork
    reader: JetStreamEventStore
    submitter: NATS
    providers: list[SimulatedProvider]
    #: Every job submission the intake acknowledged: name -> its GF_INTAKE sequence.
    acked: dict[str, int] = field(default_factory=dict)
    #: Every event a reader of the log was given (so committed): sequence -> event id.
    seen: dict[int, str] = field(default_factory=dict)

    @property
    def cluster(self) -> LocalCluster:
        assert self.net.cluster is not None
        return self.net.cluster

    async def submit(self, name: str) -> None:
        """Submit job ``name``, retried through an election with the same message id (stored once)."""
        subject = intake_subject("submitter", "alice", "submit", name)
        body = json.dumps(JOB).encode()
        js = self.submitter.jetstream(timeout=2.0)
        for _ in range(100):
            try:
                ack = await js.publish(subject, body, headers={"Nats-Msg-Id": f"submit-{name}"})
            except Exception:  # no leader yet, or the link moving to another node: try again
                await asyncio.sleep(0.2)
                continue
            self.acked[name] = ack.seq
            return
        raise AssertionError(f"the intake never acknowledged {name}")

    async def settle(self, predicate: Callable[[World], bool], timeout: float) -> tuple[World, list[Any]]:
        """``wait_for`` the log to satisfy ``predicate``, through elections: while a stream has no
        leader, the reader's consumer request times out (a raw nats timeout, not ``StoreUnavailable``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await wait_for(self.reader, predicate, timeout=max(1.0, deadline - time.monotonic()), poll=0.3)
            except nats.errors.TimeoutError:
                assert time.monotonic() < deadline, "the log stayed unreadable"
                await asyncio.sleep(0.2)

    async def follow(self) -> None:
        """Record every event the log hands a reader, as it arrives."""
        while True:
            try:
                async for env in self.reader.subscribe(max(self.seen, default=0)):
                    self.seen[env.sequence] = env.id
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)  # the reader's node went away: follow again from where it was

    async def node_copy(self, index: int) -> dict[str, Any]:
        """GF_EVENTS as node ``index`` holds it in its own store (its JetStream report, not the leader's)."""
        name = self.cluster.nodes[index].name
        report = (await self.cluster.jsz(streams=True)).get(name, {})
        for account in report.get("account_details", []):
            for stream in account.get("stream_detail", []):
                if stream["name"] == EVENTS_STREAM:
                    return dict(stream.get("state", {}))
        return {}

    async def events_leader(self) -> int:
        """The index of the node that leads GF_EVENTS now (asked again while an election is under way)."""
        deadline = time.monotonic() + 30.0
        while True:
            with contextlib.suppress(nats.errors.Error):
                info = await self.reader.js.stream_info(EVENTS_STREAM)
                if info.cluster is not None and info.cluster.leader:
                    return self.cluster.node(info.cluster.leader).index
            assert time.monotonic() < deadline, "GF_EVENTS has had no leader for 30 s"
            await asyncio.sleep(0.1)

    async def check_durable(self, jobs: list[str]) -> None:
        """Every job ended once, everything acknowledged is in the log, one outcome per input, audit passes."""
        w, log = await self.settle(all_jobs_ended(len(jobs)), timeout=60)
        assert {f"alice.{j}" for j in jobs} <= set(w.jobs)
        assert {w.jobs[f"alice.{j}"].status for j in jobs} == {"completed"}
        assert_exactly_once(log)
        by_seq = {e.sequence: e.id for e in log}
        lost = {s: i for s, i in self.seen.items() if by_seq.get(s) != i}
        assert not lost, f"acknowledged events missing or changed: {sorted(lost.items())[:5]}"
        for name, seq in self.acked.items():
            raw = await self.reader.js.get_msg(INTAKE_STREAM, seq)
            assert raw.subject == intake_subject("submitter", "alice", "submit", name), (name, seq, raw.subject)
        await assert_audit_passes(self.reader, timeout=60)
        outcomes = intake_outcomes(log)
        assert set(outcomes.values()) == {1}, outcomes.most_common(3)
        assert set(self.acked.values()) <= set(outcomes)


@contextlib.asynccontextmanager
async def cluster_run(tmp_path: Path) -> AsyncIterator[Run]:
    """``gpufleet up --cluster 3`` (no local provider, no projections) and two simulated providers."""
    config = NetworkConfig(
        data_dir=tmp_path / "net", port=0, cluster=3, provider=False, projections=False, orchestrator=FAST
    )
    net = await LocalNetwork(config).start()
    run: Run | None = None
    follower: asyncio.Task[None] | None = None
    try:
        assert net.cluster is not None and net.cluster.size == 3
        assert config.topology.replicas == 1 and net.config.topology.replicas == 3
        reader = await JetStreamEventStore.connect(net.access("orchestrator"), name="test-reader")
        submitter = await connect_nats(net.access("submitter", "alice"), name="test-alice")
        providers = [
            await (await SimulatedProvider.connect(net.access("provider", f"p{i}"), heartbeat_s=0.3, slots=3)).start()
            for i in range(2)
        ]
        run = Run(net, reader, submitter, providers)
        follower = asyncio.create_task(run.follow())
        yield run
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(BaseException):
                await follower
        if run is not None:
            for p in run.providers:
                await p.kill()
            await run.submitter.close()
            await run.reader.close()
        await net.stop()


async def test_the_event_stream_leader_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    async with cluster_run(tmp_path) as run:
        info = await run.reader.js.stream_info(EVENTS_STREAM)
        assert info.cluster is not None and info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
        before = [f"a{i}" for i in range(6)]
        for name in before:
            await run.submit(name)
        # Mid-run: some jobs done, others still running or queued.
        await run.settle(lambda w: any(j.status == "completed" for j in w.jobs.values()), timeout=30)
        victim = await run.events_leader()
        committed = dict(run.seen)
        assert committed, "the reader saw no events before the kill"
        run.cluster.kill(victim)  # SIGKILL, mid-run

        # Work goes on: the other two elect a new leader, and more jobs run to the end.
        after = [f"b{i}" for i in range(4)]
        for name in after:
            await run.submit(name)
        await run.settle(all_jobs_ended(len(before) + len(after)), timeout=60)
        assert await run.events_leader() != victim

        # The killed node comes back and catches up.
        await asyncio.to_thread(run.cluster.start_node, victim)
        await run.cluster.wait_current(run.reader.js, timeout=30)
        head = await run.reader.head()
        await until(lambda: _last_seq(run.node_copy(victim), head), "the restarted node's copy at the head")

        assert all(run.seen.get(s) == i for s, i in committed.items())
        await run.check_durable(before + after)


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
async def test_a_follower_s_damaged_store_is_repaired_from_the_others(tmp_path: Path, damage: str) -> None:
    async with cluster_run(tmp_path) as run:
        first = [f"a{i}" for i in range(4)]
        for name in first:
            await run.submit(name)
        await run.settle(all_jobs_ended(len(first)), timeout=30)
        head = await run.reader.head()
        leader = await run.events_leader()
        victim = next(i for i in range(3) if i != leader)
        await until(lambda: _last_seq(run.node_copy(victim), head), "the follower's copy at the head")
        _, log = await read_world(run.reader)
        original = {e.sequence: e.id for e in log}

        # The follower stops; its message block is damaged on disk; meanwhile the work goes on.
        await asyncio.to_thread(run.cluster.stop_node, victim)
        block = _largest_block(run.cluster.nodes[victim].store_dir)
        size = block.stat().st_size
        if damage == "flipped":
            with block.open("r+b") as f:
                for at in (size // 4, size // 2, 3 * size // 4):  # three records' bytes, inverted
                    f.seek(at)
                    chunk = f.read(32)
                    f.seek(at)
                    f.write(bytes(b ^ 0xFF for b in chunk))
        else:
            os.truncate(block, size // 2)
        more = [f"b{i}" for i in range(3)]
        for name in more:
            await run.submit(name)
        await run.settle(all_jobs_ended(len(first) + len(more)), timeout=30)

        await asyncio.to_thread(run.cluster.start_node, victim)
        await run.cluster.wait_current(run.reader.js, timeout=30)
        head = await run.reader.head()
        await until(lambda: _full_copy(run.node_copy(victim), head), "the repaired node's own copy, complete")

        # Read the log from the repaired node itself: make it the stream's leader, then read it all.
        async def lead() -> bool:
            if await run.events_leader() == victim:
                return True
            await _step_down(run, run.cluster.nodes[victim].name)
            return False

        await until(lead, "the repaired node leading GF_EVENTS", timeout=30, poll=1.0)
        # Through a connection to that node: direct gets are answered by the replica next to the reader.
        own = await JetStreamEventStore.connect(run.cluster.access_node(victim, "orchestrator", "orchestrator"))
        try:
            _, log = await read_world(own)
        finally:
            await own.close()
        assert [e.sequence for e in log] == list(range(1, head + 1)), "the repaired node's log has holes"
        now = {e.sequence: e.id for e in log}
        assert all(now.get(s) == i for s, i in original.items()), "an event changed or went missing"
        await run.check_durable(first + more)


def test_a_cluster_has_an_odd_number_of_nodes() -> None:
    assert check_cluster_size(3) == 3 and check_cluster_size(1) == 1
    for bad in (0, 2, 4, -1):
        with pytest.raises(ClusterError) as info:
            check_cluster_size(bad)
        assert "\n" not in str(info.value) and f"--cluster {bad}" in str(info.value)
    with pytest.raises(ClusterError, match="majority"):
        check_cluster_size(2)


def test_up_refuses_an_even_cluster_and_a_data_directory_of_another_layout(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpufleet", "up", "--cluster", "2", "--data-dir", str(tmp_path / "even")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "majority" in proc.stderr, proc.stderr
    assert not (tmp_path / "even" / "cluster").exists()

    single, clustered = tmp_path / "single", tmp_path / "clustered"
    (single / "nats" / "jetstream" / "ACCOUNT").mkdir(parents=True)
    for i in (1, 2, 3):
        (clustered / "cluster" / f"n{i}").mkdir(parents=True)
    with pytest.raises(ClusterError, match="single server's log"):
        check_store_layout(single, 3)
    with pytest.raises(ClusterError, match="3-node cluster's stores; run it with --cluster 3"):
        check_store_layout(clustered, 1)
    check_store_layout(clustered, 3)
    check_store_layout(single, 1)


async def test_a_stranger_on_this_machine_cannot_join_the_cluster_as_a_route(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "net", 3).start()
    rogue = NatsServer(
        tmp_path / "rogue",
        name="rogue",
        jetstream=False,
        extra_args=["--cluster_name", CLUSTER_NAME, "--cluster", "nats://127.0.0.1:-1",
                    "--routes", f"nats-route://127.0.0.1:{cluster.nodes[0].cluster_port}"],
    )  # fmt: skip
    try:
        await cluster.wait_formed()
        rogue.start()
        await until(
            lambda: asyncio.to_thread(lambda: "Authorization Violation" in rogue.log_file.read_text()),
            "the cluster refusing the stranger's route",
        )
        assert len((await cluster.jsz()).keys()) == 3
    finally:
        rogue.stop()
        cluster.stop()


# ---- helpers -------------------------------------------------------------------------------------


async def until(probe: Callable[[], Awaitable[bool]], what: str, *, timeout: float = 30.0, poll: float = 0.1) -> None:
    """Poll an async yes/no ``probe`` until it says yes; fail at the deadline saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(poll)


async def _last_seq(copy: Any, head: int) -> bool:
    state = await copy
    return bool(state) and int(state.get("last_seq", 0)) >= head


async def _full_copy(copy: Any, head: int) -> bool:
    """The node holds every message from 1 to ``head``, none missing (``num_deleted`` counts holes)."""
    state = await copy
    return (
        bool(state)
        and int(state.get("last_seq", 0)) >= head
        and int(state.get("first_seq", 0)) == 1
        and int(state.get("messages", 0)) == int(state["last_seq"])
        and not state.get("num_deleted")
    )


async def _step_down(run: Run, preferred: str) -> None:
    """Ask GF_EVENTS' leader to step down in favour of ``preferred`` (as the network's admin)."""
    nc = await connect_nats(run.net.access("admin"), name="test-admin")
    try:
        body = json.dumps({"placement": {"preferred": preferred}}).encode()
        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{EVENTS_STREAM}", body, timeout=5.0)
    finally:
        await nc.close()


def _largest_block(store_dir: Path) -> Path:
    found = list(store_dir.glob(f"jetstream/*/streams/{EVENTS_STREAM}/msgs/*.blk"))
    assert found, f"no message blocks under {store_dir}"
    return max(found, key=lambda p: p.stat().st_size)
