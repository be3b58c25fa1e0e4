"""Command line of the read side: ``python -m projections run|rebuild|audit``.

- ``run``: catch up from the checkpoint, then follow the log live (until SIGTERM or SIGINT).
- ``rebuild``: empty the read models and fold the whole log from position 0, then exit.
- ``audit``: replay the domain and intake streams and print the audit report (exit 1 on findings).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from events.errors import GpufleetError, InvalidPayload
from events.identity import CredentialsError
from events.metrics import MetricsRegistry, parse_listen, serve_metrics
from events.store.connection import Access
from events.store.jetstream import JetStreamEventStore, Reads, StreamSettings
from events.subjects import EVENT_PREFIX, EVENTS_STREAM, INTAKE_STREAM
from projections.audit import audit_jetstream
from projections.metrics import ProjectorCollector
from projections.projector import Projector
from projections.storage import open_store

__all__ = ["main", "peak_rss_kb"]


def peak_rss_kb() -> int:
    """This process's peak resident memory in KiB: VmHWM (ru_maxrss survives exec from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m projections", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "rebuild", "audit"):
        c = sub.add_parser(name)
        c.add_argument("--url", default="nats://127.0.0.1:4222")
        c.add_argument("--creds", default=os.environ.get("GPUFLEET_CREDS"), help="NATS credentials (.creds)")
        c.add_argument("--tls-ca", default=os.environ.get("GPUFLEET_TLS_CA"), help="the network's TLS CA")
        c.add_argument("--stream", default=EVENTS_STREAM, help="the JetStream stream of domain events")
        c.add_argument("--prefix", default=EVENT_PREFIX, help="its subject prefix")
        if name == "audit":
            c.add_argument("--intake", default=INTAKE_STREAM, help="the intake stream ('' to skip)")
            c.add_argument("--json", action="store_true", help="print the report as JSON")
            continue
        c.add_argument(
            "--db", required=True, help="the read models: a SQLite file or postgresql://USER@HOST/DB[?schema=NAME]"
        )
        c.add_argument("--batch-size", type=int, default=5000, help="events per commit")
        c.add_argument("--read-batch", type=int, default=2000, help="events per read request")
        c.add_argument("--json", action="store_true", help="print a JSON summary when done")
        if name == "run":
            c.add_argument("--checkpoint-every", type=int, default=10_000, help="audit chain checkpoints")
            c.add_argument(
                "--metrics",
                type=_listen,
                default=None,
                metavar="HOST:PORT",
                help="serve Prometheus metrics at http://HOST:PORT/metrics (a PORT alone: on 127.0.0.1 only)",
            )
            c.add_argument(
                "--hold-commit",
                type=float,
                default=0.0,
                help="fault injection: sleep this long inside each commit's transaction, before COMMIT",
            )
    return p


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except InvalidPayload as e:
        raise argparse.ArgumentTypeError(e.problem) from e


async def _store(args: argparse.Namespace) -> JetStreamEventStore:
    settings = StreamSettings(name=args.stream, prefix=args.prefix)
    access = Access(args.url, Path(args.creds) if args.creds else None, Path(args.tls_ca) if args.tls_ca else None)
    # An auditor may read the log only with direct gets; the network's own projector uses a consumer.
    try:
        who = access.identity()
    except CredentialsError:
        who = None  # the operator's own user: it may do anything
    reads: Reads = "direct" if who is not None and who.role == "auditor" else "consumer"
    return await JetStreamEventStore.connect(access, settings=settings, name="gpufleet-projections", reads=reads)


async def _run(args: argparse.Namespace) -> int:
    db = open_store(args.db)  # first: a bad --db fails before anything connects
    store = await _store(args)

    def hold(position: int) -> None:
        print(f"in-transaction {position}", flush=True)
        time.sleep(args.hold_commit)

    projector = Projector(
        store,
        db,
        batch_size=args.batch_size,
        read_batch=args.read_batch,
        checkpoint_every=args.checkpoint_every or None,
        in_transaction=hold if args.hold_commit > 0 else None,
    )
    print(f"from {projector.open()}", flush=True)
    served = None
    if args.metrics is not None:
        registry = MetricsRegistry(process=True)
        registry.register(ProjectorCollector(projector))
        try:
            host, port = args.metrics
            served = await serve_metrics(host, port, registry)
        except InvalidPayload:
            await store.close()
            db.close()
            raise
        print(f"metrics at {served.url}", flush=True)
    task = asyncio.create_task(projector.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        if served is not None:
            await served.close()
        await store.close()
        db.close()
    print(f"stopped at {projector.position}", flush=True)
    return 0


async def _rebuild(args: argparse.Namespace) -> int:
    db = open_store(args.db)
    store = await _store(args)
    projector = Projector(store, db, batch_size=args.batch_size, read_batch=args.read_batch)
    started = time.perf_counter()
    position = await projector.rebuild()
    elapsed = time.perf_counter() - started
    await store.close()
    db.close()
    summary = {
        "position": position,
        "events": projector.applied,
        "batches": projector.batches,
        "seconds": elapsed,
        "events_per_s": projector.applied / elapsed if elapsed else 0.0,
        "max_rss_kb": peak_rss_kb(),
    }
    print(json.dumps(summary) if args.json else f"rebuilt to {position}: {summary}", flush=True)
    return 0


async def _audit(args: argparse.Namespace) -> int:
    store = await _store(args)
    try:
        report = await audit_jetstream(store, intake_stream=args.intake or None)
    finally:
        await store.close()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    # SIGUSR1 dumps every thread's stack to stderr: for an operator (or a test) asking what a stuck
    # projector is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    command = {"run": _run, "rebuild": _rebuild, "audit": _audit}[args.command]
    try:
        return asyncio.run(command(args))
    except GpufleetError as e:  # one line a person can act on, never a traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
