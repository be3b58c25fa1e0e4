"""A real nats-server secured the way ``gpufleet up`` secures it, for tests: operator, accounts, roles.

Every test that talks to NATS does so through one of these: with the credentials of the role it plays
(an orchestrator, a provider, a submitter, an auditor, the admin). Storage-level tests that exercise
JetStream itself with streams of their own use :meth:`SecureServer.superuser`: a user of the hub
account signed with the account's own key and no template. Only the operator, who holds that key, can
mint one; the network never hands one out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.store.connection import Access, connect_nats
from events.store.topology import Topology, ensure_topology
from gpufleet.auth import AccountLimits, Authority
from gpufleet.auth.jwt import creds_text, encode, key_from_seed, new_key, public_key
from gpufleet.auth.roles import HUB_ACCOUNT
from gpufleet.natsserver import NatsServer

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
    authority: Authority = field(init=False)
    server: NatsServer = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.authority = Authority.open(self.root / "auth", limits=self.limits)
        store = self.root / "nats"
        self.server = NatsServer(
            store,
            config=self.authority.server_config(store / "accounts"),
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
        )

    # the NatsServer surface tests use
    @property
    def url(self) -> str:
        """The client URL."""
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def store_dir(self) -> Path:
        return self.server.store_dir

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def proc(self) -> Any:
        """The nats-server process (to signal it)."""
        return self.server.proc

    def start(self) -> SecureServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def kill(self) -> None:
        self.server.kill()

    # identities
    def access(self, role: str, name: str | None = None) -> Access:
        """Credentials of ``role`` named ``name`` (default: the role), issued once and kept."""
        return Access(self.url, self.authority.own_creds(role, name or role), self.tls_ca)

    def creds(self, role: str, name: str, path: Path, **kw: Any) -> Path:
        """Issue a fresh credential into ``path``."""
        path.write_text(self.authority.issue(role, name, **kw))
        return path

    def superuser(self) -> Access:
        """An unrestricted user of the hub account (storage tests only; see the module docstring)."""
        path = self.root / "auth" / "creds" / "superuser.creds"
        if not path.exists():
            acc = key_from_seed((self.root / "auth" / f"account-{HUB_ACCOUNT}.nk").read_text().strip())
            user = new_key("user")
            nats = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
            jwt = encode({"name": "test-superuser", "sub": public_key(user), "nats": nats}, acc)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(creds_text(jwt, user.seed))
        return Access(self.url, path, self.tls_ca)

    async def ensure_topology(self, topology: Topology | None = None) -> Topology:
        """Create the streams and buckets, as the network's admin does."""
        nc = await connect_nats(self.access("admin"), name="test-admin")
        try:
            return await ensure_topology(nc.jetstream(), topology)
        finally:
            await nc.close()

    @contextlib.asynccontextmanager
    async def connection(self, role: str, name: str | None = None) -> AsyncIterator[Any]:
        """A NATS connection as ``role``/``name``, closed afterwards."""
        nc = await connect_nats(self.access(role, name), name=f"test-{role}")
        try:
            yield nc
        finally:
            await nc.close()
