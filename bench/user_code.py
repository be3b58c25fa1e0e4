"""A submitter's sandboxed function against the same work as a catalogue workload, in one run.

    python bench/user_code.py              # 300 calls per row
    python bench/user_code.py --calls 1000

Rows (NumPy backend, so it runs on any provider; every figure is measured in this run):

* per-task overhead on a warm worker, timed around ``run`` (the service's view, hand-over to
  outcome): a no-op and a small saxpy as catalogue workloads in a warm ``WorkerProcess``, as the
  submitter's own function in a warm bubblewrap ``SandboxWorker``, and in the unsafe (no bwrap)
  runner; the raw floor is the same function called in this process (load once, call, encode);
* cold start: a tenant's sandbox from spawn to warm, against a plain ``WorkerProcess`` start (which
  also warms every catalogue workload up);
* through a real network (``LocalNetwork``: secured nats-server, orchestrator, projector, one NumPy
  provider slot), one job at a time, submit to result in the submitter's hands: a one-call job of
  the function (``Client.map``, its archive uploaded once) against a one-task catalogue job of the
  same work; and the first code job, which starts the tenant's sandbox (``--jobs``, 0 to skip).
"""
# ruff: noqa: E402

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import asyncio
import functools
import io
import logging
import statistics
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import array_api_compat.numpy as xp
import structlog

from events.workloads import ElementwiseParams, NoopParams
from gpu_runtime.sandbox import CodeSpec, SandboxOptions, SandboxWorker, find_bwrap
from gpu_runtime.supervisor import Completed, NullSink, WorkerProcess
from gpu_runtime.usercode import FunctionContext, call_function, encode_result, load_function, unpack_archive
from gpu_runtime.worker import TaskSpec, WorkerOptions

N = 4096
SOURCE = """
def noop(xp):
    return None


def saxpy(xp, n, ctx):
    x = ctx.uniform(n, stream=1) * 2 - 1
    y = ctx.uniform(n, stream=2) * 2 - 1
    return float(xp.sum(x * 2.5 + y))
"""


def _archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bench_user.py", SOURCE)
    return buf.getvalue()


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return statistics.median(ms), p99, statistics.fmean(ms)


async def _timed(calls: int, one: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(5):  # warm: imports, first-call caches
        await one()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        result = await one()
        out.append(time.perf_counter() - t0)
        if not isinstance(result, Completed):
            raise SystemExit(f"a call failed: {result}")
    return out


async def main(calls: int, starts: int) -> list[tuple[str, str, list[float]]]:
    rows: list[tuple[str, str, list[float]]] = []
    sink = NullSink()
    archive = _archive()

    # The raw floor: the same function, loaded once, called and encoded in this process.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "code"
        unpack_archive(archive, root)
        for name, args in (("noop", {}), ("saxpy", {"n": N})):
            fn = load_function(root, f"bench_user:{name}")
            samples = []
            for _ in range(calls):
                t0 = time.perf_counter()
                encode_result(call_function(fn, xp, args, {}, FunctionContext(xp, seed=1)))
                samples.append(time.perf_counter() - t0)
            rows.append((name, "in-process call (floor)", samples))

    worker = WorkerProcess(0, WorkerOptions(backend="cpu"), start_timeout_s=300)
    cold_worker: list[float] = []
    for _ in range(starts):
        t0 = time.perf_counter()
        await worker.start()
        cold_worker.append(time.perf_counter() - t0)
        worker.kill()
    await worker.start()
    noop_spec = TaskSpec(seq=0, task_id="b", workload="noop", params=NoopParams())
    saxpy_spec = TaskSpec(
        seq=0, task_id="b", workload="elementwise", params=ElementwiseParams(n=N, op="saxpy", dtype="fp64", seed=1)
    )
    rows.append(("noop", "catalogue, warm WorkerProcess", await _timed(calls, lambda: worker.run(noop_spec, sink, 60))))
    rows.append(
        ("saxpy", "catalogue, warm WorkerProcess", await _timed(calls, lambda: worker.run(saxpy_spec, sink, 60)))
    )
    await worker.stop()

    cold_sandbox: list[float] = []
    kinds = [("sandboxed function (bwrap)", False)] if find_bwrap() else []
    kinds.append(("unsafe runner (no bwrap)", True))
    for label, unsafe in kinds:
        box = SandboxWorker(0, "bench", SandboxOptions(backend="cpu", unsafe=unsafe))
        if not unsafe:
            for _ in range(starts):
                t0 = time.perf_counter()
                await box.start()
                cold_sandbox.append(time.perf_counter() - t0)
                box.kill()
        await box.start()
        for name, spec in (
            ("noop", CodeSpec("b", 0, archive, "bench_user:noop", {})),
            ("saxpy", CodeSpec("b", 0, archive, "bench_user:saxpy", {"n": N}, seed=1)),
        ):
            rows.append((name, label, await _timed(calls, functools.partial(box.run, spec, sink, 60))))
        await box.stop()
    rows.append(("cold start", "WorkerProcess (spawn, warm every workload)", cold_worker))
    if cold_sandbox:
        rows.append(("cold start", "tenant sandbox (bwrap, spawn to warm)", cold_sandbox))
    return rows


NETWORK_SOURCE = """
import gpufleet


@gpufleet.function(compare="none")
def noop(xp):
    return None


@gpufleet.function
def saxpy(xp, n, ctx):
    x = ctx.uniform(n, stream=1) * 2 - 1
    y = ctx.uniform(n, stream=2) * 2 - 1
    return float(xp.sum(x * 2.5 + y))
"""


async def through_network(jobs: int) -> list[tuple[str, str, list[float]]]:
    """Submit to result, one job at a time, on a real local network with one provider slot."""
    import importlib

    from gpufleet import Client
    from gpufleet.network import LocalNetwork, NetworkConfig

    rows: list[tuple[str, str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_user_net.py").write_text(NETWORK_SOURCE)
        sys.path.insert(0, tmp)
        fns = importlib.import_module("bench_user_net")
        config = NetworkConfig(
            data_dir=Path(tmp) / "net",
            port=0,
            provider_backend="cpu",
            provider_slots=1,
            provider_accept_code=("bench",),
            notary=False,
            dashboard=False,
        )
        net = await LocalNetwork(config).start()
        access = net.access("submitter", "bench")
        client = await Client.connect(access.url, creds=access.creds)
        try:
            catalogue: dict[str, dict[str, Any]] = {
                "noop": {"workload": "noop"},
                "saxpy": {"workload": "elementwise", "params": {"n": N, "op": "saxpy", "seed": 1}},
            }

            async def code(name: str, args: dict[str, Any]) -> None:
                await (await client.map(getattr(fns, name), [args])).result(timeout=120)

            async def plain(name: str) -> None:
                await (await client.submit(catalogue[name])).result(timeout=120)

            t0 = time.perf_counter()
            await code("noop", {})
            first = time.perf_counter() - t0
            for name, args in (("noop", {}), ("saxpy", {"n": N})):
                for label, one in (
                    ("catalogue job, through the network", functools.partial(plain, name)),
                    ("function job (map), through the network", functools.partial(code, name, args)),
                ):
                    for _ in range(3):
                        await one()
                    samples = []
                    for _ in range(jobs):
                        t0 = time.perf_counter()
                        await one()
                        samples.append(time.perf_counter() - t0)
                    rows.append((name, label, samples))
            rows.append(("cold start", "first function job (sandbox starts), network", [first]))
        finally:
            await client.close()
            await net.stop()
            sys.path.remove(tmp)
    return rows


def _print(rows: list[tuple[str, str, list[float]]], calls: int) -> None:
    print(f"user code overhead, NumPy backend, saxpy n={N}, {calls} calls per row, {os.cpu_count()} CPUs")
    print(f"{'task':<11} {'how':<46} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for task, how, samples in rows:
        p50, p99, mean = _stats(samples)
        print(f"{task:<11} {how:<46} {len(samples):>5} {p50:>9.3f} {p99:>9.3f} {mean:>9.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=50, help="jobs per row through a real network (0: skip)")
    a = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def everything() -> list[tuple[str, str, list[float]]]:
        rows = await main(a.calls, a.starts)
        return rows + (await through_network(a.jobs) if a.jobs > 0 and find_bwrap() else [])

    _print(asyncio.run(everything()), a.calls)
