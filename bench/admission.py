"""Admission benchmark (issue 12): a victim's latency with and without one submitter's flood, the flood's
rate, the orchestrator's peak RSS, and appends per accepted job against the job's task count.

Run: ``python bench/admission.py`` (``--help`` for sizes; about 3 minutes). It starts its own secured
nats-server (as ``gpufleet up`` does), an orchestrator process and a simulated-provider process, each
with credentials of its own, and measures in the same run:

- the raw floor: ``publish_async`` msgs/s to the same server (as ``bench/orchestrator.py``);
- a victim's one-task job, submit -> completed, p50/p99, on a quiet network and under the flood;
- the flood (``tests/integration/flood.py``): malformed JSON, ~400 KB random blobs and valid ``noop``
  jobs totalling 10,000,000 tasks, sent as fast as one client can; its msgs/s and MB/s;
- the orchestrator's peak RSS (the kernel's high-water mark), idle and under the flood;
- on a second network with no provider online (so nothing takes the tasks): the domain events a job's
  acceptance writes, for jobs of 1 to 10,000,000 tasks. ``until accepted``: the job's and its tasks'
  events up to its ``JobAccepted``; ``settled``: once its writes went quiet. Both must be flat.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.orchestrator import raw_publish_async
from events.job import MAX_TASKS_PER_JOB
from events.store.connection import connect_nats
from events.subjects import event_subject
from gpufleet.network import EmbeddedServer
from tests.integration.flood import (
    Ended,
    FloodPlan,
    FloodReport,
    JobAppends,
    Network,
    RssSampler,
    flood,
    flood_outcomes,
    job_appends,
    peak_rss_mb,
    subjects_under,
    submit_and_wait,
)

#: A table for people: wide enough for its rows when the output is not a terminal (a log, CI).
console = Console() if sys.stdout.isatty() else Console(width=150)


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``xs``, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def latency_cell(samples: list[float | None], q: float, timeout: float) -> str:
    """``q`` quantile of the victims' latencies; one that never completed counts as past ``timeout``."""
    done = [s for s in samples if s is not None]
    missing = len(samples) - len(done)
    if not samples:
        return "-"
    if missing and q * len(samples) > len(done):
        return f"> {timeout:g} s"
    xs = done + [math.inf] * missing
    v = pct(xs, q)
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def quotas_of(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--quota takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


async def appends_per_job(
    args: argparse.Namespace, quotas: dict[str, str], tmp: Path
) -> tuple[list[tuple[int, JobAppends | str, float]], float]:
    """On a network with no provider: what accepting a job of each size writes, and the orchestrator's RSS."""
    out: list[tuple[int, JobAppends | str, float]] = []
    with EmbeddedServer(tmp / "sizes") as server:
        await server.ensure_streams()
        net = Network(server, server.data_dir, tmp / "sizes-procs", providers=0, quotas=quotas)
        async with net:
            reader = await connect_nats(server.access("orchestrator"), name="bench-reader")
            await asyncio.sleep(2.0)  # the orchestrator up
            idle = peak_rss_mb(net.pid)
            for n in args.sizes:
                if n > MAX_TASKS_PER_JOB:
                    out.append((n, f"over the cap (MAX_TASKS_PER_JOB = {MAX_TASKS_PER_JOB:,}): skipped", 0.0))
                    continue
                # A submitter of its own for each size: no job's waiting tasks count against another's.
                who = f"sizer{n}"
                sizer = await connect_nats(server.access("submitter", who), name=f"bench-{who}")
                spec = {"workload": "noop", "split": {"kind": "count", "count": n}}
                try:
                    got = await job_appends(sizer, reader, who, "s", spec, timeout=args.size_timeout, pid=net.pid)
                except TimeoutError as e:
                    out.append((n, str(e), peak_rss_mb(net.pid)))
                    continue
                finally:
                    await sizer.close()
                out.append((n, got.refused or got, peak_rss_mb(net.pid)))
                net.check_alive()
            await reader.close()
    return out, idle


async def victims(
    server: EmbeddedServer, reader: NATS, names: list[str], timeout: float, gap: float
) -> list[float | None]:
    """One-task jobs of the victim, the k-th sent ``k * gap`` seconds after the first, each on its own."""
    nc = await connect_nats(server.access("submitter", "victim"), name="bench-victim")

    async def one(k: int, name: str) -> float | None:
        await asyncio.sleep(k * gap)
        try:
            return await submit_and_wait(nc, reader, "victim", name, timeout=timeout)
        except Ended as e:
            console.print(f"[yellow]{e}[/]")
            return None

    try:
        return list(await asyncio.gather(*(one(k, name) for k, name in enumerate(names))))
    finally:
        await nc.close()


@dataclass
class Flooded:
    """What the flooded network measured."""

    plan: FloodPlan
    raw: float = 0.0
    quotas_applied: bool = False
    quiet: list[float | None] = field(default_factory=list)
    flooded: list[float | None] = field(default_factory=list)
    report: FloodReport = field(default_factory=FloodReport)
    idle_mb: float = 0.0
    peak_mb: float = 0.0
    killed: bool = False
    outcomes: Counter[int] = field(default_factory=Counter)
    outcome_s: float = 0.0
    created: int = 0
    log: int = 0
    #: Peak RSS of the other processes (the projector, the simulated fleet), idle and flooded.
    side_idle: dict[str, float] = field(default_factory=dict)
    side_peak: dict[str, float] = field(default_factory=dict)


async def flooded(args: argparse.Namespace, quotas: dict[str, str], tmp: Path) -> Flooded:
    """The quiet and the flooded victims, the flood, the raw floor and the RSS, on one network."""
    plan = FloodPlan(
        tasks_total=args.flood_tasks,
        tasks_per_job=min(args.tasks_per_job, MAX_TASKS_PER_JOB),
        blobs=args.blobs,
        malformed=args.malformed,
    )
    res = Flooded(plan)
    with EmbeddedServer(tmp / "flood") as server:
        await server.ensure_streams()
        res.raw = await raw_publish_async(server.unrestricted(), args.raw)
        net = Network(
            server,
            server.data_dir,
            tmp / "flood-procs",
            providers=args.providers,
            slots=args.slots,
            quotas=quotas,
            projections=True,
        )
        async with net:
            res.quotas_applied = net.quotas_applied
            reader = await connect_nats(server.access("orchestrator"), name="bench-reader")
            victim = await connect_nats(server.access("submitter", "victim"), name="bench-victim-quiet")
            warm = await submit_and_wait(victim, reader, "victim", "warm", timeout=60)
            if warm is None:
                raise SystemExit(f"the network did not come up: {net.tail()}")
            quiet: list[float | None] = []
            for i in range(args.quiet_victims):
                quiet.append(await submit_and_wait(victim, reader, "victim", f"q{i}", timeout=args.victim_timeout))
            await victim.close()
            res.quiet = quiet
            rss = RssSampler(net.pid, kill_above_mb=args.rss_kill_mb).start()
            res.idle_mb = rss.peak_mb
            assert net.projector is not None and net.fleet is not None
            side = {
                "projector": RssSampler(net.projector.pid).start(),
                "simulated fleet": RssSampler(net.fleet.pid).start(),
            }
            res.side_idle = {k: v.peak_mb for k, v in side.items()}
            halfway = asyncio.Event()
            sending = asyncio.create_task(flood(server.access("submitter", plan.submitter), plan, halfway))
            await halfway.wait()
            names = [f"f{k}" for k in range(args.flood_victims)]
            under, report = await asyncio.gather(
                victims(server, reader, names, args.victim_timeout, args.victim_gap), sending
            )
            res.flooded = under
            res.report = report
            t0 = time.perf_counter()
            outcomes = await flood_outcomes(reader, report, plan.submitter, timeout=args.outcome_wait)
            res.outcomes = Counter(outcomes.values())
            res.outcome_s = time.perf_counter() - t0
            res.peak_mb = await rss.stop()
            res.killed = rss.killed
            await asyncio.sleep(2.0)  # the projector catches up with what the flood wrote
            res.side_peak = {k: await v.stop() for k, v in side.items()}
            res.created = await subjects_under(reader, event_subject(f"task.{plan.submitter}.>"))
            res.log = (await reader.jetstream().stream_info("GF_EVENTS")).state.messages
            await reader.close()
    return res


async def main() -> None:
    from gpufleet.logging import configure_logging

    configure_logging("console", "warning")  # a table for people; warnings only
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--providers", type=int, default=4)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--quiet-victims", type=int, default=20, help="victim samples on a quiet network")
    ap.add_argument("--flood-victims", type=int, default=5, help="victim samples under the flood")
    ap.add_argument("--victim-gap", type=float, default=2.0, help="seconds between flooded victims")
    ap.add_argument("--victim-timeout", type=float, default=60.0)
    ap.add_argument("--flood-tasks", type=int, default=10_000_000, help="tasks the flood's valid jobs total")
    ap.add_argument("--tasks-per-job", type=int, default=100_000)
    ap.add_argument("--blobs", type=int, default=300, help="~400 KB random blobs in the flood")
    ap.add_argument("--malformed", type=int, default=2_600, help="malformed messages in the flood")
    ap.add_argument("--outcome-wait", type=float, default=30.0, help="seconds for every flood message's outcome")
    ap.add_argument("--rss-kill-mb", type=float, default=4_000.0, help="kill the orchestrator past this RSS")
    ap.add_argument("--raw", type=int, default=20_000, help="messages for the raw publish_async floor")
    ap.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 10_000, 100_000, 10_000_000]
    )
    ap.add_argument("--size-timeout", type=float, default=60.0, help="seconds for one size's acceptance to settle")
    ap.add_argument("--quota", action="append", default=[], metavar="KEY=VALUE", help="orchestrator quota (repeat)")
    args = ap.parse_args()
    quotas = quotas_of(args.quota)

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        sizes, sizes_idle = await appends_per_job(args, quotas, tmp)
        res = await flooded(args, quotas, tmp)

    report, plan, quiet, under, outcomes = res.report, res.plan, res.quiet, res.flooded, res.outcomes
    t = Table(
        title=f"gpufleet admission, {os.cpu_count()} cores: nats-server, orchestrator, "
        f"{args.providers}x{args.slots} simulated slots; quotas "
        + (", ".join(f"{k}={v}" for k, v in quotas.items()) if quotas else "the defaults")
        + ("" if res.quotas_applied or not quotas else " (NOT applied: no --quota in this CLI)")
    )
    t.add_column("measure")
    t.add_column("result", justify="right")
    t.add_column("vs", justify="right")
    t.add_row("raw publish_async msg/s (same server)", f"{res.raw:,.0f}", "floor")
    t.add_row(
        "flood sent, msgs/s",
        f"{report.msgs_per_s:,.0f}",
        f"{report.sent:,} msgs in {report.seconds:.2f} s; {report.msgs_per_s / res.raw:.2f}x the floor",
    )
    t.add_row("flood sent, MB/s", f"{report.mb_per_s:,.1f}", f"{report.bytes_sent / 2**20:,.0f} MiB")
    mix = f"{plan.jobs} jobs ({plan.tasks_total:,} tasks), {plan.blobs} blobs, {plan.malformed:,} malformed"
    t.add_row("flood mix", mix, f"not stored: {sum(report.not_stored.values())}")
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        t.add_row(
            f"victim submit->completed {label}, quiet",
            latency_cell(quiet, q, args.victim_timeout),
            f"{len(quiet)} one-task jobs",
        )
        t.add_row(
            f"victim submit->completed {label}, flooded",
            latency_cell(under, q, args.victim_timeout),
            f"{len(under)} one-task jobs, {sum(x is None for x in under)} not completed",
        )
    t.add_row("orchestrator peak RSS, idle", f"{res.idle_mb:,.0f} MiB", "")
    killed = f"KILLED past {args.rss_kill_mb:,.0f} MiB" if res.killed else ""
    t.add_row("orchestrator peak RSS, flooded", f"{res.peak_mb:,.0f} MiB", killed)
    for name, peak in res.side_peak.items():
        t.add_row(f"{name} peak RSS, idle -> flooded", f"{res.side_idle.get(name, 0):,.0f} -> {peak:,.0f} MiB", "")
    t.add_row(
        "flood messages with one outcome",
        f"{outcomes.get(1, 0):,} / {len(report.stored):,}",
        f"none: {outcomes.get(0, 0):,}, several: {sum(v for k, v in outcomes.items() if k > 1):,} "
        f"(after {res.outcome_s:.1f} s)",
    )
    t.add_row("flood tasks in the log", f"{res.created:,}", f"of {plan.tasks_total:,} asked; log {res.log:,} events")
    t.add_row("orchestrator peak RSS, no provider, idle", f"{sizes_idle:,.0f} MiB", "")
    for n, got, mb in sizes:
        label = f"appends for a {n:,}-task job, no provider"
        if isinstance(got, str):
            t.add_row(label, "-", got)
        else:
            t.add_row(
                label,
                f"{got.settled:,}",
                f"{got.until_accepted:,} up to JobAccepted; {got.tasks_created:,} tasks created; "
                f"accepted in {got.accept_s:.2f} s; orchestrator RSS {mb:,.0f} MiB",
            )
    console.print(t)
    done = [x for x in quiet if x is not None]
    if done:
        console.print(
            f"quiet victim mean {statistics.mean(done) * 1000:.1f} ms; run took {time.perf_counter() - t_start:.0f} s"
        )


if __name__ == "__main__":
    asyncio.run(main())
