"""Big event logs, fast, in exactly the shape the write side writes them: for benchmarks of history.

Folding 10^6 events' worth of real work through the orchestrator would take hours, and a hand-made
generator drifts from the write side as soon as an event changes shape (issue 13 changes several).
So this module *records* the real thing once and then *replicates* it:

1. :func:`record_templates` starts a scratch nats-server, a real ``gpufleet orchestrator run``
   process and simulated providers (``gpufleet.sim``, the real provider protocol), and runs a few
   template jobs through them: a small completed no-op job, a completed 200-task no-op job, and a
   "live" job of long ``sleep`` tasks on its own provider, some leased and started, the rest queued.
   It then reads back every stored message of the domain log, raw.
2. :class:`LogWriter` publishes renamed copies of those messages to another server's events stream,
   pipelined with ``publish_async``: each copy gets its own submitter, job name (and, for a live
   copy, its own provider), fresh event ids, and the digests of inline results recomputed (a
   result names its task), so every reader (the orchestrator's fold, the client's digest checks)
   takes the log as real.

What is left out, on purpose: the intake stream and the intake outcome streams (a replicated
outcome would claim intake sequences that the new server's intake will hand out again), so the
provenance audit, which re-decides every fact from its intake message, would not accept such a log.
Event ids are renamed ``g<copy>-<id>``; ``in-<seq>`` ids would mark intake messages as handled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.store import JetStreamEventStore
from events.store.connection import Access, connect_nats
from events.subjects import EVENT_PREFIX, EVENTS_STREAM, intake_subject
from events.verification import result_bytes

__all__ = [
    "BIG_TASKS",
    "LogWriter",
    "Plan",
    "RawEvent",
    "Templates",
    "plan_log",
    "record_templates",
    "spawn_gpufleet",
]

#: Tokens the template run uses; each copy replaces them (they occur nowhere else in an event).
SUBMITTER = "zzsub"
SMALL_JOB = "zzjobs"
BIG_JOB = "zzjobb"
LIVE_JOB = "zzjobl"
LIVE_PROVIDER = "zzprovl"
#: The providers that ran the completed templates: registered once in every log, never renamed.
DONE_PROVIDERS = ("zzprovc0", "zzprovc1")
#: Tasks of the small completed template, of the big one (issue 13's "200-task job"), of the live one.
SMALL_TASKS = 10
BIG_TASKS = 200
LIVE_TASKS = 8
#: Slots of the live template's provider: that many live tasks are leased and started, the rest queued.
LIVE_SLOTS = 4


def spawn_gpufleet(*args: str, log: Path | None = None, level: str = "warning") -> subprocess.Popen[bytes]:
    """``python -m gpufleet ARGS`` with JSON logs at ``level``, to ``log`` when given (else discarded)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out: Any = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "gpufleet", "--log-format", "json", "--log-level", level, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log is not None:
            out.close()


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One stored event as the server returned it: its subject, body and the headers to publish again
    (the ``ce-*`` attributes; the server's own ``Nats-*`` headers are dropped)."""

    subject: str
    body: bytes
    headers: dict[str, str]

    @property
    def type(self) -> str:
        return self.headers.get("ce-type", "")


@dataclass
class Templates:
    """The recorded messages, by template, in log order."""

    #: The completed templates' providers: registered, calibrated, online (once per log).
    static: list[RawEvent] = field(default_factory=list)
    #: One completed job of ``SMALL_TASKS`` no-op tasks.
    small: list[RawEvent] = field(default_factory=list)
    #: One completed job of ``BIG_TASKS`` no-op tasks.
    big: list[RawEvent] = field(default_factory=list)
    #: One provider and one job of ``LIVE_TASKS`` long sleeps: ``LIVE_SLOTS`` leased and started.
    live: list[RawEvent] = field(default_factory=list)
    #: Recorded messages left out (intake outcomes, anything unexpected), by stream kind and type.
    dropped: Counter[str] = field(default_factory=Counter)
    #: Event types in the templates (for the report).
    types: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def live_leased(self) -> int:
        return sum(1 for e in self.live if e.type == "TaskStarted")

    @property
    def live_tasks(self) -> int:
        return sum(1 for e in self.live if e.type == "TaskCreated")


async def _wait_for(store: JetStreamEventStore, what: Callable[[], Any], timeout: float, label: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await what():
        if loop.time() > deadline:
            raise TimeoutError(f"template run: {label} did not happen within {timeout:g} s")
        await asyncio.sleep(0.2)


async def record_templates(server: Any, work: Path) -> Templates:
    """Run the template jobs through a real orchestrator on ``server`` (an ``EmbeddedServer`` with its
    streams ensured, and nothing else on it) and return what it wrote."""
    from gpufleet.sim import SimulatedProvider

    t0 = time.perf_counter()
    orchestrator = server.access("orchestrator")
    proc = spawn_gpufleet(
        "orchestrator", "run", "--nats", server.url, "--creds", str(orchestrator.creds),
        "--data-dir", str(work / "template-orchestrator"), "--heartbeat-timeout", "600",
        log=work / "template-orchestrator.log",
    )  # fmt: skip
    sims: list[SimulatedProvider] = []
    store = await JetStreamEventStore.connect(orchestrator, name="bench-template")
    nc = await connect_nats(server.access("submitter", SUBMITTER), name="bench-template-submitter")
    try:
        for pid in DONE_PROVIDERS:
            sims.append(await SimulatedProvider.connect(server.access("provider", pid), slots=16, workloads=("noop",)))
        for sim in sims:
            await sim.start()
        js = nc.jetstream()

        async def ended(job: str) -> bool:
            return any(e.type == "JobCompleted" for e in await store.read_stream(f"job.{SUBMITTER}.{job}"))

        for job, count in ((SMALL_JOB, SMALL_TASKS), (BIG_JOB, BIG_TASKS)):
            body = json.dumps({"workload": "noop", "split": {"kind": "count", "count": count}}).encode()
            await js.publish(intake_subject("submitter", SUBMITTER, "submit", job), body)
            await _wait_for(store, lambda job=job: ended(job), 120.0, f"job {job}")  # type: ignore[misc]
        live = await SimulatedProvider.connect(
            server.access("provider", LIVE_PROVIDER), slots=LIVE_SLOTS, workloads=("sleep",)
        )
        sims.append(live)
        await live.start()
        spec = {
            "workload": "sleep",
            "params": {"seconds": 3600.0, "steps": 4},
            "split": {"kind": "count", "count": LIVE_TASKS},
            "timeout_s": 86400.0,
        }
        await js.publish(intake_subject("submitter", SUBMITTER, "submit", LIVE_JOB), json.dumps(spec).encode())

        async def started() -> bool:
            n = 0
            async for raw in store.read_raw(subject=f"{EVENT_PREFIX}.task.{SUBMITTER}.{LIVE_JOB}.*"):
                n += raw.headers.get("ce-type") == "TaskStarted"
            return n >= LIVE_SLOTS

        await _wait_for(store, started, 60.0, "the live tasks' starts")
        for sim in sims:
            await sim.kill()  # gone without a word: their leases stay live in the log
        proc.terminate()
        proc.wait(15)
        out = Templates()
        prefix = EVENT_PREFIX + "."
        async for raw in store.read_raw(end=await store.head()):
            subject = raw.subject[len(prefix) :]
            headers = {k: v for k, v in raw.headers.items() if not k.startswith("Nats-")}
            event = RawEvent(subject, raw.data, headers)
            kind = subject.split(".", 1)[0]
            if subject in (f"provider.{p}" for p in DONE_PROVIDERS):
                out.static.append(event)
            elif subject == f"provider.{LIVE_PROVIDER}" or f".{SUBMITTER}.{LIVE_JOB}" in f".{subject}":
                out.live.append(event)
            elif f"{SUBMITTER}.{SMALL_JOB}" in subject:
                out.small.append(event)
            elif f"{SUBMITTER}.{BIG_JOB}" in subject:
                out.big.append(event)
            else:
                out.dropped[f"{kind} {event.type}"] += 1
                continue
            out.types[event.type] += 1
        out.seconds = time.perf_counter() - t0
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for sim in sims:
            await sim.kill()
        await nc.close()
        await store.close()


@dataclass(frozen=True, slots=True)
class Plan:
    """What a log of about ``events`` events holds: how many copies of each template, in what order."""

    events: int
    small_copies: int
    live_copies: int
    #: Where the big (target) job goes: after this many small copies.
    big_after: int


def plan_log(t: Templates, events: int, live_tasks: int, *, live_share: float = 0.3) -> Plan:
    """Copies for a log of about ``events`` events with about ``live_tasks`` live tasks (fewer, if
    they would take more than ``live_share`` of the log): the completed jobs fill the rest."""
    per_live = t.live_tasks or 1
    live_copies = -(-live_tasks // per_live)
    live_copies = min(live_copies, int(events * live_share) // max(1, len(t.live)))
    rest = events - len(t.static) - len(t.big) - live_copies * len(t.live)
    small = max(0, round(rest / max(1, len(t.small))))
    return Plan(events, small, live_copies, small // 2)


class LogWriter:
    """Publishes renamed copies of the templates to an events stream, many in flight at once.

    nats-py's ``publish_async`` costs about 150 us of CPU per message here (a future, a reply and a
    header check each), which makes 10^6 events take minutes. So the writer builds the protocol's
    ``HPUB`` frames itself, with no reply, and hands them to the connection's write buffer. Every
    ``check_every`` messages it reads the stream's last position and waits while more than
    ``in_flight`` messages are not stored yet; at the end it waits for every one (a message the
    server refused would leave the stream short: a clear error, never a silent gap).
    """

    def __init__(
        self,
        nc: Any,
        templates: Templates,
        *,
        stream: str = EVENTS_STREAM,
        prefix: str = EVENT_PREFIX,
        in_flight: int = 20_000,
        check_every: int = 5_000,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.t = templates
        self.stream = stream
        self.prefix = prefix
        self.in_flight = in_flight
        self.check_every = check_every
        self.written = 0
        self._base = 0
        self._copy = 0
        self._cache: dict[int, list[tuple[RawEvent, list[str]]]] = {}
        self._chunk = bytearray()

    async def _stored(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq) - self._base

    async def _open(self) -> None:
        self._base = await self._stored()

    async def _send(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        n = self.written = self.written + 1
        hdr = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        chunk = self._chunk
        chunk += f"HPUB {subject} {len(hdr)} {len(hdr) + len(body)}\r\n".encode()
        chunk += hdr
        chunk += body
        chunk += b"\r\n"
        if len(chunk) > 256 * 1024:
            await self._flush_chunk()
        if n % self.check_every == 0:
            await self._flush_chunk()
            await self._wait_stored(n - self.in_flight)

    async def _wait_stored(self, at_least: int, timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = -1
        while (stored := await self._stored()) < at_least:
            if stored != last:
                last, deadline = stored, loop.time() + timeout  # moving: keep waiting
            elif loop.time() > deadline:
                raise RuntimeError(f"wrote {self.written} events, the stream stored {stored}: some were refused")
            await asyncio.sleep(0.02)

    async def _flush_chunk(self) -> None:
        if self._chunk:
            await self.nc._send_command(bytes(self._chunk))  # the connection's own write buffer
            self._chunk.clear()
            await self.nc._flush_pending()

    async def _close(self) -> None:
        await self._flush_chunk()
        await self.nc.flush()
        await self._wait_stored(self.written, timeout=10.0)

    def _compiled(self, events: list[RawEvent]) -> list[tuple[RawEvent, list[str]]]:
        """Each event with the lease ids it names (renamed per copy, so that every lease is its own)."""
        key = id(events)
        if key not in self._cache:
            leases = [json.loads(e.body)["lease_id"] for e in events if e.type == "TaskLeased"]
            self._cache[key] = [(e, [x for x in leases if x.encode() in e.body]) for e in events]
        return self._cache[key]

    async def _emit(self, events: list[RawEvent], renames: list[tuple[str, str]]) -> None:
        self._copy += 1
        copy = self._copy
        tag = f"g{copy}-"
        brenames = [(a.encode(), b.encode()) for a, b in renames]
        send = self._send
        leases: dict[str, str] = {}
        for e, named in self._compiled(events):
            subject, body = e.subject, e.body
            for a, b in renames:
                subject = subject.replace(a, b)
            for ba, bb in brenames:
                body = body.replace(ba, bb)
            for old in named:
                new = leases.setdefault(old, f"l{copy:08x}{len(leases):08x}")
                body = body.replace(old.encode(), new.encode())
            headers: dict[str, str] = {}
            for k, value in e.headers.items():
                for a, b in renames:
                    value = value.replace(a, b)  # noqa: PLW2901
                headers[k] = value
            new_id = tag + e.headers["ce-id"]
            headers["ce-id"] = new_id
            headers["Nats-Msg-Id"] = new_id
            if "ce-causationid" in headers:
                headers["ce-causationid"] = tag + headers["ce-causationid"]
            headers["ce-subject"] = subject
            if e.type == "TaskCompleted":
                body = _redigest(body)
            await send(f"{self.prefix}.{subject}", body, headers)

    async def write(
        self, plan: Plan, *, target: tuple[str, str] = ("alice", "target"), on_progress: Any = None
    ) -> None:
        """The whole log: providers, completed jobs (the big one in the middle), then the live work."""
        await self._open()
        await self._emit(self.t.static, [])
        submitters = max(1, -(-plan.small_copies // 200))
        for k in range(plan.small_copies):
            if k == plan.big_after:
                await self._emit(self.t.big, [(SUBMITTER, target[0]), (BIG_JOB, target[1])])
            await self._emit(self.t.small, [(SUBMITTER, f"c{k % submitters}"), (SMALL_JOB, f"j{k}")])
            if on_progress is not None and k % 1000 == 0:
                on_progress(self.written)
        if plan.small_copies <= plan.big_after:
            await self._emit(self.t.big, [(SUBMITTER, target[0]), (BIG_JOB, target[1])])
        # Live work: each submitter's waiting tasks stay well inside its task window (1,000).
        queued = max(1, self.t.live_tasks - self.t.live_leased)
        live_submitters = max(1, -(-plan.live_copies * queued // 500))
        for k in range(plan.live_copies):
            renames = [(SUBMITTER, f"l{k % live_submitters}"), (LIVE_JOB, f"w{k}"), (LIVE_PROVIDER, f"lp{k}")]
            await self._emit(self.t.live, renames)
            if on_progress is not None and k % 1000 == 0:
                on_progress(self.written)
        await self._close()


def _redigest(body: bytes) -> bytes:
    """A completion's inline result names its task: after renaming, its sha256 and size are redone."""
    obj = json.loads(body)
    result = obj.get("result")
    if isinstance(result, dict) and result.get("inline") is not None:
        data = result_bytes(result["inline"])
        result["sha256"] = hashlib.sha256(data).hexdigest()
        result["size"] = len(data)
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return body


def access_note(a: Access) -> str:
    """Where a connection goes, for messages."""
    return a.url
