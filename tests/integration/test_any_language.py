"""Submitting from any language: the Node.js example and a bash script that speaks raw NATS.

A real nats-server, the orchestrator in process and two simulated providers; the submitters are the
committed examples, run as they would be by a user. Node and npm must be installed: without them this
fails, unless ``GPUFLEET_SKIP_NODE=1`` says to skip the Node part on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from actors.orchestrator import Orchestrator, OrchestratorConfig
from actors.world import World
from events.intake import InputAccepted, InputRejected
from events.job import JobSpec
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.workloads import validate_params
from gpufleet.natsserver import NatsServer
from gpufleet.sim import SimulatedProvider
from tests.integration.orchestra import read_world, wait_for

ROOT = Path(__file__).resolve().parents[2]
NODE_EXAMPLE = ROOT / "examples" / "node"
PLAIN_EXAMPLE = ROOT / "examples" / "plain-nats" / "submit.sh"
FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)
BAD_SPEC = {"workload": "sleep", "split": {"kind": "count", "count": 0}}


@dataclass
class Network:
    server: NatsServer
    store: JetStreamEventStore


@pytest.fixture
async def net(own_nats_server: NatsServer) -> AsyncIterator[Network]:
    """A whole network: orchestrator and two simulated providers on a fresh nats-server."""
    orch = await Orchestrator.connect(own_nats_server.url, config=FAST)
    nc: NATS = await connect_nats(own_nats_server.url, name="test-providers")
    providers = [await SimulatedProvider(nc, f"p{i}", slots=2, heartbeat_s=0.2).start() for i in range(2)]
    store = await JetStreamEventStore.connect(own_nats_server.url)
    yield Network(own_nats_server, store)
    for p in providers:
        await p.kill()
    await orch.close()
    await store.close()
    await nc.close()


async def run(argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a real process without blocking the event loop (the orchestrator runs on it); rc and output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"{argv} ran over {timeout}s; output:\n{out.decode(errors='replace')}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def completed(job_id: str) -> Callable[[World], bool]:
    return lambda w: job_id in w.jobs and w.jobs[job_id].status == "completed"


async def assert_completed_in_log(store: JetStreamEventStore, job_id: str) -> None:
    """The event log, read back independently of the submitter, holds the job's whole life."""
    w, log = await wait_for(store, completed(job_id), timeout=10)
    types = [e.type for e in log if e.subject == f"job.{job_id}"]
    assert types[0] == "JobSubmitted" and "JobCompleted" in types, types
    tasks = w.tasks_by_job[job_id]
    assert len(tasks) == 3 and all(w.tasks[t].status == "completed" for t in tasks)


@pytest.fixture(scope="module")
def node_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The Node example copied out of the tree with its dependencies installed: (node, directory)."""
    if os.environ.get("GPUFLEET_SKIP_NODE") == "1":
        pytest.skip("GPUFLEET_SKIP_NODE=1: the Node.js submitter is not tested")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "Node.js and npm are needed to test examples/node (the 'any language' submitter): install Node 18+ "
            "or set GPUFLEET_SKIP_NODE=1 to skip this test on purpose",
            pytrace=False,
        )
    work = tmp_path_factory.mktemp("node-example") / "node"
    shutil.copytree(NODE_EXAMPLE, work, ignore=shutil.ignore_patterns("node_modules"))
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("npm ci in examples/node ran over 120 s", pytrace=False)
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    yield node, work


def test_the_example_job_specs_are_valid() -> None:
    paths = sorted((NODE_EXAMPLE / "jobs").glob("*.json"))
    assert paths
    for path in paths:
        spec = JobSpec.model_validate_json(path.read_text())
        for i in range(spec.task_count()):
            validate_params(spec.workload, spec.task_params(i))


async def test_node_submits_and_follows_a_job_to_completion(net: Network, node_example: tuple[str, Path]) -> None:
    node, work = node_example
    rc, out = await run([node, "submit.mjs", net.server.url, "nodejob", "--timeout", "60"], work, timeout=90)
    assert rc == 0, out
    assert "submitted nodejob: GF_INTAKE seq" in out
    for t in ("JobSubmitted", "JobAccepted", "JobCompleted"):
        assert t in out, out
    await assert_completed_in_log(net.store, "nodejob")
    # The same submission again changes nothing; the script says so and replays the job's history.
    rc, out = await run([node, "submit.mjs", net.server.url, "nodejob", "--timeout", "30"], work, timeout=60)
    assert rc == 0, out
    assert "InputAccepted" in out and "JobSubmitted" in out and "JobCompleted" in out, out


async def test_node_reports_a_refused_input(net: Network, node_example: tuple[str, Path], tmp_path: Path) -> None:
    node, work = node_example
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps(BAD_SPEC))
    rc, out = await run(
        [node, "submit.mjs", net.server.url, "badnode", "--spec", str(spec), "--timeout", "30"], work, timeout=60
    )
    assert rc == 1, out
    assert "InputRejected" in out and "split" in out, out


async def test_plain_bash_submits_over_raw_nats(net: Network, tmp_path: Path) -> None:
    host, port = net.server.url.removeprefix("nats://").rsplit(":", 1)
    rc, out = await run(["bash", str(PLAIN_EXAMPLE), host, port, "bashjob", "60"], tmp_path, timeout=90)
    assert rc == 0, out
    assert '"stream":"GF_INTAKE"' in out and "server read everything sent" in out, out
    for t in ("JobSubmitted", "JobAccepted", "JobCompleted"):
        assert t in out, out
    await assert_completed_in_log(net.store, "bashjob")
    # The same submission again changes nothing, and the script replays the job's history from the log.
    rc, out = await run(["bash", str(PLAIN_EXAMPLE), host, port, "bashjob", "30"], tmp_path, timeout=60)
    seq = int(out.split('"seq":', 1)[1].split("}", 1)[0])
    assert rc == 0, out
    assert "InputAccepted" in out and "JobSubmitted" in out and "JobCompleted" in out, out
    _, log = await wait_for(net.store, lambda w: w.intake_done(seq), timeout=10)
    (again,) = [e.data for e in log if isinstance(e.data, InputAccepted) and e.data.intake_seq == seq]
    assert again.subject == "gf.in.job.bashjob.submit" and again.facts == 0
    # Another spec under the same id is refused, although the job it names has completed.
    other = {"workload": "sleep", "params": {"seconds": 0.1}}
    rc, out = await run(
        ["bash", str(PLAIN_EXAMPLE), host, port, "bashjob", "30"], tmp_path, 60, env={"GF_SPEC": json.dumps(other)}
    )
    assert rc == 1 and "InputRejected" in out, out


async def test_plain_bash_reports_a_refused_input(net: Network, tmp_path: Path) -> None:
    host, port = net.server.url.removeprefix("nats://").rsplit(":", 1)
    rc, out = await run(
        ["bash", str(PLAIN_EXAMPLE), host, port, "badbash", "30"], tmp_path, 60, env={"GF_SPEC": json.dumps(BAD_SPEC)}
    )
    assert rc == 1, out
    assert "InputRejected" in out, out
    _, log = await read_world(net.store)
    rejected = [e.data for e in log if isinstance(e.data, InputRejected) and "badbash" in e.data.subject]
    assert len(rejected) == 1 and rejected[0].field is not None


async def test_plain_bash_without_gpufleet_says_so(own_nats_server: NatsServer, tmp_path: Path) -> None:
    host, port = own_nats_server.url.removeprefix("nats://").rsplit(":", 1)
    rc, out = await run(["bash", str(PLAIN_EXAMPLE), host, port, "nobody", "10"], tmp_path, 30)
    assert rc == 3, out
    assert "is gpufleet running?" in out, out
