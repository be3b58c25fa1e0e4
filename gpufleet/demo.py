"""``gpufleet demo``: a whole network on this machine, a mix of real jobs with live progress, the audit.

The mix: a sharded matmul, a seeded Monte Carlo, an iterative stencil with real progress and
checkpoints, and, where a GPU exists, a custom CUDA kernel compiled on the provider.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from actors.orchestrator import OrchestratorConfig
from gpufleet.client import Client, JobStatus
from gpufleet.network import LocalNetwork, NetworkConfig
from gpufleet.tables import fleet_table, narrow_table
from gpufleet.watch import watch_jobs

__all__ = ["demo_jobs", "replay_command", "run_demo"]

SAXPY = r"""
extern "C" __global__ void saxpy(const float a, const float* x, float* y, const int n) {
    int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"""


#: Who submits each sample job: each is a separate identity with its own credentials.
DEMO_SUBMITTERS = ("alice", "bob", "carol", "dave")


def demo_jobs(gpu: bool) -> list[dict[str, Any]]:
    """The sample jobs: sized for a CPU here, bigger on a GPU (submitted by ``DEMO_SUBMITTERS`` in turn)."""
    jobs: list[dict[str, Any]] = [
        {
            "workload": "matmul",
            "params": {"n": 4096 if gpu else 384, "dtype": "fp16" if gpu else "fp32", "repeat": 4},
            "split": {"kind": "params", "params": [{"seed": s} for s in range(4)]},
            "labels": {"demo": "sharded matmul"},
        },
        {
            "workload": "montecarlo",
            "params": {"samples": (1 << 28) if gpu else 3_000_000},
            "split": {"kind": "params", "params": [{"seed": s} for s in range(1, 5)]},
            "labels": {"demo": "seeded Monte Carlo"},
        },
        {
            "workload": "stencil",
            "params": {"n": 128, "steps": 400, "checkpoint_every": 50, "step_delay_s": 0.01},
            "labels": {"demo": "iterative stencil"},
        },
    ]
    if gpu:
        n = 1 << 20
        jobs.append(
            {
                "workload": "custom_kernel",
                "params": {
                    "source": SAXPY,
                    "name": "saxpy",
                    "grid": [n // 256],
                    "block": [256],
                    "args": [
                        {"kind": "scalar", "dtype": "float32", "value": 2.0},
                        {"kind": "array", "dtype": "float32", "value": [1.0] * 1024, "size": n},
                        {"kind": "array", "dtype": "float32", "size": n, "output": True},
                        {"kind": "scalar", "dtype": "int32", "value": n},
                    ],
                },
                "resources": {"backend": "cuda"},
                "labels": {"demo": "custom CUDA kernel"},
            }
        )
    return jobs


def _summary(st: JobStatus, values: list[Any]) -> str:
    if st.status != "completed":
        return st.reason
    if st.workload == "montecarlo":
        pis = [v["pi"] for v in values if isinstance(v, dict) and "pi" in v]
        return f"pi ~ {sum(pis) / len(pis):.5f} from {len(pis)} seeded runs (bit-exact on any backend)"
    if st.workload == "matmul":
        return "checksums " + ", ".join(f"{v['checksum']:.4g}" for v in values if isinstance(v, dict))
    if st.workload == "stencil":
        v = values[0] if values else {}
        return f"{v.get('steps_run')} steps, heat sum {v.get('sum', 0):.6g}"
    return f"{len(values)} result(s)"


def replay_command(data_dir: Path) -> str:
    """The command the demo ends with: it replays and audits the kept log once the demo's network has
    stopped, serving the store itself (``gpufleet replay --data-dir``)."""
    return f"gpufleet replay --audit --data-dir {shlex.quote(str(data_dir))}"


async def run_demo(data_dir: Path, console: Console, *, backend: str = "auto") -> None:
    """Bring the network up, run the sample mix with live bars, print results, fleet and audit."""
    from gpufleet.audit import full_audit
    from projections.query import ReadModels

    cfg = NetworkConfig(
        data_dir=data_dir,
        provider_backend=backend,
        provider_price_micros=2000,  # 0.002 credits per GPU-second, so that the books show something
        # One provider, the demo's own: there is no second owner to check its results against, so
        # the demo's jobs run unverified (a network of strangers spot-checks paid results by default).
        orchestrator=OrchestratorConfig(heartbeat_timeout_s=5.0, default_verify=None),
    )
    net = LocalNetwork(cfg)
    t0 = time.perf_counter()
    with console.status("starting nats-server, the orchestrator, the projections and a provider (calibrating)..."):
        await net.start()
    provider = net.provider
    assert provider is not None and provider.capabilities is not None
    caps = provider.capabilities
    console.print(
        f"[bold]gpufleet demo[/] on {net.url}: provider {provider.provider_id} is "
        f"[bold]{caps.backend}[/] ({caps.gpu_model}), up in {time.perf_counter() - t0:.1f}s",
        highlight=False,
    )
    clients: list[Client] = []
    try:
        gpu = caps.backend == "cuda"
        jobs = []
        for who, spec in zip(DEMO_SUBMITTERS, demo_jobs(gpu), strict=False):
            # Each submitter is its own identity: credentials issued by this network, nothing shared.
            a = net.access("submitter", who)
            client = await Client.connect(a.url, creds=a.creds, tls_ca=a.tls_ca)
            clients.append(client)
            jobs.append(await client.submit(spec))
        statuses = await watch_jobs(jobs, console)

        table = narrow_table("results (every digest verified against the log)")
        for col in ("job", "workload", "status", "tasks", "result"):
            table.add_column(col, no_wrap=col != "result")
        for job, st in zip(jobs, statuses, strict=True):
            values = [r.value for r in await job.result()] if st.status == "completed" else []
            table.add_row(
                st.job_id, st.workload, st.status, f"{st.count('completed')}/{st.task_count}", _summary(st, values)
            )
        console.print(table)

        from events.store import JetStreamEventStore

        # The audit reads as an auditor: every stream, and the right to write nothing.
        store = await JetStreamEventStore.connect(net.access("auditor"), name="gpufleet-demo-audit", reads="direct")
        clients_store = store
        projector = net.projector
        assert projector is not None and net.orchestrator is not None
        head = await store.head()
        for _ in range(100):  # the projections follow the log within milliseconds
            if projector.position >= head:
                break
            await asyncio.sleep(0.05)
        await projector.flush()
        from projections.storage import SqliteStore

        models = ReadModels(SqliteStore(str(net.db_path)))
        try:
            console.print(fleet_table(await models.fleet(), console.width))
            books = await models.balances()
            console.print(f"books balance: {'[green]yes[/]' if books.balanced else '[red]NO[/]'}")
        finally:
            models.close()
        try:
            report, provenance = await full_audit(clients_store)
        finally:
            await clients_store.close()
        verdict = "[green]clean[/]" if report.ok else f"[red]{len(report.findings)} finding(s)[/]"
        console.print(
            f"audit of {report.events} events and the intake stream: {verdict}; "
            f"{provenance.decisions} decisions re-decided from their causes"
        )
        if not report.ok:
            console.print(report.render(), markup=False, highlight=False)
        console.print(
            f"log kept in {data_dir}; replay and audit it any time with `{replay_command(data_dir)}`", highlight=False
        )
    finally:
        for c in clients:
            await c.close()
        with console.status("stopping..."):
            await net.stop()
