"""Connecting to NATS as someone: credentials, TLS, bounded first connect, endless reconnects, one-line errors."""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from events.errors import AccessDenied, StoreUnavailable
from events.identity import CredentialsError, Identity, inbox_prefix, read_credentials

__all__ = ["Access", "connect_nats", "denied_subjects", "raise_if_denied"]

_log = structlog.get_logger("gpufleet.nats")
_DENIED: weakref.WeakKeyDictionary[NATS, deque[str]] = weakref.WeakKeyDictionary()

NO_CREDENTIALS = (
    "this network admits only known identities: get a credentials file from its operator "
    "(`gpufleet creds issue ROLE NAME` on the machine that runs it) and pass --creds FILE or set GPUFLEET_CREDS"
)


@dataclass(frozen=True, slots=True)
class Access:
    """How to reach a network, and as whom: its URL, a ``.creds`` file, and the CA that signed its TLS."""

    url: str
    creds: Path | None = None
    tls_ca: Path | None = None

    def identity(self) -> Identity | None:
        """Who the credentials say this is (None without credentials)."""
        return read_credentials(self.creds) if self.creds is not None else None


def _tls_context(ca: Path | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as e:
        raise StoreUnavailable(f"cannot use the CA file {ca}: {e}") from e
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def denied_subjects(nc: NATS) -> deque[str]:
    """Subjects the server refused this connection recently (permission violations), newest last."""
    return _DENIED.setdefault(nc, deque(maxlen=64))


def raise_if_denied(nc: NATS, subject: str, who: str = "these credentials") -> None:
    """Raise ``AccessDenied`` if the server refused ``subject`` to this connection."""
    if subject.lower() in denied_subjects(nc):
        raise AccessDenied(f"the network does not let {who} publish to {subject}")


async def connect_nats(
    access: Access | str,
    *,
    name: str = "gpufleet",
    timeout: float = 5.0,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    **kw: Any,
) -> NATS:
    """Connect within ``timeout`` seconds, or raise ``StoreUnavailable`` (``AccessDenied`` when refused).

    With credentials, the connection's inbox is the identity's own (``_INBOX.<role>.<name>``), the
    only reply subjects its permissions let it read. Once connected, the client reconnects forever
    and logs each disconnect and reconnect; ``on_disconnect`` is awaited after each loss of the link
    (not our own close), ``on_reconnect`` after each reconnection.
    """
    if isinstance(access, str):
        access = Access(access)
    url = access.url
    log = _log.bind(url=url, client=name)
    holder: list[NATS] = []
    try:
        identity = access.identity()
    except CredentialsError as e:
        if not (access.creds is not None and access.creds.is_file()):
            raise StoreUnavailable(str(e)) from e
        identity = None  # a NATS user that is not one of the network's roles (an operator's own): fine
    if access.creds is not None:
        kw.setdefault("user_credentials", str(access.creds))
    if identity is not None:
        kw.setdefault("inbox_prefix", inbox_prefix(identity.role, identity.name))
        log = log.bind(identity=str(identity))
    if access.tls_ca is not None or url.startswith("tls://"):
        kw.setdefault("tls", _tls_context(access.tls_ca))
    refused: list[str] = []
    tls_failed: list[str] = []
    connecting: list[asyncio.Task[NATS]] = []

    async def on_error(e: Exception) -> None:
        text = str(e) or type(e).__name__
        if "permissions violation" in text.lower() and holder:
            subject = text.split('"')[1] if text.count('"') >= 2 else text
            denied_subjects(holder[0]).append(subject.lower())
            log.warning("nats.permission_denied", error=text)
        elif holder and (holder[0].is_closed or holder[0].is_draining):
            log.debug("nats.error_while_closing", error=text)  # our own close racing the server's: noise
        elif isinstance(e, ssl.SSLError) and getattr(e, "reason", None) == "APPLICATION_DATA_AFTER_CLOSE_NOTIFY":
            log.debug("nats.tls_close_race", error=text)  # one side closed TLS while the other still sent
        elif isinstance(e, ssl.SSLError) or "certificate" in text.lower():
            tls_failed.append(getattr(e, "reason", None) or text)
            (log.warning if holder else log.debug)("nats.tls_failed", error=text)
            if connecting and not connecting[0].done():
                connecting[0].cancel()  # a server that cannot be verified will not become verifiable
        elif "authorization violation" in text.lower() or "authentication" in text.lower():
            refused.append(text)
            # At the first connect the refusal is raised as one clear error; later it is news.
            (log.warning if holder else log.debug)("nats.refused", error=text)
            if connecting and not connecting[0].done():
                connecting[0].cancel()  # the first connect: fail now, the server will not change its mind
        else:
            log.debug("nats.error", error=text)

    async def disconnected() -> None:
        if holder and (holder[0].is_closed or holder[0].is_draining):
            return  # our own close, not a fault
        log.warning("nats.disconnected")
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected() -> None:
        log.info("nats.reconnected")
        if on_reconnect is not None:
            await on_reconnect()

    # A cluster's URLs, comma-separated: the client tries each, and fails over among them.
    servers = [u.strip() for u in url.split(",") if u.strip()]
    task = asyncio.ensure_future(
        nats.connect(
            servers if len(servers) > 1 else url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=min(timeout, 2.0),
            error_cb=on_error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            **kw,
        )
    )
    connecting.append(task)
    try:
        nc = await asyncio.wait_for(task, timeout)
    except asyncio.CancelledError as e:
        if tls_failed:
            raise StoreUnavailable(f"TLS with {url} failed: {tls_failed[-1]} (is --tls-ca the network's CA?)") from e
        if not refused:
            raise
        raise _refusal(url, access, refused[-1]) from e
    except TimeoutError as e:
        if tls_failed:
            raise StoreUnavailable(f"TLS with {url} failed: {tls_failed[-1]} (is --tls-ca the network's CA?)") from e
        if refused:
            raise _refusal(url, access, refused[-1]) from e
        raise StoreUnavailable(f"cannot reach NATS at {url}: no answer within {timeout:g}s") from e
    except ssl.SSLError as e:
        raise StoreUnavailable(f"TLS with {url} failed: {e.reason or e} (is --tls-ca the network's CA?)") from e
    except (OSError, nats.errors.Error) as e:
        text = str(e) or type(e).__name__
        if "authorization violation" in text.lower() or refused:
            raise _refusal(url, access, text) from e
        if "certificate" in text.lower() or "ssl" in text.lower():
            raise StoreUnavailable(f"TLS with {url} failed: {text} (is --tls-ca the network's CA?)") from e
        raise StoreUnavailable(f"cannot reach NATS at {url}: {text}") from e
    holder.append(nc)
    return nc


def _refusal(url: str, access: Access, text: str) -> AccessDenied:
    if access.creds is None:
        return AccessDenied(f"{url} refused a connection without credentials: {NO_CREDENTIALS}")
    return AccessDenied(
        f"{url} refused the credentials {access.creds} (revoked, expired, or from another network): {text}"
    )
