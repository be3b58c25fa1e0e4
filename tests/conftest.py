"""Shared fixtures: a real nats-server per session (and per test where a test restarts it)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from events.store import JetStreamEventStore, MemoryEventStore, StreamSettings
from gpufleet.natsserver import NatsServer

_counter = itertools.count(1)


def unique(prefix: str = "t") -> str:
    """A name no other test in this session uses."""
    return f"{prefix}{os.getpid()}x{next(_counter)}"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream for the session, on a free port, with its own store."""
    server = NatsServer(tmp_path_factory.mktemp("nats-session"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server for one test, which the test may stop, kill and restart."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.kill()


def isolated_settings() -> StreamSettings:
    """Stream settings of a stream no other test touches, on the shared server."""
    name = unique("EV")
    return StreamSettings(name=name.upper(), prefix=f"{name.lower()}.ev")


@pytest.fixture(params=["memory", "jetstream"])
async def store(request: pytest.FixtureRequest, nats_server: NatsServer) -> AsyncIterator[object]:
    """Each EventStore implementation in turn: the contract suite runs against both."""
    if request.param == "memory":
        mem = MemoryEventStore()
        yield mem
        await mem.close()
    else:
        js = await JetStreamEventStore.connect(nats_server.url, settings=isolated_settings())
        yield js
        await js.close()


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    """Tests log at warning and above; ``structlog.testing.capture_logs`` still sees everything."""
    from gpufleet.logging import configure_logging

    configure_logging("console", "warning")
