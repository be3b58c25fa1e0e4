"""`gpufleet up --db postgresql://...`: a real network keeps its read models in a real PostgreSQL server.

A job runs on it; `gpufleet jobs` reads the job from PostgreSQL (no SQLite file is made);
`gpufleet replay --db postgresql://...` rebuilds the read models into another schema, where the job
reads the same. A `--db` that cannot be reached stops `up` with one line, its password hidden.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from projections import ReadModels
from tests.conftest import unique
from tests.pg import PgServer

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def gpufleet(*args: str, home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, "GPUFLEET_HOME": str(home)},
        check=False,
    )


class UpOnPostgres:
    """`gpufleet up --db URL` in a subprocess, on a data directory of its own."""

    def __init__(self, data_dir: Path, db: str) -> None:
        self.data_dir = data_dir
        self.db = db
        self.info: dict[str, object] = {}
        args = ["up", "--data-dir", str(data_dir), "--port", "0", "--backend", "cpu", "--db", db]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpufleet", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**ENV, "GPUFLEET_HOME": str(data_dir)},
        )

    def wait_up(self, timeout: float = 90.0) -> UpOnPostgres:
        info = self.data_dir / "network.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gpufleet up exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
            if info.exists():
                self.info = json.loads(info.read_text())
                return self
            time.sleep(0.1)
        raise AssertionError("gpufleet up did not come up")

    @property
    def url(self) -> str:
        return str(self.info["url"])

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return gpufleet(*args, home=self.data_dir, timeout=timeout)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


@pytest.fixture
def up(pg_server: PgServer, tmp_path: Path) -> Iterator[UpOnPostgres]:
    net = UpOnPostgres(tmp_path / "net", f"{pg_server.url}?schema={unique('up')}")
    try:
        yield net.wait_up()
    finally:
        net.stop()


async def test_up_keeps_the_read_models_in_postgres_and_replay_rebuilds_into_it(
    up: UpOnPostgres, pg_server: PgServer, tmp_path: Path
) -> None:
    assert up.info["db"] == up.db  # where `gpufleet jobs` finds them (no password in it: there is none here)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "workload: montecarlo\nparams: {samples: 100000}\nsplit: {kind: params, params: [{seed: 1}, {seed: 2}]}\n"
    )
    sub = up.cli("submit", str(job_file), "--nats", up.url)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    watch = up.cli("watch", job_id, "--nats", up.url)
    assert f"job {job_id} completed" in watch.stdout, watch.stdout + watch.stderr

    jobs = up.cli("jobs", "--nats", up.url, "--data-dir", str(up.data_dir))
    assert jobs.returncode == 0 and job_id in jobs.stdout and "completed" in jobs.stdout, jobs.stdout + jobs.stderr
    assert not list(up.data_dir.glob("*.sqlite")), "read from PostgreSQL: no SQLite file, no private cache"

    replayed = f"{pg_server.url}?schema={unique('replay')}"
    out = up.cli("replay", "--db", replayed, "--nats", up.url, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"into {replayed}" in out.stdout and "books balance: yes" in out.stdout, out.stdout

    live, rebuilt = ReadModels.open(up.db), ReadModels.open(replayed)
    try:
        a, b = await live.get_job(job_id), await rebuilt.get_job(job_id)
        assert a is not None and b is not None
        assert a.job.status == "completed" and len(a.tasks) == 2
        assert (a.job, a.tasks, a.bill) == (b.job, b.tasks, b.bill)
    finally:
        live.close()
        rebuilt.close()


def test_up_with_an_unreachable_db_stops_with_one_line(tmp_path: Path) -> None:
    net = UpOnPostgres(tmp_path / "net", "postgresql://gf:hunter2@127.0.0.1:1/readmodels")
    out, _ = net.proc.communicate(timeout=120)  # it stops by itself
    assert net.proc.returncode == 1, out
    assert "cannot reach PostgreSQL at postgresql://gf:***@127.0.0.1:1/readmodels" in out, out
    assert "Traceback" not in out and "hunter2" not in out, out
