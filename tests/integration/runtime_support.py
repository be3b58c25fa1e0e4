"""Helpers for the provider-runtime tests: the test plays the orchestrator over a real, secured nats-server.

Each provider runtime connects with credentials of its own (provider ``<id>``); the test double of the
orchestrator is an unrestricted hub user, as the real orchestrator's service is: it sees every intake
message, creates each provider's dispatch consumer, sends dispatch and reads objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.client import Client as NATS

from events.dispatch import START_REPORT_S, LeaseBatch, LeaseGranted, LeaseRevoked
from events.errors import InvalidPayload
from events.intake import decode_intake
from events.store.blobs import BlobStore
from events.store.connection import connect_nats
from events.store.topology import Topology
from events.subjects import dispatch_subject
from events.types import ObjectRef
from gpu_runtime import ProviderRuntime, RuntimeConfig
from gpu_runtime.results import canonical_json, sha256_hex
from tests.integration.audited import eventually
from tests.secure import SecureServer

_log = logging.getLogger(__name__)

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """An id no other test in this process uses."""
    return f"{prefix}{os.getpid()}x{next(_ids)}"


@dataclass
class Seen:
    """One report as the orchestrator received it."""

    at: float
    body: Any
    #: The provider whose intake subject it came on (the server vouches for it: only it may publish there).
    sender: str = ""

    @property
    def kind(self) -> str:
        return str(self.body.report)


@dataclass
class Orchestrator:
    """The other side of the provider's subjects: sends leases and revocations, reads reports.

    As the real orchestrator does, it creates a provider's dispatch consumer (``prov-<id>``, the only
    way a provider can read its dispatch) when it sees the provider register, and in any case before
    it sends the provider its first dispatch message.
    """

    nc: NATS
    js: Any
    topology: Topology = field(default_factory=Topology)
    reports: dict[str, list[Seen]] = field(default_factory=dict)
    intake: list[tuple[str, Any]] = field(default_factory=list)
    #: Intake messages from providers this double talks to that did not validate: a contract breach.
    invalid: list[tuple[str, str]] = field(default_factory=list)
    #: Every lease this double sent, and the leases it revoked (by lease id).
    granted: dict[str, LeaseGranted] = field(default_factory=dict)
    granted_at: dict[str, float] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    _consumers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, server: SecureServer) -> AsyncIterator[Orchestrator]:
        nc = await connect_nats(server.superuser(), name="test-orchestrator")
        orch = cls(nc, nc.jetstream())
        # Core NATS sees every message the intake stream stores, as it is stored (the edge's intake
        # is a service the hub exports: a hub subscriber receives what providers publish to it).
        # Providers' intake only: what submitters of other tests send is no business of this double.
        await nc.subscribe("gf.in.provider.>", cb=orch._on_intake)
        await nc.flush()
        try:
            yield orch
        finally:
            for t in orch._consumers.values():
                if not t.done():
                    t.cancel()
                elif not t.cancelled():
                    t.exception()  # retrieved (logged where it happened)
            await nc.close()

    @property
    def blobs(self) -> BlobStore:
        """Objects, read as the orchestrator reads them: by reference, checked against their digest."""
        return BlobStore(self.nc, "test", "orchestrator", self.topology)

    async def _on_intake(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        try:
            decoded = decode_intake(msg.subject, msg.data)  # the contract check: every body must validate
        except InvalidPayload as e:
            if len(parts) > 3 and parts[3] in self._consumers:  # one of ours: a breach, not noise
                self.invalid.append((msg.subject, str(e)))
                self._changed.set()
            _log.warning("invalid intake on %s: %s", msg.subject, e)
            return
        if decoded.role == "provider" and decoded.verb == "register":
            self.open_dispatch(decoded.sender)
        self.intake.append((msg.subject, decoded.body))
        if decoded.kind == "task":
            self.reports.setdefault(decoded.target_id, []).append(Seen(time.monotonic(), decoded.body, decoded.sender))
        self._changed.set()

    def open_dispatch(self, provider_id: str) -> asyncio.Task[None]:
        """Create ``provider_id``'s dispatch consumer (once; idempotent on the server as well)."""
        task = self._consumers.get(provider_id)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            config = self.topology.dispatch_consumer_config(provider_id)
            task = asyncio.ensure_future(self._add_consumer(provider_id, config))
            self._consumers[provider_id] = task
        return task

    async def _add_consumer(self, provider_id: str, config: Any) -> None:
        try:
            await self.js.add_consumer(self.topology.dispatch_stream, config=config)
        except Exception:
            _log.exception("cannot create the dispatch consumer of %s", provider_id)
            raise

    def _check_contract(self) -> None:
        if self.invalid:
            raise AssertionError(f"a provider sent intake that does not validate: {self.invalid}")

    def lease(
        self,
        provider_id: str,
        workload: str,
        params: dict[str, Any] | None = None,
        *,
        timeout_s: float = 60.0,
        task_id: str | None = None,
        attempt: int = 1,
        resume_from: ObjectRef | None = None,
        resume_step: int = 0,
    ) -> LeaseGranted:
        """A lease for a new task (or a new attempt of ``task_id``)."""
        return LeaseGranted(
            task_id=task_id or new_id("t"),
            job_id="job1",
            lease_id=new_id("l"),
            provider_id=provider_id,
            attempt=attempt,
            workload=workload,
            params=params or {},
            timeout_s=timeout_s,
            expires_at=datetime.now(UTC) + timedelta(seconds=timeout_s + 30),
            resume_from=resume_from,
            resume_step=resume_step,
        )

    async def send(self, message: LeaseGranted | LeaseRevoked) -> None:
        if isinstance(message, LeaseGranted):
            self.granted[message.lease_id] = message
            self.granted_at[message.lease_id] = time.monotonic()
        else:
            self.revoked.add(message.lease_id)
        await self.open_dispatch(message.provider_id)  # the consumer exists before the first dispatch
        await self.js.publish(dispatch_subject(message.provider_id), message.model_dump_json().encode())

    async def send_batch(self, provider_id: str, items: list[LeaseGranted | LeaseRevoked]) -> None:
        """Send ``items`` in one ``LeaseBatch`` on ``provider_id``'s dispatch subject (items may name others)."""
        for item in items:
            if isinstance(item, LeaseGranted):
                self.granted[item.lease_id] = item
                self.granted_at[item.lease_id] = time.monotonic()
            else:
                self.revoked.add(item.lease_id)
        await self.open_dispatch(provider_id)
        batch = LeaseBatch(provider_id=provider_id, items=items)
        await self.js.publish(dispatch_subject(provider_id), batch.model_dump_json().encode())

    async def grant(self, provider_id: str, workload: str, params: dict[str, Any] | None = None, **kw: Any) -> str:
        """Send a lease; returns its task id."""
        lease = self.lease(provider_id, workload, params, **kw)
        await self.send(lease)
        return lease.task_id

    async def revoke(self, provider_id: str, task_id: str, reason: str = "cancelled by test") -> None:
        seen = self.reports.get(task_id, [])
        lease_id = seen[0].body.lease_id if seen else ""
        await self.send(LeaseRevoked(task_id=task_id, lease_id=lease_id, provider_id=provider_id, reason=reason))

    def of(self, task_id: str, kind: str | None = None) -> list[Seen]:
        return [s for s in self.reports.get(task_id, []) if kind is None or s.kind == kind]

    async def wait_for(self, task_id: str, kinds: tuple[str, ...], timeout: float = 20.0, *, where: Any = None) -> Seen:
        """The first report of ``task_id`` with a kind in ``kinds`` (and ``where(body)`` true)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_contract()
            for s in self.reports.get(task_id, []):
                if s.kind in kinds and (where is None or where(s.body)):
                    return s
            left = deadline - time.monotonic()
            if left <= 0:
                got = [(s.kind, getattr(s.body, "reason", "")) for s in self.reports.get(task_id, [])]
                raise AssertionError(f"no {kinds} report for {task_id} in {timeout}s; got {got}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    async def wait_for_subject(self, subject: str, timeout: float = 10.0) -> Any:
        """The body of the first intake message on ``subject``."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_contract()
            for s, body in self.intake:
                if s == subject:
                    return body
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing on {subject} in {timeout}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    async def finished(self, task_id: str, timeout: float = 20.0, *, lease_id: str | None = None) -> Any:
        """The terminal report (completed or failed) of ``task_id`` (under ``lease_id``, if given)."""
        where = None if lease_id is None else (lambda b: b.lease_id == lease_id)
        return (await self.wait_for(task_id, ("completed", "failed"), timeout, where=where)).body

    async def run(self, provider_id: str, workload: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Grant and wait for the terminal report of this lease."""
        lease = self.lease(provider_id, workload, params, **kw)
        await self.send(lease)
        return await self.finished(lease.task_id, lease.timeout_s + 10, lease_id=lease.lease_id)

    async def result(self, body: Any) -> Any:
        """The result value of a completed report, inline or fetched from the objects stream."""
        assert body.report == "completed", f"expected completed, got {body.report}: {getattr(body, 'message', '')}"
        if body.result.object is None:
            return body.result.inline
        return json.loads(await self.get_object(body.result.object))

    async def get_object(self, ref: ObjectRef) -> bytes:
        """The object's bytes, checked against ``ref.sha256``."""
        return await self.blobs.get(ref)

    # ---- the audit of the runtime's side of the contract ---------------------------------------

    def audit(self, must_end: Iterable[str] = ()) -> list[str]:
        """What the runtimes did wrong, judged from every report this double received (an empty list
        is a pass). These tests grant leases outside any log, so there is no log for the auditor of
        ``projections.audit`` to read; this is its counterpart for the provider's side:

        - every intake message validates, and every report names a lease this double granted, for that
          task, on the intake subject of the provider that holds it;
        - per lease: at most one ``started``, first; ``progress`` and ``completed`` only after it;
          exactly one end (``completed`` or ``failed``) at most, and nothing after it; progress and
          checkpoints never go back; an inline result matches its digest;
        - every lease granted to a provider in ``must_end`` (and not revoked) has ended.
        """
        findings = [f"intake on {subject} does not validate: {error}" for subject, error in self.invalid]
        per_lease: dict[str, list[Seen]] = {}
        for task_id, seen in self.reports.items():
            for s in seen:
                lease = self.granted.get(s.body.lease_id)
                if lease is None:
                    findings.append(f"{task_id}: {s.kind} report under {s.body.lease_id!r}, a lease never granted")
                    continue
                said = s.body.provider_id
                if lease.task_id != task_id or s.sender != lease.provider_id or said not in (None, lease.provider_id):
                    findings.append(
                        f"{task_id}: {s.kind} report from {s.sender} (saying {said}) under lease "
                        f"{lease.lease_id} of {lease.provider_id} for {lease.task_id}"
                    )
                per_lease.setdefault(lease.lease_id, []).append(s)
        ending = ("completed", "failed")
        must = set(must_end)
        for lease_id, lease in self.granted.items():
            seen = per_lease.get(lease_id, [])
            kinds = [s.kind for s in seen]
            where = f"lease {lease_id} ({lease.workload}, task {lease.task_id}): {kinds}"
            ends = [k for k in kinds if k in ending]
            if len(ends) > 1:
                findings.append(f"{where}: {len(ends)} ends")
            if ends and len(kinds) > kinds.index(ends[0]) + 1:
                findings.append(f"{where}: reports after its end")
            if kinds.count("started") > 1 or ("started" in kinds and kinds[0] != "started"):
                findings.append(f"{where}: started twice, or after other reports")
            # A start is reported once a run has gone on START_REPORT_S (it extends the lease to the
            # task's timeout); a shorter run's first report implies it. Two seconds of slack: the
            # lease's travel and the report's.
            silent = seen[0].at - self.granted_at[lease_id] if seen else 0.0
            if seen and seen[0].kind != "started" and silent > START_REPORT_S + 2:
                findings.append(f"{where}: ran {silent:.1f} s without a started report")
            progress = [s.body for s in seen if s.kind == "progress"]
            fractions = [b.fraction for b in progress]
            steps = [b.checkpoint_step for b in progress if b.checkpoint is not None]
            if fractions != sorted(fractions) or steps != sorted(steps):
                findings.append(f"{where}: progress went back: fractions {fractions}, checkpoints {steps}")
            for s in seen:
                result = s.body.result if s.kind == "completed" else None
                inline = None if result is None else result.inline
                if inline is not None and sha256_hex(canonical_json(inline)) != result.sha256:
                    findings.append(f"{where}: the inline result does not match its sha256")
            if lease.provider_id in must and lease_id not in self.revoked and not ends:
                findings.append(f"{where}: never ended")
        return findings

    async def assert_contract_kept(self, *runtimes: ProviderRuntime, ended: Iterable[str] = ()) -> None:
        """At rest, the audit of what the runtimes sent passes.

        ``runtimes`` still serve: every lease granted to one of them must end, and once it has, each is
        sent one more lease (a ``noop``) as a barrier: a runtime publishes its reports in order on one
        connection, so once that lease's end is here, anything it sent before is here too. ``ended``:
        providers gone since (closed, drained), whose leases must have ended as well.
        """
        serving = {rt.provider_id for rt in runtimes}

        def unfinished() -> list[str]:
            return [f for f in self.audit(serving) if f.endswith("never ended")]

        deadline = time.monotonic() + 30.0
        while unfinished() and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._changed.wait()
        for rt in runtimes:
            await eventually(
                lambda: not rt.running,  # noqa: B023 (awaited at once)
                lambda: f"{rt.provider_id} to be idle with every lease ended (it runs {rt.running})",  # noqa: B023
                poll=0.02,
            )
            assert (await self.run(rt.provider_id, "noop", {})).report == "completed"
        findings = self.audit(serving | set(ended))
        assert not findings, "the runtime broke its side of the contract:\n" + "\n".join(findings)


def provider_config(server: SecureServer, **kw: Any) -> RuntimeConfig:
    """A provider's settings with credentials of its own: provider ``kw["provider_id"]`` (default: a fresh id)."""
    name = kw.pop("provider_id", None) or new_id("p")
    access = server.access("provider", name)
    kw.setdefault("calibrate", False)
    kw.setdefault("heartbeat_s", 0.2)
    kw.setdefault("worker_start_timeout_s", 60.0)  # fail clearly, well inside pytest's own timeout
    return RuntimeConfig(nats_url=access.url, creds=access.creds, tls_ca=access.tls_ca, **kw)


@contextlib.asynccontextmanager
async def provider(server: SecureServer, **kw: Any) -> AsyncIterator[ProviderRuntime]:
    """A started provider runtime with credentials of its own (no calibration unless asked: it is slow
    on a shared CPU). Its dispatch consumer is the orchestrator's to create (``Orchestrator.send``)."""
    runtime = ProviderRuntime(provider_config(server, **kw))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()
