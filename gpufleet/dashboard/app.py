"""The dashboard's ASGI app: server-rendered pages, and their live part pushed as server-sent events.

Every page has one live fragment. The page renders it once; its script opens ``/events`` for that
fragment, and the server sends the fragment again, rendered, each time the read models commit (the
``Changes`` a projector's ``on_commit`` notifies) and it differs from what was sent last. The
browser only swaps it in: nothing polls, on either side. Without a change, a comment line keeps the
stream open. (So an ETA on the page is as of the last commit; work in progress commits often.) Live
progress (``gpufleet.dashboard.live``), never in the read models, is laid over them and wakes the
pages too.

Everything a stranger wrote (job and task ids, reasons, names, results) is escaped by Jinja2's
autoescaping; the charts escape their own labels. The app answers only GET (and HEAD): it changes
nothing anywhere.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import structlog
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpufleet.dashboard import charts
from gpufleet.dashboard.data import audit_data, chart_data, fleet_data, job_data, jobs_data, ledger_data
from gpufleet.dashboard.live import LiveProgressCache
from gpufleet.dashboard.notify import Changes
from projections.query import ReadModels
from projections.storage import ReadModelError

__all__ = ["LOCAL_HOSTS", "VIEWS", "SignedCheckpoint", "Source", "create_app"]

HERE = Path(__file__).parent
#: The Host headers the app answers by default: this machine's names (no DNS rebinding from a web page).
LOCAL_HOSTS = ("127.0.0.1", "localhost")
#: The live fragments, by name: (template, title).
VIEWS: dict[str, tuple[str, str]] = {
    "jobs": ("_jobs.html", "Jobs"),
    "job": ("_job.html", "Job"),
    "fleet": ("_fleet.html", "Fleet"),
    "ledger": ("_ledger.html", "Ledger"),
    "audit": ("_audit.html", "Audit"),
    "charts": ("_charts.html", "Charts"),
}
#: A fragment is sent at most this often per stream (commits come every 50 ms under load).
MIN_PUSH_INTERVAL_S = 0.2
#: Without a change, every stream gets a comment line this often (proxies keep it open).
KEEPALIVE_S = 15.0
#: Renderings kept for sharing between streams (pages of many jobs: the oldest are forgotten together).
MAX_SHARED = 256
#: What cannot be read from the read models' database (PostgreSQL down, say): a page answers 503.
UNREADABLE = (ReadModelError, sqlite3.Error)
UNAVAILABLE = "the read models cannot be read now (their database is down?); this page tries again\n"
_log = structlog.get_logger("gpufleet.dashboard")


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """The log's latest signed checkpoint, as a reader verified it (or why it could not)."""

    size: int = 0
    root: str = ""
    key: str = ""
    verified_at: float = 0.0
    error: str = ""


@dataclass
class Source:
    """What one dashboard shows: read models kept live by a projector, and who is looking.

    ``submitter``: show only this submitter's jobs (a submitter's dashboard). ``fleet``: whether this
    identity may see the providers. ``checkpoint``: how to get the latest signed checkpoint, verified
    (None: no trusted notary key).
    """

    models: ReadModels
    changes: Changes
    who: str = "operator"
    submitter: str | None = None
    fleet: bool = True
    checkpoint: Callable[[], Awaitable[SignedCheckpoint]] | None = None
    #: Live progress, laid over the read models where they show progress (None: none).
    live: LiveProgressCache | None = None


class _Headers:
    """Security headers on every answer: a strict CSP (scripts and styles from this origin only)."""

    HEADERS = (
        (
            b"content-security-policy",
            b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                names = {k.lower() for k, _ in message["headers"]}
                message["headers"] = [*message["headers"], *(h for h in self.HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, sending)


def _credits(micros: int | float | None) -> str:
    return f"{(micros or 0) / 1e6:.6f}"


def _pct(value: float | None) -> str:
    return f"{(value or 0.0):.0%}"


def _when(text: str | None) -> str:
    """An ISO instant as ``HH:MM:SS`` (UTC), the date too when it is not today."""
    if not text:
        return ""
    day, _, rest = text.partition("T")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    clock = rest[:8]
    return clock if day == today else f"{day} {clock}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(credits=_credits, pct=_pct, when=_when)
    env.globals.update(bar=charts.bar)
    return env


class Dashboard:
    """Renders pages and fragments for one ``Source``."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.env = _environment()
        #: The last rendering of each (view, job) and the change it shows: streams of one page share it.
        self._rendered: dict[tuple[str, str], tuple[int, str]] = {}
        self._rendering: dict[tuple[str, str], asyncio.Lock] = {}

    async def context(self, view: str, job: str) -> dict[str, Any]:
        """What the fragment ``view`` shows now."""
        s = self.source
        models = s.models
        now = time.time()
        ctx: dict[str, Any] = {"who": s.who, "fleet_visible": s.fleet, "now": now}
        if view == "jobs":
            jobs = await asyncio.to_thread(jobs_data, models.db, now, s.submitter)
            ctx["data"] = s.live.jobs(jobs) if s.live is not None else jobs
        elif view == "job":
            detail = await asyncio.to_thread(job_data, models.db, job, now)
            if detail is not None and s.submitter is not None and detail.job.submitter != s.submitter:
                detail = None  # not this identity's: as if it did not exist
            if detail is not None and s.live is not None:
                detail = s.live.job(detail, now)
            ctx["data"] = detail
            ctx["job_id"] = job
        elif view == "fleet":
            ctx["data"] = await asyncio.to_thread(fleet_data, models.db) if s.fleet else None
        elif view == "ledger":
            ctx["data"] = await ledger_data(models)
        elif view == "audit":
            ctx["data"] = await audit_data(models)
            ctx["signed"] = await s.checkpoint() if s.checkpoint is not None else None
        elif view == "charts":
            data = await asyncio.to_thread(chart_data, models.db)
            ctx["data"] = data
            ctx["charts"] = {
                "throughput": charts.line_chart(
                    data.throughput, title="Throughput", x_label="seconds", y_label="tasks completed / min"
                ),
                "queue": charts.line_chart(data.queue, title="Queue depth", x_label="seconds", y_label="tasks waiting"),
                "eta_tasks": charts.scatter_chart(
                    data.eta_tasks,
                    title="Tasks: ETA predicted against actual",
                    x_label="predicted s",
                    y_label="actual s",
                ),
                "eta_jobs": charts.scatter_chart(
                    data.eta_jobs,
                    title="Jobs: predicted against actual",
                    x_label="predicted s",
                    y_label="actual s",
                ),
            }
        return ctx

    async def fragment(self, view: str, job: str = "") -> str:
        """The live fragment of ``view``, rendered now."""
        template, _ = VIEWS[view]
        ctx = await self.context(view, job)
        return await asyncio.to_thread(self.env.get_template(template).render, ctx)

    async def shared(self, view: str, job: str, version: int) -> str:
        """The fragment as of change ``version``, rendered once for every stream that shows it."""
        key = (view, job)
        if len(self._rendering) > MAX_SHARED:
            self._rendering.clear()
            self._rendered.clear()
        lock = self._rendering.setdefault(key, asyncio.Lock())
        async with lock:
            done = self._rendered.get(key)
            if done is not None and done[0] == version:
                return done[1]
            html = await self.fragment(view, job)
            self._rendered[key] = (version, html)
            return html

    async def page(self, view: str, job: str = "") -> str:
        """A whole page: the frame and its live fragment, and where its stream is."""
        _, title = VIEWS[view]
        query = {"view": view, **({"job": job} if job else {})}
        fragment = Markup(await self.fragment(view, job))
        return self.env.get_template("page.html").render(
            title=f"{title} {job}".strip(),
            view=view,
            who=self.source.who,
            fleet_visible=self.source.fleet,
            stream=f"/events?{urlencode(query)}",
            fragment=fragment,
        )

    async def stream(self, view: str, job: str) -> AsyncIterator[bytes]:
        """The fragment as server-sent events: once now, then again after each commit that changes it.

        Nothing is read without a notification: between commits the stream only sends a comment
        line now and then, so that it stays open.
        """
        changes = self.source.changes
        last = ""
        seen = -1
        yield b"retry: 2000\n\n"
        while not changes.closed:
            if changes.version != seen:
                seen = changes.version
                try:
                    html = await self.shared(view, job, seen)
                except UNREADABLE as e:
                    # The stream stays: the next commit (the projector back on its feet) renders again.
                    _log.warning("dashboard.unreadable", view=view, error=str(e))
                    yield b": read models unavailable\n\n"
                    continue
                if html != last:
                    last = html
                    yield _event("fragment", html)
                await asyncio.sleep(MIN_PUSH_INTERVAL_S)  # commits closer than this go out together
                continue
            if await changes.wait(seen, KEEPALIVE_S) == seen and not changes.closed:
                yield b": keepalive\n\n"


def _event(name: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.replace("\r", "").split("\n"))
    return f"event: {name}\n{lines}\n".encode()


def _metrics_app(registry: Any) -> ASGIApp | None:
    """``gpufleet.metrics.metrics_app(registry)``: Prometheus text at ``/metrics`` (None without it)."""
    try:
        from gpufleet.metrics import metrics_app
    except ImportError:
        return None
    app: ASGIApp = metrics_app(registry)
    return app


def create_app(
    source: Source,
    *,
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
    metrics: bool = True,
    metrics_registry: Any = None,
) -> Starlette:
    """The dashboard app over ``source``. ``allowed_hosts``: the Host headers it answers. With
    ``metrics``, ``/metrics`` serves ``metrics_registry`` (None: the process-wide default registry)."""
    dash = Dashboard(source)

    def _job(request: Request) -> str:
        return str(request.path_params.get("job_id") or request.query_params.get("job", ""))[:300]

    def page_of(view: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            html = await dash.page(view, _job(request))
            missing = view == "job" and 'data-missing="1"' in html
            return HTMLResponse(html, status_code=404 if missing else 200)

        return endpoint

    async def fragment(request: Request) -> Response:
        view = request.path_params["view"]
        if view not in VIEWS:
            return Response("no such view\n", status_code=404, media_type="text/plain")
        return HTMLResponse(await dash.fragment(view, _job(request)))

    async def events(request: Request) -> Response:
        view = request.query_params.get("view", "jobs")
        if view not in VIEWS:
            return Response("no such view\n", status_code=404, media_type="text/plain")
        return StreamingResponse(
            dash.stream(view, _job(request)),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def unavailable(request: Request, exc: Exception) -> Response:
        _log.warning("dashboard.unreadable", path=request.url.path, error=str(exc))
        return Response(UNAVAILABLE, status_code=503, media_type="text/plain", headers={"retry-after": "2"})

    routes: list[BaseRoute] = [
        Route("/", page_of("jobs")),
        Route("/jobs", page_of("jobs")),
        Route("/jobs/{job_id:path}", page_of("job")),
        Route("/fleet", page_of("fleet")),
        Route("/ledger", page_of("ledger")),
        Route("/audit", page_of("audit")),
        Route("/charts", page_of("charts")),
        Route("/fragment/{view}", fragment),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    served = _metrics_app(metrics_registry) if metrics else None
    if served is not None:
        routes.insert(0, Route("/metrics", served))
    return Starlette(
        routes=routes,
        exception_handlers=dict.fromkeys(UNREADABLE, unavailable),
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)), Middleware(_Headers)],
    )
