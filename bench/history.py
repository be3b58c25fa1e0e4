"""History benchmark: does a job's cost, a restart and the orchestrator's memory grow with the log?

Run: ``python bench/history.py`` (``--help``; ``--quick`` for a look in under a minute). Issue 13's
last two targets, measured on logs of real shape (``bench/loggen_fast.py`` records a real
orchestrator's output once, then writes renamed copies of it, pipelined, to a fresh server):

A. **A job's cost is the job's, not the log's.** A completed 200-task job ``alice.target`` sits in
   the middle of logs of 10^4 and 10^6 events. A submitter's ``Client`` (its own credentials) times
   ``Job.status()``, ``Job.result()`` (every digest checked) and ``Job.events()`` from the start
   to the job's end (what ``gpufleet watch`` does to catch up), through the event feed, which runs
   in a process of its own as in ``gpufleet orchestrator run``. Median of three; target: flat, the
   ratio between the largest and the smallest log near 1.

B. **Restart and memory scale with live work, not history.** A ``gpufleet orchestrator run``
   process (credentials of its own) is started on logs of 10^5 and 10^6 events (10^7 with
   ``--huge``) that also hold live work: ``--live`` tasks, half leased and started on providers of
   their own, half queued. *Serving* means: a single-task no-op job, submitted the moment the process
   is spawned, is completed by a simulated provider (registered through intake, heartbeating). The
   restart time is spawn-to-that-completion minus the same job's latency on the now-warm
   orchestrator (median of three). The time to the orchestrator's ``orchestrator.rebuilt`` log line
   (its fold of the log from position 0 has finished) is shown beside it, and the orchestrator's
   RSS once serving (and its peak). Target: under 5 s on 10^7 events with 10,000 live tasks, and
   RSS bounded by the live work (the same across logs with the same live work).

The history's providers send no heartbeats: the orchestrator is run with a heartbeat timeout of
600 s so that declaring them lost (and requeueing their leases) does not fall inside the measure.
With ``--profile FILE`` (py-spy on PATH or in the venv: ``pip install py-spy``) the largest restart
is sampled by ``py-spy record`` from spawn until serving; its raw stacks go to FILE (for
``flamegraph.pl`` or speedscope) and the heaviest of our functions are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet import memory_mb
from bench.loggen_fast import BIG_TASKS, LogWriter, Templates, plan_log, record_templates, spawn_gpufleet
from events.store import JetStreamEventStore
from events.store.connection import Access, connect_nats
from events.subjects import intake_subject
from gpufleet.network import EmbeddedServer

#: A wide table even when the output is a pipe (a test, a CI log): rich would wrap at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)

#: The job every client measure is about, and who owns it.
TARGET = ("alice", "target")
#: Issue 13's target for a restart: seconds to serving on 10^7 events with 10,000 live tasks.
RESTART_TARGET_S = 5.0
#: "Flat": the largest log's time over the smallest's, at most this.
FLAT_RATIO = 1.5
#: RSS "bounded by live work": the largest log's RSS over the smallest's (same live work), at most this.
RSS_RATIO = 1.5


def _size(text: str) -> int:
    return int(float(text))


def _sizes(text: str) -> list[int]:
    return [_size(t) for t in text.split(",") if t.strip()]


def _fmt_n(n: int) -> str:
    exp = len(str(n)) - 1
    return f"10^{exp}" if n == 10**exp else f"{n:,}"


# ---- the log ---------------------------------------------------------------------------------------


@dataclass
class Log:
    """A generated log on a running server."""

    events: int
    live_tasks: int
    live_leased: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def write_log(server: EmbeddedServer, templates: Templates, size: int, live: int) -> Log:
    """Fill the server's (empty) events stream with about ``size`` events, ``live`` tasks of them live."""
    plan = plan_log(templates, size, live)
    nc = await connect_nats(server.access("orchestrator"), name="bench-history-writer")
    store = JetStreamEventStore(nc)
    try:
        writer = LogWriter(nc, templates)
        t0 = time.perf_counter()
        await writer.write(plan, target=TARGET)
        dt = time.perf_counter() - t0
        head = await store.head()
    finally:
        await nc.close()
    if head != writer.written:
        raise RuntimeError(f"wrote {writer.written} events but the stream holds {head}: ids collided")
    per = templates.live_tasks
    return Log(head, plan.live_copies * per, plan.live_copies * templates.live_leased, dt)


# ---- A: one job's cost -----------------------------------------------------------------------------


@dataclass
class JobCost:
    status_s: float
    result_s: float
    events_s: float
    job_events: int


def _serve_feed(url: str, creds: str) -> None:
    """The child process of ``--serve-feed``: an event feed, as ``gpufleet orchestrator run`` runs one."""
    from gpufleet.logging import configure_logging
    from projections.feed import EventFeed

    configure_logging("json", "warning")

    async def run() -> None:
        store = await JetStreamEventStore.connect(Access(url, Path(creds)), name="bench-feed")
        feed = EventFeed(store)
        await feed.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await feed.stop()
        await store.close()

    asyncio.run(run())


async def _median(n: int, what: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    times = []
    out: Any = None
    for _ in range(n):
        t0 = time.perf_counter()
        out = await what()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


async def job_cost(server: EmbeddedServer, repeat: int) -> JobCost:
    """``status()``, ``result()`` and ``events()`` of the target job, as its submitter."""
    from gpufleet.client import Client

    feed = subprocess.Popen(
        [sys.executable, __file__, "--serve-feed", server.url, str(server.access("orchestrator").creds)],
        stdout=subprocess.DEVNULL,
    )
    client = await Client.connect(server.url, creds=server.access("submitter", TARGET[0]).creds)
    try:
        for _ in range(200):  # until the feed answers
            try:
                await client.feed([f"job.{TARGET[0]}.{TARGET[1]}"], 0)
                break
            except Exception:
                await asyncio.sleep(0.1)
        job = client.job(TARGET[1])

        async def status() -> Any:
            st = await job.status()
            if st.status != "completed" or len(st.tasks) != BIG_TASKS:
                raise RuntimeError(f"the target job reads as {st.status} with {len(st.tasks)} tasks")
            return st

        async def result() -> Any:
            res = await job.result(timeout=600)
            if len(res) != BIG_TASKS:
                raise RuntimeError(f"the target job's result has {len(res)} tasks")
            return res

        async def events() -> int:
            return sum([1 async for _ in job.events()])

        status_s, _ = await _median(repeat, status)
        result_s, _ = await _median(repeat, result)
        events_s, n = await _median(repeat, events)
        return JobCost(status_s, result_s, events_s, n)
    finally:
        await client.close()
        feed.terminate()
        feed.wait(10)


# ---- B: restart ------------------------------------------------------------------------------------


@dataclass
class Restart:
    rebuilt_s: float | None
    first_probe_s: float
    warm_probe_s: float
    rss_mb: float
    peak_mb: float
    folded: int | None
    profile: list[tuple[str, float, float]] | None = None

    @property
    def serving_s(self) -> float:
        return max(0.0, self.first_probe_s - self.warm_probe_s)


class _Rebuilt:
    """Watches the orchestrator's log for its ``orchestrator.rebuilt`` line (its fold has finished),
    reading only what was added since the last look."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._offset = 0
        self._rest = b""
        #: The events the orchestrator says it folded, once the line is there.
        self.events: int | None = None

    def seen(self) -> bool:
        if self.events is not None:
            return True
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return False
        self._offset += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            if b"orchestrator.rebuilt" in line:
                try:
                    self.events = int(json.loads(line).get("events", -1))
                except ValueError:
                    self.events = -1
                return True
        return False


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


#: Packages of this project: a frame in one of them is ours (for the profile's summary).
_OURS = frozenset({"actors", "events", "projections", "gpufleet"})


def _top_frames(collapsed: Path, n: int = 12) -> list[tuple[str, float, float]]:
    """Our functions by share of py-spy's samples (``--format raw``: one ``frame;frame;... count``
    line per stack): (function, inclusive share, self share), the heaviest inclusive first. A frame
    outside our code counts as its nearest caller of ours' self time (pydantic, the JSON parser and
    nats-py are what our code spends it on)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    try:
        lines = collapsed.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        k = int(num)
        total += k
        seen: set[str] = set()
        last: str | None = None
        for frame in stack.split(";"):
            func, _, where = frame.partition(" (")
            parts = where.rsplit(":", 1)[0].split("/")
            if "site-packages" in parts or not _OURS.intersection(parts[:-1]):
                continue
            name = f"{func} ({'/'.join(parts[-2:])})"
            last = name
            if name not in seen:
                seen.add(name)
                inclusive[name] += k
        if last is not None:
            own[last] += k
    if not total:
        return []
    # The frames (nearly) every sample passes through, the entry point and the CLI, say nothing, unless
    # they hold time of their own (the CLI's ``_run`` holds the event loop and nats-py's reading).
    ranked = [
        (name, c / total, own[name] / total)
        for name, c in inclusive.most_common()
        if c < 0.98 * total or own[name] >= 0.05 * total
    ]
    return ranked[:n]


async def restart(
    server: EmbeddedServer, work: Path, tag: str, *, profile: Path | None, probes: int
) -> tuple[Restart, Restart]:
    """An orchestrator started on the server's log for the first time (no snapshot: it folds the
    whole log), stopped cleanly (which keeps a snapshot of its core), and started again: each timed
    to serving, with its RSS once serving."""
    from gpufleet.sim import SimulatedProvider

    data = work / f"orch-{tag}"
    # Registered through intake, heartbeating: waits in intake until the orchestrator takes it, and
    # stays up across the restart, as a real provider does. A CUDA no-op provider, for CUDA no-op
    # probes: no provider of the history (CPU ones, which will not answer) can take a probe, and no
    # live task (sleeps) can take this provider's slots.
    sim = await SimulatedProvider.connect(
        server.access("provider", f"probe{tag}"), slots=4, workloads=("noop",), backend="cuda"
    )
    await sim.start()
    try:
        first = await start(server, work, f"{tag}a", data, profile=profile, probes=probes)
        again = await start(server, work, f"{tag}b", data, profile=None, probes=probes)
    finally:
        await sim.kill()
    return first, again


async def start(
    server: EmbeddedServer, work: Path, tag: str, data: Path, *, profile: Path | None, probes: int
) -> Restart:
    """Spawn an orchestrator (state in ``data``) on the server's log; time it to serving; its RSS once
    serving; then stop it as SIGTERM does (cleanly: it keeps its snapshot)."""

    store = await JetStreamEventStore.connect(server.access("orchestrator"), name="bench-restart")
    sub = await connect_nats(server.access("submitter", "probe"), name="bench-probe")
    js = sub.jetstream()
    log = work / f"orchestrator-{tag}.log"
    creds = str(server.access("orchestrator").creds)
    proc = spawn_gpufleet(
        "orchestrator", "run", "--nats", server.url, "--creds", creds, "--data-dir", str(data),
        "--heartbeat-timeout", "600", log=log, level="info",
    )  # fmt: skip
    t_spawn = time.perf_counter()
    spy: subprocess.Popen[bytes] | None = None
    collapsed = profile or work / f"py-spy-{tag}.txt"
    exe = _py_spy() if profile is not None else None
    if exe is not None:
        spy = subprocess.Popen(
            [exe, "record", "--pid", str(proc.pid), "--format", "raw", "--output", str(collapsed), "--rate", "50"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:

        async def probe(name: str, t0: float) -> float:
            spec = {"workload": "noop", "split": {"kind": "count", "count": 1}, "resources": {"backend": "cuda"}}
            body = json.dumps(spec).encode()
            await js.publish(intake_subject("submitter", "probe", "submit", name), body)
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the orchestrator exited ({proc.returncode}); see {log}")
                if any(e.type == "JobCompleted" for e in await store.read_stream(f"job.probe.{name}")):
                    return time.perf_counter() - t0
                if rebuilt[0] is None and watch.seen():
                    rebuilt[0] = time.perf_counter() - t_spawn
                await asyncio.sleep(0.02)

        rebuilt: list[float | None] = [None]
        watch = _Rebuilt(log)
        first = await asyncio.wait_for(probe(f"cold{tag}", t_spawn), timeout=4 * 3600)
        rss, peak = memory_mb(proc.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        warm = []
        for i in range(probes):
            warm.append(await probe(f"warm{tag}x{i}", time.perf_counter()))
        return Restart(
            rebuilt[0],
            first,
            statistics.median(warm),
            rss,
            peak,
            watch.events,
            _top_frames(collapsed) if spy is not None else None,
        )
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        proc.terminate()  # SIGTERM: a clean stop, which writes the snapshot
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
        await sub.close()
        await store.close()


# ---- the run ---------------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("[green]met[/green]" if ok else "[red]missed[/red]")


async def main() -> None:
    from gpufleet.logging import configure_logging

    configure_logging("console", "warning")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e4,1e6", help="log sizes for a job's cost (A)")
    ap.add_argument("--restart-sizes", default="1e5,1e6", help="log sizes for the restart (B)")
    ap.add_argument(
        "--huge", action="store_true", help="also restart on 10^7 events (~5 min to write; ~40 min to fold today)"
    )
    ap.add_argument("--live", type=_size, default=10_000, help="live tasks in each log (at most 30%% of it)")
    ap.add_argument("--repeat", type=int, default=3, help="client measures: the median of this many")
    ap.add_argument("--probes", type=int, default=3, help="warm probe jobs (their median latency)")
    ap.add_argument(
        "--profile", type=Path, metavar="FILE", help="py-spy the largest restart until it serves; raw stacks to FILE"
    )
    ap.add_argument("--quick", action="store_true", help="10^3/10^4 events: a look in under a minute")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (servers, process logs)")
    args = ap.parse_args()
    sizes_a, sizes_b = _sizes(args.sizes), _sizes(args.restart_sizes)
    live = args.live
    if args.quick:
        sizes_a, sizes_b, live, args.repeat, args.probes = [1000, 10_000], [1000, 10_000], 500, 1, 1
    if args.huge and 10**7 not in sizes_b:
        sizes_b.append(10**7)
    sizes = sorted(set(sizes_a) | set(sizes_b))

    started = time.perf_counter()
    logs: dict[int, Log] = {}
    costs: dict[int, JobCost] = {}
    restarts: dict[int, tuple[Restart, Restart]] = {}
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gf-history-")))
        with EmbeddedServer(work / "template") as server:
            await server.ensure_streams()
            templates = await record_templates(server, work)
        console.print(
            f"templates recorded from a real orchestrator in {templates.seconds:.1f} s: "
            f"{len(templates.small)} events per completed {len(templates.small) and 10}-task job, "
            f"{len(templates.big)} for the {BIG_TASKS}-task job, {len(templates.live)} per live copy "
            f"({templates.live_tasks} tasks, {templates.live_leased} started); left out: "
            f"{dict(templates.dropped) or 'nothing'}",
            highlight=False,
        )
        # The same live work in every log (what the smallest log has room for), so that a difference in
        # restart time or memory between logs is history's.
        smallest = plan_log(templates, min(sizes_b or sizes), live)
        live = min(live, smallest.live_copies * templates.live_tasks)
        for size in sizes:
            with EmbeddedServer(work / f"net-{size}") as server:
                await server.ensure_streams()
                with console.status(f"writing a log of {size:,} events..."):
                    log = logs[size] = await write_log(server, templates, size, live)
                console.print(
                    f"log {_fmt_n(size)}: {log.events:,} events, {log.live_tasks:,} live tasks "
                    f"({log.live_leased:,} leased), written in {log.seconds:.1f} s ({log.rate:,.0f} events/s)",
                    highlight=False,
                )
                if size in sizes_a:
                    with console.status(f"client on {size:,} events..."):
                        costs[size] = await job_cost(server, args.repeat)
                if size in sizes_b:
                    with console.status(f"orchestrator restart on {size:,} events..."):
                        profile = args.profile if size == max(sizes_b) else None
                        restarts[size] = await restart(server, work, str(size), profile=profile, probes=args.probes)

    if costs:
        t = Table(title=f"A. one {BIG_TASKS}-task job's cost as the log grows (client, median of {args.repeat})")
        for col in ("log events", "job events", "status()", "result()", "events() catch-up"):
            t.add_column(col, justify="right")
        for size, c in costs.items():
            t.add_row(
                f"{logs[size].events:,}",
                f"{c.job_events:,}",
                f"{c.status_s * 1000:,.1f} ms",
                f"{c.result_s * 1000:,.1f} ms",
                f"{c.events_s * 1000:,.1f} ms",
            )
        console.print(t)
    if restarts:
        t = Table(title="B. orchestrator start on a pre-filled log (spawn to serving): first, then again")
        cols = ("log events", "live tasks", "start", "fold done", "serving", "probe raw", "RSS", "peak RSS")
        for col in cols:
            t.add_column(col, justify="right")
        for size, runs in restarts.items():
            for label, r in zip(("first: whole log", "restart: snapshot"), runs, strict=True):
                t.add_row(
                    f"{logs[size].events:,}",
                    f"{logs[size].live_tasks:,}",
                    label,
                    f"{r.rebuilt_s:.2f} s" if r.rebuilt_s is not None else "?",
                    f"{r.serving_s:.2f} s",
                    f"{r.first_probe_s:.2f} s",
                    f"{r.rss_mb:,.0f} MB",
                    f"{r.peak_mb:,.0f} MB",
                )
        console.print(t)
        for size, runs in restarts.items():
            r = runs[0]
            if r.profile:
                p = Table(title=f"py-spy: where the first start on {logs[size].events:,} events spends its time")
                p.add_column("function (ours)")
                p.add_column("inclusive", justify="right")
                p.add_column("self (+ libraries it calls)", justify="right")
                for name, inc, own in r.profile:
                    p.add_row(name, f"{inc:.0%}", f"{own:.0%}")
                console.print(p)

    s = Table(
        title=f"summary: issue 13 history targets ({os.cpu_count()} cores, {time.perf_counter() - started:.0f} s)"
    )
    for col in ("target", "measured", "verdict"):
        s.add_column(col)
    if len(costs) >= 2:
        lo, hi = min(costs), max(costs)
        for name, attr in (("status()", "status_s"), ("result()", "result_s"), ("events() catch-up", "events_s")):
            a, b = getattr(costs[lo], attr), getattr(costs[hi], attr)
            s.add_row(
                f"{name} flat from {_fmt_n(lo)} to {_fmt_n(hi)} events (ratio <= {FLAT_RATIO})",
                f"{a * 1000:,.0f} ms -> {b * 1000:,.0f} ms (x{b / a:.1f})",
                _verdict(b / a <= FLAT_RATIO),
            )
    if restarts:
        big = max(restarts)
        r = restarts[big][1]
        at_target = big >= 10**7 and logs[big].live_tasks >= 10_000
        s.add_row(
            f"restart to serving < {RESTART_TARGET_S:g} s on 10^7 events, 10,000 live tasks",
            f"{r.serving_s:.2f} s on {logs[big].events:,} events, {logs[big].live_tasks:,} live",
            _verdict(r.serving_s < RESTART_TARGET_S) if at_target else "n/a: 10^7 with 10,000 live needs --huge",
        )
        if len(restarts) >= 2:
            lo = min(restarts)
            a, b = restarts[lo][1].rss_mb, r.rss_mb
            s.add_row(
                f"RSS bounded by live work ({_fmt_n(lo)} -> {_fmt_n(big)} events, same live; ratio <= {RSS_RATIO})",
                f"{a:,.0f} MB -> {b:,.0f} MB (x{b / a:.1f})",
                _verdict(b / a <= RSS_RATIO),
            )
            ta, tb = restarts[lo][1].serving_s, r.serving_s
            s.add_row(
                "restart time grows with live work, not history",
                f"{ta:.2f} s -> {tb:.2f} s (x{tb / max(ta, 1e-3):.1f})",
                _verdict(tb <= max(1.0, ta * FLAT_RATIO)),
            )
    console.print(s)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-feed":
        _serve_feed(sys.argv[2], sys.argv[3])
    else:
        asyncio.run(main())
