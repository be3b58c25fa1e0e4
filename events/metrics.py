"""Metrics: plain figures kept on hot paths, and their Prometheus exposition at scrape time.

Components keep plain numbers (ints, an ``events.stats.Histogram`` of fixed buckets): no lock, no label
lookup, no allocation per event. A collector beside each component (``actors.metrics``,
``gpu_runtime.metrics``, ``projections.metrics``) turns them into metric families when Prometheus
scrapes, after awaiting whatever must be asked of the server (a lag behind the log's head). Every
part lives at this bottom layer so that each component can expose itself without importing
``gpufleet``.

A :class:`MetricsRegistry` belongs to one network or process, never to the module: tests run many
networks in one process, and one network's metrics must not collide with another's. Scrapes run on
the event loop that owns the components (``serve_metrics`` and ``metrics_app`` both do), so a
collector reads live objects without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable

import structlog
from prometheus_client import REGISTRY, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from events.errors import InvalidPayload
from events.stats import LATENCY_BUCKETS, Histogram

__all__ = [
    "LATENCY_BUCKETS",
    "ASGIApp",
    "Families",
    "Histogram",
    "MetricsApp",
    "MetricsRegistry",
    "MetricsServer",
    "Refreshing",
    "histogram_family",
    "metrics_app",
    "parse_listen",
    "render",
    "serve_metrics",
]

_log = structlog.get_logger("gpufleet.metrics")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


def histogram_family(
    name: str, documentation: str, labels: Sequence[str], series: Iterable[tuple[Sequence[str], Histogram]]
) -> HistogramMetricFamily:
    """A histogram family with one series per (label values, histogram)."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, h in series:
        family.add_metric(list(values), [(_bound(b), float(n)) for b, n in h.cumulative()], h.sum)
    return family


class Families:
    """Base of the components' collectors: ``describe`` and ``collect`` come from one list of
    families, so a collector states its names, help and samples once."""

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (the registry refuses a second collector with these names)."""
        return iter(self._families(live=False))

    def collect(self) -> Iterator[Metric]:
        """Every family with its current samples."""
        return iter(self._families(live=True))

    def _families(self, *, live: bool) -> list[Metric]:
        """Every family; with samples only when ``live``."""
        raise NotImplementedError


@runtime_checkable
class Refreshing(Protocol):
    """A collector with figures it must ask for (of the server) before each scrape."""

    async def refresh(self) -> None:
        """Ask for them; a figure that cannot be had is left out of the next scrape (unknown)."""


class MetricsRegistry(CollectorRegistry):
    """A registry for one network or process whose collectors may refresh (asynchronously) first.

    ``process``: also export this process's CPU, memory and file descriptors (``process_*``).
    """

    def __init__(self, *, process: bool = False, refresh_timeout_s: float = 2.0) -> None:
        super().__init__()
        self.refresh_timeout_s = refresh_timeout_s
        self._refreshing: list[Refreshing] = []
        self._refresh_lock = asyncio.Lock()
        if process:
            ProcessCollector(registry=self)

    def register(self, collector: Collector) -> None:
        """Add a collector (its ``describe`` guards against two that export the same names)."""
        super().register(collector)
        if isinstance(collector, Refreshing):
            self._refreshing.append(collector)

    def unregister(self, collector: Collector) -> None:
        """Remove a collector."""
        super().unregister(collector)
        gone: object = collector
        self._refreshing = [c for c in self._refreshing if c is not gone]

    async def refresh(self) -> None:
        """Refresh every collector that asks for something, each within ``refresh_timeout_s``."""
        async with self._refresh_lock:
            await asyncio.gather(*(self._refresh_one(c) for c in list(self._refreshing)))

    async def _refresh_one(self, collector: Refreshing) -> None:
        try:
            async with asyncio.timeout(self.refresh_timeout_s):
                await collector.refresh()
        except Exception as e:  # a scrape never fails for one figure: it is left out instead
            _log.warning("metrics.refresh_failed", collector=type(collector).__name__, error=f"{type(e).__name__}: {e}")


async def render(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The registry's metrics in the format ``accept`` asks for (Prometheus text by default), and its
    content type; refreshed first when the registry is a :class:`MetricsRegistry`."""
    if isinstance(registry, MetricsRegistry):
        await registry.refresh()
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class MetricsApp:
    """An ASGI app that answers every GET or HEAD with the registry's metrics.

    A class, not a function: Starlette's ``Route("/metrics", app)`` then treats it as an ASGI app.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"only GET and HEAD\n", "text/plain; charset=utf-8", head=False)
            return
        accept = ""
        for key, value in scope.get("headers", ()):
            if key.lower() == b"accept":
                accept = value.decode("latin-1")
        body, content_type = await render(self.registry, accept)
        await _respond(send, 200, body, content_type, head=method == "HEAD")


async def _respond(send: Send, status: int, body: bytes, content_type: str, *, head: bool) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def metrics_app(registry: CollectorRegistry | None = None) -> MetricsApp:
    """An ASGI app serving ``registry`` (default: prometheus_client's global one) in the Prometheus
    text format. Mount it with ``Route("/metrics", metrics_app(registry))``."""
    return MetricsApp(registry if registry is not None else REGISTRY)


class MetricsServer:
    """A small HTTP server on the running event loop that serves ``/metrics``; close it when done."""

    def __init__(self, server: asyncio.Server, registry: CollectorRegistry) -> None:
        self._server = server
        self.registry = registry
        host, port = server.sockets[0].getsockname()[:2]
        self.host: str = host
        self.port: int = port

    @property
    def url(self) -> str:
        """Where Prometheus scrapes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        """Stop listening and wait for the connections being served."""
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5.0)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


async def serve_metrics(host: str, port: int, registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from the running event loop (port 0: any
    free port; ``MetricsServer.port`` says which). Nothing but ``/metrics`` is served."""
    reg = registry if registry is not None else REGISTRY

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, content_type, head = await _answer(reader, reg)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if not head:
                writer.write(body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away, or sent something too long or too slow: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, host, port, limit=16384)
    except OSError as e:
        raise InvalidPayload(f"cannot serve metrics on {host}:{port}: {e.strerror or e}", field="metrics") from e
    return MetricsServer(server, reg)


async def _answer(reader: asyncio.StreamReader, registry: CollectorRegistry) -> tuple[int, bytes, str, bool]:
    text = "text/plain; charset=utf-8"
    async with asyncio.timeout(10.0):
        request = await reader.readuntil(b"\r\n\r\n")
    lines = request.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return 400, b"bad request\n", text, False
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return 405, b"only GET and HEAD\n", text, False
    if target.split("?", 1)[0] != "/metrics":
        return 404, b"metrics are at /metrics\n", text, method == "HEAD"
    accept = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "accept":
            accept = value.strip()
    try:
        body, content_type = await render(registry, accept)
    except Exception as e:  # a collector's bug: one failed scrape, logged, not a dead server
        _log.exception("metrics.render_failed", error=f"{type(e).__name__}: {e}")
        return 500, b"metrics failed; see the logs\n", text, method == "HEAD"
    return 200, body, content_type, method == "HEAD"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (then 127.0.0.1: this machine only), or ``[V6]:PORT``.

    Raises ``InvalidPayload`` (field ``metrics``) naming what is wrong.
    """
    raw = text.strip()
    if raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            raise InvalidPayload(f"{text!r}: an IPv6 address is written [ADDRESS]:PORT", field="metrics")
    elif ":" in raw:
        host, _, port_text = raw.rpartition(":")
    else:
        host, port_text = "", raw
    host = host or "127.0.0.1"
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidPayload(f"{text!r}: give HOST:PORT, with a port from 0 to 65535", field="metrics")
    if ":" in host or raw.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise InvalidPayload(f"{text!r}: {host!r} is not an IPv6 address", field="metrics") from e
    elif not host.replace("-", "").replace(".", "").replace("_", "").isalnum():
        raise InvalidPayload(f"{text!r}: {host!r} is not a host name or address", field="metrics")
    return host, int(port_text)
