"""Event store throughput against the raw nats-py floor, measured side by side in one run.

Starts its own nats-server (JetStream, file storage, in a temp directory) and measures, interleaved so
that machine noise hits both sides:

- raw ``js.publish`` one at a time        vs  the store's single-event appends with optimistic concurrency
- raw ``js.publish_async`` (bounded)      vs  the store's atomic-batch appends, and concurrent appends
- raw ordered-consumer read               vs  the store's ``read_all`` replay (decoding included)

Raw and store send the same bytes: the body and ``ce-*`` headers of a representative event
(``TaskProgressed``) from ``events.codec.encode``; the store also encodes inside each append, and adds
the expected-sequence header. Every stream has the store's exact configuration. Each figure is the
median of ``--repeat`` runs.

    .venv/bin/python bench/event_store.py [--events N] [--repeat K] [--profile WHAT]

``--cluster`` measures instead what replication costs: the same appends (and the raw floor) on a
single server with R1 streams and on a local 3-node cluster (``gpufleet.cluster.LocalCluster``, what
``gpufleet up --cluster 3`` runs) with R3 streams, in the same run, interleaved; appends/s and each
append's p50/p99 latency, and R3 against R1.

    .venv/bin/python -P bench/event_store.py --cluster [--events N] [--repeat K]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import __version__ as nats_version
from nats.js import api

# The repository first: run as a script, this folder is first on the path, and its gpu_runtime.py
# (the GPU benchmark) would shadow the gpu_runtime package that gpufleet.network imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events import Envelope, encode, new_envelope
from events.store import JetStreamEventStore, StreamSettings, ensure_stream
from events.store.connection import Access, connect_nats
from events.task import TaskProgressed
from gpufleet.auth import AccountLimits
from gpufleet.cluster import LocalCluster
from gpufleet.logging import configure_logging
from gpufleet.natsserver import find_nats_server
from gpufleet.network import EmbeddedServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Plan:
    events: int
    repeat: int
    streams: int
    batch: int
    inflight: int
    batches_inflight: int


@dataclass
class Row:
    name: str
    floor: str | None = None  # the raw row the target is set against
    target: float | None = None
    same: str | None = None  # the raw row doing the same shape of work, when that is another
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # this process's CPU per message

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def envelopes(run: str, plan: Plan) -> list[Envelope]:
    """``plan.events`` progress events, round-robin over ``plan.streams`` task streams."""
    out = []
    for i in range(plan.events):
        s = i % plan.streams
        event = TaskProgressed(
            at=T0,
            task_id=f"j{run}-{s}",
            lease_id=f"l{run}-{s}",
            provider_id="provider-0001",
            fraction=(i // plan.streams) / (plan.events // plan.streams + 1),
            rate=123.5,
            unit="steps",
            message="step completed on device 0",
        )
        out.append(new_envelope(f"task.j{run}-{s}", event, id=f"{run}-{i}", source="bench/event_store"))
    return out


def raw_messages(prefix: str, envs: list[Envelope]) -> list[tuple[str, bytes, dict[str, str]]]:
    """What the store would send for each envelope, minus the expected-sequence header."""
    out = []
    for env in envs:
        body, headers = encode(env)
        out.append((f"{prefix}.{env.subject}", body, headers))
    return out


_names = itertools.count(1)


def fresh_settings(kind: str) -> StreamSettings:
    n = next(_names)
    return StreamSettings(name=f"BENCH_{kind.upper()}_{n}", prefix=f"bench{n}.ev")


# ---- raw floor ---------------------------------------------------------------------------------------


async def raw_publish(js: Any, msgs: list[tuple[str, bytes, dict[str, str]]]) -> None:
    for subject, body, headers in msgs:
        await js.publish(subject, body, headers=dict(headers))


async def raw_publish_async(nc: Any, msgs: list[tuple[str, bytes, dict[str, str]]], inflight: int) -> None:
    js = nc.jetstream(publish_async_max_pending=inflight)
    futures = [await js.publish_async(s, b, headers=dict(h)) for s, b, h in msgs]
    await js.publish_async_completed()
    failed = [f for f in futures if f.exception() is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} raw async publishes failed: {failed[0].exception()}")


async def raw_atomic_batch(nc: Any, msgs: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """One ADR-50 atomic batch, as a client without the store would send it."""
    batch_id = nc._nuid.next().decode()
    last = len(msgs)
    for i, (subject, body, headers) in enumerate(msgs, start=1):
        h = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
        if i < last:
            await nc.publish(subject, body, headers=h)
        else:
            h["Nats-Batch-Commit"] = "1"
            ack = json.loads((await nc.request(subject, body, timeout=10.0, headers=h)).data)
            if "error" in ack:
                raise RuntimeError(f"raw atomic batch failed: {ack['error']}")


async def raw_batches(nc: Any, batches: list[list[tuple[str, bytes, dict[str, str]]]], inflight: int) -> None:
    sem = asyncio.Semaphore(inflight)

    async def one(batch: list[tuple[str, bytes, dict[str, str]]]) -> None:
        async with sem:
            await raw_atomic_batch(nc, batch)

    if inflight == 1:
        for batch in batches:
            await raw_atomic_batch(nc, batch)
    else:
        await asyncio.gather(*(one(b) for b in batches))


async def raw_requests(nc: Any, msgs: list[tuple[str, bytes, dict[str, str]]], inflight: int) -> None:
    """One request-reply publish per message, many subjects at once (each in order), bounded."""
    sem = asyncio.Semaphore(inflight)
    by_subject: dict[str, list[tuple[str, bytes, dict[str, str]]]] = {}
    for m in msgs:
        by_subject.setdefault(m[0], []).append(m)

    async def writer(own: list[tuple[str, bytes, dict[str, str]]]) -> None:
        for subject, body, headers in own:
            async with sem:
                ack = json.loads((await nc.request(subject, body, timeout=10.0, headers=dict(headers))).data)
                if "error" in ack:
                    raise RuntimeError(f"raw publish failed: {ack['error']}")

    await asyncio.gather(*(writer(own) for own in by_subject.values()))


def raw_batch_plan(prefix: str, envs: list[Envelope], size: int) -> list[list[tuple[str, bytes, dict[str, str]]]]:
    """The same batches as the store's, round-robin over the streams, as raw messages."""
    plan = per_stream_batches(envs, size)
    ordered = [b for round_ in itertools.zip_longest(*plan.values()) for b in round_ if b]
    return [raw_messages(prefix, batch) for batch in ordered]


async def raw_read(js: Any, settings: StreamSettings, n: int) -> None:
    sub = await js.subscribe(
        f"{settings.prefix}.>",
        stream=settings.name,
        ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
        idle_heartbeat=2.0,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    count = 0
    async for _ in sub.messages:
        count += 1
        if count >= n:
            break
    await sub.unsubscribe()


# ---- the store ---------------------------------------------------------------------------------------


async def store_sequential(store: JetStreamEventStore, envs: list[Envelope]) -> None:
    positions: dict[str, int] = {}
    for env in envs:
        r = await store.append(env.subject, [env], positions.get(env.subject, 0))
        positions[env.subject] = r.last


def per_stream_batches(envs: list[Envelope], size: int) -> dict[str, list[list[Envelope]]]:
    by_stream: dict[str, list[Envelope]] = {}
    for env in envs:
        by_stream.setdefault(env.subject, []).append(env)
    return {s: [evs[i : i + size] for i in range(0, len(evs), size)] for s, evs in by_stream.items()}


async def store_batches(store: JetStreamEventStore, envs: list[Envelope], size: int) -> None:
    """Atomic batches of ``size`` events, one append at a time, round-robin over the streams."""
    plan = per_stream_batches(envs, size)
    positions: dict[str, int] = {}
    for round_ in itertools.zip_longest(*plan.values()):
        for batch in round_:
            if batch:
                stream = batch[0].subject
                r = await store.append(stream, batch, positions.get(stream, 0))
                positions[stream] = r.last


async def store_concurrent(store: JetStreamEventStore, envs: list[Envelope], size: int, inflight: int) -> None:
    """Appends of ``size`` events, many streams at once (each stream's appends in order), bounded."""
    sem = asyncio.Semaphore(inflight)

    async def writer(batches: list[list[Envelope]]) -> None:
        position = 0
        for batch in batches:
            async with sem:
                position = (await store.append(batch[0].subject, batch, position)).last

    await asyncio.gather(*(writer(b) for b in per_stream_batches(envs, size).values()))


async def store_read_all(store: JetStreamEventStore, n: int) -> None:
    count = 0
    async for _ in store.read_all():
        count += 1
    if count != n:
        raise RuntimeError(f"read_all gave {count} events, not {n}")


# ---- running -----------------------------------------------------------------------------------------


async def timed(row: Row, fn: Callable[[], Awaitable[None]], n: int, profile: cProfile.Profile | None = None) -> None:
    """Run ``fn`` once; record its rate (messages per wall second) and this process's CPU per message."""
    if profile is not None:
        profile.enable()
    start, cpu = time.perf_counter(), time.process_time()
    await fn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if profile is not None:
        profile.disable()
    row.rates.append(n / elapsed)
    row.cpu_us.append(cpu / n * 1e6)


@dataclass
class Profiling:
    what: str | None
    profile: cProfile.Profile = field(default_factory=cProfile.Profile)

    def of(self, name: str) -> cProfile.Profile | None:
        return self.profile if self.what == name else None


async def one_round(access: Access, plan: Plan, run: int, rows: dict[str, Row], prof: Profiling) -> None:
    # Both sides as the same identity on the same secured server: the operator's unrestricted user.
    raw_nc = await connect_nats(access, name="bench-raw")
    store_nc = await connect_nats(access, name="bench-store")
    raw_js = raw_nc.jetstream(timeout=10.0)
    n = plan.events
    created: list[str] = []

    async def raw_stream(kind: str) -> StreamSettings:
        settings = fresh_settings(kind)
        await ensure_stream(raw_js, settings.config())
        created.append(settings.name)
        return settings

    async def store_on_fresh_stream(kind: str) -> JetStreamEventStore:
        settings = fresh_settings(kind)
        store = JetStreamEventStore(store_nc, settings=settings, timeout=10.0, max_inflight_batches=50)
        await store.ensure(create=True)
        created.append(settings.name)
        return store

    envs = envelopes(str(run), plan)

    p = prof.of

    # Raw and store alternate; odd rounds go in the opposite order, so neither always goes first.
    async def m_raw_seq() -> None:
        settings = await raw_stream("rawseq")
        msgs = raw_messages(settings.prefix, envs)
        await timed(rows["raw_seq"], lambda: raw_publish(raw_js, msgs), n, p("raw_seq"))
        m_raw_seq.settings = settings  # type: ignore[attr-defined]

    async def m_store_seq() -> None:
        store = await store_on_fresh_stream("storeseq")
        await timed(rows["store_seq"], lambda: store_sequential(store, envs), n, p("store_seq"))
        m_store_seq.store = store  # type: ignore[attr-defined]

    async def m_raw_async() -> None:
        settings = await raw_stream("rawasync")
        msgs = raw_messages(settings.prefix, envs)
        await timed(rows["raw_async"], lambda: raw_publish_async(raw_nc, msgs, plan.inflight), n, p("raw_async"))

    async def m_raw_req_conc() -> None:
        settings = await raw_stream("rawreq")
        msgs = raw_messages(settings.prefix, envs)
        await timed(rows["raw_req_conc"], lambda: raw_requests(raw_nc, msgs, plan.inflight), n, p("raw_req_conc"))

    async def m_raw_batch() -> None:
        settings = await raw_stream("rawbatch")
        batches = raw_batch_plan(settings.prefix, envs, plan.batch)
        await timed(rows["raw_batch"], lambda: raw_batches(raw_nc, batches, 1), n, p("raw_batch"))

    async def m_raw_batch_conc() -> None:
        settings = await raw_stream("rawbatchc")
        batches = raw_batch_plan(settings.prefix, envs, plan.batch)
        fn = lambda: raw_batches(raw_nc, batches, plan.batches_inflight)  # noqa: E731
        await timed(rows["raw_batch_conc"], fn, n, p("raw_batch_conc"))

    async def m_store_batch() -> None:
        store = await store_on_fresh_stream("storebatch")
        await timed(rows["store_batch"], lambda: store_batches(store, envs, plan.batch), n, p("store_batch"))

    async def m_store_batch_conc() -> None:
        store = await store_on_fresh_stream("storebatchc")
        fn = lambda: store_concurrent(store, envs, plan.batch, plan.batches_inflight)  # noqa: E731
        await timed(rows["store_batch_conc"], fn, n, p("store_batch_conc"))

    async def m_store_conc() -> None:
        store = await store_on_fresh_stream("storeconc")
        fn = lambda: store_concurrent(store, envs, 1, plan.inflight)  # noqa: E731
        await timed(rows["store_conc"], fn, n, p("store_conc"))

    async def m_raw_read() -> None:
        settings = m_raw_seq.settings  # type: ignore[attr-defined]
        await timed(rows["raw_read"], lambda: raw_read(raw_js, settings, n), n, p("raw_read"))

    async def m_store_read() -> None:
        store = m_store_seq.store  # type: ignore[attr-defined]
        await timed(rows["store_read"], lambda: store_read_all(store, n), n, p("store_read"))

    groups = [
        (m_raw_seq, m_store_seq),
        (m_raw_async, m_store_conc, m_raw_req_conc),
        (m_raw_batch, m_store_batch),
        (m_raw_batch_conc, m_store_batch_conc),
        (m_raw_read, m_store_read),
    ]
    for group in groups:
        for m in group if run % 2 == 0 else group[::-1]:
            await m()

    for name in created:
        await raw_js.delete_stream(name)
    await raw_nc.close()
    await store_nc.close()


def print_table(rows: dict[str, Row], plan: Plan, body_bytes: int, header_bytes: int, server: str) -> bool:
    print()
    print(
        f"gpufleet event store vs raw nats-py  |  {plan.events} events x {plan.repeat} runs (median)  |  "
        f"body {body_bytes} B + headers ~{header_bytes} B  |  {plan.streams} streams"
    )
    print(
        f"python {platform.python_version()}, nats-py {nats_version}, {server}, {platform.machine()} x{_cpus()} cores"
    )
    print()
    head = (
        f"{'measurement':<52} {'msg/s':>8} {'min..max':>15} {'cpu us/msg':>10} "
        f"{'vs same-shape raw':>18} {'vs target floor':>16}"
    )
    print(head)
    print("-" * len(head))
    ok = True
    for row in rows.values():
        spread = f"{min(row.rates):,.0f}..{max(row.rates):,.0f}"
        same = versus = ""
        if row.same is not None:
            same = f"{row.median / rows[row.same].median:.2f}x"
        if row.floor is not None and row.target is not None:
            r = row.median / rows[row.floor].median
            met = r >= row.target
            ok &= met
            versus = f"{r:.2f}x {'ok' if met else 'MISS'} (>={row.target:.1f})"
            same = same or f"{r:.2f}x"
        cpu = f"{statistics.median(row.cpu_us):.0f}"
        print(f"{row.name:<52} {row.median:>8,.0f} {spread:>15} {cpu:>10} {same:>18} {versus:>16}")
    print()
    return ok


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _server_version() -> str:
    try:
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        return "nats-server (version unknown)"


# ---- R3 on a cluster against R1 on one server ------------------------------------------------------


@dataclass
class LatencyRow:
    """One measurement's rates (per run) and every append's latency (all runs together)."""

    name: str
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def _timed_each(row: LatencyRow, appends: list[Callable[[], Awaitable[float]]], inflight: int) -> None:
    """Run ``appends`` (at most ``inflight`` at once; each returns its own latency); the rate, and the
    latencies."""
    sem = asyncio.Semaphore(inflight)

    async def one(fn: Callable[[], Awaitable[float]]) -> None:
        async with sem:
            row.latencies.append(await fn())

    start = time.perf_counter()
    if inflight == 1:
        for fn in appends:
            await one(fn)
    else:
        await asyncio.gather(*(one(fn) for fn in appends))
    row.rates.append(len(appends) / (time.perf_counter() - start))


async def replication_round(access: Access, replicas: int, plan: Plan, run: int, rows: dict[str, LatencyRow]) -> None:
    """Raw publishes and store appends, one at a time and concurrently, on fresh R``replicas`` streams."""
    nc = await connect_nats(access, name=f"bench-r{replicas}")
    js = nc.jetstream(timeout=10.0)
    envs = envelopes(f"r{replicas}x{run}", plan)
    created: list[str] = []

    def fresh(kind: str) -> StreamSettings:
        n = next(_names)
        settings = StreamSettings(
            name=f"BENCH_R{replicas}_{kind.upper()}_{n}", prefix=f"benchr{n}.ev", replicas=replicas
        )
        created.append(settings.name)
        return settings

    try:
        raw = fresh("raw")
        await ensure_stream(js, raw.config())
        msgs = raw_messages(raw.prefix, envs)

        def publish(m: tuple[str, bytes, dict[str, str]]) -> Callable[[], Awaitable[float]]:
            async def go() -> float:
                t = time.perf_counter()
                await js.publish(m[0], m[1], headers=dict(m[2]))
                return time.perf_counter() - t

            return go

        await _timed_each(rows[f"r{replicas}_raw"], [publish(m) for m in msgs], 1)

        for label, inflight in (("seq", 1), ("conc", plan.inflight)):
            store = JetStreamEventStore(nc, settings=fresh(f"store{label}"), timeout=10.0, max_inflight_batches=50)
            await store.ensure(create=True)
            positions: dict[str, int] = {}
            locks: dict[str, asyncio.Lock] = {}

            def append(
                env: Envelope,
                store: JetStreamEventStore = store,
                positions: dict[str, int] = positions,
                locks: dict[str, asyncio.Lock] = locks,
            ) -> Callable[[], Awaitable[float]]:
                async def go() -> float:
                    # Each aggregate's appends in order (its expected position), many aggregates at
                    # once; the latency is the append's own, not the wait for the one before it.
                    async with locks.setdefault(env.subject, asyncio.Lock()):
                        t = time.perf_counter()
                        r = await store.append(env.subject, [env], positions.get(env.subject, 0))
                        positions[env.subject] = r.last
                        return time.perf_counter() - t

                return go

            await _timed_each(rows[f"r{replicas}_store_{label}"], [append(e) for e in envs], inflight)
    finally:
        for name in created:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()


def print_replication(rows: dict[str, LatencyRow], plan: Plan, server: str) -> None:
    print()
    print(
        f"R3 on a local 3-node cluster vs R1 on one server  |  {plan.events} events x {plan.repeat} runs  |  "
        f"{plan.streams} streams  |  rate: median run; latency: every append of every run"
    )
    print(
        f"python {platform.python_version()}, nats-py {nats_version}, {server}, {platform.machine()} x{_cpus()} cores"
    )
    print()
    head = f"{'measurement':<50} {'appends/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'R3/R1 rate':>11} {'R3/R1 p50':>10}"
    print(head)
    print("-" * len(head))
    for key, row in rows.items():
        ratio = p50_ratio = ""
        if key.startswith("r3_"):
            r1 = rows["r1_" + key[3:]]
            ratio = f"{statistics.median(row.rates) / statistics.median(r1.rates):.2f}x"
            p50_ratio = f"{row.pct(0.5) / r1.pct(0.5):.2f}x"
        print(
            f"{row.name:<50} {statistics.median(row.rates):>10,.0f} {row.pct(0.5):>8.2f} {row.pct(0.99):>8.2f} "
            f"{ratio:>11} {p50_ratio:>10}"
        )
    print()


async def replication(plan: Plan) -> int:
    rows: dict[str, LatencyRow] = {}
    for r in (1, 3):
        where = "one server" if r == 1 else "3-node cluster"
        rows[f"r{r}_raw"] = LatencyRow(f"R{r} raw js.publish, sequential ({where})")
        rows[f"r{r}_store_seq"] = LatencyRow(f"R{r} store append 1 + expected, sequential")
        rows[f"r{r}_store_conc"] = LatencyRow(f"R{r} store append 1 + expected, <={plan.inflight} in flight")
    configure_logging("json", "warning", sys.stderr)
    limits = AccountLimits(streams=10_000)
    with tempfile.TemporaryDirectory(prefix="gf-bench-r3-") as tmp:
        single = EmbeddedServer(Path(tmp) / "r1", limits=limits).start()
        cluster = LocalCluster(Path(tmp) / "r3", 3, limits=limits).start()
        try:
            await cluster.wait_formed()
            targets = {
                1: single.unrestricted(),
                3: Access(cluster.url, cluster.authority.unrestricted_creds()),
            }
            for run in range(plan.repeat):
                for r in (1, 3) if run % 2 == 0 else (3, 1):
                    await replication_round(targets[r], r, plan, run, rows)
                print(f"  run {run + 1}/{plan.repeat} done", file=sys.stderr)
        finally:
            cluster.stop()
            single.stop()
    print_replication(rows, plan, _server_version())
    return 0


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000, help="events per measurement (default 2000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each measurement; the median is shown")
    ap.add_argument("--streams", type=int, default=250, help="aggregate streams the events spread over")
    ap.add_argument("--batch", type=int, default=10, help="events per atomic-batch append")
    ap.add_argument("--inflight", type=int, default=250, help="bound on single appends / async publishes")
    ap.add_argument("--batches-inflight", type=int, default=32, help="bound on atomic batches in flight")
    ap.add_argument(
        "--profile",
        choices=["raw_seq", "store_seq", "raw_async", "raw_req_conc", "store_conc", "raw_batch", "store_batch",
                 "raw_batch_conc", "store_batch_conc", "raw_read", "store_read"],
        help="cProfile this measurement (all runs) and print the top functions",
    )  # fmt: skip
    ap.add_argument(
        "--cluster", action="store_true", help="measure R3 on a local 3-node cluster against R1 on one server instead"
    )
    args = ap.parse_args(argv)
    plan = Plan(args.events, args.repeat, args.streams, args.batch, args.inflight, args.batches_inflight)
    if args.cluster:
        return await replication(plan)
    rows = {
        "raw_seq": Row("raw js.publish, sequential"),
        "store_seq": Row("store append 1 event + expected, sequential", "raw_seq", 0.8),
        "raw_async": Row(f"raw js.publish_async, <={plan.inflight} in flight"),
        "raw_req_conc": Row(f"raw request-reply publish, <={plan.inflight} in flight"),
        "store_conc": Row(
            f"store append 1 event + expected, <={plan.inflight} in flight", "raw_async", 0.5, "raw_req_conc"
        ),
        "raw_batch": Row(f"raw atomic batch of {plan.batch}, sequential"),
        "store_batch": Row(f"store append {plan.batch} (atomic batch), sequential", "raw_async", 0.5, "raw_batch"),
        "raw_batch_conc": Row(f"raw atomic batch of {plan.batch}, <={plan.batches_inflight} in flight"),
        "store_batch_conc": Row(
            f"store append {plan.batch} (atomic), <={plan.batches_inflight} in flight",
            "raw_async",
            0.5,
            "raw_batch_conc",
        ),
        "raw_read": Row("raw ordered consumer read"),
        "store_read": Row("store read_all (ordered consumer + decode)", "raw_read", 0.5),
    }
    sample = envelopes("x", plan)[0]
    body, headers = encode(sample)
    header_bytes = sum(len(k) + len(v) + 4 for k, v in headers.items())
    prof = Profiling(args.profile)
    # Production logging: info and above (the store's per-append debug line is then a no-op).
    configure_logging("json", "info", sys.stderr)
    with tempfile.TemporaryDirectory(prefix="gf-bench-") as tmp:
        server = EmbeddedServer(Path(tmp) / "net", limits=AccountLimits(streams=10_000)).start()
        try:
            for run in range(plan.repeat):
                await one_round(server.unrestricted(), plan, run, rows, prof)
                print(f"  run {run + 1}/{plan.repeat} done", file=sys.stderr)
        finally:
            server.stop()
    ok = print_table(rows, plan, len(body), header_bytes, _server_version())
    if args.profile:
        pstats.Stats(prof.profile).sort_stats("tottime").print_stats(25)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
