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

from gpufleet import Client, JobCancelledError, JobRejectedError
from gpufleet.natsserver import NatsServer

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def gpufleet(*args: str, timeout: float = 120.0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        input=stdin,
        check=False,
    )


class Up:
    """`gpufleet up` in a subprocess, on a data directory of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

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
                self.url = json.loads(info.read_text())["url"]
                return self
            time.sleep(0.1)
        raise AssertionError("gpufleet up did not come up")

    def stop(self) -> str:
        """Ctrl-C, as a user would; returns what it printed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        return out


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    net = Up(tmp_path_factory.mktemp("up")).start()
    yield net
    if net.proc is not None and net.proc.poll() is None:
        net.stop()


def test_submit_watch_status_result_from_the_cli(up: Up, tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "workload: montecarlo\nparams: {samples: 200000}\nsplit: {kind: params, params: [{seed: 1}, {seed: 2}]}\n"
    )
    sub = gpufleet("submit", str(job_file), "--nats", up.url)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    watch = gpufleet("watch", job_id, "--nats", up.url)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    assert f"job {job_id} completed" in watch.stdout
    out = tmp_path / "result.json"
    res = gpufleet("result", job_id, "--out", str(out), "--nats", up.url)
    assert res.returncode == 0, res.stderr
    results = json.loads(out.read_text())
    assert [r["index"] for r in results] == [0, 1]
    assert all(3.0 < r["value"]["pi"] < 3.3 and len(r["sha256"]) == 64 for r in results)
    st = gpufleet("status", job_id, "--nats", up.url)
    assert st.returncode == 0 and "completed" in st.stdout and f"{job_id}-1" in st.stdout
    jobs = gpufleet("jobs", "--nats", up.url, "--data-dir", str(up.data_dir))
    assert jobs.returncode == 0 and job_id in jobs.stdout, jobs.stdout + jobs.stderr
    fleet = gpufleet("providers", "--nats", up.url, "--data-dir", str(up.data_dir))
    assert fleet.returncode == 0 and "online" in fleet.stdout and "cpu" in fleet.stdout


def test_submit_with_flags_and_watch(up: Up) -> None:
    sub = gpufleet(
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
    async with await Client.connect(up.url) as client:
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
    async with await Client.connect(up.url) as client:
        job = await client.submit(
            {"workload": "sleep", "params": {"seconds": 60}, "split": {"kind": "count", "count": 2}}
        )
        async for e in job.events():
            if e.type == "TaskStarted":
                break
        out = await asyncio.to_thread(gpufleet, "cancel", job.id, "--reason", "changed my mind", "--nats", up.url)
        assert out.returncode == 0, out.stderr
        with pytest.raises(JobCancelledError) as info:
            await job.result(timeout=30)
        assert "changed my mind" in str(info.value)


async def test_a_refused_submission_surfaces_as_a_typed_error(up: Up) -> None:
    async with await Client.connect(up.url) as client:
        # Valid as far as the client can tell, refused by the orchestrator: the id is already used.
        first = await client.submit({"workload": "noop"}, job_id="reused-id")
        await first.wait(timeout=30)
        again = await client.submit({"workload": "noop", "priority": 9}, job_id="reused-id")
        with pytest.raises(JobRejectedError) as info:
            await again.result(timeout=30)
        assert "already used" in str(info.value)


def test_replay_audit_is_clean(up: Up) -> None:
    out = gpufleet("replay", "--audit", "--nats", up.url, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "books balance: yes" in out.stdout
    assert "FAIL" not in out.stdout


def test_stopping_up_mid_job_and_starting_again_finishes_the_job(tmp_path: Path) -> None:
    net = Up(tmp_path / "restart").start()
    try:
        spec = json.dumps(
            {"workload": "stencil", "params": {"n": 32, "steps": 150, "checkpoint_every": 25, "step_delay_s": 0.03}}
        )
        sub = gpufleet("submit", "-", "--nats", net.url, stdin=spec)
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        time.sleep(2.5)  # a checkpoint or two, then Ctrl-C mid-job
        printed = net.stop()
        assert "resumes from the same log" in printed, printed
        net.start()
        watch = gpufleet("watch", job_id, "--nats", net.url, timeout=120)
        assert watch.returncode == 0, watch.stdout + watch.stderr
        res = gpufleet("result", job_id, "--nats", net.url)
        value = json.loads(res.stdout.split(": ", 1)[1])
        assert value["resumed_from_step"] > 0, "the restarted network resumed from a checkpoint"
        audit = gpufleet("replay", "--audit", "--nats", net.url, timeout=180)
        assert audit.returncode == 0, audit.stdout
    finally:
        if net.proc is not None and net.proc.poll() is None:
            net.stop()


async def test_watch_reconnects_when_the_connection_drops(own_nats_server: NatsServer) -> None:
    from actors.orchestrator import Orchestrator, OrchestratorConfig
    from events.store.connection import connect_nats
    from gpufleet.sim import SimulatedProvider

    orch = await Orchestrator.connect(own_nats_server.url, config=OrchestratorConfig(heartbeat_timeout_s=5.0))
    nc = await connect_nats(own_nats_server.url)
    sim = await SimulatedProvider(nc, "p1", slots=2).start()
    client = await Client.connect(own_nats_server.url)
    try:
        job = await client.submit(
            {"workload": "sleep", "params": {"seconds": 4.0}, "split": {"kind": "count", "count": 2}}
        )
        seen: list[str] = []

        async def follow() -> None:
            async for e in job.events():
                seen.append(e.type)

        follower = asyncio.create_task(follow())
        for _ in range(400):
            if "TaskStarted" in seen:
                break
            await asyncio.sleep(0.05)
        own_nats_server.stop()
        await asyncio.sleep(0.5)
        own_nats_server.start()
        await asyncio.wait_for(follower, 60)
        assert seen[-1] == "JobCompleted" and seen.count("TaskCompleted") == 2
    finally:
        await client.close()
        await sim.kill()
        await orch.close()
        await nc.close()


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
        (["status", "no-such-job", "--nats", "{url}"], None, "unknown job 'no-such-job'"),
        (["watch", "no-such-job", "--nats", "{url}"], None, "unknown job 'no-such-job'"),
        (["result", "no-such-job", "--nats", "{url}"], None, "unknown job 'no-such-job'"),
        (["--log-format", "xml", "jobs"], None, "--log-format"),
    ],
)
def test_bad_input_gives_one_line_and_a_nonzero_exit(up: Up, args: list[str], stdin: str | None, expect: str) -> None:
    out = gpufleet(*[a.replace("{url}", up.url) for a in args], stdin=stdin, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert expect in lines[0], lines[0]
