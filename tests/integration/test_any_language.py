"""Submitting from any language: the Node.js example and a bash script that speaks raw NATS.

A real, secured nats-server, the orchestrator and its event feed in process, and two simulated
providers, each with its own credentials; the submitters are the committed examples, run as they
would be by a user with a submitter's credentials (Node signs the server's nonce with a ``.creds``
file; bash, which cannot sign, uses a bearer credential). Node and npm must be installed: without
them this fails, unless ``GPUFLEET_SKIP_NODE=1`` says to skip the Node part on purpose.
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

import nats.errors
import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from actors.world import World
from events.errors import AccessDenied
from events.intake import InputAccepted, InputRejected
from events.job import JobSpec
from events.store import JetStreamEventStore
from events.store.connection import raise_if_denied
from events.subjects import intake_subject
from events.workloads import validate_params
from gpufleet.sim import SimulatedProvider
from projections.audit import read_intake
from projections.feed import EventFeed
from tests.integration.audited import assert_audit_passes
from tests.integration.orchestra import Tenants, read_world, wait_for
from tests.secure import SecureServer

ROOT = Path(__file__).resolve().parents[2]
NODE_EXAMPLE = ROOT / "examples" / "node"
PLAIN_EXAMPLE = ROOT / "examples" / "plain-nats" / "submit.sh"
FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)
BAD_SPEC = {"workload": "sleep", "split": {"kind": "count", "count": 0}}
SMALL_SPEC = {"workload": "sleep", "params": {"seconds": 0.1}, "split": {"kind": "count", "count": 3}}


@dataclass
class Network:
    server: SecureServer
    #: Reads the whole log, for the assertions (the orchestrator's access: the test is not a submitter).
    store: JetStreamEventStore
    tenants: Tenants

    @property
    def host_port(self) -> tuple[str, str]:
        host, port = self.server.url.removeprefix("nats://").rsplit(":", 1)
        return host, port

    def creds(self, name: str, where: Path, *, bearer: bool = False) -> Path:
        """A fresh credential file of submitter ``name``, as `gpufleet creds issue` writes it."""
        suffix = ".bearer.creds" if bearer else ".creds"
        return self.server.creds("submitter", name, where / f"{name}{suffix}", bearer=bearer)


@pytest.fixture
async def net(own_nats_server: SecureServer) -> AsyncIterator[Network]:
    """A whole network: orchestrator, event feed and two simulated providers on a fresh secured server."""
    orch = await Orchestrator.connect(own_nats_server.access("orchestrator"), config=FAST)
    feed_store = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"))
    feed = EventFeed(feed_store)
    await feed.start()
    providers = []
    for i in range(2):
        sim = await SimulatedProvider.connect(own_nats_server.access("provider", f"p{i}"), slots=2, heartbeat_s=0.2)
        providers.append(await sim.start())
    store = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"))
    tenants = Tenants(own_nats_server)
    yield Network(own_nats_server, store, tenants)
    for p in providers:
        await p.kill()
    await feed.stop()
    await feed_store.close()
    await orch.close()
    await store.close()
    await tenants.close()


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
    assert sorted(tasks) == [f"{job_id}.{i}" for i in range(3)]
    assert all(w.tasks[t].status == "completed" for t in tasks)
    spec = w.jobs[job_id].spec
    assert spec is not None and spec.submitter == job_id.partition(".")[0]  # the credential's name


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
        # The credential says who submits: an example that named a submitter would be refused to anyone else.
        assert "submitter" not in json.loads(path.read_text()), path
        for i in range(spec.task_count()):
            validate_params(spec.workload, spec.task_params(i))


async def test_node_submits_and_follows_a_job_to_completion(
    net: Network, node_example: tuple[str, Path], tmp_path: Path
) -> None:
    node, work = node_example
    creds = net.creds("alice", tmp_path)
    argv = [node, "submit.mjs", net.server.url, str(creds), "nodejob"]
    rc, out = await run([*argv, "--timeout", "60"], work, timeout=90)
    assert rc == 0, out
    assert "submitted alice.nodejob: GF_INTAKE seq" in out
    for t in ("JobSubmitted", "JobAccepted", "TaskCompleted", "JobCompleted"):
        assert t in out, out
    assert "task.alice.nodejob.0" in out and "job alice.nodejob: JobCompleted" in out, out
    await assert_completed_in_log(net.store, "alice.nodejob")
    # The same submission again changes nothing; the script says so and replays the job's history.
    rc, out = await run([*argv, "--timeout", "30"], work, timeout=60)
    assert rc == 0, out
    assert "InputAccepted" in out and "JobSubmitted" in out and "JobCompleted" in out, out
    await assert_audit_passes(net.store)


async def test_node_reports_a_refused_input(net: Network, node_example: tuple[str, Path], tmp_path: Path) -> None:
    node, work = node_example
    creds = str(net.creds("alice", tmp_path))
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps(BAD_SPEC))
    rc, out = await run(
        [node, "submit.mjs", net.server.url, creds, "badnode", "--spec", str(spec), "--timeout", "30"], work, 60
    )
    assert rc == 1, out
    assert "InputRejected" in out and "split" in out, out
    # A spec that names another submitter is refused too: the credential, not the body, says who submits.
    spec.write_text(json.dumps({**SMALL_SPEC, "submitter": "mallory"}))
    rc, out = await run(
        [node, "submit.mjs", net.server.url, creds, "impostor", "--spec", str(spec), "--timeout", "30"], work, 60
    )
    assert rc == 1, out
    assert "InputRejected" in out and "field submitter" in out, out
    w, _ = await read_world(net.store)
    assert "alice.impostor" not in w.jobs and "mallory.impostor" not in w.jobs
    await assert_audit_passes(net.store)


async def test_node_refused_credentials_and_no_gpufleet(node_example: tuple[str, Path], tmp_path: Path) -> None:
    node, work = node_example
    bare = SecureServer(tmp_path / "bare").start()  # a secured server without gpufleet's streams
    try:
        creds = bare.creds("submitter", "alice", tmp_path / "alice.creds")
        rc, out = await run([node, "submit.mjs", bare.url, str(creds), "x", "--timeout", "10"], work, 30)
        assert rc == 3 and "is gpufleet running?" in out, out
        # Credentials another network issued: the server refuses them, and the script says so in one line.
        stranger = SecureServer(tmp_path / "elsewhere").creds("submitter", "alice", tmp_path / "elsewhere.creds")
        rc, out = await run([node, "submit.mjs", bare.url, str(stranger), "x", "--timeout", "10"], work, 30)
        assert rc == 3 and "refused the credentials" in out and len(out.strip().splitlines()) == 1, out
    finally:
        bare.stop()


async def test_plain_bash_submits_over_raw_nats(net: Network, tmp_path: Path) -> None:
    host, port = net.host_port
    creds = str(net.creds("carol", tmp_path, bearer=True))
    rc, out = await run(["bash", str(PLAIN_EXAMPLE), host, port, creds, "bashjob", "60"], tmp_path, timeout=90)
    assert rc == 0, out
    assert '"stream":"GF_INTAKE"' in out and "server read everything sent" in out, out
    for t in ("JobSubmitted", "JobAccepted", "TaskCompleted", "JobCompleted"):
        assert t in out, out
    assert "task.carol.bashjob.2" in out and "job carol.bashjob: JobCompleted" in out, out
    await assert_completed_in_log(net.store, "carol.bashjob")
    # The same submission again changes nothing, and the script replays the job's history from the log.
    rc, out = await run(["bash", str(PLAIN_EXAMPLE), host, port, creds, "bashjob", "30"], tmp_path, timeout=60)
    seq = int(out.split('"seq":', 1)[1].split("}", 1)[0])
    assert rc == 0, out
    assert "InputAccepted" in out and "JobSubmitted" in out and "JobCompleted" in out, out
    _, log = await wait_for(net.store, lambda w: w.intake_done(seq), timeout=10)
    (again,) = [e.data for e in log if isinstance(e.data, InputAccepted) and e.data.intake_seq == seq]
    assert again.subject == "gf.in.submitter.carol.submit.bashjob" and again.facts == 0
    # Another spec under the same name is refused, although the job it names has completed.
    other = {"workload": "sleep", "params": {"seconds": 0.1}}
    rc, out = await run(
        ["bash", str(PLAIN_EXAMPLE), host, port, creds, "bashjob", "30"],
        tmp_path,
        60,
        env={"GF_SPEC": json.dumps(other)},
    )
    assert rc == 1 and "InputRejected" in out, out
    await assert_audit_passes(net.store)


async def test_plain_bash_reports_a_refused_input(net: Network, tmp_path: Path) -> None:
    host, port = net.host_port
    creds = str(net.creds("carol", tmp_path, bearer=True))
    rc, out = await run(
        ["bash", str(PLAIN_EXAMPLE), host, port, creds, "badbash", "30"],
        tmp_path,
        60,
        env={"GF_SPEC": json.dumps(BAD_SPEC)},
    )
    assert rc == 1, out
    assert "InputRejected" in out, out
    _, log = await read_world(net.store)
    rejected = [e.data for e in log if isinstance(e.data, InputRejected) and "badbash" in e.data.subject]
    assert len(rejected) == 1 and rejected[0].field is not None
    assert rejected[0].subject == "gf.in.submitter.carol.submit.badbash"
    await assert_audit_passes(net.store)


async def test_plain_bash_without_gpufleet_says_so(tmp_path: Path) -> None:
    bare = SecureServer(tmp_path / "bare").start()  # a secured server without gpufleet's streams
    try:
        host, port = bare.url.removeprefix("nats://").rsplit(":", 1)
        creds = str(bare.creds("submitter", "nobody", tmp_path / "nobody.creds", bearer=True))
        rc, out = await run(["bash", str(PLAIN_EXAMPLE), host, port, creds, "nobody", "10"], tmp_path, 30)
        assert rc == 3, out
        assert "is gpufleet running?" in out, out
    finally:
        bare.stop()


async def test_plain_bash_with_refused_credentials_says_so(net: Network, tmp_path: Path) -> None:
    host, port = net.host_port
    # A credential another network's authority issued: the server does not know its signer.
    stranger = SecureServer(tmp_path / "elsewhere").creds("submitter", "carol", tmp_path / "s.creds", bearer=True)
    # And one of this network that is not a bearer credential: without signing the nonce it proves nothing.
    signing = net.creds("carol", tmp_path)
    for creds in (stranger, signing):
        rc, out = await run(["bash", str(PLAIN_EXAMPLE), host, port, str(creds), "refused", "10"], tmp_path, 30)
        assert rc == 3, out
        assert "refused the credentials" in out and "Authorization Violation" in out, out
        assert len(out.strip().splitlines()) == 1, out
    # Nothing it sent was stored (the intake stream itself, not a world that might not have caught up),
    # so there is nothing for the orchestrator to decide; and the log passes its audit.
    assert not [s for s in (await read_intake(net.store)).values() if s.endswith(".refused")]
    w, _ = await read_world(net.store)
    assert "carol.refused" not in w.jobs
    await assert_audit_passes(net.store)


async def test_a_submitter_cannot_submit_under_another_name(net: Network, tmp_path: Path) -> None:
    # Alice publishes on Bob's intake subject: the server refuses the publish itself, so no stream
    # stores it, no acknowledgement comes back, and the orchestrator never hears of it.
    nc = await net.tenants.nc("submitter", "alice")
    stolen = intake_subject("submitter", "bob", "submit", "stolen")
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await nc.jetstream().publish(stolen, json.dumps(SMALL_SPEC).encode(), timeout=2.0)
    with pytest.raises(AccessDenied):
        raise_if_denied(nc, stolen, "submitter alice")
    # Her own submission afterwards goes through; once it has completed, the stolen one has still not appeared.
    host, port = net.host_port
    creds = str(net.creds("alice", tmp_path, bearer=True))
    rc, out = await run(
        ["bash", str(PLAIN_EXAMPLE), host, port, creds, "mine", "30"],
        tmp_path,
        60,
        env={"GF_SPEC": json.dumps(SMALL_SPEC)},
    )
    assert rc == 0, out
    w, log = await wait_for(net.store, completed("alice.mine"), timeout=10)
    assert set(w.jobs) == {"alice.mine"}
    assert not any("stolen" in getattr(e.data, "subject", "") for e in log)
    assert all(t.startswith("alice.mine.") for t in w.tasks)
    submitted = [s for s in (await read_intake(net.store)).values() if s.startswith("gf.in.submitter.")]
    assert submitted == ["gf.in.submitter.alice.submit.mine"]  # the stolen one was never stored
    await assert_audit_passes(net.store)
