"""``gpufleet up``: a whole network on this machine, secured, or this machine's part of a remote one.

It creates the network's operator, accounts and keys on first start (``<data dir>/auth``, 0600), runs
an embedded ``nats-server`` with JetStream that admits only identities they signed (unless
``nats_url`` names an existing server or cluster set up the same way), creates the streams as the
network's admin, and runs the orchestrator, the event feed, the projections (read models in
SQLite, or in PostgreSQL with ``db``, live) and one local provider, each under the credentials of
its role. Everything keeps its state in the log, so a later ``up`` on the same data directory resumes
where the last one stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from actors.job import validate_spec
from actors.orchestrator import Orchestrator, OrchestratorConfig
from events.aio import cancel_and_wait
from events.errors import StoreUnavailable
from events.store import JetStreamEventStore
from events.store.connection import Access, connect_nats
from events.store.topology import Topology, ensure_topology
from gpu_runtime.service import ProviderRuntime, RuntimeConfig
from gpufleet.auth import HUB_ACCOUNT, AccountLimits, Authority, ensure_server_tls, push_accounts
from gpufleet.cluster import ClusterError, LocalCluster, check_cluster_size, check_store_layout, cluster_info
from gpufleet.lifecycle import DataDirLock, check_port_free
from gpufleet.metrics import MetricsRegistry, MetricsServer, register_network, serve_metrics
from gpufleet.natsserver import NatsServer
from gpufleet.notary import Notary
from projections.feed import EventFeed
from projections.projector import Projector
from projections.quote import QuoteService
from projections.storage import ReadModelStore, is_postgres_url, open_store, without_password

__all__ = [
    "DEFAULT_DATA_DIR",
    "EmbeddedServer",
    "LocalNetwork",
    "NetworkConfig",
    "discover_access",
    "discover_url",
    "local_name",
    "local_provider_id",
    "network_running",
]

DEFAULT_DATA_DIR = Path(os.environ.get("GPUFLEET_HOME", Path.home() / ".gpufleet"))
DEFAULT_URL = "nats://127.0.0.1:4222"
_log = structlog.get_logger("gpufleet.up")


def _token(text: str, fallback: str) -> str:
    clean = "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-_")[:48]
    return clean or fallback


def local_provider_id() -> str:
    """A stable id for this machine's provider, so that a restart is recognised as the same one."""
    return f"local-{_token(socket.gethostname(), 'machine')}"


def local_name(role: str) -> str:
    """The name of this machine's own identity in ``role`` (the person at the keyboard, for a submitter)."""
    if role == "provider":
        return local_provider_id()
    if role == "submitter":
        with contextlib.suppress(Exception):
            return _token(getpass.getuser(), "local")
        return "local"
    return role


def _read_info(data_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((data_dir / "network.json").read_text())
        return data
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def discover_url(data_dir: Path | None = None) -> str:
    """Where the network is: ``$GPUFLEET_NATS_URL``, else the one ``gpufleet up`` runs, else the default."""
    env = os.environ.get("GPUFLEET_NATS_URL")
    if env:
        return env
    info = _read_info(data_dir or DEFAULT_DATA_DIR)
    if info and _alive(int(info.get("pid", 0))):
        return str(info["url"])
    return DEFAULT_URL


def network_running(data_dir: Path | None = None) -> bool:
    """Whether ``gpufleet up`` runs from ``data_dir`` now (its process is alive)."""
    info = _read_info(data_dir or DEFAULT_DATA_DIR)
    return bool(info) and _alive(int((info or {}).get("pid", 0)))


def discover_access(
    role: str,
    *,
    url: str | None = None,
    creds: Path | None = None,
    tls_ca: Path | None = None,
    data_dir: Path | None = None,
) -> Access:
    """How a command reaches the network as ``role``: given values, then the environment
    (``GPUFLEET_NATS_URL``, ``GPUFLEET_CREDS``, ``GPUFLEET_TLS_CA``), then, on the machine that runs
    ``gpufleet up``, that network's own identity for the role."""
    home = data_dir or DEFAULT_DATA_DIR
    url = url or discover_url(home)
    info = _read_info(home) or {}
    if tls_ca is None:
        env_ca = os.environ.get("GPUFLEET_TLS_CA")
        if env_ca:
            tls_ca = Path(env_ca)
        elif info.get("tls_ca") and info.get("url") == url:
            tls_ca = Path(info["tls_ca"])
    if creds is None:
        env_creds = os.environ.get("GPUFLEET_CREDS")
        if env_creds:
            creds = Path(env_creds)
        elif (home / "auth" / "operator.nk").exists():
            creds = Authority.open(home / "auth", create=False).own_creds(role, local_name(role))
    return Access(url, creds, tls_ca)


@dataclass
class NetworkConfig:
    """What ``up`` runs."""

    data_dir: Path = DEFAULT_DATA_DIR
    #: An existing server or cluster that trusts this data directory's operator; None runs an
    #: embedded nats-server in ``data_dir``.
    nats_url: str | None = None
    #: The embedded server's port: None tries 4222 (or the last one used), 0 takes any free port.
    port: int | None = None
    #: The address it listens on: 127.0.0.1 (this machine only) or 0.0.0.0 (with ``tls``, for others).
    host: str = "127.0.0.1"
    #: Serve TLS: with ``tls_cert``/``tls_key``, or a CA and certificate made in ``<data dir>/tls``.
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Extra names (DNS or IP) the generated server certificate covers, besides this host's.
    tls_hosts: list[str] = field(default_factory=list)
    #: The CA that signed an existing server's certificate (with ``nats_url``).
    tls_ca: Path | None = None
    provider: bool = True
    provider_backend: str = "auto"
    provider_slots: int | None = None
    #: The local provider's price, micro-credits per GPU-second.
    provider_price_micros: int = 0
    #: Whose code the local provider runs, sandboxed (``gpu_runtime.packages.parse_accept_code``):
    #: None is this machine's own submitter (``local_name("submitter")``), and nobody else.
    provider_accept_code: tuple[str, ...] | None = None
    #: Let the local provider run that code without a sandbox when ``bwrap`` is missing.
    provider_unsafe_code: bool = False
    projections: bool = True
    #: Where the projections keep the read models: a ``postgresql://`` URL (``?schema=NAME`` to share
    #: a database), or a SQLite file; None is ``<data dir>/readmodels.sqlite``.
    db: str | None = None
    #: Run the notary (``gpufleet.notary``): it signs checkpoints of the log every so many events
    #: and seconds, with its key in ``<data dir>/notary``.
    notary: bool = True
    notary_every_events: int = 1000
    notary_every_s: float = 5.0
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    limits: AccountLimits = field(default_factory=AccountLimits)
    topology: Topology = field(default_factory=Topology)
    #: Run this many embedded nats-servers as one JetStream cluster, every stream and bucket with that
    #: many replicas (odd; 1 is the single server). See ``gpufleet.cluster``.
    cluster: int = 1
    #: Serve the web dashboard (``gpufleet.dashboard``) on 127.0.0.1, live with the projections, on
    #: ``dashboard_port`` (None: 8222 if free, else any free port; 0: any free port).
    dashboard: bool = False
    dashboard_port: int | None = None
    #: Also serve ``/metrics`` (Prometheus) on this (host, port) by itself (``up --metrics``); the
    #: dashboard serves the same registry (``LocalNetwork.metrics_registry``) on its own port.
    metrics: tuple[str, int] | None = None


class EmbeddedServer:
    """A nats-server with JetStream that trusts this data directory's operator, and its identities.

    What ``gpufleet up`` runs, on its own: tests and benchmarks use it to run a secured server the
    same way. ``access(role, name)`` gives an identity's credentials (issued once, kept in the data
    directory); ``ensure_streams()`` creates the streams as the network's admin.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_ca: Path | None = None,
        limits: AccountLimits | None = None,
        lock: DataDirLock | None = None,
    ) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        #: The data directory's lock: given (``up`` holds it), or taken by ``start`` and let go by
        #: ``stop``. One server per store: a second one on it is refused while this one runs.
        self._lock = lock
        self._own_lock: DataDirLock | None = None
        self.authority = Authority.open(data_dir / "auth", limits=limits)
        store_dir = data_dir / "nats"
        self.tls_ca = tls_ca
        self.server = NatsServer(
            store_dir,
            port=port,
            host=host,
            config=self.authority.server_config(store_dir / "accounts"),
            tls_cert=tls_cert,
            tls_key=tls_key,
        )

    @property
    def url(self) -> str:
        """The URL clients on this machine use."""
        url = self.server.url
        for anywhere in ("0.0.0.0", "::"):
            url = url.replace(f"//{anywhere}:", "//127.0.0.1:")
        return url

    def start(self) -> EmbeddedServer:
        """Start the server (blocking until it is ready); ``DataDirInUse`` if another process holds the
        data directory."""
        lock = self._lock or self._own_lock
        if lock is None:
            lock = self._own_lock = DataDirLock.acquire(self.data_dir)
        # The server keeps the lock held for as long as it lives, should it ever outlive us.
        self.server.keep_fds = (lock.fd,)
        try:
            self._adopt_open_store()
            self.server.start()
        except BaseException:
            self._let_go()
            raise
        lock.note_servers([self.server.proc.pid if self.server.proc else 0])
        return self

    def _let_go(self) -> None:
        if self._own_lock is not None:
            self._own_lock.release()
            self._own_lock = None

    def _adopt_open_store(self) -> None:
        """A data directory from before identities keeps its log in the open server's global account
        (``$G``); secured, the same streams belong to the hub account. Moving the account's directory
        before the server starts carries the whole log over, untouched (nats-server keeps JetStream
        state per account, in a directory named after it)."""
        js = self.server.store_dir / "jetstream"
        old, new = js / "$G", js / self.authority.account_key(HUB_ACCOUNT)
        if old.is_dir() and not new.exists():
            old.rename(new)
            _log.warning("up.adopted_open_log", moved=str(old), to=str(new))

    def stop(self) -> None:
        """Stop it gracefully."""
        self.server.stop()
        self._let_go()

    def kill(self) -> None:
        """Kill it, as a crash would."""
        self.server.kill()
        self._let_go()

    def access(self, role: str, name: str | None = None) -> Access:
        """How identity ``role``/``name`` reaches this server (credentials issued on first use)."""
        return Access(self.url, self.authority.own_creds(role, name or local_name(role)), self.tls_ca)

    def unrestricted(self) -> Access:
        """The operator's own unrestricted hub user (``Authority.unrestricted_creds``)."""
        return Access(self.url, self.authority.unrestricted_creds(), self.tls_ca)

    async def ensure_streams(self, topology: Topology | None = None) -> Topology:
        """As the network's admin: create or update every stream and bucket."""
        nc = await connect_nats(self.access("admin"), name="gpufleet-admin")
        try:
            return await ensure_topology(nc.jetstream(), topology)
        finally:
            await nc.close()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_free(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class LocalNetwork:
    """Start with :meth:`start`, stop with :meth:`stop` (or use ``async with``)."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.embedded: EmbeddedServer | None = None
        self.cluster: LocalCluster | None = None
        self.url = config.nats_url or ""
        self.tls_ca: Path | None = config.tls_ca
        self.authority: Authority | None = None
        self.orchestrator: Orchestrator | None = None
        self.provider: ProviderRuntime | None = None
        self.projector: Projector | None = None
        self.feed: EventFeed | None = None
        #: Answers quotes from the projector's views (``projections.quote``), when projections run.
        self.quotes: QuoteService | None = None
        self._projector_task: Any = None
        self._store: JetStreamEventStore | None = None
        self._feed_store: JetStreamEventStore | None = None
        self.notary: Notary | None = None
        self._notary_store: JetStreamEventStore | None = None
        self._db: ReadModelStore | None = None
        self._dashboard_db: ReadModelStore | None = None
        #: The web dashboard when it is served (``gpufleet.dashboard.sources.RunningDashboard``).
        self.dashboard: Any = None
        #: The data directory, held from start to stop (``gpufleet.lifecycle.DataDirLock``).
        self._lock: DataDirLock | None = None
        #: This network's Prometheus metrics (``gpufleet.metrics``): its parts register once started.
        self.metrics_registry = MetricsRegistry(process=True)
        self.metrics_server: MetricsServer | None = None

    @property
    def db_path(self) -> Path:
        """The read models' SQLite file."""
        return self.config.data_dir / "readmodels.sqlite"

    @property
    def read_models_db(self) -> str:
        """Where the read models are: the configured ``db`` (a URL or a file), else ``db_path``."""
        return self.config.db or str(self.db_path)

    @property
    def server(self) -> NatsServer | None:
        """The embedded nats-server (None with an existing server)."""
        return self.embedded.server if self.embedded is not None else None

    def access(self, role: str, name: str | None = None) -> Access:
        """How one of this network's identities reaches it (credentials issued on first use)."""
        assert self.authority is not None, "start the network first"
        creds = self.authority.own_creds(role, name or local_name(role))
        return Access(self.url, creds, self.tls_ca)

    def issue(self, role: str, name: str, path: Path, **kw: Any) -> Path:
        """Issue a credential for ``role``/``name`` and write it to ``path`` (0600)."""
        assert self.authority is not None, "start the network first"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.authority.issue(role, name, **kw))
        return path

    async def start(self) -> LocalNetwork:
        """Start every part; on failure, stop what started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        import asyncio

        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # One network per data directory (its store, read models and watermark): a second `up` on it
        # is refused, in one line naming the first one's pid.
        self._lock = DataDirLock.acquire(cfg.data_dir)
        self.authority = Authority.open(cfg.data_dir / "auth", limits=cfg.limits)
        if cfg.nats_url is None and cfg.cluster != 1:
            cfg = self.config = await self._start_cluster(cfg)
        elif cfg.nats_url is None:
            check_store_layout(cfg.data_dir, 1)  # not a cluster's data directory
            previous = _read_info(cfg.data_dir) or {}
            if cfg.port:
                check_port_free(cfg.port, cfg.host)  # asked for: taken is an error, never a silent switch
            port = cfg.port if cfg.port is not None else (int(previous.get("port", 0)) or 4222)
            cert, key = cfg.tls_cert, cfg.tls_key
            if cfg.tls and (cert is None or key is None):
                made = ensure_server_tls(cfg.data_dir / "tls", cfg.tls_hosts)
                cert, key, self.tls_ca = made.cert, made.key, made.ca
            self.embedded = EmbeddedServer(
                cfg.data_dir,
                port=port if port and _port_free(port, cfg.host) else 0,
                host=cfg.host,
                tls_cert=cert if cfg.tls else None,
                tls_key=key if cfg.tls else None,
                tls_ca=self.tls_ca,
                limits=cfg.limits,
                lock=self._lock,
            )
            self.authority = self.embedded.authority
            await asyncio.to_thread(self.embedded.start)
            self.url = self.embedded.url
        else:
            # An existing server: make sure it knows the latest accounts (revocations included).
            await push_accounts(self.url, self.authority, **_tls_kw(self.tls_ca, self.url))
        if self.embedded is not None:
            await self.embedded.ensure_streams(cfg.topology)
        elif self.cluster is not None:
            pass  # created, and current on every node, by ``_start_cluster``
        else:
            await self._ensure_streams()
        orch_config = cfg.orchestrator
        if orch_config.state_dir is None:
            # The watermark lives beside the store it guards, not in it.
            orch_config = dataclasses.replace(orch_config, state_dir=cfg.data_dir)
        self.orchestrator = await Orchestrator.connect(
            self.access("orchestrator"), topology=cfg.topology, config=orch_config
        )
        self._feed_store = await JetStreamEventStore.connect(
            self.access("orchestrator"), settings=cfg.topology.events, name="gpufleet-feed"
        )
        self.feed = EventFeed(self._feed_store)
        await self.feed.start()
        if cfg.notary:
            self._notary_store = await JetStreamEventStore.connect(
                self.access("notary"), settings=cfg.topology.events, name="gpufleet-notary", reads="direct"
            )
            self.notary = Notary(
                self._notary_store,
                cfg.data_dir / "notary",
                every_events=cfg.notary_every_events,
                every_s=cfg.notary_every_s,
                topology=cfg.topology,
            )
            await self.notary.start()
        if cfg.projections:
            self._store = await JetStreamEventStore.connect(
                self.access("orchestrator"), settings=cfg.topology.events, name="gpufleet-projections"
            )
            self._db = open_store(self.read_models_db)
            self.projector = Projector(self._store, self._db, checkpoint_every=1000)
            self.projector.open()
            self._projector_task = asyncio.create_task(self._run_projections(), name="projections")
            self.quotes = QuoteService.over(self.projector, self._store.nc, validate_spec, orch_config.default_verify)
            await self.quotes.start()
        if cfg.provider:
            local = self.access("provider")
            self.provider = ProviderRuntime(
                RuntimeConfig(
                    nats_url=self.url,
                    creds=local.creds,
                    tls_ca=self.tls_ca,
                    name=f"{socket.gethostname()} (local)",
                    backend=cfg.provider_backend,  # type: ignore[arg-type]
                    slots=cfg.provider_slots,
                    price_micros=cfg.provider_price_micros,
                    topology=cfg.topology,
                    accept_code=(
                        (local_name("submitter"),) if cfg.provider_accept_code is None else cfg.provider_accept_code
                    ),
                    unsafe_trusted_code=cfg.provider_unsafe_code,
                    # The network's data (its operator's keys, every identity's credentials) is never
                    # a sandbox's to see, wherever it lies.
                    private_paths=(cfg.data_dir,),
                )
            )
            await self.provider.start()
        register_network(self.metrics_registry, self)
        if cfg.metrics is not None:
            self.metrics_server = await serve_metrics(*cfg.metrics, self.metrics_registry)
        if cfg.dashboard and self.projector is not None:
            await self._start_dashboard()
        info = {
            "url": self.url,
            "pid": os.getpid(),
            "port": self.server.port if self.server else 0,
            "tls_ca": str(self.tls_ca) if self.tls_ca else None,
            # The key readers trust for the log's signed checkpoints (see `gpufleet checkpoint`).
            "notary_key": self.notary.key.vkey if self.notary is not None else None,
        }
        if cfg.projections and is_postgres_url(self.read_models_db):
            # Where `gpufleet jobs` and the like read them; never the password (PGPASSWORD, ~/.pgpass).
            info["db"] = without_password(self.read_models_db)
        if self.cluster is not None:
            info["cluster"] = cluster_info(self.cluster)
        if self.dashboard is not None:
            info["dashboard"] = self.dashboard.url
        if self.metrics_server is not None:
            info["metrics"] = self.metrics_server.url
        # Atomically: whoever looks for the file (a CLI command, a test) never reads half of it.
        tmp = cfg.data_dir / ".network.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, cfg.data_dir / "network.json")

    async def _run_projections(self) -> None:
        """The projector, live. A failed write to the read models (their database restarted, a full
        disk) is logged and the projector starts again from what the store committed, after a pause
        that grows to 10 s; anything else stops it, logged, never silently."""
        import asyncio
        import sqlite3

        from projections.storage import ReadModelError

        projector = self.projector
        assert projector is not None
        pause = 0.25
        while True:
            try:
                await projector.run()
                return
            except (ReadModelError, sqlite3.Error) as e:
                _log.error("projections.write_failed", error=str(e), retry_in_s=pause)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # stopping (``stop``): not again
            except Exception as e:
                _log.error("projections.stopped", error=f"{type(e).__name__}: {e}")
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
            with contextlib.suppress(ReadModelError, sqlite3.Error):  # still down: run() says so again
                projector.recover()

    async def _start_dashboard(self) -> None:
        """Serve the dashboard over the projector's read models, pushed on each of its commits; the
        audit page verifies the notary's signed checkpoints as an auditor would."""
        from gpufleet.dashboard.sources import CheckpointProbe, start_dashboard
        from projections.query import ReadModels

        assert self.projector is not None and self._db is not None
        probe = None
        if self.notary is not None:
            probe = CheckpointProbe(self.access("auditor", "dashboard"), self.notary.key)
        # Its own read-only connection: page loads never queue behind the projector's writes (SQLite's
        # WAL lets readers read while it writes; PostgreSQL serves the two sessions side by side).
        self._dashboard_db = open_store(self.read_models_db, readonly=True)
        self.dashboard = await start_dashboard(
            self.projector,
            ReadModels(self._dashboard_db),
            port=self.config.dashboard_port,
            checkpoints=probe,
            metrics_registry=getattr(self, "metrics_registry", None),
            # Live progress is published in the edge account: an auditor there hears it for the page.
            live=self.access("auditor", "dashboard"),
        )

    async def _start_cluster(self, cfg: NetworkConfig) -> NetworkConfig:
        """Start ``cfg.cluster`` nodes, wait for the meta-leader, create every stream and bucket with
        that many replicas and wait until they are current; the config with that topology."""
        import asyncio

        size = check_cluster_size(cfg.cluster)
        check_store_layout(cfg.data_dir, size)
        if cfg.tls:
            raise ClusterError("--cluster runs on this machine only: it does not serve TLS (leave out --tls)")
        previous = (_read_info(cfg.data_dir) or {}).get("cluster") or []
        if cfg.port is not None:
            ports = [cfg.port + i if cfg.port else 0 for i in range(size)]
            for p in ports:
                if p:
                    check_port_free(p, cfg.host)  # asked for: taken is an error, never a silent switch
        elif len(previous) == size:
            ports = [int(n.get("port", 0)) for n in previous]
        else:
            ports = [4222 + i for i in range(size)]
        self.cluster = LocalCluster(cfg.data_dir, size, host=cfg.host, ports=ports, limits=cfg.limits, lock=self._lock)
        self.authority = self.cluster.authority
        await asyncio.to_thread(self.cluster.start)
        self.url = self.cluster.url
        events = dataclasses.replace(cfg.topology.events, replicas=size)
        cfg = dataclasses.replace(cfg, topology=dataclasses.replace(cfg.topology, events=events, replicas=size))
        await self.cluster.ensure_streams(cfg.topology)
        return cfg

    async def _ensure_streams(self) -> None:
        """As the network's admin: create or update every stream and bucket."""
        nc = await connect_nats(self.access("admin"), name="gpufleet-admin")
        try:
            await ensure_topology(nc.jetstream(), self.config.topology)
        finally:
            await nc.close()

    async def revoke(self, role: str, name: str) -> list[str]:
        """Revoke an identity's credentials now: the server disconnects it and refuses it from then on."""
        assert self.authority is not None, "start the network first"
        revoked = self.authority.revoke(role, name)
        await push_accounts(self.url, self.authority, **_tls_kw(self.tls_ca, self.url))
        return revoked

    async def stop(self) -> None:
        """Stop everything, last started first; the log keeps all state for the next ``up``."""
        import asyncio

        if self.metrics_server is not None:
            await self.metrics_server.close()
            self.metrics_server = None
        if self.dashboard is not None:
            with contextlib.suppress(Exception):
                await self.dashboard.stop()
            self.dashboard = None
        if self._dashboard_db is not None:
            self._dashboard_db.close()
            self._dashboard_db = None
        if self.provider is not None:
            with contextlib.suppress(Exception):
                await self.provider.close()
            self.provider = None
        if self.quotes is not None:
            await self.quotes.stop()
            self.quotes = None
        if self._projector_task is not None:
            # Again until done (events.aio); seldom, so that the projector's last flush can end first.
            await cancel_and_wait([self._projector_task], every_s=5.0)
            self._projector_task = None
        if self.notary is not None:
            with contextlib.suppress(Exception):
                await self.notary.stop()
            self.notary = None
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
        for store in (self._store, self._feed_store, self._notary_store):
            if store is not None:
                with contextlib.suppress(Exception):
                    await store.close()
        self._store = self._feed_store = self._notary_store = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.orchestrator is not None:
            await self.orchestrator.close()
            self.orchestrator = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
            self.cluster = None
        with contextlib.suppress(OSError):
            info = _read_info(self.config.data_dir)
            if info and info.get("pid") == os.getpid():
                (self.config.data_dir / "network.json").unlink()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def __aenter__(self) -> LocalNetwork:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _tls_kw(ca: Path | None, url: str) -> dict[str, Any]:
    if ca is None and not url.startswith("tls://"):
        return {}
    import ssl

    try:
        return {"tls": ssl.create_default_context(cafile=str(ca) if ca else None)}
    except (OSError, ssl.SSLError) as e:
        raise StoreUnavailable(f"cannot use the CA file {ca}: {e}") from e
