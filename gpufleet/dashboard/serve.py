"""Serving the dashboard with uvicorn inside a running event loop, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import structlog
import uvicorn
from starlette.types import ASGIApp

from events.errors import GpufleetError
from gpufleet.dashboard.notify import Changes

__all__ = ["DEFAULT_PORT", "DashboardError", "DashboardServer"]

#: Tried first when no port is asked for; any free port if it is taken.
DEFAULT_PORT = 8222
#: Connections served at once (each live page holds one): more are answered 503 at once, so that
#: whoever reaches the port cannot hold every descriptor of the process (``gpufleet up``'s too).
MAX_CONNECTIONS = 64
_log = structlog.get_logger("gpufleet.dashboard")


class DashboardError(GpufleetError):
    """The dashboard cannot be served (its port is taken, say)."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: whoever runs the loop (``up``, ``dashboard``) owns
    SIGINT and SIGTERM, and stops the dashboard as one of its parts."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are
    # TCP; with Nagle on, each response's last write waited out the browser's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class DashboardServer:
    """Serves ``app`` until :meth:`stop`. ``port``: None tries ``DEFAULT_PORT`` then any free one;
    0 takes any free one; another number is that port or a ``DashboardError``."""

    def __init__(self, app: ASGIApp, changes: Changes, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.app = app
        self.changes = changes
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Where a browser on this machine opens it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _socket(self) -> socket.socket:
        if self.port is None:
            with contextlib.suppress(OSError):
                return _bind(self.host, DEFAULT_PORT)
            return _bind(self.host, 0)
        try:
            return _bind(self.host, self.port)
        except OSError as e:
            raise DashboardError(f"cannot serve the dashboard on {self.host}:{self.port}: {e.strerror}") from e

    async def start(self) -> str:
        """Listen and serve in a task of this loop; the URL once it accepts connections."""
        sock = self._socket()
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=2,
            # uvicorn counts the connection it is deciding on: one more admits exactly MAX_CONNECTIONS.
            limit_concurrency=MAX_CONNECTIONS + 1,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="dashboard")
        while not self._server.started:
            if self._task.done():
                sock.close()
                error = self._task.exception() if not self._task.cancelled() else None
                raise DashboardError(f"the dashboard did not start: {error}")
            await asyncio.sleep(0.01)
        _log.info("dashboard.serving", url=self.url)
        return self.url

    async def stop(self) -> None:
        """Close every live stream, then stop serving (at most a few seconds)."""
        self.changes.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (TimeoutError, Exception):
                if self._server is not None:
                    self._server.force_exit = True
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        self._task = None
        self._server = None
