"""Benchmark: the dashboard and ``/metrics`` of a live network, beside the raw floors, in one run.

On one real secured network (``gpufleet up``'s ``LocalNetwork``: nats-server, orchestrator,
projector, a CPU provider, the dashboard), after ``--jobs`` jobs have run:

- **pages**: the time to GET each page (p50 and p99 over ``--gets`` requests, one at a time),
  against the raw floor: a static file from the same server (uvicorn, Starlette, the Host check:
  everything but reading and rendering the read models);
- **``/metrics``**: the same for a Prometheus scrape (the lags ask the server);
- **push**: a one-task job's completion reaching an SSE stream of its page that was open before it
  was submitted, against the floor of the same fact read straight from the log: the submitter's
  client seeing ``JobCompleted`` through the event feed. Both clocks start at the submit.

    .venv/bin/python bench/dashboard.py               # 200 jobs, 50 GETs a page, 20 pushes
    .venv/bin/python bench/dashboard.py --jobs 2000   # a fuller jobs page
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from gpufleet.client import Client  # noqa: E402
from gpufleet.network import LocalNetwork, NetworkConfig  # noqa: E402

QUICK = {"workload": "noop"}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def timed_gets(http: httpx.AsyncClient, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await http.get(path)
        out.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: {r.status_code} {r.text[:200]}")
    return out


async def push_latency(http: httpx.AsyncClient, client: Client, name: str) -> tuple[float, float]:
    """(push, feed): seconds from the submit until the job's page stream shows it completed, and
    until the submitter's client sees its end in the log."""
    job_id = client.job_id(name)
    opened = asyncio.Event()
    done_at: list[float] = []

    async def watch_page() -> None:
        async with http.stream("GET", "/events", params={"view": "job", "job": job_id}) as r:
            opened.set()
            async for line in r.aiter_lines():
                if 'data-status="completed"' in line:
                    done_at.append(time.perf_counter())
                    return

    watcher = asyncio.create_task(watch_page())
    await asyncio.wait_for(opened.wait(), 10)
    await asyncio.sleep(0.3)  # the stream's first fragment (the job not there yet) goes out first
    t0 = time.perf_counter()
    job = await client.submit(QUICK, job_id=name)
    await job.wait(timeout=60)
    feed = time.perf_counter() - t0
    await asyncio.wait_for(watcher, 30)
    return done_at[0] - t0, feed


async def main(args: argparse.Namespace) -> None:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="gf-bench-dash-") as tmp:
        config = NetworkConfig(
            data_dir=Path(tmp) / "net", port=0, provider_backend="cpu", dashboard=True, dashboard_port=0
        )
        net = await LocalNetwork(config).start()
        a = net.access("submitter", "alice")
        client = await Client.connect(a.url, creds=a.creds)
        try:
            with console.status(f"running {args.jobs} jobs..."):
                jobs = [await client.submit(QUICK) for _ in range(args.jobs)]
                for j in jobs:
                    await j.wait(timeout=300)
            base = net.dashboard.url.rstrip("/")
            # As browsers do, no Nagle on the client's socket: else every request waits out a delayed
            # ACK (about 40 ms here), whatever the server does.
            nodelay = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
            async with httpx.AsyncClient(base_url=base, timeout=30, transport=nodelay) as http:
                await timed_gets(http, "/", 3)  # warm: templates compiled, connections open
                pages = {
                    "static file (raw floor)": "/static/dashboard.css",
                    "jobs": "/",
                    "a job": f"/jobs/{jobs[-1].id}",
                    "fleet": "/fleet",
                    "ledger": "/ledger",
                    "audit": "/audit",
                    "charts": "/charts",
                    "/metrics scrape": "/metrics",
                }
                timings = {}
                with console.status("timing pages..."):
                    for label, path in pages.items():
                        timings[label] = await timed_gets(http, path, args.gets)
                pushes: list[float] = []
                feeds: list[float] = []
                with console.status("timing pushes..."):
                    for i in range(args.pushes):
                        push, feed = await push_latency(http, client, f"push-{i}")
                        pushes.append(push)
                        feeds.append(feed)
        finally:
            await client.close()
            await net.stop()

    floor = statistics.median(timings["static file (raw floor)"])
    t = Table(title=f"dashboard on a live network: {args.jobs} jobs in the read models, {args.gets} GETs each")
    for col in ("request", "p50 ms", "p99 ms", "p50 / floor"):
        t.add_column(col, justify="left" if col == "request" else "right")
    for label, xs in timings.items():
        t.add_row(label, f"{pct(xs, 0.5) * 1e3:.2f}", f"{pct(xs, 0.99) * 1e3:.2f}", f"{pct(xs, 0.5) / floor:.1f}x")
    console.print(t)
    p = Table(title=f"a job's completion, from its submit ({args.pushes} one-task jobs)")
    for col in ("seen by", "p50 ms", "p99 ms"):
        p.add_column(col, justify="left" if col == "seen by" else "right")
    extra = [b - a for a, b in zip(feeds, pushes, strict=True)]
    for label, xs in (
        ("the client, through the event feed (floor)", feeds),
        ("an open dashboard page (SSE push)", pushes),
        ("push minus feed, per job", extra),
    ):
        p.add_row(label, f"{pct(xs, 0.5) * 1e3:.0f}", f"{pct(xs, 0.99) * 1e3:.0f}")
    console.print(p)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gets", type=int, default=50)
    parser.add_argument("--pushes", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
