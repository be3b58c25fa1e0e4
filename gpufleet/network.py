"""``gpufleet up``: a whole network on this machine, or this machine's part of a remote one.

It runs an embedded ``nats-server`` with JetStream (unless ``nats_url`` names an existing server or
cluster), the orchestrator, the projections (read models in SQLite, live) and one local provider
runtime (CuPy when a GPU is present, NumPy otherwise). Everything keeps its state in the log, so a
later ``up`` on the same data directory resumes where the last one stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events.store import JetStreamEventStore
from gpu_runtime.service import ProviderRuntime, RuntimeConfig
from gpufleet.natsserver import NatsServer
from projections.projector import Projector
from projections.storage import SqliteStore

__all__ = ["DEFAULT_DATA_DIR", "LocalNetwork", "NetworkConfig", "discover_url", "local_provider_id"]

DEFAULT_DATA_DIR = Path(os.environ.get("GPUFLEET_HOME", Path.home() / ".gpufleet"))
DEFAULT_URL = "nats://127.0.0.1:4222"
_log = structlog.get_logger("gpufleet.up")


def local_provider_id() -> str:
    """A stable id for this machine's provider, so that a restart is recognised as the same one."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:48]
    return f"local-{host or 'machine'}"


def discover_url(data_dir: Path | None = None) -> str:
    """Where the network is: ``$GPUFLEET_NATS_URL``, else the one ``gpufleet up`` runs, else the default."""
    env = os.environ.get("GPUFLEET_NATS_URL")
    if env:
        return env
    info = _read_info(data_dir or DEFAULT_DATA_DIR)
    if info and _alive(int(info.get("pid", 0))):
        return str(info["url"])
    return DEFAULT_URL


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


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class NetworkConfig:
    """What ``up`` runs."""

    data_dir: Path = DEFAULT_DATA_DIR
    #: An existing server or cluster; None runs an embedded nats-server in ``data_dir``.
    nats_url: str | None = None
    #: The embedded server's port: None tries 4222 (or the last one used), 0 takes any free port.
    port: int | None = None
    provider: bool = True
    provider_backend: str = "auto"
    provider_slots: int | None = None
    #: The local provider's price, micro-credits per GPU-second.
    provider_price_micros: int = 0
    projections: bool = True
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)


class LocalNetwork:
    """Start with :meth:`start`, stop with :meth:`stop` (or use ``async with``)."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.server: NatsServer | None = None
        self.url = config.nats_url or ""
        self.orchestrator: Orchestrator | None = None
        self.provider: ProviderRuntime | None = None
        self.projector: Projector | None = None
        self._projector_task: Any = None
        self._store: JetStreamEventStore | None = None
        self._db: SqliteStore | None = None

    @property
    def db_path(self) -> Path:
        """The read models' SQLite file."""
        return self.config.data_dir / "readmodels.sqlite"

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
        if cfg.nats_url is None:
            previous = _read_info(cfg.data_dir) or {}
            port = cfg.port if cfg.port is not None else (int(previous.get("port", 0)) or 4222)
            self.server = NatsServer(cfg.data_dir / "nats", port=port if port and _port_free(port) else 0)
            await asyncio.to_thread(self.server.start)
            self.url = self.server.url
        self.orchestrator = await Orchestrator.connect(self.url, config=cfg.orchestrator)
        if cfg.projections:
            self._store = await JetStreamEventStore.connect(self.url, name="gpufleet-projections")
            self._db = SqliteStore(str(self.db_path))
            self.projector = Projector(self._store, self._db, checkpoint_every=1000)
            self.projector.open()
            self._projector_task = asyncio.create_task(self.projector.run(), name="projections")
        if cfg.provider:
            self.provider = ProviderRuntime(
                RuntimeConfig(
                    nats_url=self.url,
                    provider_id=local_provider_id(),
                    name=f"{socket.gethostname()} (local)",
                    backend=cfg.provider_backend,  # type: ignore[arg-type]
                    slots=cfg.provider_slots,
                    price_micros=cfg.provider_price_micros,
                )
            )
            await self.provider.start()
        info = {"url": self.url, "pid": os.getpid(), "port": self.server.port if self.server else 0}
        (cfg.data_dir / "network.json").write_text(json.dumps(info))

    async def stop(self) -> None:
        """Stop everything, last started first; the log keeps all state for the next ``up``."""
        import asyncio

        if self.provider is not None:
            with contextlib.suppress(Exception):
                await self.provider.close()
            self.provider = None
        if self._projector_task is not None:
            self._projector_task.cancel()
            with contextlib.suppress(BaseException):
                await self._projector_task
            self._projector_task = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.orchestrator is not None:
            await self.orchestrator.close()
            self.orchestrator = None
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None
        with contextlib.suppress(OSError):
            info = _read_info(self.config.data_dir)
            if info and info.get("pid") == os.getpid():
                (self.config.data_dir / "network.json").unlink()

    async def __aenter__(self) -> LocalNetwork:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
