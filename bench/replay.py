"""Benchmark: rebuild every read model from a log of 1,000,000+ events in a real nats-server.

In one run, against the same server and the same stream:

- the raw floor: an ordered consumer that reads every message and does nothing else (nats-py);
- the rebuild: ``python -m projections rebuild`` (decode, fold every view, SQLite commits), as events
  per second and as a ratio to the raw rate (target >= 0.5), and its peak memory (max RSS);
- the audit as an auditor: its read-side checks alone, then the whole audit of ``gpufleet replay
  --audit`` (those checks and the provenance replayer, every decision re-decided from its cause, in
  one pass), as events per second and as a ratio to the raw rate (target >= 0.3), with its peak memory;
- the ETA error: median and p90 of |predicted - actual| / actual over the finished tasks.

The readers run in fresh child processes, so their peak memory is their own. The log is made by the
real deciders from intake messages, reactions, timers and leases (``tests/golden/decided.py``), so
the provenance audit must pass it; ``--synthetic`` takes the synthetic story of
``tests/golden/loggen.py`` instead (written raw, with no causes: no provenance audit on it). Task
durations are simulated, so the ETA figures over either only show the measurement works; pass
``--eta-log`` (a JSON-lines export of a real job-mix run) for a real figure.

    .venv/bin/python bench/replay.py                 # 1,000,000 events
    .venv/bin/python bench/replay.py --events 200000 # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def _raw_child(url: str, creds: str, events: int) -> dict[str, Any]:
    from nats.js import api

    from events.store.connection import Access, connect_nats
    from projections.__main__ import peak_rss_kb

    nc = await connect_nats(Access(url, Path(creds)))
    js = nc.jetstream()
    started = time.perf_counter()
    sub = await js.subscribe(
        "gf.ev.>",
        stream="GF_EVENTS",
        ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1),
        idle_heartbeat=2.0,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    n = 0
    nbytes = 0
    async for msg in sub.messages:
        n += 1
        nbytes += len(msg.data)
        if n >= events:
            break
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.close()
    return {
        "events": n,
        "bytes": nbytes,
        "seconds": elapsed,
        "events_per_s": n / elapsed,
        "max_rss_kb": peak_rss_kb(),
    }


async def _audit_child(url: str, creds: str) -> dict[str, Any]:
    """The audit as an auditor runs it: the read side's checks alone (``projections.audit``), then the
    whole audit of ``gpufleet replay --audit`` (those checks and the provenance replayer, every decision
    re-decided from its cause, in one pass over the log), each timed."""
    from events.store import JetStreamEventStore
    from events.store.connection import Access
    from gpufleet.audit import full_audit
    from projections.__main__ import peak_rss_kb
    from projections.audit import audit_jetstream

    store = await JetStreamEventStore.connect(Access(url, Path(creds)), name="bench-audit", reads="direct")
    try:
        started = time.perf_counter()
        await audit_jetstream(store)
        checks_s = time.perf_counter() - started
        started = time.perf_counter()
        report, provenance = await full_audit(store)
        full_s = time.perf_counter() - started
    finally:
        await store.close()
    return {
        "events": report.events,
        "checks_s": checks_s,
        "full_s": full_s,
        "findings": len(report.findings),
        "problems": [str(p) for p in provenance.problems[:5]],
        "decisions": provenance.decisions,
        "summary": provenance.summary(),
        "max_rss_kb": peak_rss_kb(),
    }


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def _publish(server: Any, sim: Any) -> tuple[float, float]:
    """Publish the log (and the intake) raw, in order, as the operator's own user; the seconds each took."""
    from events.codec import encode
    from events.store.connection import connect_nats

    await server.ensure_streams()
    nc = await connect_nats(server.unrestricted(), pending_size=256 * 1024 * 1024)
    started = time.perf_counter()
    for i, env in enumerate(sim.events, start=1):
        body, headers = encode(env)
        await nc.publish(f"gf.ev.{env.subject}", body, headers=headers)
        if i % 20_000 == 0:
            await nc.flush(timeout=60)
    await nc.flush(timeout=60)
    events_s = time.perf_counter() - started
    started = time.perf_counter()
    for i, (subject, body) in enumerate(sim.intake, start=1):
        await nc.publish(subject, body)
        if i % 20_000 == 0:
            await nc.flush(timeout=60)  # (unflushed, JetStream drops what its ingest queue cannot hold)
    await nc.flush(timeout=60)
    intake_s = time.perf_counter() - started
    for _ in range(600):
        info = await nc.jetstream().stream_info("GF_EVENTS")
        if info.state.last_seq >= len(sim.events):
            break
        await asyncio.sleep(0.1)
    if info.state.messages != len(sim.events):
        raise SystemExit(f"published {len(sim.events)} events, the stream holds {info.state.messages}")
    for _ in range(600):
        intake = await nc.jetstream().stream_info("GF_INTAKE")
        if intake.state.last_seq >= len(sim.intake):
            break
        await asyncio.sleep(0.1)
    if intake.state.messages != len(sim.intake):
        # A lost intake message shifts every later sequence: the provenance audit would blame them all.
        raise SystemExit(f"published {len(sim.intake)} intake messages, the stream holds {intake.state.messages}")
    await nc.close()
    return events_s, intake_s


class _Log:
    """The log to publish: envelopes in order, and the intake as (subject, body) in stream order."""

    def __init__(self, events: list[Any], intake: list[tuple[str, bytes]]) -> None:
        self.events = events
        self.intake = intake


def _make_log(args: argparse.Namespace) -> _Log:
    if args.synthetic:
        from tests.golden.loggen import random_log

        sim = random_log(args.seed, max_events=args.events, providers=args.providers, tasks_per_job=(1, 12))
        return _Log(sim.events, sim.intake)
    from tests.golden.decided import decided_log

    d = decided_log(args.events, providers=args.providers, seed=args.seed)
    return _Log(d.log, [(r.subject, r.body) for r in d.intake])


def _audit_rows(audit: dict[str, Any] | None, raw_rate: float) -> list[tuple[str, str]]:
    if audit is None:
        return [("audit", "not measured on a synthetic log (no causes to re-decide)")]
    n = audit["events"]
    checks = n / audit["checks_s"]
    both = n / audit["full_s"]
    verdict = "PASS" if audit["findings"] == 0 and not audit["problems"] else f"FAIL: {audit['problems'][:2]}"
    return [
        (
            "audit, read-side checks",
            f"{checks:,.0f} events/s ({audit['checks_s']:.1f} s), {checks / raw_rate:.2f} of raw",
        ),
        (
            "audit with provenance",
            f"{both:,.0f} events/s ({audit['full_s']:.1f} s, one pass), {both / raw_rate:.2f} of raw "
            f"(target >= 0.3: {'met' if both / raw_rate >= 0.3 else 'NOT met'}); {verdict}",
        ),
        ("  what was re-decided", audit["summary"]),
        ("audit peak memory", f"{audit['max_rss_kb'] / 1024:.0f} MiB max RSS"),
    ]


def _eta_from_db(db: Path) -> Any:
    from projections.eta import ETA_TASKS, eta_error
    from projections.storage import SqliteStore

    store = SqliteStore(db, readonly=True)
    rows = [ETA_TASKS.make(v) for v in store.scan(ETA_TASKS)]
    store.close()
    return eta_error((r.predicted_s, r.actual_s) for r in rows if r.actual_s is not None)


def _eta_from_log(path: Path) -> Any:
    from events.codec import from_json_line
    from projections.eta import EtaView, eta_error

    view = EtaView()
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                view.evolve(from_json_line(line))
    return eta_error((t.predicted_s, t.actual_s) for t in view.tasks.values() if t.actual_s is not None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--providers", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--eta-log", type=Path, help="JSON-lines log of a real job-mix run for the ETA figures")
    p.add_argument("--child", choices=["raw", "audit"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--creds", help=argparse.SUPPRESS)
    p.add_argument("--auditor", action="store_true", help="also rebuild as an auditor (direct gets, no consumer)")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="the synthetic story of tests/golden/loggen (written raw, no causes: no provenance audit) "
        "instead of a log the real deciders made",
    )
    args = p.parse_args()

    if args.child == "raw":
        print(json.dumps(asyncio.run(_raw_child(args.url, args.creds, args.events))))
        return 0
    if args.child == "audit":
        print(json.dumps(asyncio.run(_audit_child(args.url, args.creds))))
        return 0

    from gpufleet.network import EmbeddedServer

    with tempfile.TemporaryDirectory(prefix="gf-bench-") as tmp:
        server = EmbeddedServer(Path(tmp) / "net")
        server.start()
        try:
            t = time.perf_counter()
            sim = _make_log(args)
            gen_s = time.perf_counter() - t
            n = len(sim.events)
            pub_s, intake_s = asyncio.run(_publish(server, sim))
            n_intake = len(sim.intake)
            del sim
            gc.collect()

            py = sys.executable
            # The floor reads as the network's own projector does (the orchestrator's credentials).
            orch = str(server.access("orchestrator").creds)
            raw = [py, __file__, "--child", "raw", "--url", server.url, "--creds", orch, "--events", str(n)]
            raw1 = _child(raw)
            db = Path(tmp) / "readmodels.db"

            def rebuild_as(creds: str, into: Path) -> dict[str, Any]:
                cmd = [py, "-m", "projections", "rebuild", "--url", server.url, "--creds", creds]
                return _child([*cmd, "--db", str(into), "--batch-size", str(args.batch_size), "--json"])

            rebuild = rebuild_as(orch, db)
            audited = None
            if args.auditor:
                audited = rebuild_as(str(server.access("auditor", "bench").creds), Path(tmp) / "auditor.db")
            audit = None
            if not args.synthetic:
                auditor = str(server.access("auditor", "bench").creds)
                audit = _child([py, __file__, "--child", "audit", "--url", server.url, "--creds", auditor])
            raw2 = _child(raw)
            raw_rate = max(raw1["events_per_s"], raw2["events_per_s"])
            eta_synth = _eta_from_db(db)
            eta_real = _eta_from_log(args.eta_log) if args.eta_log else None
            db_mb = sum(f.stat().st_size for f in Path(tmp).glob("readmodels.db*")) / 2**20
        finally:
            server.stop()

    ratio = rebuild["events_per_s"] / raw_rate
    rows = [
        ("log", f"{n:,} events, {n_intake:,} intake messages (generated in {gen_s:.1f} s)"),
        ("publish (raw core NATS)", f"{n / pub_s:,.0f} events/s; intake {n_intake / intake_s:,.0f} msg/s"),
        (
            "raw ordered consumer",
            f"{raw1['events_per_s']:,.0f} and {raw2['events_per_s']:,.0f} events/s "
            f"(before and after the rebuild; the faster is the floor); max RSS {raw1['max_rss_kb'] / 1024:.0f} MiB",
        ),
        (
            "rebuild, all views",
            f"{rebuild['events_per_s']:,.0f} events/s, {rebuild['seconds']:.1f} s, {rebuild['batches']} commits",
        ),
        ("rebuild / raw", f"{ratio:.2f}  (target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})"),
        (
            "rebuild as an auditor",
            f"{audited['events_per_s']:,.0f} events/s with direct gets, {audited['events_per_s'] / raw_rate:.2f} of raw"
            if audited is not None
            else "not measured (--auditor)",
        ),
        *_audit_rows(audit, raw_rate),
        ("rebuild peak memory", f"{rebuild['max_rss_kb'] / 1024:.0f} MiB max RSS; SQLite files {db_mb:.0f} MiB"),
        ("ETA error, synthetic log", f"{eta_synth}  (generated durations: checks the plumbing, not the model)"),
        (
            "ETA error, real job mix",
            str(eta_real) if eta_real is not None else "not measured: pass --eta-log <export of a real run>",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"bench/replay.py  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
