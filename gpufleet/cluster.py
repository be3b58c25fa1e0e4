"""``gpufleet up --cluster N``: N nats-servers on this machine, routed into one JetStream cluster.

Every node has its own name (``gpufleet-n1``...), client port, cluster port and store directory
(``<data dir>/cluster/n<i>``), routes to every other node, and the same operator, resolver and
system account as a single embedded server (JetStream clustering runs over the system account).
The network's streams and buckets are created with ``N`` replicas once a meta-leader is elected, and
:meth:`LocalCluster.wait_current` waits until every one has a leader and every replica is current.

All nodes on one machine share its disk, power and kernel: this is for testing a cluster's
behaviour (failover, repair), not for availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import structlog

from events.errors import GpufleetError, StoreUnavailable
from events.store.connection import Access, connect_nats
from events.store.topology import Topology, ensure_topology
from gpufleet.auth import AccountLimits, Authority
from gpufleet.lifecycle import DataDirLock
from gpufleet.natsserver import NatsServer

__all__ = [
    "CLUSTER_NAME",
    "ClusterError",
    "ClusterNode",
    "LocalCluster",
    "check_cluster_size",
    "check_store_layout",
    "cluster_info",
    "free_port",
]

CLUSTER_NAME = "gpufleet"
_log = structlog.get_logger("gpufleet.cluster")


class ClusterError(GpufleetError):
    """A cluster that cannot be run as asked (an even size, say), or that did not form in time."""


def check_cluster_size(size: int) -> int:
    """``size`` if a JetStream cluster of that many nodes makes sense; else one line saying why not."""
    if size < 1:
        raise ClusterError(f"--cluster {size}: a cluster has at least one node")
    if size % 2 == 0:
        raise ClusterError(
            f"--cluster {size}: use an odd number of nodes (1, 3, 5): JetStream commits by majority, so "
            f"{size} nodes survive no more failures than {size - 1} and cost more"
        )
    return size


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """``preferred`` if it is free on ``host``, else a port the kernel picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ClusterError(f"no free port on {host}")  # pragma: no cover - the kernel always has one


def check_store_layout(data_dir: Path, size: int) -> None:
    """Refuse to start a cluster over a data directory whose log a single server keeps, or one of
    another size: its log would be left behind, and the network would start empty."""
    single = data_dir / "nats" / "jetstream"
    if size > 1 and single.is_dir() and any(single.iterdir()):
        raise ClusterError(
            f"{data_dir} holds a single server's log ({single}); a cluster would start without it: "
            "use another --data-dir for the cluster"
        )
    nodes = sorted(p.name for p in (data_dir / "cluster").glob("n*") if p.is_dir())
    if nodes and len(nodes) != size:
        raise ClusterError(
            f"{data_dir} holds a {len(nodes)}-node cluster's stores; run it with --cluster {len(nodes)} "
            "or use another --data-dir"
        )


def cluster_info(cluster: LocalCluster) -> list[dict[str, Any]]:
    """What ``network.json`` records of each node: its name, URL, ports and store."""
    return [
        {
            "name": n.name,
            "url": n.url,
            "port": n.server.port,
            "cluster_port": n.cluster_port,
            "store_dir": str(n.store_dir),
        }
        for n in cluster.nodes
    ]


@dataclass
class ClusterNode:
    """One node: its nats-server and the port its routes use."""

    index: int
    server: NatsServer
    cluster_port: int

    @property
    def name(self) -> str:
        """The node's ``server_name`` (what ``cluster.leader`` in stream info says)."""
        return self.server.name

    @property
    def url(self) -> str:
        """The node's own client URL."""
        url = self.server.url
        for anywhere in ("0.0.0.0", "::"):
            url = url.replace(f"//{anywhere}:", "//127.0.0.1:")
        return url

    @property
    def store_dir(self) -> Path:
        return self.server.store_dir


class LocalCluster:
    """``size`` nats-servers routed into one JetStream cluster, trusting this data directory's operator.

    ``ports``: the client ports to try first (taken when free, else any free port). ``start()``
    starts every node and waits until they are ready; ``stop()`` stops them all. ``kill(i)`` /
    ``stop_node(i)`` / ``start_node(i)`` act on one node (tests inject faults with them).
    """

    def __init__(
        self,
        data_dir: Path,
        size: int,
        *,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_ca: Path | None = None,
        limits: AccountLimits | None = None,
        lock: DataDirLock | None = None,
    ) -> None:
        self.size = check_cluster_size(size)
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        #: The data directory's lock: given (``up`` holds it), or taken when a node first starts and
        #: let go by ``stop`` (``gpufleet.lifecycle.DataDirLock``).
        self._lock = lock
        self._own_lock: DataDirLock | None = None
        base = limits or AccountLimits()
        # Every replica counts against the account's storage: R3 reserves three times the bytes.
        self.authority = Authority.open(
            data_dir / "auth",
            limits=AccountLimits(
                disk_bytes=base.disk_bytes * size,
                memory_bytes=base.memory_bytes * size,
                streams=base.streams,
                consumers=base.consumers,
                edge_connections=base.edge_connections,
            ),
        )
        self.tls_ca = tls_ca
        wanted = list(ports or [])
        self.nodes: list[ClusterNode] = []
        for i in range(size):
            store = data_dir / "cluster" / f"n{i + 1}"
            port = free_port(host, wanted[i]) if i < len(wanted) and wanted[i] else 0
            server = NatsServer(
                store, port=port, host=host, name=f"gpufleet-n{i + 1}", tls_cert=tls_cert, tls_key=tls_key
            )
            self.nodes.append(ClusterNode(i, server, free_port("127.0.0.1")))
        for node in self.nodes:
            node.server.config = self._config(node)

    def _route_secret(self) -> str:
        """The password every node's route presents (made once, kept 0600 beside the stores): without
        it, any process on this machine could join the cluster as a route and see every account."""
        path = self.data_dir / "cluster" / "route.secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(24))
        return path.read_text().strip()

    def _config(self, node: ClusterNode) -> str:
        secret = self._route_secret()
        routes = ", ".join(
            f"nats-route://route:{secret}@127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node
        )
        cluster = (
            f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{node.cluster_port}\n"
            f'  authorization {{ user: route, password: "{secret}" }}\n  routes: [{routes}]\n}}\n'
        )
        return self.authority.server_config(node.store_dir / "accounts") + cluster

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what clients are given, so that they fail over."""
        return ",".join(self.urls)

    def node(self, name: str) -> ClusterNode:
        """The node whose ``server_name`` is ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise ClusterError(f"no node named {name!r} in this cluster")

    def start(self, timeout: float = 30.0, *, verify: bool = True) -> LocalCluster:
        """Start every node; with ``verify``, each checks its whole store as it starts (``start_node``)."""
        for node in self.nodes:
            self._start_one(node, timeout, verify)
        return self

    def _start_one(self, node: ClusterNode, timeout: float, verify: bool) -> None:
        lock = self._lock or self._own_lock
        if lock is None:
            lock = self._own_lock = DataDirLock.acquire(self.data_dir)
        node.server.keep_fds = (lock.fd,)  # the store stays held while any node lives
        if verify and not node.server.running:
            # nats-server trusts a stream's index (``msgs/index.db``) when it matches the last record of
            # the last block: a byte flipped earlier in a block goes unnoticed until a read hits it, and
            # then that message is simply absent from this node (a hole, served to every reader while
            # this node leads; seen with 2.15). Without the index, the server rebuilds each stream's
            # state by reading every record and checking its hash, cuts a damaged block at the first bad
            # record, and the stream's raft group then sends this node the rest from the others.
            damaged = sorted(node.store_dir.glob("jetstream/*/streams/*/msgs/index.db"))
            for index in damaged:
                index.unlink()
            if damaged:
                _log.info("cluster.verify_on_start", node=node.name, streams=len(damaged))
        # A clustered server reports ready once its client port listens; JetStream then joins the meta
        # group in the background (``wait_formed`` waits for that).
        node.server.start(timeout)
        lock.note_servers([n.server.proc.pid for n in self.nodes if n.server.proc is not None and n.server.running])

    def start_node(self, index: int, timeout: float = 30.0, *, verify: bool = True) -> ClusterNode:
        """Start (or restart) one node, on the same ports and store.

        ``verify`` (the default) makes it read and check every record of its store before it rejoins,
        so that damage done while it was down is cut away and repaired from the other nodes, instead
        of surfacing later as a missing message. It costs a scan of the node's store at start.
        """
        node = self.nodes[index]
        self._start_one(node, timeout, verify)
        return node

    def stop_node(self, index: int) -> None:
        """Stop one node gracefully."""
        self.nodes[index].server.stop()

    def kill(self, index: int) -> None:
        """Kill one node at once (SIGKILL), as a crash would."""
        self.nodes[index].server.kill()

    def stop(self) -> None:
        """Stop every node (and let go of the data directory, if this cluster took it)."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.server.stop()
        if self._own_lock is not None:
            self._own_lock.release()
            self._own_lock = None

    def access(self, role: str, name: str) -> Access:
        """How identity ``role``/``name`` reaches the cluster, through any node."""
        return Access(self.url, self.authority.own_creds(role, name), self.tls_ca)

    def access_node(self, index: int, role: str, name: str) -> Access:
        """The same identity, through one node only."""
        return Access(self.nodes[index].url, self.authority.own_creds(role, name), self.tls_ca)

    # ---- forming --------------------------------------------------------------------------------

    async def meta_leader(self, timeout: float = 2.0) -> str | None:
        """The meta-leader every running node agrees on, or None while there is none (or no agreement)."""
        replies = await self.jsz(timeout=timeout)
        running = sum(1 for n in self.nodes if n.server.running)
        leaders = {r.get("meta_cluster", {}).get("leader") for r in replies.values()}
        if len(replies) < running or len(leaders) != 1:
            return None
        leader = leaders.pop()
        return str(leader) if leader else None

    async def jsz(self, *, streams: bool = False, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        """Each running node's own JetStream report (``$SYS.REQ.SERVER.PING.JSZ``), by server name.

        With ``streams``, it lists the streams each node holds and their state in that node's store,
        which is how a test sees one replica's own copy.
        """
        nc = await connect_nats(
            Access(self.url, self.authority.system_creds(), self.tls_ca), name="gpufleet-cluster-watch", timeout=5.0
        )
        try:
            inbox = nc.new_inbox()
            got: dict[str, dict[str, Any]] = {}
            done = asyncio.Event()
            running = sum(1 for n in self.nodes if n.server.running)

            async def take(msg: Any) -> None:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    body = json.loads(msg.data)
                    got[body["server"]["name"]] = body.get("data", {})
                if len(got) >= running:
                    done.set()

            sub = await nc.subscribe(inbox, cb=take)
            ask = {"accounts": True, "streams": True} if streams else {}
            await nc.publish("$SYS.REQ.SERVER.PING.JSZ", json.dumps(ask).encode(), reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
            await sub.unsubscribe()
            return got
        finally:
            await nc.close()

    async def wait_formed(self, timeout: float = 60.0) -> str:
        """Wait until the nodes have elected a meta-leader; its name."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(StoreUnavailable, nats.errors.Error, OSError):
                leader = await self.meta_leader()
                if leader:
                    return leader
            if time.monotonic() > deadline:
                log = self.nodes[0].server.log_file
                raise ClusterError(f"the cluster elected no JetStream meta-leader in {timeout:.0f}s; see {log}")
            await asyncio.sleep(0.1)

    async def ensure_streams(self, topology: Topology, timeout: float = 60.0) -> Topology:
        """As the admin, once the cluster has formed: create every stream and bucket with ``replicas``
        copies, then wait until each has a leader and current replicas."""
        await self.wait_formed(timeout)
        deadline = time.monotonic() + timeout
        nc = await connect_nats(self.access("admin", "admin"), name="gpufleet-admin")
        try:
            js = nc.jetstream(timeout=10.0)
            while True:
                try:
                    await ensure_topology(js, topology)
                    break
                except (StoreUnavailable, nats.errors.Error) as e:
                    # Right after the election the meta-leader may not answer stream requests yet.
                    if time.monotonic() > deadline:
                        raise ClusterError(f"the cluster did not create the streams in {timeout:.0f}s: {e}") from e
                    await asyncio.sleep(0.2)
            await self.wait_current(js, timeout=max(1.0, deadline - time.monotonic()))
        finally:
            await nc.close()
        return topology

    async def wait_current(self, js: Any, timeout: float = 30.0) -> None:
        """Wait until every stream and bucket of the network has a leader and all its other replicas
        are current (``js``: a JetStream context of the network's admin, or of the orchestrator)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                names = sorted(info.config.name for info in await js.streams_info())
                break
            except (nats.errors.Error, nats.js.errors.Error) as e:
                if time.monotonic() > deadline:
                    raise ClusterError(f"the cluster did not list its streams in {timeout:.0f}s: {e!s}") from e
                await asyncio.sleep(0.2)
        for name in names:
            while True:
                problem = await _replica_problem(js, name)
                if problem is None:
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(f"stream {name} is not current on every node after {timeout:.0f}s: {problem}")
                await asyncio.sleep(0.1)


async def _replica_problem(js: Any, name: str) -> str | None:
    """Why stream ``name`` is not fully replicated yet, or None when it is."""
    try:
        info = await js.stream_info(name)
    except (nats.errors.Error, nats.js.errors.Error) as e:
        return f"no stream info ({e!s})"
    replicas = info.config.num_replicas or 1
    if replicas <= 1:
        return None
    cluster = info.cluster
    if cluster is None or not cluster.leader:
        return "no leader"
    peers = cluster.replicas or []
    behind = [p.name for p in peers if not p.current or p.offline]
    if len(peers) < replicas - 1 or behind:
        return f"leader {cluster.leader}, replicas not current: {behind or len(peers)}"
    return None
