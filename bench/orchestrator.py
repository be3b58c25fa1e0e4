"""Orchestrator benchmark: end-to-end no-op throughput and latency, raw floors, Ray, scheduler cost.

Run: ``python bench/orchestrator.py`` (``--help`` for sizes). It starts its own secured nats-server
(as ``gpufleet up`` does), an orchestrator process and a simulated-provider process, each with
credentials of its own, and measures in the same run:

- end-to-end no-op tasks/s, submit to completed, every transition durable in JetStream;
- p50/p99 latency from submit to completed (one single-task job at a time);
- raw ``publish_async`` to the same server, and the ceiling it implies: raw rate / events per task;
- Ray ``@ray.remote`` no-op tasks on the same machine (if ``ray`` is installed: the ``bench`` extra);
- scheduler decisions per second with 100 to 100,000 simulated providers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.scheduler import PendingTask, Scheduler
from events.store import JetStreamEventStore
from events.store.connection import Access, connect_nats
from events.subjects import intake_subject
from events.types import Calibration, Capabilities, Estimate, Resources
from gpufleet.network import EmbeddedServer

console = Console()


def spawn(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gpufleet", "--log-format", "json", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def raw_publish_async(access: Access, n: int) -> float:
    """Raw nats-py JetStream publish_async, bounded in flight, to its own stream on the same server
    (as the operator's unrestricted user: the floor has no permissions to check but the account's)."""
    from nats.js.api import StreamConfig

    nc = await connect_nats(access, name="bench-raw")
    js = nc.jetstream(publish_async_max_pending=4000)
    await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"]))
    body = b'{"type":"TaskProgressed","v":1,"at":"2026-01-01T00:00:00Z","task_id":"x","fraction":0.5}'
    t0 = time.perf_counter()
    for i in range(n):
        await js.publish_async(f"bench.raw.{i % 64}", body, headers={"Nats-Msg-Id": f"r{i}"})
    await js.publish_async_completed()
    dt = time.perf_counter() - t0
    await js.delete_stream("BENCH_RAW")
    await nc.close()
    return n / dt


async def watch_jobs(store: JetStreamEventStore, after: int, want: set[str], done: dict[str, float]) -> None:
    """Watch job streams only, as a submitter does (decoding every task event would load the CPU)."""
    from nats.js import api

    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1, filter_subject="gf.ev.job.>"
    )
    sub = await store.js.subscribe("gf.ev.job.>", stream="GF_EVENTS", ordered_consumer=True, config=config)
    try:
        async for msg in sub.messages:
            if msg.headers and msg.headers.get("ce-type") == "JobCompleted":
                job_id = msg.subject.rsplit(".", 1)[1]  # gf.ev.job.<submitter>.<name>: the name
                if job_id in want:
                    done[job_id] = time.perf_counter()
                    if len(done) >= len(want):
                        return
    finally:
        await sub.unsubscribe()


async def throughput(
    server: EmbeddedServer, store: JetStreamEventStore, jobs: int, tasks: int, tag: str
) -> tuple[float, float]:
    """Four submitters, each on a connection with its own credentials, share ``jobs`` jobs."""
    who = [f"u{i}" for i in range(4)]
    conns = [await connect_nats(server.access("submitter", w), name=f"bench-{w}") for w in who]
    want = {f"{tag}{j}" for j in range(jobs)}
    done: dict[str, float] = {}
    head = await store.head()
    watcher = asyncio.create_task(watch_jobs(store, head, want, done))
    body = json.dumps({"workload": "noop", "split": {"kind": "count", "count": tasks}}).encode()
    t0 = time.perf_counter()
    for j in range(jobs):
        k = j % len(who)
        await conns[k].jetstream().publish(intake_subject("submitter", who[k], "submit", f"{tag}{j}"), body)
    await asyncio.wait_for(watcher, timeout=600)
    dt = max(done.values()) - t0
    for nc in conns:
        await nc.close()
    return jobs * tasks / dt, dt


async def latency(server: EmbeddedServer, store: JetStreamEventStore, n: int) -> list[float]:
    nc = await connect_nats(server.access("submitter", "lat"), name="bench-latency")
    js = nc.jetstream()
    out = []
    for i in range(n):
        job_id = f"lat{i}"
        head = await store.head()
        done: dict[str, float] = {}
        watcher = asyncio.create_task(watch_jobs(store, head, {job_id}, done))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        await js.publish(intake_subject("submitter", "lat", "submit", job_id), b'{"workload":"noop"}')
        await asyncio.wait_for(watcher, timeout=30)
        out.append((done[job_id] - t0) * 1000)
    await nc.close()
    return out


async def events_per_task(store: JetStreamEventStore) -> tuple[float, Counter[str], dict[str, float]]:
    """Durable writes per task, the events by type, and the writes per task by stream.

    Every message any stream took counts (its last sequence: dispatch is a work queue, emptied as it
    is read), heartbeats and the like included: they are writes the hot path pays for too.
    """
    kinds: Counter[str] = Counter()
    async for env in store.read_all():
        kinds[env.type] += 1
    tasks = max(1, kinds["TaskCreated"])
    by_stream: dict[str, float] = {}
    for info in await store.js.streams_info():
        if info.state.last_seq:
            by_stream[info.config.name or "?"] = info.state.last_seq / tasks
    return sum(by_stream.values()), kinds, by_stream


def ray_noop(n: int) -> float | None:
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    @ray.remote
    def noop() -> None:
        return None

    ray.get([noop.remote() for _ in range(200)])  # warm the workers
    t0 = time.perf_counter()
    ray.get([noop.remote() for _ in range(n)])
    rate = n / (time.perf_counter() - t0)
    ray.shutdown()
    return rate


def scheduler_cost(sizes: list[int], decisions: int) -> list[tuple[int, float]]:
    out = []
    for n in sizes:
        s = Scheduler()
        models = [
            ("cuda", 81920, 9.0, "H100"),
            ("cuda", 24576, 8.9, "L4"),
            ("cuda", 40960, 8.0, "A100"),
            ("cpu", 65536, 0.0, "cpu"),
        ]
        for i in range(n):
            backend, vram, cc, model = models[i % len(models)]
            caps = Capabilities(
                backend=backend,  # type: ignore[arg-type]
                gpu_model=model,
                vram_mb=vram,
                compute_capability=cc,
                slots=2,
                price_micros=100 * (1 + i % 8),
                workloads=("noop", "matmul"),
            )
            cal = Calibration(matmul_tflops={"fp32": 10.0})
            s.upsert_provider(f"p{i}", caps, cal, available=True, reputation=0.5 + (i % 50) / 100)
        shapes = [
            Resources(),
            Resources(backend="cuda", min_vram_mb=40000),
            Resources(backend="cuda", min_compute_capability=8.5),
        ]
        warmup = decisions // 5
        for i in range(warmup + decisions):
            s.enqueue(PendingTask(f"t{i}", f"u{i % 7}", 5, "noop", shapes[i % 3], Estimate(flops=1e9)))

        def place(s: Scheduler, count: int) -> int:
            placed = 0
            while placed < count:
                batch = s.assign(limit=min(64, count - placed))
                for a in batch:
                    s.release(a.provider_id)  # finished: keep the fleet from filling up
                placed += len(batch)
                if not batch:
                    break
            return placed

        place(s, warmup)
        t0 = time.perf_counter()
        placed = place(s, decisions)
        dt = time.perf_counter() - t0
        out.append((n, placed / dt))
    return out


async def main() -> None:
    from gpufleet.logging import configure_logging

    configure_logging("console", "warning")  # a table for people; warnings only
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--tasks", type=int, default=50, help="tasks per job")
    ap.add_argument("--providers", type=int, default=8)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--raw", type=int, default=20000)
    ap.add_argument("--ray", type=int, default=5000)
    ap.add_argument("--decisions", type=int, default=20000)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "net") as server:
        url = server.url
        await server.ensure_streams()
        orchestrator = server.access("orchestrator")
        orch = spawn("orchestrator", "run", "--nats", url, "--creds", str(orchestrator.creds))
        fleet = spawn(
            "provider", "simulate", "--nats", url, "--data-dir", str(server.data_dir),
            "--count", str(args.providers), "--slots", str(args.slots),
        )  # fmt: skip
        try:
            store = await JetStreamEventStore.connect(orchestrator)
            await asyncio.sleep(3.0)  # the orchestrator up, the providers registered and heartbeating
            await throughput(server, store, 4, 25, "warm")
            rate, secs = await throughput(server, store, args.jobs, args.tasks, "job")
            lat = await latency(server, store, args.latency_samples)
            per_task, kinds, by_stream = await events_per_task(store)
            raw = await raw_publish_async(server.unrestricted(), args.raw)
            await store.close()
        finally:
            for p in (orch, fleet):
                p.terminate()
                p.wait(10)
    ray = ray_noop(args.ray) if args.ray else None
    sched = scheduler_cost([100, 1000, 10_000, 100_000], args.decisions)

    ceiling = raw / per_task
    t = Table(
        title=f"gpufleet orchestrator, {os.cpu_count()} cores: nats-server, orchestrator, "
        f"{args.providers} simulated providers"
    )
    t.add_column("measure")
    t.add_column("result", justify="right")
    t.add_column("vs", justify="right")
    t.add_row("end-to-end no-op tasks/s", f"{rate:,.0f}", f"{args.jobs}x{args.tasks} tasks in {secs:.1f}s")
    t.add_row("raw publish_async msg/s (same server)", f"{raw:,.0f}", "floor")
    parts = ", ".join(
        f"{k.removeprefix('GF_').removeprefix('KV_').lower()} {v:.2f}" for k, v in by_stream.items() if v >= 0.01
    )
    t.add_row("durable writes per task", f"{per_task:.1f}", parts)
    t.add_row("ceiling = raw / writes per task", f"{ceiling:,.0f}", f"ratio {rate / ceiling:.2f}")
    if ray is not None:
        t.add_row("Ray @ray.remote no-op tasks/s", f"{ray:,.0f}", f"gpufleet/Ray = {rate / ray:.2f}x")
    else:
        t.add_row("Ray @ray.remote no-op tasks/s", "not installed", "pip install -e '.\\[bench]'")
    lat.sort()
    t.add_row("latency p50 submit->completed", f"{statistics.median(lat):.1f} ms", f"{len(lat)} single-task jobs")
    t.add_row("latency p99 submit->completed", f"{lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]:.1f} ms", "")
    base = sched[0][1]
    for n, r in sched:
        t.add_row(
            f"scheduler decisions/s, {n:,} providers",
            f"{r:,.0f}",
            f"cost x{base / r:.2f} (log ratio x{math.log(n) / math.log(sched[0][0]):.2f})",
        )
    console.print(t)
    console.print("events in the log:", dict(kinds.most_common()))


if __name__ == "__main__":
    asyncio.run(main())
