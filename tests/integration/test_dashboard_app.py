"""The dashboard app against real read models: a real log (the recorded golden history) folded by a
real Projector into a real SQLite store; the live stream served by a real uvicorn over TCP.

- every page renders what the read models hold; a job nobody has is a 404;
- strangers' text (a rejection reason, a provider's name) reaches the page escaped, never as markup;
- the app is read-only and answers only this machine's host names;
- a change committed to the read models is PUSHED on the open event stream (the stream reads nothing
  without the projector's commit notification).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from events import Envelope, MemoryEventStore, new_envelope
from events.job import JobRejected, JobSubmitted
from events.provider import ProviderRegistered
from gpufleet.dashboard import Changes, DashboardError, DashboardServer, Source, create_app
from projections import Projector, SqliteStore
from projections.query import ReadModels
from tests.golden.history import read_log

XSS_REASON = "<script>window.__pwned=1</script>"
XSS_FIELD = '"><img src=x onerror=alert(1)>'
XSS_NAME = "<b onmouseover=alert(2)>evil</b>"


def _strangers(log: list[Envelope]) -> list[Envelope]:
    """A submission refused with a reason full of markup, and a provider whose name is markup."""
    sub = next(e for e in log if isinstance(e.data, JobSubmitted))
    assert isinstance(sub.data, JobSubmitted)
    spec = sub.data.spec.model_copy(update={"submitter": "mallory"})
    job = sub.data.model_copy(update={"job_id": "mallory.x1", "spec": spec})
    reg = next(e for e in log if isinstance(e.data, ProviderRegistered))
    assert isinstance(reg.data, ProviderRegistered)
    prov = reg.data.model_copy(update={"provider_id": "evil-1", "name": XSS_NAME})
    rejected = JobRejected(at=sub.data.at, job_id="mallory.x1", reason=XSS_REASON, field=XSS_FIELD)
    return [
        new_envelope("job.mallory.x1", job, id="xss-1", source="tests"),
        new_envelope("job.mallory.x1", rejected, id="xss-2", source="tests"),
        new_envelope("provider.evil-1", prov, id="xss-3", source="tests"),
    ]


async def _append(store: MemoryEventStore, envs: list[Envelope]) -> None:
    for env in envs:
        await store.append(env.subject, [env], expected=None)


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden history and the strangers' events, projected into SQLite."""
    path = tmp_path_factory.mktemp("dash") / "readmodels.sqlite"
    log = read_log()

    async def build() -> None:
        store = MemoryEventStore()
        await _append(store, [*log, *_strangers(log)])
        db = SqliteStore(path)
        await Projector(store, db).catch_up()
        db.close()

    asyncio.run(build())
    return path


class Client:
    """Requests to the app in this process (httpx's ASGI transport), as a browser would send them."""

    def __init__(self, app: object) -> None:
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")  # type: ignore[arg-type]

    def request(self, method: str, path: str, **kw: object) -> httpx.Response:
        return asyncio.run(self.http.request(method, path, **kw))  # type: ignore[arg-type]

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.request("GET", path, **kw)


@pytest.fixture
def client(db_path: Path) -> Iterator[Client]:
    models = ReadModels.open(db_path)
    yield Client(create_app(Source(models, Changes(), who="auditor test"), allowed_hosts=["testserver"]))
    models.close()


def test_every_page_renders_what_the_read_models_hold(client: Client) -> None:
    pages = {
        "/": ["alice.st", "bob.batch", "dave.verified", "Refused submissions", 'class="bar'],
        "/jobs/dave.verified": ["dave.verified.0", "replica", "Bill", "sha256"],
        "/jobs/bob.retry": ["bob.retry.0", "#"],
        "/fleet": ["rt-a", "montecarlo", "reputation", "GPU-ms"],
        "/ledger": ["submitter:alice", "escrow:", "the books balance", "ProviderCredited"],
        "/audit": ["hash chain over the log", "last checkpoint in the log", "Quarantined events"],
        "/charts": ['<svg class="chart"', "<polyline", "<circle", "ETA error over"],
    }
    for path, expected in pages.items():
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        for text in expected:
            assert text in r.text, (path, text)
        assert 'id="live" data-stream="/events?view=' in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
    # A refusal's reason that names its field already shows the field once (alice.oops: "body: ...").
    jobs_page = re.sub(r"<[^>]+>", "", client.get("/").text)  # as the page reads
    assert "body is not valid JSON" in jobs_page and "body: body:" not in jobs_page
    missing = client.get("/jobs/nobody.nothing")
    assert missing.status_code == 404 and "No job nobody.nothing" in missing.text
    frag = client.get("/fragment/fleet")
    assert frag.status_code == 200 and "<html" not in frag.text and "rt-a" in frag.text
    assert client.get("/fragment/nope").status_code == 404
    assert client.get("/static/dashboard.js").status_code == 200


def test_strangers_text_is_escaped_everywhere(client: Client) -> None:
    for path in ("/", "/jobs/mallory.x1", "/fleet", "/fragment/jobs"):
        html = client.get(path).text
        for raw in (XSS_REASON, XSS_FIELD, XSS_NAME, "<script>window", "<img src=x", "<b onmouseover"):
            assert raw not in html, (path, raw)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in client.get("/jobs/mallory.x1").text
    assert "&lt;b onmouseover=alert(2)&gt;evil&lt;/b&gt;" in client.get("/fleet").text
    # The only scripts a page loads are this origin's file; none is inline.
    page = client.get("/").text
    assert page.count("<script") == 1 and '<script src="/static/dashboard.js" defer></script>' in page


def test_read_only_and_local_hosts_only(client: Client) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/jobs/alice.st", "/events", "/fragment/jobs"):
            assert client.request(method, path).status_code == 405, (method, path)
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400


@dataclass
class Live:
    store: MemoryEventStore
    projector: Projector
    server: DashboardServer
    rest: list[Envelope]


@pytest_asyncio.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    log = read_log()
    cut = next(i for i, e in enumerate(log) if e.subject == "job.dave.verified")
    store = MemoryEventStore()
    await _append(store, log[:cut])
    db = SqliteStore(tmp_path / "live.sqlite")
    changes = Changes()
    projector = Projector(store, db, on_commit=changes.notify)
    await projector.catch_up()
    server = DashboardServer(create_app(Source(ReadModels(db), changes)), changes, port=0)
    await server.start()
    try:
        yield Live(store, projector, server, log[cut:])
    finally:
        await server.stop()
        db.close()


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent ``fragment`` event."""
    name, data = "", []
    async for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line == "":
            if name == "fragment":
                yield "\n".join(data)
            name, data = "", []


async def test_a_commit_is_pushed_on_the_open_stream(live: Live) -> None:
    url = live.server.url + "events?view=jobs"
    async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        fragments = _events(r.aiter_lines())
        first = await asyncio.wait_for(anext(fragments), 10)
        assert "alice.st" in first and "dave.verified" not in first
        await _append(live.store, live.rest)
        await live.projector.catch_up()  # folds and commits: on_commit notifies the stream
        pushed = await asyncio.wait_for(anext(fragments), 10)
        assert "dave.verified" in pushed and pushed != first


async def test_stopping_the_server_ends_open_streams(live: Live) -> None:
    url = live.server.url + "events?view=fleet"
    async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url) as r:
        fragments = _events(r.aiter_lines())
        assert "rt-a" in await asyncio.wait_for(anext(fragments), 10)
        await asyncio.wait_for(live.server.stop(), 10)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(fragments), 10)


async def test_an_asked_port_that_is_taken_is_an_error_never_a_switch() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        changes = Changes()
        server = DashboardServer(create_app(Source(ReadModels(SqliteStore(":memory:")), changes)), changes, port=port)
        with pytest.raises(DashboardError, match=f"cannot serve the dashboard on 127.0.0.1:{port}"):
            await server.start()


async def test_the_server_turns_nagle_off_on_every_connection(live: Live) -> None:
    """With Nagle's algorithm on, a response's last small write waits for the browser's delayed ACK:
    every request took ~44 ms here (bench/dashboard.py) instead of ~2. asyncio sets TCP_NODELAY only
    on sockets that declare IPPROTO_TCP; the dashboard binds its own socket, so it must declare it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live.server.port)
    try:
        writer.write(b"GET /static/dashboard.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        server = live.server._server
        assert server is not None
        accepted = [c.transport.get_extra_info("socket") for c in server.server_state.connections]
        assert accepted, "the server holds no connection"
        for sock in accepted:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "Nagle is on for a dashboard connection"
    finally:
        writer.close()
        await writer.wait_closed()
