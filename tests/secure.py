"""A real nats-server secured the way ``gpufleet up`` secures it, for tests: operator, accounts, roles.

Every test that talks to NATS does so through one of these: with the credentials of the role it plays
(an orchestrator, a provider, a submitter, an auditor, the admin). Storage-level tests that exercise
JetStream itself with streams of their own use :meth:`SecureServer.superuser`, the operator's own
unrestricted hub user (``Authority.unrestricted_creds``): only the holder of the account key can make
one, and the network never hands one out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.store.connection import Access, connect_nats
from events.store.topology import Topology
from gpufleet.auth import AccountLimits, Authority
from gpufleet.network import EmbeddedServer

__all__ = ["SecureServer"]


@dataclass
class SecureServer:
    """One secured nats-server with its own store and its own operator, on a free port."""

    root: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: Storage tests make thousands of throwaway streams; the network's own default is much smaller.
    limits: AccountLimits = field(default_factory=lambda: AccountLimits(streams=100_000, consumers=100_000))
    embedded: EmbeddedServer = field(init=False)

    def __post_init__(self) -> None:
        self.embedded = EmbeddedServer(
            self.root, tls_cert=self.tls_cert, tls_key=self.tls_key, tls_ca=self.tls_ca, limits=self.limits
        )

    @property
    def authority(self) -> Authority:
        return self.embedded.authority

    @property
    def server(self) -> Any:
        return self.embedded.server

    @property
    def url(self) -> str:
        """The client URL."""
        return self.embedded.url

    @property
    def port(self) -> int:
        return int(self.server.port)

    @property
    def store_dir(self) -> Path:
        return Path(self.server.store_dir)

    @property
    def running(self) -> bool:
        return bool(self.server.running)

    @property
    def proc(self) -> Any:
        """The nats-server process (to signal it)."""
        return self.server.proc

    def start(self) -> SecureServer:
        self.embedded.start()
        return self

    def stop(self) -> None:
        self.embedded.stop()

    def kill(self) -> None:
        self.embedded.kill()

    def access(self, role: str, name: str | None = None) -> Access:
        """Credentials of ``role`` named ``name`` (default: the role), issued once and kept."""
        return self.embedded.access(role, name or role)

    def creds(self, role: str, name: str, path: Path, **kw: Any) -> Path:
        """Issue a fresh credential into ``path``."""
        path.write_text(self.authority.issue(role, name, **kw))
        return path

    def superuser(self) -> Access:
        """An unrestricted user of the hub account (storage tests only; see the module docstring)."""
        return self.embedded.unrestricted()

    async def ensure_topology(self, topology: Topology | None = None) -> Topology:
        """Create the streams and buckets, as the network's admin does."""
        return await self.embedded.ensure_streams(topology)

    @contextlib.asynccontextmanager
    async def connection(self, role: str, name: str | None = None) -> AsyncIterator[Any]:
        """A NATS connection as ``role``/``name``, closed afterwards."""
        nc = await connect_nats(self.access(role, name), name=f"test-{role}")
        try:
            yield nc
        finally:
            await nc.close()
