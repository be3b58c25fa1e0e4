"""Helpers for orchestration tests: a whole network on one real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from nats.aio.client import Client as NATS

from actors.world import World
from events import StoreUnavailable
from events.job import ProviderCredited, SubmitterCharged, UsageMetered
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.subjects import intake_subject
from events.task import TaskCompleted
from tests.secure import SecureServer


@contextlib.asynccontextmanager
async def orchestrated(server: SecureServer, config: Any = None) -> AsyncIterator[JetStreamEventStore]:
    """The orchestrator and the event feed on ``server``, as the network runs them; yields a reader
    of the log (with the orchestrator's credentials)."""
    from actors.orchestrator import Orchestrator
    from projections.feed import EventFeed

    orch = await Orchestrator.connect(server.access("orchestrator"), config=config)
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    feed = EventFeed(store)
    await feed.start()
    try:
        yield store
    finally:
        await feed.stop()
        await store.close()
        await orch.close()


class Tenants:
    """The outsiders of a test: one connection per identity, each with its own credentials."""

    def __init__(self, server: SecureServer) -> None:
        self.server = server
        self._conns: dict[tuple[str, str], NATS] = {}

    async def nc(self, role: str, name: str) -> NATS:
        """A connection as ``role``/``name`` (opened once)."""
        key = (role, name)
        if key not in self._conns:
            self._conns[key] = await connect_nats(self.server.access(role, name), name=f"test-{role}-{name}")
        return self._conns[key]

    async def publish(self, role: str, name: str, subject: str, body: bytes) -> Any:
        """Publish to JetStream as ``role``/``name``; the acknowledgement."""
        return await (await self.nc(role, name)).jetstream().publish(subject, body)

    async def submit(self, who: str, name: str, spec: dict[str, Any]) -> str:
        """Submit job ``name`` as submitter ``who``, as any client in any language would; its full id."""
        await self.publish(
            "submitter", who, intake_subject("submitter", who, "submit", name), json.dumps(spec).encode()
        )
        return f"{who}.{name}"

    async def cancel(self, who: str, name: str, reason: str = "") -> None:
        """Cancel job ``name`` of ``who``, as ``who``."""
        body = json.dumps({"reason": reason}).encode()
        await self.publish("submitter", who, intake_subject("submitter", who, "cancel", name), body)

    async def close(self) -> None:
        for nc in self._conns.values():
            await nc.close()
        self._conns.clear()


async def read_world(store: JetStreamEventStore) -> tuple[World, list[Any]]:
    """The world folded from the whole log, and the log itself."""
    w = World()
    log = []
    async for env in store.read_all():
        w.apply(env)
        log.append(env)
    return w, log


async def wait_for(
    store: JetStreamEventStore, predicate: Callable[[World], bool], timeout: float = 60.0, poll: float = 0.5
) -> tuple[World, list[Any]]:
    """Poll the log until ``predicate`` holds on the world it folds to."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            w, log = await read_world(store)
        except StoreUnavailable:
            # The server is restarting (a test killed it): the log comes back with it.
            assert loop.time() < deadline, "the log stayed unavailable"
            await asyncio.sleep(poll)
            continue
        if predicate(w):
            return w, log
        if loop.time() > deadline:
            statuses = Counter(j.status for j in w.jobs.values())
            tasks = Counter(t.status for t in w.tasks.values())
            stuck = [
                (tid, t.status, t.lease.provider_id if t.lease else None)
                for tid, t in w.tasks.items()
                if t.status not in ("completed", "dead", "cancelled")
            ][:5]
            where = {p for _, _, p in stuck if p}
            providers = {p: w.providers[p].status for p in where if p in w.providers}
            history = []
            if stuck:
                stream = f"task.{stuck[0][0]}"
                history = [
                    (
                        e.sequence,
                        e.type,
                        getattr(e.data, "lease_id", None),
                        getattr(e.data, "provider_id", None),
                        getattr(e.data, "reason", None),
                    )
                    for e in log
                    if e.subject == stream
                ]
            reports = []
            if stuck:
                sub = await store.js.subscribe(
                    f"gf.in.provider.*.report.{stuck[0][0]}", ordered_consumer=True, stream="GF_INTAKE"
                )
                try:
                    while True:
                        m = await sub.next_msg(timeout=1.0)
                        reports.append((m.metadata.sequence.stream, m.data[:80]))
                except Exception:
                    pass
                await sub.unsubscribe()
                pid = stuck[0][2]
                history.append(("provider", [e.type for e in log if e.subject == f"provider.{pid}"]))
                seqs = {seq for seq, _ in reports}
                ins = {f"in-{q}" for q in seqs}
                history.append(("outcomes", [(e.type, e.id) for e in log if e.id.split(".")[0] in ins]))
            raise AssertionError(
                f"timed out: jobs {dict(statuses)}, tasks {dict(tasks)}; stuck {stuck} on providers {providers}; "
                f"history of the first: {history}; its reports: {reports}"
            )
        await asyncio.sleep(poll)


async def every_input_has_its_outcome(store: JetStreamEventStore, timeout: float = 30.0) -> list[Any]:
    """Wait until every message now in the intake stream has its outcome in the log; the log."""
    last = (await store.js.stream_info("GF_INTAKE")).state.last_seq
    _, log = await wait_for(store, lambda w: w.intake_low > last, timeout=timeout, poll=0.2)
    return log


def all_jobs_ended(n: int) -> Callable[[World], bool]:
    """At least ``n`` jobs, every one of them ended (completed, failed, cancelled or rejected)."""
    ended = ("completed", "failed", "cancelled", "rejected")
    return lambda w: len(w.jobs) >= n and all(j.status in ended for j in w.jobs.values())


def assert_exactly_once(log: list[Any]) -> None:
    """No task completed twice; every job's books balance."""
    completions = Counter(e.subject for e in log if isinstance(e.data, TaskCompleted))
    assert completions and max(completions.values()) == 1, completions.most_common(3)
    per_job: dict[str, list[int]] = {}
    for e in log:
        if isinstance(e.data, UsageMetered | SubmitterCharged | ProviderCredited):
            row = per_job.setdefault(e.data.job_id, [0, 0, 0])
            idx = 0 if isinstance(e.data, UsageMetered) else 1 if isinstance(e.data, SubmitterCharged) else 2
            row[idx] += e.data.amount_micros
    for job_id, (metered, charged, credited) in per_job.items():
        assert metered == charged == credited, (job_id, metered, charged, credited)


def intake_outcomes(log: list[Any]) -> Counter[int]:
    """How many outcomes each intake sequence got: facts (ids in-<seq>.<n>) or an explicit one."""
    from events.intake import InputAccepted, InputRejected

    out: Counter[int] = Counter()
    with_facts = set()
    for e in log:
        if isinstance(e.data, InputAccepted | InputRejected):
            out[e.data.intake_seq] += 1
        elif e.id.startswith("in-"):
            with_facts.add(int(e.id[3:].split(".", 1)[0]))
    for seq in with_facts:
        out[seq] += 1
    return out
