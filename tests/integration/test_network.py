"""The whole network, nothing simulated: a real nats-server, the orchestrator, real provider runtimes on
NumPy (in-process and as ``python -m gpu_runtime`` subprocesses), and a client that only speaks NATS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from actors.world import World
from events import Envelope
from events.job import JobCancelled, JobRejected
from events.provider import ProviderLost
from events.store import JetStreamEventStore
from events.store.blobs import BlobStore
from events.task import TaskCancelled, TaskCompleted, TaskLeased, TaskLeaseExpired, TaskProgressed
from events.types import ResultRef
from tests.integration.audited import assert_audit_passes
from tests.integration.orchestra import Tenants, assert_exactly_once, wait_for
from tests.integration.runtime_support import provider
from tests.runtime_reference import ref_hits, ref_pm1, ref_stencil
from tests.secure import SecureServer

#: Short timeouts: a provider silent for 1.5 s is lost. Providers heartbeat every 0.2 s.
CONFIG = OrchestratorConfig(heartbeat_timeout_s=1.5, lease_start_timeout_s=15.0, lease_grace_s=10.0)
ROOT = Path(__file__).resolve().parents[2]
ENDED = frozenset({"completed", "failed", "cancelled", "rejected"})


def ended(*job_ids: str) -> Callable[[World], bool]:
    """Every one of ``job_ids`` reached a final state (``submitted`` is not one: it awaits a decision)."""
    return lambda w: all(j in w.jobs and w.jobs[j].status in ENDED for j in job_ids)


#: Who submits in these tests: one submitter, with credentials of her own.
ME = "alice"


def jid(name: str) -> str:
    """The full id of job ``name`` of the tests' submitter."""
    return f"{ME}.{name}"


@dataclass
class Network:
    """A server, an orchestrator in this process, a reader of the log, and a submitter."""

    server: SecureServer
    orch: Orchestrator
    client: JetStreamEventStore
    logs: Path
    tenants: Tenants
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: The log as a follower saw it arrive: (monotonic time, envelope).
    seen: list[tuple[float, Envelope]] = field(default_factory=list)

    @property
    def nc(self) -> Any:
        return self.client.nc

    def spawn_provider(self, provider_id: str) -> subprocess.Popen[bytes]:
        """``python -m gpu_runtime`` on the NumPy backend, in a process group of its own."""
        creds = self.server.access("provider", provider_id).creds
        cmd = [
            sys.executable,
            "-m",
            "gpu_runtime",
            "--nats",
            self.server.url,
            "--creds",
            str(creds),
            "--backend",
            "cpu",
            "--heartbeat",
            "0.2",
            "--no-calibrate",
            "--log-level",
            "warning",
        ]
        out = (self.logs / f"{provider_id}.log").open("wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs[provider_id] = proc
        return proc

    async def online(self, *provider_ids: str, timeout: float = 60.0) -> None:
        """Wait until the orchestrator sees every one of ``provider_ids`` online."""

        def ready(w: World) -> bool:
            return all(p in w.providers and w.providers[p].status == "online" for p in provider_ids)

        try:
            await self.orch.settle(timeout, ready)
        except TimeoutError:
            tails = {p: (self.logs / f"{p}.log").read_text()[-2000:] for p in self.procs}
            raise AssertionError(f"providers not online: {provider_ids}; logs: {tails}") from None

    async def follow(self) -> None:
        async for env in self.client.subscribe(0):
            self.seen.append((time.monotonic(), env))

    async def submit(self, name: str, spec: dict[str, Any]) -> None:
        await self.tenants.submit(ME, name, spec)

    async def until(self, predicate: Callable[[World], bool], timeout: float = 40.0) -> tuple[World, list[Envelope]]:
        return await wait_for(self.client, predicate, timeout=timeout, poll=0.2)


@pytest.fixture
async def net(own_nats_server: SecureServer, tmp_path: Path) -> AsyncIterator[Network]:
    orch = await Orchestrator.connect(own_nats_server.access("orchestrator"), config=CONFIG)
    client = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"), name="test-client")
    network = Network(own_nats_server, orch, client, tmp_path, Tenants(own_nats_server))
    follower = asyncio.create_task(network.follow())
    try:
        yield network
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower
        for proc in network.procs.values():
            # The whole group: the service and the worker processes it spawned.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        await orch.close()
        await client.close()
        await network.tenants.close()


def canonical(value: Any) -> bytes:
    """The canonical JSON a result's sha256 is taken over, as a client in any language writes it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


async def fetch_result(net: Network, ref: ResultRef) -> tuple[str, Any]:
    """A task's result as a client gets it: inline, or from the object store; the digest checked."""
    if ref.object is None:
        data = canonical(ref.inline)
        where = "inline"
    else:
        # As the job's submitter reads it: by digest, with her own credentials.
        nc = await net.tenants.nc("submitter", ME)
        data = await BlobStore(nc, "submitter", ME).get(ref.object)
        assert hashlib.sha256(data).hexdigest() == ref.object.sha256, "the object does not match its reference"
        where = "object"
    assert hashlib.sha256(data).hexdigest() == ref.sha256, f"{where} result does not match its sha256"
    assert len(data) == ref.size
    return where, json.loads(data)


def of_task(log: list[Envelope], task_id: str, kind: type[Any]) -> list[Any]:
    return [e.data for e in log if e.subject == f"task.{task_id}" and isinstance(e.data, kind)]


# ---- the jobs and their references -----------------------------------------------------------------

MATMULS = [{"n": 48, "seed": 1}, {"n": 64, "seed": 2}, {"n": 80, "seed": 3, "dtype": "fp32"}]
STENCIL = {"n": 32, "steps": 200, "alpha": 0.2, "checkpoint_every": 50, "step_delay_s": 0.01}
MIXED: dict[str, dict[str, Any]] = {
    "mm": {
        "workload": "matmul",
        "params": {"dtype": "fp64", "repeat": 2},
        "split": {"kind": "params", "params": MATMULS},
    },
    "mc": {"workload": "montecarlo", "params": {"samples": 20_000, "seed": 7, "chunk": 4096}},
    "st": {"workload": "stencil", "params": STENCIL},
    "ff": {"workload": "fft", "params": {"n": 256, "batch": 3, "dtype": "complex128", "seed": 5}},
    "rd": {"workload": "reduction", "params": {"n": 5000, "op": "norm", "seed": 3}},
    "ew": {
        "workload": "elementwise",
        "params": {"n": 5000, "op": "sigmoid", "seed": 9},
        "split": {"kind": "count", "count": 2},
    },
}


def check_matmul(value: dict[str, Any], params: dict[str, Any]) -> None:
    n, seed, dtype = params["n"], params["seed"], params.get("dtype", "fp64")
    np_dtype, rtol = (np.float64, 1e-12) if dtype == "fp64" else (np.float32, 1e-5)
    a = ref_pm1(seed, 1, n * n).astype(np_dtype).astype(np.float64).reshape(n, n)
    b = ref_pm1(seed, 2, n * n).astype(np_dtype).astype(np.float64).reshape(n, n)
    c = a @ b
    assert (value["n"], value["seed"], value["dtype"], value["repeat"]) == (n, seed, dtype, 2)
    assert value["checksum"] == pytest.approx(c.sum(), abs=rtol * np.abs(c).sum())
    assert value["fro"] == pytest.approx(np.linalg.norm(c), rel=rtol)


def check_stencil(value: dict[str, Any], p: dict[str, Any]) -> None:
    u = ref_stencil(p["n"], p["steps"], p["alpha"])
    assert value["sum"] == pytest.approx(u.sum(), rel=1e-12)
    assert value["l2"] == pytest.approx(np.linalg.norm(u), rel=1e-12)
    assert value["center"] == pytest.approx(u[p["n"] // 2, p["n"] // 2], rel=1e-12)


def check(job: str, index: int, value: dict[str, Any]) -> None:
    """``value`` against an independent reference computed here."""
    if job == "mm":
        check_matmul(value, MATMULS[index])
    elif job == "mc":
        hits = ref_hits(7, 20_000)
        assert (value["hits"], value["pi"]) == (hits, 4.0 * hits / 20_000)
    elif job == "st":
        check_stencil(value, STENCIL)
        assert (value["resumed_from_step"], value["steps_run"]) == (0, STENCIL["steps"])
    elif job == "ff":
        n, batch = 256, 3
        x = ref_pm1(5, 1, n * batch) + ref_pm1(5, 2, n * batch) * 1j
        spectrum = np.fft.fft(x.reshape(batch, n), axis=-1)
        assert value["energy"] == pytest.approx(float((np.abs(spectrum) ** 2).sum()), rel=1e-12)
        assert value["checksum_re"] == pytest.approx(spectrum.real.sum(), abs=1e-12 * np.abs(spectrum).sum())
        assert value["dc"] == pytest.approx([spectrum[0, 0].real, spectrum[0, 0].imag], rel=1e-12)
    elif job == "rd":
        x = ref_pm1(3, 1, 5000)
        assert value["value"] == pytest.approx(np.sqrt((x * x).sum()), rel=1e-12)
    elif job == "ew":
        out = 1 / (1 + np.exp(-ref_pm1(9, 1, 5000)))
        assert value["sum"] == pytest.approx(out.sum(), rel=1e-12)
        assert value["digest"] == hashlib.sha256(out.tobytes()).hexdigest()  # same backend: same bytes
    else:  # pragma: no cover
        raise AssertionError(job)


# ---- the tests -----------------------------------------------------------------------------------


async def test_a_mixed_job_set_runs_to_completion_with_verified_results_and_live_progress(net: Network) -> None:
    # Two real runtimes; one sends every result through the object store, the other inline.
    async with (
        provider(net.server, provider_id="inline", heartbeat_s=0.2) as a,
        provider(net.server, provider_id="objects", heartbeat_s=0.2, inline_limit=0) as b,
    ):
        await net.online(a.provider_id, b.provider_id)
        for job_id, spec in MIXED.items():
            await net.submit(job_id, spec)
        w, log = await net.until(ended(*map(jid, MIXED)), timeout=40)

    assert {j: w.jobs[jid(j)].status for j in MIXED} == dict.fromkeys(MIXED, "completed")
    assert_exactly_once(log)
    paths = set()
    for task_id in sorted(w.tasks):
        _, job, index = task_id.split(".")
        (done,) = of_task(log, task_id, TaskCompleted)
        where, value = await fetch_result(net, done.result)
        paths.add((where, done.provider_id))
        assert value["workload"] == MIXED[job]["workload"]
        check(job, int(index), value)
    assert len(w.tasks) == 3 + 1 + 1 + 1 + 1 + 2
    assert {where for where, _ in paths} == {"inline", "object"}
    assert all((where == "object") == (pid == "objects") for where, pid in paths)

    # Progress arrived while the stencil ran: the follower saw it well before the completion.
    stencil = [(t, e.data) for t, e in net.seen if e.subject == f"task.{jid('st')}.0"]
    progress = [(t, d) for t, d in stencil if isinstance(d, TaskProgressed) and d.fraction < 1.0]
    completed = [t for t, d in stencil if isinstance(d, TaskCompleted)]
    assert len(progress) >= 2 and len(completed) == 1
    assert progress[0][0] < completed[0] - 0.5, "progress came only at the end"
    fractions = [d.fraction for _, d in progress]
    assert fractions == sorted(fractions) and 0.0 < fractions[0] < fractions[-1] < 1.0
    assert any(d.checkpoint is not None for _, d in progress)
    await assert_audit_passes(net.client)


async def test_a_killed_provider_s_task_resumes_on_another_from_its_checkpoint(net: Network) -> None:
    for pid in ("pa", "pb"):
        net.spawn_provider(pid)
    await net.online("pa", "pb")
    params = {"n": 40, "steps": 300, "alpha": 0.2, "checkpoint_every": 30, "step_delay_s": 0.01}
    await net.submit("long", {"workload": "stencil", "params": params, "retry": {"max_attempts": 1}})

    long0 = f"{jid('long')}.0"

    def checkpointed(w: World) -> bool:
        t = w.tasks.get(long0)
        return t is not None and t.status == "running" and t.checkpoint_step >= 60

    w, _ = await net.until(checkpointed, timeout=20)
    lease = w.tasks[long0].lease
    assert lease is not None
    victim, survivor = lease.provider_id, ({"pa", "pb"} - {lease.provider_id}).pop()
    workers = _children(net.procs[victim].pid)
    assert workers, "the provider runs its tasks in worker processes"
    net.procs[victim].send_signal(signal.SIGKILL)  # the service only, mid-task, without a word

    w, log = await net.until(ended(jid("long")), timeout=30)
    assert w.jobs[jid("long")].status == "completed"
    leases = of_task(log, long0, TaskLeased)
    assert [x.provider_id for x in leases] == [victim, survivor]
    (expired,) = of_task(log, long0, TaskLeaseExpired)
    assert (expired.provider_id, expired.reason) == (victim, "provider_lost")
    assert any(isinstance(e.data, ProviderLost) and e.data.provider_id == victim for e in log)

    # The second lease resumes from the newest checkpoint the first attempt reported...
    first = [p for p in of_task(log, long0, TaskProgressed) if p.lease_id == leases[0].lease_id]
    newest = max((p for p in first if p.checkpoint is not None), key=lambda p: p.checkpoint_step)
    second = leases[1]
    assert second.resume_from == newest.checkpoint and second.resume_step == newest.checkpoint_step >= 60
    # ...and the result proves it did: it ran only the remaining steps.
    (done,) = of_task(log, long0, TaskCompleted)
    assert done.provider_id == survivor
    _, value = await fetch_result(net, done.result)
    assert value["resumed_from_step"] == second.resume_step
    assert value["steps_run"] == params["steps"] - second.resume_step
    later = [p for p in of_task(log, long0, TaskProgressed) if p.lease_id == second.lease_id]
    assert later and later[0].fraction > second.resume_step / params["steps"]

    # It equals an uninterrupted run, bit for bit, and the independent reference.
    await net.submit("fresh", {"workload": "stencil", "params": {**params, "step_delay_s": 0.0}})
    w, log = await net.until(ended(jid("fresh")), timeout=20)
    (fresh,) = of_task(log, f"{jid('fresh')}.0", TaskCompleted)
    _, uninterrupted = await fetch_result(net, fresh.result)
    assert uninterrupted["resumed_from_step"] == 0
    for key in ("sum", "l2", "center"):
        assert value[key] == uninterrupted[key]
    check_stencil(value, params)

    # The dead service's workers did not linger, burning a CPU for nobody.
    assert not [p for p in workers if _alive(p)], "orphaned worker processes outlived their service"
    # The lost provider held its lease until it expired; nothing it did counts twice; the books balance.
    assert_exactly_once(log)
    await assert_audit_passes(net.client)


KERNEL = {
    "source": 'extern "C" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }',
    "name": "twice",
    "grid": [1],
    "block": [4],
    "args": [{"kind": "array", "dtype": "float32", "value": [1.0, 2.0, 3.0, 4.0], "output": True}],
}


async def test_a_custom_kernel_needs_cuda_and_never_lands_on_a_cpu(net: Network) -> None:
    async with provider(net.server, provider_id="cpu1", heartbeat_s=0.2):
        await net.online("cpu1")
        await net.submit("any", {"workload": "custom_kernel", "params": KERNEL})
        await net.submit("cuda", {"workload": "custom_kernel", "params": KERNEL, "resources": {"backend": "cuda"}})
        # Work the CPU can do still flows past the kernel that waits for a GPU: each of these was
        # queued behind the kernel's task and leased to the CPU provider while it sat in the queue, the
        # second once the CPU provider was idle again. A wrong placement had every chance to happen
        # before them, and the log shows the order in which the scheduler decided.
        await net.submit("ok", {"workload": "reduction", "params": {"n": 1000}})
        w, log = await net.until(ended(jid("ok")))
        assert w.jobs[jid("ok")].status == "completed"
        await net.submit("ok2", {"workload": "reduction", "params": {"n": 1000}})
        w, log = await net.until(ended(jid("ok2")))
        assert w.jobs[jid("ok2")].status == "completed"
        any0, cuda0 = f"{jid('any')}.0", f"{jid('cuda')}.0"
        queued_at = min(e.sequence for e in log if e.subject == f"task.{cuda0}")
        leased_at = [
            e.sequence for n in ("ok", "ok2") for e in log if e.subject == f"task.{jid(n)}.0" and e.type == "TaskLeased"
        ]
        assert len(leased_at) == 2 and queued_at < min(leased_at), (queued_at, leased_at)

        (rejected,) = [e.data for e in log if isinstance(e.data, JobRejected)]
        assert rejected.job_id == jid("any") and rejected.field == "resources.backend"
        assert w.jobs[jid("any")].status == "rejected" and any0 not in w.tasks
        assert w.jobs[jid("cuda")].status == "accepted" and w.tasks[cuda0].status == "queued"
        assert not of_task(log, cuda0, TaskLeased)

        await net.tenants.cancel(ME, "cuda", "no GPU today")
        w, log = await net.until(lambda w: w.tasks[cuda0].status == "cancelled", timeout=10)
        assert w.jobs[jid("cuda")].status == "cancelled"
        (cancelled,) = of_task(log, cuda0, TaskCancelled)
        assert cancelled.lease_id is None  # it never held a lease
        assert any(isinstance(e.data, JobCancelled) and e.data.job_id == jid("cuda") for e in log)
        assert not of_task(log, cuda0, TaskLeased)
        await assert_audit_passes(net.client)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
