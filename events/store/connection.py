"""Connecting to NATS: bounded first connect, endless reconnects after, one-line logs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from events.errors import StoreUnavailable

__all__ = ["connect_nats"]

_log = structlog.get_logger("gpufleet.nats")


async def connect_nats(
    url: str,
    *,
    name: str = "gpufleet",
    timeout: float = 5.0,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    **kw: Any,
) -> NATS:
    """Connect to ``url`` within ``timeout`` seconds, or raise ``StoreUnavailable``.

    Once connected, the client reconnects forever and logs each disconnect and reconnect;
    ``on_reconnect`` is awaited after each reconnection.
    """
    log = _log.bind(url=url, client=name)
    holder: list[NATS] = []

    async def on_error(e: Exception) -> None:
        log.debug("nats.error", error=str(e) or type(e).__name__)

    async def on_disconnect() -> None:
        if holder and (holder[0].is_closed or holder[0].is_draining):
            return  # our own close, not a fault
        log.warning("nats.disconnected")

    async def reconnected() -> None:
        log.info("nats.reconnected")
        if on_reconnect is not None:
            await on_reconnect()

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=min(timeout, 2.0),
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=reconnected,
                **kw,
            ),
            timeout,
        )
    except TimeoutError as e:
        raise StoreUnavailable(f"cannot reach NATS at {url}: no answer within {timeout:g}s") from e
    except (OSError, nats.errors.Error) as e:
        raise StoreUnavailable(f"cannot reach NATS at {url}: {str(e) or type(e).__name__}") from e
    holder.append(nc)
    return nc
