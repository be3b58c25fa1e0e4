"""Fleet-scale benchmark: thousands of heartbeating providers, a makespan, long tasks reporting progress.

Run: ``python bench/fleet.py`` (``--help`` for sizes; about 6 minutes on 2 cores, ``--quick`` about
40 s). Each fleet gets a secured nats-server of its own (as ``gpufleet up`` runs one), one
``gpufleet orchestrator run`` process and simulator processes of ``--per-process`` providers each
(``gpufleet.sim.SimulatedProvider``, every one with credentials and a NATS connection of its own, as
``gpufleet provider simulate`` runs them, but started concurrently and retried: see :func:`simulate`),
so that one phase's left-overs (lost providers, unfinished leases) never show up in the next one's
figures. Side by side with the raw floor
(``publish_async`` msgs/s to the same server, measured on it before the fleet starts), it prints:

1. **Heartbeating fleets** (``--providers``, default 1,000 then 10,000) idle for a window: the
   orchestrator's and nats-server's CPU, the server's writes/s (every stream, the heartbeat bucket
   included), the orchestrator's RSS, and whether the heartbeats kept up. A size that does not fit
   this machine is reported with the reason, and the largest that does is measured instead.
2. **Makespan**: ``--tasks`` one-second ``sleep`` tasks (ten jobs from four submitters, through the
   intake subjects) on 1,000 providers x 2 slots, first submit to last ``JobCompleted``, against the
   ideal (waves of slots x 1 s); the target is within 3x of it.
3. **Long tasks reporting progress** (``--long-tasks``): all of them leased and running, measured at
   each ``--progress-rates`` (reports per task per second): the durable write rate (events, intake and
   dispatch: what the log keeps) must not grow with the progress rate.

CPU figures are percent of one core, read from ``/proc`` over the window; "machine busy" counts every
process, so load from others sharing the machine shows up as the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.orchestrator import OrchestratorConfig
from bench.orchestrator import raw_publish_async, watch_jobs
from events.dispatch import Dispatch, LeaseBatch, LeaseGranted
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.subjects import (
    DISPATCH_PREFIX,
    DISPATCH_STREAM,
    EVENT_PREFIX,
    EVENTS_STREAM,
    HEARTBEAT_BUCKET,
    INTAKE_STREAM,
    intake_subject,
)
from gpufleet.network import EmbeddedServer
from gpufleet.sim import SimulatedProvider

#: A table for people: wide enough for its rows when the output is not a terminal (a log, CI).
console = Console() if sys.stdout.isatty() else Console(width=150)

_TICK = os.sysconf("SC_CLK_TCK")
#: How often a simulated provider heartbeats (its default: ``provider simulate`` has no option for it).
HEARTBEAT_S: float = next(f.default for f in dataclasses.fields(SimulatedProvider) if f.name == "heartbeat_s")  # type: ignore[assignment]
#: The streams whose writes the log keeps for recovery, billing and audit (the KV buckets are not).
DURABLE = (EVENTS_STREAM, INTAKE_STREAM, DISPATCH_STREAM)
HEARTBEAT_STREAM = f"KV_{HEARTBEAT_BUCKET}"
#: After this long without a heartbeat the orchestrator declares a provider lost (its default).
LIVENESS_S = OrchestratorConfig().heartbeat_timeout_s
SUBMITTERS = 4


# --- what /proc says ------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident memory of ``pid`` now and at its peak (VmRSS, VmHWM), in MiB; 0 once it is gone."""
    fields: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB; 0 once it is gone."""
    return memory_mb(pid)[0]


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, every core."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts) - idle, sum(parts)


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- one fleet: a server, an orchestrator, simulated providers ------------------------------------


def spawn(log: Path, *args: str, script: bool = False) -> subprocess.Popen[bytes]:
    """``bench.orchestrator.spawn`` (``gpufleet *args``), or this script's ``--simulate *args`` with
    ``script``; the process's stderr kept in ``log``, to say why it died."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [__file__, "--simulate", *args] if script else ["-m", "gpufleet", "--log-format", "json", *args]
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, *cmd],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def last_line(log: Path) -> str:
    """The last line ``log`` holds: a dead process's last word."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1][-300:] if lines else "(nothing on stderr)"


@dataclass
class Window:
    """What one measuring window saw: CPU per role, writes per stream, and the orchestrator's RSS."""

    seconds: float
    cpu: dict[str, float]  # percent of one core
    machine_busy: float  # percent of one core, all processes (others sharing the machine included)
    writes: dict[str, float]  # per stream, per second
    orch_rss_mb: float
    rss_mb: dict[str, float]  # MiB per role, at the end
    intake_backlog: tuple[int, int]  # what the orchestrator had yet to read, at the start and the end

    @property
    def all_writes(self) -> float:
        return sum(self.writes.values())

    @property
    def durable_writes(self) -> float:
        return sum(self.writes.get(s, 0.0) for s in DURABLE)

    @property
    def others(self) -> float:
        """Machine CPU used by processes not in this benchmark (other users of a shared machine)."""
        return max(0.0, self.machine_busy - sum(self.cpu.values()))


@dataclass
class Fleet:
    """A fresh secured server, its orchestrator, and ``providers`` simulated providers in processes
    of ``per_process`` each."""

    tmp: Path
    providers: int
    slots: int
    per_process: int
    raw_n: int
    server: EmbeddedServer | None = None
    orch: subprocess.Popen[bytes] | None = None
    sims: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nc: Any = None
    js: Any = None
    store: JetStreamEventStore | None = None
    raw: float = 0.0
    startup_s: float = 0.0
    logs: dict[int, Path] = field(default_factory=dict)  # each process's stderr, by pid

    def spawn(self, log: Path, *args: str, script: bool = False) -> subprocess.Popen[bytes]:
        p = spawn(log, *args, script=script)
        self.logs[p.pid] = log
        return p

    def pids(self) -> dict[str, list[int]]:
        assert self.server is not None and self.server.server.proc is not None and self.orch is not None
        return {
            "orchestrator": [self.orch.pid],
            "nats-server": [self.server.server.proc.pid],
            "providers": [p.pid for p in self.sims],
            "bench": [os.getpid()],
        }

    async def up(self, timeout: float, progress: Progress) -> str | None:
        """Start it all; None once every provider is registered, else why not."""
        home = self.tmp / f"fleet-{self.providers}-{self.slots}-{time.monotonic_ns()}"
        self.server = EmbeddedServer(home / "net").start()
        await self.server.ensure_streams()
        self.nc = await connect_nats(self.server.unrestricted(), name="bench-fleet")
        self.js = self.nc.jetstream()
        self.raw = await raw_publish_async(self.server.unrestricted(), self.raw_n)
        orchestrator = self.server.access("orchestrator")
        self.orch = self.spawn(
            home / "orchestrator.log",
            "orchestrator",
            "run",
            "--nats",
            self.server.url,
            "--creds",
            str(orchestrator.creds),
        )
        self.store = await JetStreamEventStore.connect(orchestrator)
        t0 = time.perf_counter()
        for k, start in enumerate(range(0, self.providers, self.per_process)):
            count = min(self.per_process, self.providers - start)
            where = [self.server.url, str(self.server.data_dir), str(count), str(self.slots), f"s{k}p"]
            self.sims.append(self.spawn(home / f"simulate-{k}.log", *where, script=True))
        bar = progress.add_task(f"{self.providers:,} providers registering", total=self.providers)
        best, best_at, first = 0, t0, 0.0  # first: when the first provider registered
        try:
            while True:
                await asyncio.sleep(0.5)
                n = (await self.js.stream_info(DISPATCH_STREAM)).state.consumer_count
                progress.update(bar, completed=n)
                now = time.perf_counter()
                if n >= self.providers:
                    self.startup_s = now - t0
                    return None
                if n > best:
                    best, best_at, first = n, now, first or now
                dead = [p for p in [self.orch, *self.sims] if p.poll() is not None]
                if dead:
                    log = self.logs[dead[0].pid]
                    return (
                        f"{len(dead)} process(es) exited during start-up with {n:,} registered; "
                        f"exit code {dead[0].returncode}: {last_line(log)}"
                    )
                if now - best_at > 30:
                    return f"registration stalled at {n:,} of {self.providers:,} for 30 s"
                if now - t0 > timeout:
                    return f"only {n:,} of {self.providers:,} registered in {timeout:.0f} s (--startup-timeout)"
                # Give up early when, at the rate since the first registration (the processes take a
                # while to start), the rest would take far past the timeout.
                rate = n / (now - first) if first and now - first > 20 else math.inf
                if (self.providers - n) / rate > 2 * (timeout - (now - t0)):
                    return (
                        f"registering at {rate:,.0f} providers/s: {self.providers:,} would take "
                        f"{self.providers / rate:,.0f} s, past --startup-timeout {timeout:.0f} s"
                    )
        finally:
            progress.remove_task(bar)

    async def seqs(self) -> dict[str, int]:
        return {s.config.name: s.state.last_seq for s in await self.js.streams_info()}

    async def intake_backlog(self) -> int:
        """Messages in the intake the orchestrator's consumers have yet to be delivered."""
        with contextlib.suppress(Exception):
            return sum(c.num_pending for c in await self.js.consumers_info(INTAKE_STREAM))
        return -1

    @contextlib.asynccontextmanager
    async def window(self, out: list[Window]) -> AsyncIterator[None]:
        """Measure what happens inside the ``async with``; the result lands in ``out``."""
        pids = self.pids()
        cpu0 = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        seq0, busy0, back0 = await self.seqs(), machine_ticks(), await self.intake_backlog()
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        cpu1 = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        busy1, seq1, back1 = machine_ticks(), await self.seqs(), await self.intake_backlog()
        assert self.orch is not None
        out.append(
            Window(
                seconds=dt,
                cpu={k: 100 * (cpu1[k] - cpu0[k]) / dt for k in cpu0},
                machine_busy=100 * (busy1[0] - busy0[0]) / _TICK / dt,
                writes={s: (seq1[s] - seq0.get(s, 0)) / dt for s in seq1},
                orch_rss_mb=rss_mb(self.orch.pid),
                rss_mb={k: sum(rss_mb(p) for p in v) for k, v in pids.items()},
                intake_backlog=(back0, back1),
            )
        )

    async def down(self) -> None:
        """Stop every process and the server, and wait for them."""
        procs = [p for p in [*self.sims, self.orch] if p is not None]
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                await asyncio.to_thread(p.wait, 15)
            except subprocess.TimeoutExpired:
                p.kill()
                await asyncio.to_thread(p.wait)
        for closing in (self.store, self.nc):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing.close()
        if self.server is not None:
            self.server.stop()


@contextlib.asynccontextmanager
async def fleet(args: argparse.Namespace, providers: int, slots: int, progress: Progress) -> AsyncIterator[Fleet]:
    """A fleet that is up (or ``RuntimeError`` saying why it could not be), torn down on the way out."""
    f = Fleet(Path(args.tmp), providers, slots, args.per_process, args.raw)
    try:
        why = await f.up(args.startup_timeout, progress)
        if why is not None:
            raise RuntimeError(why)
        yield f
    finally:
        await f.down()


async def submit(f: Fleet, jobs: list[tuple[str, dict[str, Any]]]) -> float:
    """Submit ``jobs`` (id, body) from four submitters with credentials of their own, through the
    intake subjects; the ``perf_counter`` of the first submit."""
    assert f.server is not None
    who = [f"u{i}" for i in range(SUBMITTERS)]
    conns = [await connect_nats(f.server.access("submitter", w), name=f"bench-{w}") for w in who]
    t0 = time.perf_counter()
    for j, (job_id, body) in enumerate(jobs):
        k = j % len(who)
        await (
            conns[k]
            .jetstream()
            .publish(intake_subject("submitter", who[k], "submit", job_id), json.dumps(body).encode())
        )
    for nc in conns:
        await nc.close()
    return t0


def split_jobs(tag: str, tasks: int, per_job: int, params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for j, start in enumerate(range(0, tasks, per_job)):
        n = min(per_job, tasks - start)
        out.append((f"{tag}{j}", {"workload": "sleep", "params": params, "split": {"kind": "count", "count": n}}))
    return out


async def simulate(url: str, data_dir: str, count: int, slots: int, prefix: str, at_once: int = 16) -> None:
    """``count`` simulated providers, ``<prefix><n>``, until SIGTERM: what ``gpufleet provider simulate``
    runs (each provider with credentials and a connection of its own), but started ``at_once`` at a
    time, and each start retried. The CLI starts them one by one, and one start that times out (the
    first heartbeat waits at most 0.5 s for its ack) ends the process and every provider in it: on a
    loaded machine, a thousand did not start in 90 s."""
    from events.store.connection import Access
    from gpufleet.auth import Authority

    authority = Authority.open(Path(data_dir) / "auth", create=False)
    gate = asyncio.Semaphore(at_once)
    fleet: list[SimulatedProvider] = []

    async def one(i: int) -> None:
        creds = authority.own_creds("provider", f"{prefix}{i}")
        for attempt in range(10):
            async with gate:
                sim: SimulatedProvider | None = None
                try:
                    sim = await SimulatedProvider.connect(Access(url, creds, None), slots=slots)
                    fleet.append(await sim.start())
                    return
                except Exception as e:
                    print(f"{prefix}{i}: start failed ({type(e).__name__}: {e}), retrying", file=sys.stderr)
                    if sim is not None:
                        await sim.kill()
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"{prefix}{i} did not start in 10 tries")

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    starting = asyncio.gather(*(one(i) for i in range(count)))
    stopping = asyncio.ensure_future(stop.wait())
    either: list[asyncio.Future[Any]] = [starting, stopping]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        starting.result()  # a provider that never started ends the process, saying which
        await stopping
    # Stopped (at once, even mid-start): the connections close with the process.


# --- the phases -----------------------------------------------------------------------------------


@dataclass
class Heartbeats:
    providers: int
    fits: bool
    why: str = ""
    raw: float = 0.0
    startup_s: float = 0.0
    w: Window | None = None
    hb_ratio: float = 0.0  # heartbeats stored / heartbeats at the nominal rate
    interval_s: float = math.inf  # mean time between one provider's heartbeats, as stored
    provider_events: float = 0.0  # domain events appended while idle
    events: dict[str, int] = field(default_factory=dict)  # their types


async def heartbeating(f: Fleet, seconds: float, progress: Progress) -> Heartbeats:
    """The fleet idles for ``seconds``: what heartbeats alone cost."""
    await asyncio.sleep(min(3.0, seconds / 2))  # the last registrations' events and consumers settle
    out: list[Window] = []
    bar = progress.add_task(f"{f.providers:,} providers idle", total=seconds)
    kinds: Counter[str] = Counter()

    async def on_event(msg: Any) -> None:
        kinds[(msg.headers or {}).get("ce-type", "?")] += 1

    # The domain events of an idle fleet (core NATS sees every append): liveness transitions, if any.
    sub = await f.nc.subscribe(f"{EVENT_PREFIX}.>", cb=on_event)
    async with f.window(out):
        t0 = time.perf_counter()
        while (dt := time.perf_counter() - t0) < seconds:
            progress.update(bar, completed=dt)
            await asyncio.sleep(0.25)
    await sub.unsubscribe()
    progress.remove_task(bar)
    w = out[0]
    hb = Heartbeats(f.providers, True, raw=f.raw, startup_s=f.startup_s, w=w)
    hb.hb_ratio = w.writes.get(HEARTBEAT_STREAM, 0.0) / (f.providers / HEARTBEAT_S)
    hb.provider_events = w.writes.get(EVENTS_STREAM, 0.0) * w.seconds
    hb.events = dict(kinds.most_common())
    lost = sum(v for k, v in kinds.items() if k.endswith("Lost"))
    why = []
    hb.interval_s = HEARTBEAT_S / max(hb.hb_ratio, 1e-9)
    # A beat waits for its ack before the next sleep, so even a quiet machine stores fewer than the
    # nominal rate; what matters is that beats come well inside the liveness timeout.
    if hb.interval_s > LIVENESS_S / 3:
        why.append(
            f"heartbeats fell behind: one every {hb.interval_s:.1f} s per provider ({hb.hb_ratio:.0%} of the "
            f"nominal {f.providers / HEARTBEAT_S:,.0f}/s), against a {LIVENESS_S:g} s liveness timeout"
        )
    if lost:
        why.append(f"{lost:,} providers lost while idle (domain events: {hb.events})")
    hb.fits, hb.why = not why, "; ".join(why)
    return hb


@dataclass
class Makespan:
    tasks: int
    slots: int
    seconds: float = math.nan
    done_jobs: int = 0
    jobs: int = 0
    raw: float = 0.0
    w: Window | None = None
    writes_per_task: float = math.nan

    @property
    def ideal(self) -> float:
        return math.ceil(self.tasks / self.slots) * 1.0


async def makespan(f: Fleet, tasks: int, per_job: int, timeout: float, progress: Progress) -> Makespan:
    """``tasks`` one-second sleeps, first submit to last ``JobCompleted``."""
    assert f.store is not None
    m = Makespan(tasks, f.providers * f.slots, raw=f.raw)
    jobs = split_jobs("mk", tasks, per_job, {"seconds": 1.0})
    m.jobs = len(jobs)
    done: dict[str, float] = {}
    head = await f.store.head()
    want = {j for j, _ in jobs}
    watcher = asyncio.create_task(watch_jobs(f.store, head, want, done))
    await asyncio.sleep(0.2)  # the watcher subscribed
    out: list[Window] = []
    bar = progress.add_task(f"makespan: {tasks:,} x sleep(1 s) on {m.slots:,} slots, jobs done", total=len(jobs))
    seq0 = await f.seqs()
    async with f.window(out):
        t0 = await submit(f, jobs)
        while time.perf_counter() - t0 < timeout:
            finished, _ = await asyncio.wait({watcher}, timeout=0.1)
            progress.update(bar, completed=len(done))
            if finished:
                break
    progress.remove_task(bar)
    seq1 = await f.seqs()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    m.done_jobs = len(done)
    if len(done) == len(jobs):
        m.seconds = max(done.values()) - t0
    m.w = out[0]
    m.writes_per_task = sum(seq1.get(s, 0) - seq0.get(s, 0) for s in DURABLE) / tasks
    return m


@dataclass
class LongTasks:
    tasks: int
    rate: float  # progress reports per task per second, as sent
    raw: float = 0.0
    ramp_s: float = math.nan
    leased: int = 0
    w: Window | None = None

    @property
    def offered(self) -> float:
        return self.tasks * self.rate


async def long_tasks(f: Fleet, args: argparse.Namespace, rate: float, progress: Progress) -> LongTasks:
    """``args.long_tasks`` sleeps far longer than the run, every one leased and reporting progress
    ``rate`` times a second; measured once they all run."""
    assert f.nc is not None
    lt = LongTasks(args.long_tasks, rate, raw=f.raw)
    seconds = args.long_seconds
    steps = max(1, round(seconds * rate))
    jobs = split_jobs(f"lt{rate:g}-".replace(".", "_"), lt.tasks, args.per_job, {"seconds": seconds, "steps": steps})
    leased = 0
    all_leased = asyncio.Event()
    dispatch: Callable[[bytes], Any] = TypeAdapter(Dispatch).validate_json

    async def on_dispatch(msg: Any) -> None:
        nonlocal leased
        d = dispatch(msg.data)
        items = d.items if isinstance(d, LeaseBatch) else [d]
        leased += sum(isinstance(i, LeaseGranted) for i in items)
        if leased >= lt.tasks:
            all_leased.set()

    # Leases as the orchestrator publishes them (core NATS sees every publish to the dispatch stream).
    sub = await f.nc.subscribe(f"{DISPATCH_PREFIX}.>", cb=on_dispatch)
    bar = progress.add_task(f"{lt.tasks:,} long tasks at {rate:g} progress/s, leased", total=lt.tasks)
    t0 = await submit(f, jobs)
    try:
        while not all_leased.is_set() and time.perf_counter() - t0 < args.ramp_timeout:
            progress.update(bar, completed=leased)
            await asyncio.sleep(0.2)
    finally:
        await sub.unsubscribe()
        progress.remove_task(bar)
    lt.leased = leased
    if not all_leased.is_set():
        return lt
    lt.ramp_s = time.perf_counter() - t0
    await asyncio.sleep(min(3.0, 2.0 / rate + 1.0))  # every task past its first report: the steady state
    out: list[Window] = []
    bar = progress.add_task(f"{lt.tasks:,} long tasks at {rate:g} progress/s, measuring", total=args.window)
    async with f.window(out):
        t1 = time.perf_counter()
        while (dt := time.perf_counter() - t1) < args.window:
            progress.update(bar, completed=dt)
            await asyncio.sleep(0.25)
    progress.remove_task(bar)
    lt.w = out[0]
    return lt


LEGEND = (
    "CPU: % of one core over the window (orch = the orchestrator, server = nats-server, sims = the simulated "
    "providers' processes; busy = the whole machine, others = processes not in this benchmark). writes/s: "
    "messages stored in every stream, the KV buckets included; durable: events + intake + dispatch, what "
    "the log keeps. raw floor: publish_async msgs/s to the same server, measured before its fleet started."
)


# --- tables ---------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{x:,.0f}%"


def per_s(x: float) -> str:
    return f"{x:,.0f}/s"


def heartbeat_table(rows: list[Heartbeats]) -> Table:
    t = Table(title=f"1. Heartbeating fleets, idle (each provider beats every {HEARTBEAT_S:g} s)")
    for c in ("providers", "fits", "start-up", "orch CPU", "server CPU", "sims CPU", "busy (others)",
              "writes/s", "beats stored, interval", "orch RSS", "raw floor", "writes/raw"):  # fmt: skip
        t.add_column(c, justify="right")
    for r in rows:
        if r.w is None:
            t.add_row(f"{r.providers:,}", "[red]no[/]", *["-"] * 10)
            continue
        w = r.w
        t.add_row(
            f"{r.providers:,}",
            "yes" if r.fits else "[red]no[/]",
            f"{r.startup_s:.0f} s",
            pct(w.cpu["orchestrator"]),
            pct(w.cpu["nats-server"]),
            pct(w.cpu["providers"]),
            f"{pct(w.machine_busy)} ({pct(w.others)})",
            per_s(w.all_writes),
            f"{r.hb_ratio:.0%}, {r.interval_s:.1f} s",
            f"{w.orch_rss_mb:,.0f} MiB",
            per_s(r.raw),
            f"{w.all_writes / r.raw:.0%}",
        )
    return t


def makespan_table(m: Makespan) -> Table:
    t = Table(title=f"2. Makespan: {m.tasks:,} one-second tasks in {m.jobs} jobs on {m.slots:,} slots")
    t.add_column("measure")
    t.add_column("result", justify="right")
    t.add_column("vs", justify="right")
    w = m.w
    assert w is not None
    if math.isnan(m.seconds):
        t.add_row("makespan, first submit to last JobCompleted", f"[red]> {w.seconds:.0f} s[/]",
                  f"only {m.done_jobs} of {m.jobs} jobs completed (--makespan-timeout)")  # fmt: skip
        span = w.seconds
    else:
        span = m.seconds
        t.add_row(
            "makespan, first submit to last JobCompleted", f"{m.seconds:.1f} s", f"{m.seconds / m.ideal:.1f}x ideal"
        )
    t.add_row("ideal: ceil(tasks / slots) x 1 s", f"{m.ideal:.0f} s", "target: within 3x")
    t.add_row("end-to-end tasks/s", f"{m.tasks / span:,.0f}" if m.done_jobs else "0", "")
    t.add_row("durable writes per task", f"{m.writes_per_task:.1f}", "events + intake + dispatch")
    t.add_row("orchestrator CPU", pct(w.cpu["orchestrator"]), f"RSS {w.orch_rss_mb:,.0f} MiB")
    t.add_row("nats-server CPU", pct(w.cpu["nats-server"]), "")
    t.add_row("providers' CPU", pct(w.cpu["providers"]), f"machine busy {pct(w.machine_busy)}, others {pct(w.others)}")
    t.add_row("server writes/s, all streams", per_s(w.all_writes), f"{w.all_writes / m.raw:.0%} of raw")
    t.add_row("durable writes/s", per_s(w.durable_writes), f"{w.durable_writes / m.raw:.0%} of raw")
    t.add_row("raw publish_async (same server)", per_s(m.raw), "floor")
    return t


def long_table(rows: list[LongTasks]) -> Table:
    t = Table(title="3. Long tasks reporting progress, every task leased and running")
    for c in ("tasks", "progress/s per task", "reports/s nominal", "ramp (all leased)", "orch CPU", "server CPU",
              "sims CPU", "busy (others)", "writes/s", "durable/s", "durable per report", "intake backlog",
              "raw floor"):  # fmt: skip
        t.add_column(c, justify="right")
    for r in rows:
        if r.w is None:
            t.add_row(f"{r.tasks:,}", f"{r.rate:g}", per_s(r.offered), f"[red]{r.leased:,} leased[/]", *["-"] * 9)
            continue
        w = r.w
        t.add_row(
            f"{r.tasks:,}",
            f"{r.rate:g}",
            per_s(r.offered),
            f"{r.ramp_s:.0f} s",
            pct(w.cpu["orchestrator"]),
            pct(w.cpu["nats-server"]),
            pct(w.cpu["providers"]),
            f"{pct(w.machine_busy)} ({pct(w.others)})",
            per_s(w.all_writes),
            per_s(w.durable_writes),
            f"{w.durable_writes / r.offered:.2f}",
            f"{w.intake_backlog[0]:,} -> {w.intake_backlog[1]:,}",
            per_s(r.raw),
        )
    return t


def grows(rows: list[LongTasks]) -> tuple[bool | None, str]:
    """Does the durable write rate grow with the progress rate? None when it cannot be told."""
    done = [r for r in rows if r.w is not None]
    if len(done) < 2:
        return None, "fewer than two progress rates measured"
    lo, hi = min(done, key=lambda r: r.rate), max(done, key=lambda r: r.rate)
    assert lo.w is not None and hi.w is not None
    ratio = hi.w.durable_writes / max(lo.w.durable_writes, 1e-9)
    saturated = [r for r in (lo, hi) if r.w is not None and r.w.intake_backlog[1] > r.w.intake_backlog[0] + r.offered]
    note = f"x{hi.rate / lo.rate:g} the progress gave x{ratio:.2f} the durable writes"
    if saturated:
        note += f" (the intake backlog grew at {', '.join(f'{r.rate:g}/s' for r in saturated)}: saturated)"
    return ratio > 1.25, note


def summary(args: argparse.Namespace, hbs: list[Heartbeats], mk: Makespan | None, lts: list[LongTasks]) -> Table:
    t = Table(title="Fleet scale: targets of issue 13")
    for c in ("target", "measured", "verdict"):
        t.add_column(c)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "[green]met[/]" if ok else "[red]missed[/]"

    fit = max((h.providers for h in hbs if h.fits), default=0)
    for h in hbs:
        got = f"did not fit: {h.why}"
        if h.fits and h.w:
            got = (
                f"orchestrator {pct(h.w.cpu['orchestrator'])} CPU, {h.w.orch_rss_mb:,.0f} MiB; nats-server "
                f"{pct(h.w.cpu['nats-server'])} CPU; {per_s(h.w.all_writes)} server writes"
            )
        t.add_row(f"{h.providers:,} simulated providers heartbeating", got, verdict(h.fits))
    for n in (1000, 10_000):
        if n not in {h.providers for h in hbs}:
            why = f"not run (--providers); the largest that fit: {fit:,}"
            t.add_row(f"{n:,} simulated providers heartbeating", why, verdict(None))
    if "makespan" not in args.phases:
        t.add_row("4,000 one-second tasks on 2,000 slots: within 3x ideal", "not run (--phases)", verdict(None))
    elif mk is not None and mk.w is not None:
        got = f"unfinished after {mk.w.seconds:.0f} s ({mk.done_jobs}/{mk.jobs} jobs)"
        if mk.done_jobs == mk.jobs:
            got = f"{mk.seconds:.1f} s = {mk.seconds / mk.ideal:.1f}x the ideal {mk.ideal:.0f} s"
        ok = mk.done_jobs == mk.jobs and mk.seconds <= 3 * mk.ideal
        t.add_row(f"{mk.tasks:,} one-second tasks on {mk.slots:,} slots: within 3x ideal", got, verdict(ok))
    else:
        t.add_row(
            "4,000 one-second tasks on 2,000 slots: within 3x ideal",
            "not measured (fleet did not start)",
            verdict(False),
        )
    if "long" not in args.phases:
        t.add_row("20,000 long-running tasks reporting progress", "not run (--phases)", verdict(None))
        return t
    ran = [r for r in lts if r.w is not None]
    long_ok: bool | None = bool(ran) and len(ran) == len(lts)
    got = (
        ", ".join(f"{r.tasks:,} at {r.rate:g}/s: {per_s(r.w.durable_writes)} durable" for r in ran if r.w) or "none ran"
    )
    if args.long_tasks < 20_000:
        got += f" (run at {args.long_tasks:,}: --long-tasks 20000 for the issue's size)"
        long_ok = None if long_ok else False
    t.add_row("20,000 long-running tasks reporting progress", got, verdict(long_ok))
    g, note = grows(lts)
    t.add_row("durable write rate does not grow with the progress rate", note, verdict(None if g is None else not g))
    return t


# --- main -----------------------------------------------------------------------------------------


def sizes(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def rates(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def projection(fit: Heartbeats, n: int, cores: int) -> tuple[float, str]:
    """The CPU ``n`` providers would need at the cost per provider ``fit`` measured, and what of it."""
    assert fit.w is not None
    cpu = {k: v / fit.providers * n for k, v in fit.w.cpu.items() if k != "bench"}
    need = sum(cpu.values())
    parts = ", ".join(f"{k} {v:,.0f}%" for k, v in cpu.items())
    return need, (
        f"at the cost measured with {fit.providers:,} it would need {need:,.0f}% of one core ({parts}); "
        f"this machine has {100 * cores}%"
    )


async def run_heartbeats(
    args: argparse.Namespace, progress: Progress, makespan_out: list[Makespan] | None
) -> list[Heartbeats]:
    """Each size of ``--providers`` in order. A size that the cost per provider measured at a smaller one
    says cannot fit (CPU past 90% of the cores, memory past 80% of what is available, or a start-up
    past ``--startup-timeout`` at the registration rate measured) is not tried: the largest that would fit is
    measured instead (once), or else a size between the largest that fit and one that failed. The makespan
    runs on the fleet of ``--makespan-providers`` if that size is listed."""
    out: list[Heartbeats] = []
    todo = list(args.providers)
    cores = os.cpu_count() or 1
    fell_back = False

    def fall_back(size: int, why: str) -> None:
        nonlocal fell_back
        if not fell_back and not any(h.providers == size for h in out):
            fell_back = True
            console.print(f"trying {size:,} providers instead: {why}", highlight=False)
            todo.insert(0, size)

    while todo:
        n = todo.pop(0)
        fit = max((h for h in out if h.fits), key=lambda h: h.providers, default=None)
        h: Heartbeats | None = None
        if fit is not None and n > fit.providers and fit.w is not None:
            assert fit.w is not None
            need_mb = sum(v for k, v in fit.w.rss_mb.items() if k != "bench") / fit.providers * n
            need, why = projection(fit, n, cores)
            why += f"; memory ~{need_mb:,.0f} MiB of {mem_available_mb():,.0f} MiB available"
            rate = fit.providers / max(fit.startup_s, 1e-9)  # registrations per second
            slow = n / rate > args.startup_timeout
            if need > 90 * cores or slow or need_mb > 0.8 * mem_available_mb():
                if slow:
                    why = (
                        f"{fit.providers:,} registered at {rate:,.0f}/s: {n:,} would take {n / rate:,.0f} s, "
                        f"past --startup-timeout {args.startup_timeout:g} s; {why}"
                    )
                h = Heartbeats(n, False, why=f"not tried: {why}")
                room = 0.8 * mem_available_mb() / (need_mb / n)
                largest = int(min(90 * cores / (need / n), rate * args.startup_timeout, room) // 500 * 500)
                if largest > fit.providers:
                    fall_back(largest, "the largest that the cores, the memory and the start-up timeout would hold")
        if h is None:
            try:
                async with fleet(args, n, 2, progress) as f:
                    h = await heartbeating(f, args.window, progress)
                    if makespan_out is not None and n == args.makespan_providers and not makespan_out:
                        makespan_out.append(
                            await makespan(f, args.tasks, args.per_job, args.makespan_timeout, progress)
                        )
            except RuntimeError as e:
                h = Heartbeats(n, False, why=str(e))
            if not h.fits and fit is not None:
                mid = int(round(math.sqrt(fit.providers * n), -2))
                if fit.providers < mid < n:
                    fall_back(mid, f"between the largest that fit ({fit.providers:,}) and {n:,}")
        out.append(h)
        console.print(f"{n:,} providers: " + ("fits" if h.fits else f"[red]does not fit[/]: {h.why}"), highlight=False)
    return out


async def main() -> None:
    from gpufleet.logging import configure_logging

    configure_logging("console", "warning")
    if sys.argv[1:2] == ["--simulate"]:
        url, data_dir, count, slots, prefix = sys.argv[2:7]
        return await simulate(url, data_dir, int(count), int(slots), prefix)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--providers", type=sizes, default=[1000, 10_000], help="fleet sizes to heartbeat, in order")
    ap.add_argument("--per-process", type=int, default=1000, help="simulated providers per simulate process")
    ap.add_argument("--window", type=float, default=10.0, help="seconds of each measuring window")
    ap.add_argument("--tasks", type=int, default=4000, help="one-second tasks for the makespan")
    ap.add_argument("--makespan-providers", type=int, default=1000, help="providers (2 slots each) for the makespan")
    ap.add_argument("--per-job", type=int, default=400, help="tasks per job")
    ap.add_argument("--makespan-timeout", type=float, default=150.0)
    ap.add_argument(
        "--long-tasks", type=int, default=1000, help="long-running tasks reporting progress (issue 13: 20000)"
    )
    ap.add_argument("--long-providers", type=int, default=250, help="providers the long tasks share")
    ap.add_argument("--long-seconds", type=float, default=600.0, help="each long task's length (it is never reached)")
    ap.add_argument("--progress-rates", type=rates, default=[1.0, 4.0], help="progress reports per task per second")
    ap.add_argument("--ramp-timeout", type=float, default=60.0, help="seconds for every long task to be leased")
    ap.add_argument("--startup-timeout", type=float, default=90.0, help="seconds for a fleet to register")
    ap.add_argument("--raw", type=int, default=20_000, help="messages for the raw publish_async floor")
    ap.add_argument(
        "--phases",
        type=lambda s: set(s.split(",")),
        default={"heartbeats", "makespan", "long"},
        help="which to run: heartbeats,makespan,long",
    )
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of under a minute")
    args = ap.parse_args()
    if args.quick:
        args.providers, args.window, args.tasks, args.makespan_providers = [10, 40], 2.0, 40, 10
        args.per_job, args.long_tasks, args.long_providers, args.long_seconds = 10, 40, 10, 120.0
        args.raw, args.per_process, args.startup_timeout = 1000, 40, 30.0
        args.ramp_timeout, args.makespan_timeout = 20.0, 30.0

    load = os.getloadavg()[0]
    console.print(
        f"{os.cpu_count()} cores, load average {load:.2f}, {mem_available_mb():,.0f} MiB available"
        + (" [yellow](the machine is busy: figures will show it)[/]" if load > 0.5 * (os.cpu_count() or 1) else ""),
        highlight=False,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    hbs: list[Heartbeats] = []
    mks: list[Makespan] = []
    lts: list[LongTasks] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Progress(*columns, console=console, transient=True) as progress:
        args.tmp = tmp
        if "heartbeats" in args.phases:
            hbs = await run_heartbeats(args, progress, mks if "makespan" in args.phases else None)
        if not mks and "makespan" in args.phases:
            try:
                async with fleet(args, args.makespan_providers, 2, progress) as f:
                    mks.append(await makespan(f, args.tasks, args.per_job, args.makespan_timeout, progress))
            except RuntimeError as e:
                console.print(f"[red]makespan not measured[/]: {e}", highlight=False)
        slots = math.ceil(args.long_tasks / args.long_providers)
        for rate in args.progress_rates if "long" in args.phases else []:
            try:
                async with fleet(args, args.long_providers, slots, progress) as f:
                    lts.append(await long_tasks(f, args, rate, progress))
            except RuntimeError as e:
                console.print(f"[red]long tasks at {rate:g}/s not measured[/]: {e}", highlight=False)
                lts.append(LongTasks(args.long_tasks, rate))

    console.print(LEGEND, highlight=False)
    if hbs:
        console.print(heartbeat_table(hbs))
        for h in hbs:
            if not h.fits:
                console.print(f"{h.providers:,} providers did not fit: {h.why}", highlight=False)
            elif h.events:
                console.print(f"{h.providers:,} providers, domain events while idle: {h.events}", highlight=False)
    if mks:
        console.print(makespan_table(mks[0]))
    if lts:
        console.print(long_table(lts))
    console.print(summary(args, hbs, mks[0] if mks else None, lts))
    console.print(f"total {time.perf_counter() - t0:.0f} s; CPU is % of one core", highlight=False)
    if args.json:
        g, note = grows(lts)
        figures = {
            "heartbeats": [dataclasses.asdict(h) for h in hbs],
            "makespan": dataclasses.asdict(mks[0]) if mks else None,
            "long_tasks": [dataclasses.asdict(r) for r in lts],
            "durable_grows_with_progress": g,
            "durable_grows_note": note,
        }
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
