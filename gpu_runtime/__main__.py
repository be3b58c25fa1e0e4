"""Run a provider: ``python -m gpu_runtime --nats nats://host:4222 --creds my-gpu-1.creds``.

The provider's id is the name in its credentials (``--provider-id`` may repeat it, nothing more).

SIGTERM or Ctrl-C drains: nothing new is taken, running work finishes, then the provider leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import structlog

from events.errors import GpufleetError
from gpu_runtime.service import ProviderRuntime, RuntimeConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpu_runtime", description="Run a gpufleet provider.")
    p.add_argument("--nats", default=os.environ.get("GPUFLEET_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--creds", default=os.environ.get("GPUFLEET_CREDS"), help="the provider's NATS credentials")
    p.add_argument("--tls-ca", default=os.environ.get("GPUFLEET_TLS_CA"), help="the network's TLS CA (PEM)")
    p.add_argument("--provider-id", default=os.environ.get("GPUFLEET_PROVIDER_ID"))
    p.add_argument("--name", default="")
    backend = os.environ.get("GPUFLEET_BACKEND", "auto")
    p.add_argument("--backend", choices=["auto", "cuda", "cpu"], default=backend)
    p.add_argument("--slots", type=int, default=None, help="worker processes (default: one per GPU)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval, seconds")
    p.add_argument("--memory-limit-mb", type=int, default=None, help="per-task device memory cap")
    p.add_argument("--price-micros", type=int, default=0)
    p.add_argument("--no-calibrate", action="store_true")
    p.add_argument("--log-level", default="info")
    return p


async def _serve(config: RuntimeConfig) -> None:
    runtime = ProviderRuntime(config)
    await runtime.start()
    loop = asyncio.get_running_loop()
    drains: list[asyncio.Task[None]] = []

    def drain() -> None:
        if not drains:
            drains.append(loop.create_task(runtime.drain("signal")))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, drain)
    await runtime.serve()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the provider until it is drained; exit code 0, or 1 with one line."""
    args = _parser().parse_args(argv)
    level = getattr(logging, args.log_level.upper(), logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    kw = {"provider_id": args.provider_id} if args.provider_id else {}
    try:
        config = RuntimeConfig(
            nats_url=args.nats,
            creds=Path(args.creds) if args.creds else None,
            tls_ca=Path(args.tls_ca) if args.tls_ca else None,
            name=args.name,
            backend=args.backend,
            slots=args.slots,
            heartbeat_s=args.heartbeat,
            memory_limit_mb=args.memory_limit_mb,
            price_micros=args.price_micros,
            calibrate=not args.no_calibrate,
            **kw,
        )
        asyncio.run(_serve(config))
    except GpufleetError as e:
        print(f"gpu_runtime: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
