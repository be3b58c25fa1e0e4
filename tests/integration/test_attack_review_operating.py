"""Attack review of the dashboard and the PostgreSQL read models (issue 15), on real servers.

- The dashboard took every connection it was offered, each live stream held for as long as the
  client liked: whoever reaches 127.0.0.1 could open them until the process ran out of descriptors.
- ``gpufleet up --db postgresql://...``: when PostgreSQL restarted, the projector's next write
  failed and its task ended, and nothing noticed; the network ran on with read models (``gpufleet
  jobs``, the dashboard) frozen at that moment.
- While the read models could not be read (PostgreSQL down), every page was a 500 and every live
  stream died with a traceback in the operator's log, again each time the browser reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gpufleet import Client
from gpufleet.dashboard import Changes, DashboardServer, Source, create_app
from gpufleet.dashboard import serve as dashboard_serve
from gpufleet.network import LocalNetwork, NetworkConfig
from projections import SqliteStore
from projections.query import ReadModels
from tests.conftest import unique
from tests.pg import MISSING as PG_MISSING
from tests.pg import PgServer, pg_bin


async def test_the_dashboard_caps_its_open_connections(tmp_path: Path) -> None:
    cap = getattr(dashboard_serve, "MAX_CONNECTIONS", 64)
    db = SqliteStore(tmp_path / "rm.sqlite")
    changes = Changes()
    server = DashboardServer(create_app(Source(ReadModels(db), changes)), changes, port=0)
    url = await server.start()
    limits = httpx.Limits(max_connections=cap + 10, max_keepalive_connections=0)
    try:
        async with (
            httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http,
            contextlib.AsyncExitStack() as held,
        ):

            async def open_stream() -> int:
                r = await held.enter_async_context(http.stream("GET", "/events?view=jobs"))
                return r.status_code

            statuses = [await open_stream() for _ in range(cap)]
            assert statuses == [200] * cap  # every stream up to the cap is served
            over = await open_stream()
            assert over == 503, f"stream {cap + 1} was served too: nothing bounds the connections"
    finally:
        await server.stop()
        db.close()


@pytest.fixture
async def own_pg() -> AsyncIterator[PgServer]:
    """A PostgreSQL server of this test's own: it is restarted under a running network."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(PG_MISSING)
    server = await asyncio.to_thread(PgServer(bin_dir).start)
    try:
        yield server
    finally:
        if server.dir.exists():  # not stopped by the test itself
            await asyncio.to_thread(server.stop)


async def _until_job(db: str, job_id: str, attempts: int = 600) -> bool:
    models = ReadModels.open(db)
    try:
        for _ in range(attempts):
            with contextlib.suppress(Exception):  # a refused read while PostgreSQL comes back
                if await models.get_job(job_id) is not None:
                    return True
            await asyncio.sleep(0.1)
        return False
    finally:
        models.close()


async def test_up_follows_on_after_postgres_restarts(own_pg: PgServer, tmp_path: Path) -> None:
    db = f"{own_pg.url}?schema={unique('restart')}"
    config = NetworkConfig(data_dir=tmp_path / "net", port=0, provider=False, notary=False, db=db)
    net = await LocalNetwork(config).start()
    try:
        access = net.access("submitter", "alice")
        alice = await Client.connect(access.url, creds=access.creds)
        try:
            spec = {"workload": "sleep", "params": {"seconds": 0.1, "steps": 1}}
            first = await alice.submit(spec)
            assert await _until_job(db, first.id)
            await asyncio.to_thread(own_pg.restart)  # every connection drops; the data stays
            second = await alice.submit(spec)
            assert await _until_job(db, second.id), "the read models froze when PostgreSQL restarted"
        finally:
            await alice.close()
    finally:
        await net.stop()


async def test_the_dashboard_says_so_in_one_line_while_postgres_is_down(own_pg: PgServer) -> None:
    from projections.storage import open_store

    db = open_store(f"{own_pg.url}?schema={unique('down')}")
    changes = Changes()
    server = DashboardServer(create_app(Source(ReadModels(db), changes)), changes, port=0)
    url = await server.start()
    try:
        await asyncio.to_thread(own_pg.stop)  # gone, as a crashed database server is
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for path in ("/", "/fragment/ledger"):
                r = await http.get(path)
                assert r.status_code == 503, (path, r.status_code, r.text[:200])
                assert r.text.count("\n") == 1 and "Traceback" not in r.text and "read models" in r.text
            async with http.stream("GET", "/events?view=jobs") as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                got = [await anext(lines) for _ in range(3)]  # retry, blank, then a comment: the stream stays
                assert got[2].startswith(": read models"), got
    finally:
        await server.stop()
        db.close()
