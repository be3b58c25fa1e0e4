"""The auditor after a fault test, and waiting on a condition instead of sleeping.

A test that kills, restarts, floods or forges ends with the full audit of the log
(``projections.audit``): at rest (every intake message has its outcome) it must pass, or report
exactly the findings the test provoked on purpose. Tests wait for something to happen by polling the
log, a read model or a file until a deadline (``eventually``), never by sleeping a fixed time; a check
that something did *not* happen waits first for a later thing that must come after it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from events.store import JetStreamEventStore
from events.subjects import INTAKE_STREAM
from gpufleet.audit import full_audit
from projections.audit import AuditReport, Finding, audit_jetstream
from tests.integration.orchestra import every_input_has_its_outcome

__all__ = [
    "assert_audit_passes",
    "assert_findings",
    "audit_at_rest",
    "eventually",
    "eventually_sync",
]

T = TypeVar("T")


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


async def eventually(
    probe: Callable[[], Awaitable[T] | T],
    what: str | Callable[[], str],
    *,
    timeout: float = 30.0,
    poll: float = 0.05,
) -> T:
    """Poll ``probe`` (sync or async) until it returns something truthy, and return that; at the
    deadline fail, saying what was awaited (``what`` may be a callable, for a message with the state
    at that moment) and what the probe last returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {_describe(what)} (last: {value!r})")
        await asyncio.sleep(poll)


def eventually_sync(
    probe: Callable[[], T], what: str | Callable[[], str], *, timeout: float = 30.0, poll: float = 0.1
) -> T:
    """``eventually`` for a test without an event loop (a CLI test polling a file or a command)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {_describe(what)} (last: {value!r})")
        time.sleep(poll)


async def audit_at_rest(
    store: JetStreamEventStore,
    *,
    timeout: float = 30.0,
    intake_stream: str | None = INTAKE_STREAM,
    provenance: bool = True,
) -> AuditReport:
    """The full audit of the log (and the intake stream), once every intake message now stored has its
    outcome: an audit taken while the orchestrator is still deciding would report missing outcomes.

    With ``provenance`` (and an intake stream), every decision is also re-decided from its cause, as
    ``gpufleet replay --audit`` does (``actors.provenance``); its problems are ``provenance`` findings.
    """
    if intake_stream is not None:
        await every_input_has_its_outcome(store, timeout=timeout)
    if provenance and intake_stream is not None:
        report, _ = await full_audit(store, intake_stream=intake_stream)
        return report
    return await audit_jetstream(store, intake_stream=intake_stream)


async def assert_audit_passes(
    store: JetStreamEventStore,
    *,
    timeout: float = 30.0,
    intake_stream: str | None = INTAKE_STREAM,
    provenance: bool = True,
) -> AuditReport:
    """The audit at rest finds nothing, and it looked at something."""
    report = await audit_at_rest(store, timeout=timeout, intake_stream=intake_stream, provenance=provenance)
    assert report.ok, report.render()
    assert report.events > 0 and report.coverage["sequence"] == report.events, report.render()
    return report


def assert_findings(report: AuditReport, expected: Iterable[tuple[str, int | None, str]]) -> list[Finding]:
    """The report holds exactly the ``expected`` findings, as ``(check, position, message)``, in any
    order: none missing, none more."""
    want = sorted((c, -1 if p is None else p, m) for c, p, m in expected)
    got = sorted((f.check, -1 if f.position is None else f.position, f.message) for f in report.findings)
    assert got == want, "the audit's findings are not exactly the expected ones:\n" + report.render()
    return list(report.findings)
