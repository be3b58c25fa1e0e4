"""Benchmark: the notary against the raw read of the log it follows, in one run, on one real nats-server.

- the raw floor: batched direct gets of every message of GF_EVENTS (what the notary reads with, as the
  notary), doing nothing with them;
- the notary: from an empty tree to a signed checkpoint of the whole log (read, hash every entry into
  the RFC 9162 tree, keep the stored hashes on disk, sign and publish a checkpoint every 1,000 events),
  as events per second and as a ratio to the floor;
- hashing alone (leaf bytes, leaf hash, tree append; no I/O), and Ed25519 signing of checkpoints;
- proof latency through the network (``gf.api.auditor.<name>.tlog``): inclusion and consistency
  proofs against the whole log, p50 and p99, and a receipt of one job.

    .venv/bin/python bench/tlog.py                  # 300,000 events
    .venv/bin/python bench/tlog.py --events 100000  # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def _publish(server: Any, events: list[Any]) -> None:
    from events.codec import encode
    from events.store.connection import connect_nats

    await server.ensure_streams()
    nc = await connect_nats(server.unrestricted(), pending_size=256 * 1024 * 1024)
    for i, env in enumerate(events, start=1):
        body, headers = encode(env)
        await nc.publish(f"gf.ev.{env.subject}", body, headers=headers)
        if i % 20_000 == 0:
            await nc.flush(timeout=60)
    await nc.flush(timeout=60)
    for _ in range(600):
        info = await nc.jetstream().stream_info("GF_EVENTS")
        if info.state.last_seq >= len(events):
            break
        await asyncio.sleep(0.1)
    await nc.close()


async def _ordered_floor(server: Any, n: int) -> tuple[str, str, str]:
    """The other floor: an ordered consumer (nats-py) reading every message, doing nothing (as the
    orchestrator: the notary reads with direct gets, and may not open consumers)."""
    from nats.js import api

    from events.store.connection import connect_nats

    nc = await connect_nats(server.access("orchestrator"), name="bench-ordered")  # may open consumers
    t = time.perf_counter()
    sub = await nc.jetstream().subscribe(
        "gf.ev.>",
        stream="GF_EVENTS",
        ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1),
        idle_heartbeat=2.0,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    got = 0
    async for _ in sub.messages:
        got += 1
        if got >= n:
            break
    s = time.perf_counter() - t
    await sub.unsubscribe()
    await nc.close()
    return ("raw ordered-consumer read of GF_EVENTS", f"{n / s:,.0f} ev/s", f"{s:.2f} s")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _run(server: Any, n: int, tmp: Path, job: str) -> list[tuple[str, str, str]]:
    from events.store import JetStreamEventStore
    from events.tlog import Checkpoint, CompactTree, leaf_hash, new_signing_seed, sign_checkpoint, stored_leaf_bytes
    from gpufleet.notary import Notary
    from gpufleet.receipts import notary_request

    rows: list[tuple[str, str, str]] = []

    def stage(what: str) -> None:
        print(f"  ... {what}", file=sys.stderr, flush=True)

    store = await JetStreamEventStore.connect(server.access("notary"), reads="direct", name="bench-raw")
    stage("raw read")
    # The floor: the same direct-get read the notary does, doing nothing with what it reads.
    t = time.perf_counter()
    msgs = [m async for m in store.read_raw(end=n)]
    raw_s = time.perf_counter() - t
    rows.append(("raw direct-get read of GF_EVENTS (floor)", f"{n / raw_s:,.0f} ev/s", f"{raw_s:.2f} s"))

    rows.append(await _ordered_floor(server, n))
    t = time.perf_counter()
    tree = CompactTree()
    for m in msgs:
        tree.append(leaf_hash(stored_leaf_bytes(m.sequence, m.subject[6:], m.data, m.headers)))
    hash_s = time.perf_counter() - t
    rows.append(("hashing alone (leaf bytes, leaf hash, tree append)", f"{n / hash_s:,.0f} ev/s", f"{hash_s:.2f} s"))
    del msgs

    stage("signing")
    seed = new_signing_seed()
    t = time.perf_counter()
    for i in range(1000):
        sign_checkpoint(Checkpoint("gpufleet/bench", i, tree.root()), seed)
    sign_s = (time.perf_counter() - t) / 1000
    rows.append(("sign a checkpoint (Ed25519, nkeys)", f"{1 / sign_s:,.0f} /s", f"{sign_s * 1e6:.0f} us each"))

    stage("notary")
    notary = Notary(store, tmp / "notary", every_events=1000, every_s=0.05, poll_s=0.01)
    t = time.perf_counter()
    await notary.start()
    while notary.signed_size < n:  # noqa: ASYNC110 - polling what the benchmark measures
        await asyncio.sleep(0.01)
    notary_s = time.perf_counter() - t
    rows.append(
        (
            "notary: read, hash, store, sign every 1,000",
            f"{n / notary_s:,.0f} ev/s",
            f"{notary_s:.2f} s; {(n / notary_s) / (n / raw_s):.2f}x the floor",
        )
    )
    assert notary.tree.root() == tree.root()
    hashes_mb = (tmp / "notary" / "tree.hashes").stat().st_size / 1e6
    rows.append(("stored hashes on disk", f"{hashes_mb:.1f} MB", f"{hashes_mb * 1e6 / n:.0f} bytes per event"))

    from events.store.connection import connect_nats

    stage("proofs")
    nc = await connect_nats(server.access("auditor", "bench"), name="bench-auditor")
    rng = random.Random(1)
    for op, field in (("inclusion", "position"), ("consistency", "old")):
        lat = []
        for _ in range(300):
            t = time.perf_counter()
            await notary_request(nc, "auditor", "bench", {"op": op, field: rng.randint(1, n)})
            lat.append((time.perf_counter() - t) * 1000)
        rows.append(
            (
                f"{op} proof over the network (size {n:,})",
                f"p50 {statistics.median(lat):.2f} ms",
                f"p99 {_pct(lat, 0.99):.2f} ms",
            )
        )
    t = time.perf_counter()
    doc = await notary_request(nc, "auditor", "bench", {"op": "receipt", "job": job})
    took = (time.perf_counter() - t) * 1000
    rows.append((f"receipt of one job ({len(doc['entries'])} entries)", f"{took:.1f} ms", ""))
    await nc.close()
    await notary.stop()
    await store.close()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    from gpufleet.logging import configure_logging
    from gpufleet.network import EmbeddedServer
    from tests.golden.loggen import random_log

    configure_logging("console", "warning")

    with tempfile.TemporaryDirectory(prefix="gf-bench-tlog-") as tmp:
        server = EmbeddedServer(Path(tmp) / "net")
        server.start()
        try:
            sim = random_log(args.seed, max_events=args.events, providers=16, tasks_per_job=(1, 12))
            events = sim.events
            n = len(events)
            job = str(next(getattr(e.data, "job_id", "") for e in events if e.type == "JobSubmitted"))
            asyncio.run(_publish(server, events))
            del sim, events
            rows = asyncio.run(_run(server, n, Path(tmp), job))
        finally:
            server.stop()
    print(f"\nnotary benchmark: {n:,} events, one nats-server, one process\n")
    w = max(len(r[0]) for r in rows)
    for name, a, b in rows:
        print(f"  {name:<{w}}  {a:>16}  {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
