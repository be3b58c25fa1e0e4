"""The dashboard in a real browser, on a real secured network (``gpufleet up``'s ``LocalNetwork``).

Chromium (Debian's, through Playwright; nothing is downloaded) opens a job's page before the job
exists; the job is then submitted, and its progress bar must reach 100% ON THE PAGE with no reload:
only the server's pushes (server-sent events) can bring it. Then the fleet and the audit pages show
the live provider and a signed checkpoint the dashboard verified.

With ``GPUFLEET_SCREENSHOT=docs/dashboard.png`` the job page is saved there (1200x800) for the README.

Without a browser: ``gpufleet dashboard``'s two sources against the same network: a submitter's sees
only its own jobs (folded from the event feed) and no fleet, and a new job of its own is pushed; an
auditor's follows the whole log. The command itself, as a real process: a provider's credentials are
refused in one line; an auditor's serve until SIGTERM, which stops it even with a stream open.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from events.subjects import intake_subject
from gpufleet.client import Client
from gpufleet.dashboard.sources import open_network
from gpufleet.network import LocalNetwork, NetworkConfig

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
#: Three tasks of about 1.5 s each, reporting progress six times each.
SPEC = {"workload": "sleep", "params": {"seconds": 1.5, "steps": 6}, "split": {"kind": "count", "count": 3}}
QUICK = {"workload": "sleep", "params": {"seconds": 0.1, "steps": 1}}
XSS = "<img src=x onerror=window.__pwned=1>"


@dataclass
class Net:
    network: LocalNetwork
    alice: Client
    bob: Client
    url: str
    tmp: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    tmp = tmp_path_factory.mktemp("dashboard")
    config = NetworkConfig(
        data_dir=tmp / "net",
        port=0,
        provider_backend="cpu",
        provider_price_micros=20_000,
        dashboard=True,
        dashboard_port=0,
        notary_every_s=1.0,
    )
    network = await LocalNetwork(config).start()
    a, b = network.access("submitter", "alice"), network.access("submitter", "bob")
    alice = await Client.connect(a.url, creds=a.creds)
    bob = await Client.connect(b.url, creds=b.creds)
    try:
        assert network.dashboard is not None
        yield Net(network, alice, bob, network.dashboard.url, tmp)
    finally:
        await alice.close()
        await bob.close()
        await network.stop()


async def until(page: Any, predicate: str, timeout: float = 30.0) -> None:
    """Until ``predicate`` (a JavaScript function) is true on the page. Not ``page.wait_for_function``:
    that evaluates its string in the page, which the dashboard's Content-Security-Policy (no
    ``unsafe-eval``) refuses whenever the first check is false; ``evaluate`` goes through the
    debugging protocol, which the policy does not govern."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await page.evaluate(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true on the page within {timeout:g}s: {predicate}")
        await asyncio.sleep(0.05)


JOB_DONE = """() => {
  const bar = document.getElementById('job-progress');
  const status = document.getElementById('job-status');
  return bar !== null && bar.dataset.progress === '1.000' && status.dataset.status === 'completed';
}"""
HALF_WAY = """() => {
  const bar = document.getElementById('job-progress');
  return bar !== null && parseFloat(bar.dataset.progress) >= 0.45;
}"""
WATCH = """() => {
  window.__samePage = true;
  window.__seen = [];
  new MutationObserver(() => {
    const bar = document.getElementById('job-progress');
    if (bar) { window.__seen.push(parseFloat(bar.dataset.progress)); }
  }).observe(document.getElementById('live'), {childList: true, subtree: true});
}"""


@needs_chromium
@pytest.mark.asyncio(loop_scope="module")
async def test_a_job_completes_on_the_dashboard(net: Net) -> None:
    from playwright.async_api import async_playwright

    assert CHROMIUM is not None
    job_id = net.alice.job_id("watched")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Before the job exists: the page says so, and its stream is open.
            r = await page.goto(net.url + "jobs/" + job_id)
            assert r is not None and r.status == 404
            await until(page, "() => document.getElementById('conn').textContent === 'live'")
            await page.evaluate(WATCH)
            await net.alice.submit(SPEC, job_id="watched")
            shot = os.environ.get("GPUFLEET_SCREENSHOT")
            if shot:  # for the README: the page while the work runs
                await until(page, HALF_WAY, timeout=60)
                Path(shot).parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=shot)
            await until(page, JOB_DONE, timeout=60)
            # The same document all along (a reload would have dropped the marker), updated by pushes.
            assert await page.evaluate("window.__samePage === true")
            seen = await page.evaluate("window.__seen")
            assert any(0.0 < s < 1.0 for s in seen), seen  # the bar moved through the work, live
            assert int(await page.get_attribute("#live", "data-pushes") or 0) >= 3
            states = await page.locator("tr.task").evaluate_all("rows => rows.map(r => r.dataset.state)")
            assert states == ["completed"] * 3
            assert await page.locator("tr.task td.result code").count() == 3

            # A submission refused at intake shows with its reason; the stranger's text stays text.
            await net.bob.nc.publish(
                intake_subject("submitter", "bob", "submit", "bad1"), f'{{"workload": "{XSS}"}}'.encode()
            )
            await page.goto(net.url)
            await page.wait_for_selector('tr.job[data-job="bob.bad1"][data-status="rejected"]', timeout=30_000)
            assert await page.evaluate("window.__pwned === undefined")
            assert await page.locator('tr.job[data-job="alice.watched"] svg.bar.done').count() >= 1

            await page.goto(net.url + "fleet")
            await page.wait_for_selector('tr.provider[data-status="online"]', timeout=30_000)
            assert "cpu" in (await page.locator("tr.provider").first.inner_text())

            await page.goto(net.url + "audit")
            await page.wait_for_selector("#signed [data-size]", timeout=60_000)  # verified with the notary key
            assert await page.get_attribute("#findings", "data-count") == "0"
            assert errors == []
        finally:
            await browser.close()


async def _fragments(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    name, data = "", []
    async for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[6:])
        elif line == "":
            if name == "fragment":
                yield "\n".join(data)
            name, data = "", []


@pytest.mark.asyncio(loop_scope="module")
async def test_gpufleet_dashboard_shows_what_each_identity_may_see(net: Net) -> None:
    await (await net.bob.submit(QUICK, job_id="bobs")).wait(60)
    await (await net.alice.submit(QUICK, job_id="first")).wait(60)
    mine, _ = await open_network(net.network.access("submitter", "alice"), port=0, data_dir=net.tmp / "a")
    everything, _ = await open_network(net.network.access("auditor", "dash-test"), port=0, data_dir=net.tmp / "b")
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            jobs = (await http.get(mine.url)).text
            assert "alice.first" in jobs and "bob.bobs" not in jobs
            assert "may not read the providers" in (await http.get(mine.url + "fleet")).text
            assert (await http.get(mine.url + "jobs/bob.bobs")).status_code == 404
            every = (await http.get(everything.url)).text
            assert "alice.first" in every and "bob.bobs" in every
            assert 'data-status="online"' in (await http.get(everything.url + "fleet")).text
            # A new job of alice's reaches her open stream through the feed, pushed.
            async with http.stream("GET", mine.url + "events?view=jobs") as r:
                fragments = _fragments(r.aiter_lines())
                assert "alice.second" not in await asyncio.wait_for(anext(fragments), 30)
                await net.alice.submit(QUICK, job_id="second")
                while True:
                    pushed = await asyncio.wait_for(anext(fragments), 60)
                    if "alice.second" in pushed:
                        break
                assert "bob.bobs" not in pushed
    finally:
        await mine.stop()
        await everything.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_gpufleet_dashboard_runs_until_sigterm_and_refuses_what_it_cannot_show(net: Net) -> None:
    auditor = net.network.issue("auditor", "dash-cli", net.tmp / "auditor.creds")
    provider = net.network.issue("provider", "p9", net.tmp / "p9.creds")
    cmd = [sys.executable, "-m", "gpufleet", "dashboard", "--nats", net.network.url, "--port", "0"]
    data = ["--data-dir", str(net.tmp / "cli")]

    refused = await asyncio.create_subprocess_exec(*cmd, "--creds", str(provider), *data, stdout=PIPE, stderr=STDOUT)
    out = (await asyncio.wait_for(refused.communicate(), 60))[0].decode()
    assert refused.returncode == 1 and "Traceback" not in out, out
    assert "provider p9" in out and len(out.strip().splitlines()) == 1, out

    proc = await asyncio.create_subprocess_exec(*cmd, "--creds", str(auditor), *data, stdout=PIPE, stderr=STDOUT)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("dashboard for auditor dash-cli"), line
        url = line.split(" at ", 1)[1].split()[0]
        # Keep reading what it logs: a child blocked on a full pipe could never stop.
        logged: list[bytes] = []
        drain = asyncio.create_task(_drain(proc.stdout, logged))
        async with httpx.AsyncClient(timeout=30) as http:
            assert "alice.watched" in (await http.get(url)).text or "alice.first" in (await http.get(url)).text
            async with http.stream("GET", url + "events?view=jobs") as stream:  # an open stream does not hold it
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
                async for _ in stream.aiter_lines():
                    pass  # the server closed it
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if "drain" in locals():
            await drain


async def _drain(stream: asyncio.StreamReader, into: list[bytes]) -> None:
    while chunk := await stream.read(65536):
        into.append(chunk)
