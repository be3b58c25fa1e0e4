"""Shared fixtures: a real, secured nats-server per session (and per test where a test restarts it).

Both run as ``gpufleet up`` runs its server: decentralized JWT auth, the hub and edge accounts, and
the network's streams created by its admin. Tests connect with the credentials of the role they play.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from events.store import JetStreamEventStore, MemoryEventStore, StreamSettings
from tests.pg import MISSING as PG_MISSING
from tests.pg import PgServer, pg_bin
from tests.secure import SecureServer

_counter = itertools.count(1)


def unique(prefix: str = "t") -> str:
    """A name no other test in this session uses."""
    return f"{prefix}{os.getpid()}x{next(_counter)}"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    """One secured nats-server with JetStream for the session, with the network's streams."""
    server = SecureServer(tmp_path_factory.mktemp("nats-session")).start()
    asyncio.run(server.ensure_topology())
    yield server
    server.stop()


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[SecureServer]:
    """A secured nats-server for one test, with the network's streams; the test may stop, kill, restart it."""
    server = SecureServer(tmp_path / "net").start()
    asyncio.run(server.ensure_topology())
    yield server
    server.kill()


def isolated_settings() -> StreamSettings:
    """Stream settings of a stream no other test touches, on the shared server."""
    name = unique("EV")
    return StreamSettings(name=name.upper(), prefix=f"{name.lower()}.ev")


@pytest.fixture(params=["memory", "jetstream"])
async def store(request: pytest.FixtureRequest, nats_server: SecureServer) -> AsyncIterator[object]:
    """Each EventStore implementation in turn: the contract suite runs against both."""
    if request.param == "memory":
        mem = MemoryEventStore()
        yield mem
        await mem.close()
    else:
        js = await JetStreamEventStore.connect(nats_server.superuser(), settings=isolated_settings(), create=True)
        yield js
        await js.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (``tests.pg``); skipped where none is installed."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(PG_MISSING)
    server = PgServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    """Tests log at warning and above; ``structlog.testing.capture_logs`` still sees everything."""
    from gpufleet.logging import configure_logging

    configure_logging("console", "warning")
