"""The user's path through the CLI: `gpufleet up` as a real process, submit, watch, result, cancel,
replay --audit; stopping `up` mid-job and starting it again; and every kind of bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.store import JetStreamEventStore
from events.store.connection import Access
from gpufleet import Client, JobCancelledError, JobRejectedError, UnknownJobError
from gpufleet.auth import Authority
from tests.integration.audited import assert_audit_passes, eventually, eventually_sync
from tests.integration.orchestra import every_input_has_its_outcome
from tests.secure import SecureServer

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def gpufleet(
    *args: str, timeout: float = 120.0, stdin: str | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would (on the machine whose `gpufleet up` keeps its data in ``home``)."""
    env = {**ENV, "GPUFLEET_HOME": str(home)} if home is not None else ENV
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=stdin,
        check=False,
    )


class Up:
    """`gpufleet up` in a subprocess, on a data directory of its own (with ``tls``: over TLS)."""

    def __init__(self, data_dir: Path, *, tls: bool = False) -> None:
        self.data_dir = data_dir
        self.tls = tls
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.ca: Path | None = None

    def start(self, timeout: float = 90.0) -> Up:
        info = self.data_dir / "network.json"
        info.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpufleet",
                "up",
                "--data-dir",
                str(self.data_dir),
                "--port",
                "0",
                "--backend",
                "cpu",
                *(["--tls"] if self.tls else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gpufleet up exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
            if info.exists():
                doc = json.loads(info.read_text())
                self.url = doc["url"]
                self.ca = Path(doc["tls_ca"]) if doc.get("tls_ca") else None
                return self
            time.sleep(0.1)
        raise AssertionError("gpufleet up did not come up")

    def cli(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """The CLI on this machine: it finds the network and its own credentials in the data directory."""
        return gpufleet(*args, home=self.data_dir, **kw)  # type: ignore[arg-type]

    def creds(self, role: str, name: str) -> Path:
        """Credentials issued by this network, as `gpufleet creds issue` would write them."""
        return Authority.open(self.data_dir / "auth", create=False).own_creds(role, name)

    async def client(self, name: str = "tester") -> Client:
        """The Python client, as submitter ``name``."""
        return await Client.connect(self.url, creds=self.creds("submitter", name), tls_ca=self.ca)

    def ca_args(self) -> list[str]:
        """What a machine without the network's data needs to verify its server."""
        return ["--tls-ca", str(self.ca)] if self.ca else []

    def audit(self) -> str:
        """The full audit of this network's log, at rest, as a user runs it: once every intake message
        has its outcome (waited for as an auditor), ``gpufleet replay --audit`` must pass."""

        async def at_rest() -> None:
            access = Access(self.url, self.creds("auditor", "test-auditor"), self.ca)
            store = await JetStreamEventStore.connect(access, reads="direct")
            try:
                await every_input_has_its_outcome(store, timeout=60)
            finally:
                await store.close()

        asyncio.run(at_rest())
        out = self.cli("replay", "--audit", "--nats", self.url, timeout=180)
        assert out.returncode == 0 and "PASS" in out.stdout, out.stdout + out.stderr
        assert "books balance: yes" in out.stdout and "FAIL" not in out.stdout, out.stdout
        return out.stdout

    def checkpointed(self, job_id: str, timeout: float = 60.0) -> int:
        """Wait until the log records a checkpoint of ``job_id``'s first task; its step. Read as the
        job's submitter, with the Python client."""

        async def first_checkpoint() -> int:
            async with await self.client(job_id.partition(".")[0]) as client:
                async for e in client.job(job_id).events(until_ended=False):
                    if e.type == "TaskProgressed" and e.data.checkpoint is not None:  # type: ignore[attr-defined]
                        return int(e.data.checkpoint_step)  # type: ignore[attr-defined]
            raise AssertionError(f"{job_id}'s events ended without a checkpoint")

        async def waited() -> int:
            try:
                return await asyncio.wait_for(first_checkpoint(), timeout)
            except TimeoutError:
                raise AssertionError(f"no checkpoint of {job_id} in the log within {timeout:g}s") from None

        return asyncio.run(waited())

    def stop(self) -> str:
        """Ctrl-C, as a user would; returns what it printed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        return out


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """The network these tests share runs over TLS: every command below verifies its server."""
    net = Up(tmp_path_factory.mktemp("up"), tls=True).start()
    assert net.url.startswith("tls://") and net.ca is not None
    yield net
    if net.proc is not None and net.proc.poll() is None:
        net.stop()


def test_submit_watch_status_result_from_the_cli(up: Up, tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "workload: montecarlo\nparams: {samples: 200000}\nsplit: {kind: params, params: [{seed: 1}, {seed: 2}]}\n"
    )
    sub = up.cli("submit", str(job_file), "--nats", up.url)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    watch = up.cli("watch", job_id, "--nats", up.url)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    assert f"job {job_id} completed" in watch.stdout
    out = tmp_path / "result.json"
    res = up.cli("result", job_id, "--out", str(out), "--nats", up.url)
    assert res.returncode == 0, res.stderr
    results = json.loads(out.read_text())
    assert [r["index"] for r in results] == [0, 1]
    assert all(3.0 < r["value"]["pi"] < 3.3 and len(r["sha256"]) == 64 for r in results)
    st = up.cli("status", job_id, "--nats", up.url)
    assert st.returncode == 0 and "completed" in st.stdout and f"{job_id}.1" in st.stdout
    assert "quotas: " in st.stdout and "of 1,000 jobs in flight" in st.stdout, st.stdout
    jobs = up.cli("jobs", "--nats", up.url, "--data-dir", str(up.data_dir))
    assert jobs.returncode == 0 and job_id in jobs.stdout, jobs.stdout + jobs.stderr
    assert "(default)" in jobs.stdout and "10.0M" in jobs.stdout, jobs.stdout
    mine = up.cli("quota", "--nats", up.url)
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert "tasks_running" in mine.stdout and "10,000" in mine.stdout and "500" in mine.stdout, mine.stdout
    fleet = up.cli("providers", "--nats", up.url, "--data-dir", str(up.data_dir))
    assert fleet.returncode == 0 and "online" in fleet.stdout and "cpu" in fleet.stdout


def test_submit_with_flags_and_watch(up: Up) -> None:
    sub = up.cli(
        "submit",
        "--workload",
        "matmul",
        "-p",
        "n=64",
        "-p",
        'dtype="fp64"',
        "--tasks",
        "3",
        "--watch",
        "--nats",
        up.url,
    )
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "completed" in sub.stdout


async def test_the_python_client_submits_follows_and_gets_results(up: Up) -> None:
    async with await up.client() as client:
        job = await client.submit(
            {"workload": "stencil", "params": {"n": 32, "steps": 60, "checkpoint_every": 20, "step_delay_s": 0.02}}
        )
        types = [e.type async for e in job.events()]
        assert types[0] == "JobSubmitted" and types[-1] == "JobCompleted"
        assert "TaskProgressed" in types and types.index("TaskProgressed") < types.index("TaskCompleted")
        (r,) = await job.result()
        assert r.value["steps_run"] == 60 and r.value["resumed_from_step"] == 0
        st = await job.status()
        assert st.status == "completed" and st.progress == 1.0 and st.count("completed") == 1


async def test_cancel_from_the_cli_and_the_client_sees_it(up: Up) -> None:
    async with await up.client() as client:
        job = await client.submit(
            {"workload": "sleep", "params": {"seconds": 60}, "split": {"kind": "count", "count": 2}}
        )
        async for e in job.events():
            if e.type == "TaskStarted":
                break
        out = await asyncio.to_thread(
            up.cli,
            "cancel",
            job.id,
            "--reason",
            "changed my mind",
            "--nats",
            up.url,
            "--creds",
            str(up.creds("submitter", "tester")),
        )
        assert out.returncode == 0, out.stderr
        with pytest.raises(JobCancelledError) as info:
            await job.result(timeout=30)
        assert "changed my mind" in str(info.value)


async def test_a_refused_submission_surfaces_as_a_typed_error(up: Up) -> None:
    async with await up.client() as client:
        # Valid as far as the client can tell, refused by the orchestrator: the id is already used.
        first = await client.submit({"workload": "noop"}, job_id="reused-id")
        await first.wait(timeout=30)
        again = await client.submit({"workload": "noop", "priority": 9}, job_id="reused-id")
        with pytest.raises(JobRejectedError) as info:
            await again.result(timeout=30)
        assert "already used" in str(info.value)


async def test_a_submission_refused_at_intake_shows_in_status_and_jobs_with_its_reason(up: Up) -> None:
    """Sent over raw NATS with a bad field, the submission never becomes a job: `status` and `jobs`
    (and the client) still show it, rejected, with the reason and the field, not "unknown job"."""
    from events.subjects import intake_subject

    async with await up.client("rawuser") as client:
        body = json.dumps({"workload": "noop", "priority": 99}).encode()
        await client.nc.publish(intake_subject("submitter", "rawuser", "submit", "raw-bad"), body)
        await client.nc.flush()
        async def refused() -> object:
            try:
                return await client.job("raw-bad").status()
            except UnknownJobError:
                return None  # not in the log yet

        st = await eventually(refused, "the refusal of raw-bad in the log")
        assert (st.status, st.field) == ("rejected", "priority") and st.reason, st
    creds = str(up.creds("submitter", "rawuser"))
    out = await asyncio.to_thread(up.cli, "status", "raw-bad", "--nats", up.url, "--creds", creds)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rejected" in out.stdout and "reason:" in out.stdout and "(priority)" in out.stdout, out.stdout

    async def listed() -> str:
        jobs = await asyncio.to_thread(up.cli, "jobs", "--nats", up.url, "--data-dir", str(up.data_dir))
        assert jobs.returncode == 0, jobs.stdout + jobs.stderr
        return jobs.stdout if "rawuser.raw-bad" in jobs.stdout else ""

    text = await eventually(listed, "rawuser.raw-bad in `gpufleet jobs`")
    assert "rejected rawuser.raw-bad: priority:" in text, text


def test_stopping_up_mid_job_and_starting_again_finishes_the_job(tmp_path: Path) -> None:
    net = Up(tmp_path / "restart").start()
    try:
        spec = json.dumps(
            {"workload": "stencil", "params": {"n": 32, "steps": 150, "checkpoint_every": 25, "step_delay_s": 0.03}}
        )
        sub = net.cli("submit", "-", "--nats", net.url, stdin=spec)
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        assert net.checkpointed(job_id) > 0  # a checkpoint is in the log: then Ctrl-C mid-job
        printed = net.stop()
        assert "resumes from the same log" in printed, printed
        net.start()
        watch = net.cli("watch", job_id, "--nats", net.url, timeout=120)
        assert watch.returncode == 0, watch.stdout + watch.stderr
        res = net.cli("result", job_id, "--nats", net.url)
        value = json.loads(res.stdout.split(": ", 1)[1])
        assert value["resumed_from_step"] > 0, "the restarted network resumed from a checkpoint"
        net.audit()
    finally:
        if net.proc is not None and net.proc.poll() is None:
            net.stop()


async def test_watch_reconnects_when_the_connection_drops(own_nats_server: SecureServer) -> None:
    from actors.orchestrator import Orchestrator, OrchestratorConfig
    from events.store import JetStreamEventStore
    from gpufleet.sim import SimulatedProvider
    from projections.feed import EventFeed

    orch = await Orchestrator.connect(
        own_nats_server.access("orchestrator"), config=OrchestratorConfig(heartbeat_timeout_s=5.0)
    )
    feed_store = await JetStreamEventStore.connect(own_nats_server.access("orchestrator"))
    feed = EventFeed(feed_store)
    await feed.start()
    sim = await (await SimulatedProvider.connect(own_nats_server.access("provider", "p1"), slots=2)).start()
    me = own_nats_server.access("submitter", "alice")
    client = await Client.connect(me.url, creds=me.creds)
    try:
        job = await client.submit(
            {"workload": "sleep", "params": {"seconds": 4.0}, "split": {"kind": "count", "count": 2}}
        )
        seen: list[str] = []

        async def follow() -> None:
            async for e in job.events():
                seen.append(e.type)

        follower = asyncio.create_task(follow())
        await eventually(lambda: "TaskStarted" in seen, lambda: f"a task to start (the watcher saw {seen})", timeout=20)
        own_nats_server.stop()
        await asyncio.sleep(0.5)  # the scenario: the server is down for a while
        own_nats_server.start()
        # The tasks have about 4 s left. A question in flight when the server went down is asked
        # again at the reconnect: without that, the watcher sat out its 30 s request timeout.
        await asyncio.wait_for(follower, 20)
        assert seen[-1] == "JobCompleted" and seen.count("TaskCompleted") == 2
        await assert_audit_passes(feed_store)
    finally:
        await client.close()
        await sim.kill()
        await feed.stop()
        await feed_store.close()
        await orch.close()


@pytest.mark.parametrize(
    ("args", "stdin", "expect"),
    [
        (["submit", "-", "--nats", "{url}"], "workload: [unclosed", "not valid YAML"),
        (["submit", "-", "--nats", "{url}"], "- just\n- a list\n", "file"),
        (["submit", "--workload", "warp_drive", "--nats", "{url}"], None, "unknown workload 'warp_drive'"),
        (["submit", "--workload", "matmul", "-p", "n=-5", "--nats", "{url}"], None, "params.n"),
        (["submit", "--workload", "matmul", "-p", "dtype=int4", "--nats", "{url}"], None, "params.dtype"),
        (["submit", "--workload", "noop", "-p", "oops", "--nats", "{url}"], None, "name=value"),
        (["submit", "/no/such/job.yaml", "--nats", "{url}"], None, "No such file"),
        (["submit", "--workload", "noop", "--nats", "nats://127.0.0.1:1"], None, "cannot reach NATS"),
        (["status", "no-such-job", "--nats", "{url}"], None, "no-such-job"),
        (["watch", "no-such-job", "--nats", "{url}"], None, "no-such-job"),
        (["result", "no-such-job", "--nats", "{url}"], None, "no-such-job"),
        (["status", "bob.his-job", "--nats", "{url}"], None, "may not read"),
        (["cancel", "bob.his-job", "--nats", "{url}"], None, "not yours"),
        (["submit", "--workload", "noop", "--creds", "/no/such.creds", "--nats", "{url}"], None, "no credentials file"),
        (["creds", "issue", "emperor", "x"], None, "unknown role"),
        (["creds", "issue", "submitter", "two words"], None, "name"),
        (["--log-format", "xml", "jobs"], None, "--log-format"),
        (["orchestrator", "run", "--quota", "tasks_running=0", "--nats", "{url}"], None, "quota.tasks_running"),
        (["orchestrator", "run", "--quota", "bogus", "--nats", "{url}"], None, "KEY=VALUE"),
    ],
)
def test_bad_input_gives_one_line_and_a_nonzero_exit(up: Up, args: list[str], stdin: str | None, expect: str) -> None:
    out = up.cli(*[a.replace("{url}", up.url) for a in args], stdin=stdin, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert expect in lines[0], lines[0]


def test_credentials_are_issued_used_elsewhere_and_revoked_on_the_running_network(up: Up, tmp_path: Path) -> None:
    elsewhere = tmp_path / "another-machine"  # no network data here: only what the operator hands over
    creds = tmp_path / "dora.creds"
    issued = up.cli("creds", "issue", "submitter", "dora", "--out", str(creds))
    assert issued.returncode == 0, issued.stderr
    assert creds.stat().st_mode & 0o777 == 0o600
    ca = up.ca_args()
    sub = gpufleet(
        "submit", "--workload", "noop", "--watch", "--nats", up.url, "--creds", str(creds), *ca, home=elsewhere
    )
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert sub.stdout.startswith("dora."), sub.stdout  # the submitter is the credential
    anonymous = gpufleet("submit", "--workload", "noop", "--nats", up.url, *ca, home=elsewhere)
    assert anonymous.returncode != 0 and "without credentials" in anonymous.stderr, anonymous.stderr
    assert "Traceback" not in anonymous.stderr and len(anonymous.stderr.strip().splitlines()) == 1

    revoked = up.cli("creds", "revoke", "submitter", "dora")
    assert revoked.returncode == 0 and "on the running network now" in revoked.stdout, revoked.stdout + revoked.stderr
    again = gpufleet("submit", "--workload", "noop", "--nats", up.url, "--creds", str(creds), *ca, home=elsewhere)
    assert again.returncode != 0 and "refused the credentials" in again.stderr, again.stderr
    listed = up.cli("creds", "list")
    row = next(line for line in listed.stdout.splitlines() if "dora" in line)
    assert "revoked" in row
    # A new credential for the same name works again (rotation): revocation is per credential.
    fresh = up.cli("creds", "issue", "submitter", "dora", "--out", str(creds))
    assert fresh.returncode == 0
    ok = gpufleet("submit", "--workload", "noop", "--nats", up.url, "--creds", str(creds), *ca, home=elsewhere)
    assert ok.returncode == 0, ok.stderr
    # Without the network's CA, another machine cannot verify the server, and says so in one line.
    blind = gpufleet("submit", "--workload", "noop", "--nats", up.url, "--creds", str(creds), home=elsewhere)
    assert blind.returncode != 0 and "TLS" in blind.stderr and len(blind.stderr.strip().splitlines()) == 1
    assert ok.returncode == 0, ok.stderr


def test_a_provider_joins_from_another_process_with_only_its_credentials(up: Up, tmp_path: Path) -> None:
    elsewhere = tmp_path / "gpu-box"
    creds = tmp_path / "gpu-box-1.creds"
    assert up.cli("creds", "issue", "provider", "gpu-box-1", "--out", str(creds)).returncode == 0
    args = [sys.executable, "-m", "gpufleet", "provider", "run", "--nats", up.url, "--creds", str(creds)]
    provider = subprocess.Popen(
        [*args, *up.ca_args(), "--backend", "cpu", "--slots", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**ENV, "GPUFLEET_HOME": str(elsewhere)},
    )
    try:

        def online() -> bool:
            fleet = up.cli("providers", "--nats", up.url, "--data-dir", str(up.data_dir))
            return any("gpu-box-1" in line and "online" in line for line in fleet.stdout.splitlines())

        eventually_sync(online, "gpu-box-1 to come online", timeout=90, poll=0.5)
    finally:
        provider.send_signal(signal.SIGTERM)  # drains: finishes its work, then leaves
        out, _ = provider.communicate(timeout=60)
    assert provider.returncode == 0, out
    assert "provider gpu-box-1:" in out and "draining" in out, out


def test_replay_audit_is_clean(up: Up) -> None:
    """Last in this module: the audit of the log the tests above wrote on the shared network (jobs
    completed, cancelled and refused; credentials issued and revoked; a provider that joined and
    drained), at rest, from the command line."""
    up.audit()
