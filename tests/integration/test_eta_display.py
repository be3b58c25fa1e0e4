"""ETAs where people look, on a real network (`gpufleet up` with its NumPy provider): `gpufleet
status` says when a running job finishes, with an interval, and how long it took once it completed;
`gpufleet watch` and `gpufleet jobs` say so too."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from tests.integration.audited import eventually_sync
from tests.integration.test_cli import Up

#: About 12 s of work at one step per 20 ms: `status` (a fresh process) reads it while it runs.
STENCIL = {"n": 32, "steps": 600, "checkpoint_every": 100, "step_delay_s": 0.02}
#: A time: ``2.1 s``, ``42 s``, ``4m 05s``.
TIME = r"(?:\d+(?:\.\d)? s|\d+m \d\ds)"
#: The interval's ends: ``1.8`` (seconds, unit after) or a full time.
END = r"(?:\d+(?:\.\d)?|" + TIME[3:-1] + r")"
DASH = "\N{EN DASH}"


def test_status_shows_an_eta_interval_while_the_job_runs_and_what_it_took_after(tmp_path: Path) -> None:
    net = Up(tmp_path / "up").start()
    try:
        sub = net.cli("submit", "-", "--nats", net.url, stdin=json.dumps({"workload": "stencil", "params": STENCIL}))
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        asyncio.run(_measured_progress(net, job_id))

        st = net.cli("status", job_id, "--nats", net.url)
        assert st.returncode == 0, st.stderr
        assert f"job {job_id}: accepted" in st.stdout, st.stdout  # read while it runs
        job_line = rf"finishes in ~?{TIME} \({END} to {END}(?: s)?\)"
        assert re.search(job_line, st.stdout), st.stdout
        task_cell = rf"running .*{TIME} \({END}{DASH}{END}\)"
        assert re.search(task_cell, st.stdout), st.stdout

        asyncio.run(_completed(net, job_id))
        st = net.cli("status", job_id, "--nats", net.url)
        assert st.returncode == 0, st.stderr
        assert re.search(rf"took {TIME} \(predicted {TIME}\)", st.stdout), st.stdout
        assert "finishes in" not in st.stdout
        watch = net.cli("watch", job_id, "--nats", net.url)
        assert watch.returncode == 0 and re.search(rf"took {TIME}", watch.stdout), watch.stdout + watch.stderr

        def jobs_says_took() -> str:
            out = net.cli("jobs", "--nats", net.url, "--data-dir", str(net.data_dir))
            return out.stdout if out.returncode == 0 and re.search(rf"took {TIME}", out.stdout) else ""

        jobs = eventually_sync(jobs_says_took, "`gpufleet jobs` to show the job's duration")
        assert job_id in jobs
    finally:
        if net.proc is not None and net.proc.poll() is None:
            net.stop()


async def _measured_progress(net: Up, job_id: str) -> None:
    """Until the log holds a progress report the rate can be measured from (5% or more)."""
    async with await net.client(job_id.partition(".")[0]) as client:
        async for e in client.job(job_id).events():
            if e.type == "TaskProgressed" and 0.05 <= e.data.fraction < 0.6:  # type: ignore[attr-defined]
                return
    raise AssertionError(f"{job_id} ended before it reported progress")


async def _completed(net: Up, job_id: str) -> None:
    async with await net.client(job_id.partition(".")[0]) as client:
        st = await client.job(job_id).wait(timeout=120)
        assert st.status == "completed", st
