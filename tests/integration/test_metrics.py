"""Prometheus metrics of a real network: ``LocalNetwork`` (a real nats-server, the orchestrator, the
projector and a calibrated NumPy provider) scraped over HTTP before and after work flows through it;
the standalone orchestrator and projector processes scraped too; the Grafana dashboard's queries
checked against a live scrape."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import intake_backlog
from actors.orchestrator import INTAKE_CONSUMER
from events import ANY
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.store.topology import Topology
from events.subjects import intake_subject
from gpufleet import Client
from gpufleet.network import LocalNetwork, NetworkConfig
from projections.metrics import projector_lag
from tests.conftest import isolated_settings, unique
from tests.factories import queued
from tests.secure import SecureServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "gpufleet.json"

#: (sample name, sorted label items) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Scrape:
    """One scrape, parsed with prometheus_client's own parser (which refuses malformed text)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: Samples = {}
        for f in self.families.values():
            for s in f.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The one sample ``name`` with exactly ``labels`` (absent: KeyError)."""
        return self.samples[(name, tuple(sorted(labels.items())))]

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample ``name`` whose labels include ``labels`` (0 when none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def names(self) -> set[str]:
        """Every family and sample name declared (a family without samples counts: it is declared)."""
        out = set(self.families)
        for f in self.families.values():
            out.add(f.name + "_total" if f.type == "counter" else f.name)
            if f.type == "histogram":
                out |= {f.name + "_bucket", f.name + "_sum", f.name + "_count"}
        return out | {n for n, _ in self.samples}


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=10.0) as http:
        r = await http.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(r.text)


async def scrape_until(url: str, ok: Callable[[Scrape], bool], what: str, timeout: float = 60.0) -> Scrape:
    """Scrape until ``ok`` holds (the figures follow the work, not the clock)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        s = await scrape(url)
        if ok(s):
            return s
        if loop.time() > deadline:
            raise AssertionError(f"never: {what}; last scrape:\n{s.text}")
        await asyncio.sleep(0.2)


class Net:
    def __init__(self, net: LocalNetwork, alice: Client) -> None:
        self.net = net
        self.alice = alice
        assert net.metrics_server is not None
        self.url = net.metrics_server.url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    config = NetworkConfig(
        data_dir=tmp_path_factory.mktemp("metrics") / "net",
        port=0,
        provider_backend="cpu",
        provider_slots=2,
        notary=False,
        metrics=("127.0.0.1", 0),
        dashboard=True,
        dashboard_port=0,
    )
    network = await LocalNetwork(config).start()
    a = network.access("submitter", "alice")
    alice = await Client.connect(a.url, creds=a.creds)
    try:
        yield Net(network, alice)
    finally:
        await alice.close()
        await network.stop()


def caught_up(s: Scrape) -> bool:
    return (
        s.total("gpufleet_projector_lag_events") == 0
        and ("gpufleet_projector_lag_events", ()) in s.samples
        and s.total("gpufleet_orchestrator_queue_depth") == 0
        and s.get("gpufleet_orchestrator_intake_lag_messages") == 0
    )


async def test_a_scrape_moves_as_work_flows_through_the_network(net: Net) -> None:
    me = net.net.provider
    assert me is not None
    who = {"provider": me.provider_id}
    # The provider is registered and the network idle: the figures to compare with.
    before = await scrape_until(
        net.url,
        lambda s: caught_up(s) and s.get("gpufleet_provider_slots", **who) == 2,
        "an idle network with the provider registered",
    )
    # Calibration figures, from the provider's own measurements (NumPy: fp64, fp32, fp16).
    assert before.get("gpufleet_provider_peak_flops", precision="fp32", **who) > 0
    assert before.get("gpufleet_provider_memory_bandwidth_bytes_per_second", **who) > 0
    assert before.get("gpufleet_provider_info", backend="cpu", device=me.capabilities.gpu_model, **who) == 1  # type: ignore[union-attr]
    assert ("gpufleet_provider_gpu_memory_used_bytes", ()) not in before.samples  # no GPU: no figure, not a 0
    refusals = "gpufleet_orchestrator_admission_refusals_total"
    refused = before.total(refusals, submitter="alice", stage="intake")
    rejected = before.total(refusals, submitter="alice", stage="decision")

    # Six tasks of half a second on two slots: four wait in the queue at first, then two.
    job = await net.alice.submit(
        {"workload": "sleep", "params": {"seconds": 0.5}, "split": {"kind": "count", "count": 6}}
    )
    await scrape_until(
        net.url,
        lambda s: s.total("gpufleet_orchestrator_queue_depth", backend="any", workload="sleep") > 0,
        "tasks waiting in the queue of their class",
        timeout=30.0,
    )
    # Over raw NATS (any language could send them): a malformed submission, refused at intake, and a
    # well-formed one whose parameters its decision refuses. Both are recorded in the log.
    for name, body in (
        ("bad-field", {"workload": "sleep", "bogus": 1}),
        ("bad-params", {"workload": "sleep", "params": {"seconds": -1}}),
    ):
        await net.alice.js.publish(intake_subject("submitter", "alice", "submit", name), json.dumps(body).encode())
    status = await job.wait(timeout=60.0)
    assert status.status == "completed"

    after = await scrape_until(
        net.url,
        lambda s: (
            caught_up(s)
            and s.total(refusals, submitter="alice", stage="intake") == refused + 1
            and s.total(refusals, submitter="alice", stage="decision") == rejected + 1
            and s.get("gpufleet_provider_tasks_total", outcome="completed", **who)
            >= before.get("gpufleet_provider_tasks_total", outcome="completed", **who) + 6
        ),
        "the work done, the refusal counted, and every follower caught up",
    )

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return after.total(name, **labels) - before.total(name, **labels) >= by

    assert grew("gpufleet_orchestrator_leases_total", 6)
    assert grew("gpufleet_orchestrator_scheduler_decisions_total", 6)
    assert grew("gpufleet_orchestrator_append_seconds_count", 12)  # 6 leases, 6 completions, ...
    # 3 submissions, 6 completions (a half-second run's completion implies its start: it reports none)
    assert grew("gpufleet_orchestrator_intake_delivered_total", 9)
    assert grew("gpufleet_orchestrator_log_position", 30)
    assert grew("gpufleet_projector_events_applied_total", 30)
    assert grew("gpufleet_projector_commits_total", 1)
    # The projector caught up with the head of the log (where the orchestrator is, or beyond it).
    assert after.get("gpufleet_projector_position") >= after.get("gpufleet_orchestrator_log_position") > 0
    assert after.get("gpufleet_projector_lag_seconds") == 0
    assert after.get("gpufleet_orchestrator_intake_lag_seconds") == 0
    # The queue went through the class (backend any, workload sleep) and is empty again.
    assert after.get("gpufleet_orchestrator_queue_depth", backend="any", workload="sleep") == 0
    # Latencies land in buckets: cumulative, ending with every observation at +Inf.
    count = after.get("gpufleet_orchestrator_append_seconds_count", mode="single")
    assert after.get("gpufleet_orchestrator_append_seconds_bucket", mode="single", le="+Inf") == count > 0
    assert 0 < after.get("gpufleet_orchestrator_append_seconds_sum", mode="single") < count * 5.0
    # Nothing failed.
    assert after.get("gpufleet_provider_tasks_total", outcome="failed", **who) == 0
    assert after.total("gpufleet_orchestrator_intake_refusals_total", role="submitter") == refused + 1
    assert after.get("gpufleet_orchestrator_leader") == 1
    assert after.get("gpufleet_provider_tasks_running", **who) == 0
    assert after.get("gpufleet_provider_worker_restarts_total", **who) == 0
    # Per-task ids never become labels (bounded cardinality): no label value names the job.
    assert job.name not in after.text and "bad-field" not in after.text


async def test_the_web_dashboard_serves_the_same_registry_at_metrics(net: Net) -> None:
    assert net.net.dashboard is not None
    on_dashboard = await scrape(net.net.dashboard.url.rstrip("/") + "/metrics")
    on_its_own = await scrape(net.url)
    assert on_dashboard.families.keys() == on_its_own.families.keys()
    assert {"gpufleet_orchestrator_leases", "gpufleet_provider_tasks", "gpufleet_projector_lag_events"} <= set(
        on_dashboard.families
    )


async def test_every_metric_the_grafana_dashboard_queries_is_in_a_live_scrape(net: Net) -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    used = {m for e in exprs for m in re.findall(r"\bgpufleet_[a-z0-9_]+", e)}
    live = (await scrape(net.url)).names()
    missing = sorted(used - live)
    assert not missing, f"the dashboard queries metrics the network does not export: {missing}"
    # Each family the dashboard is about: rates of counters, a quantile of the append histogram.
    joined = "\n".join(exprs)
    assert "histogram_quantile(" in joined and "gpufleet_orchestrator_append_seconds_bucket" in joined
    assert "rate(gpufleet_orchestrator_leases_total[1m])" in joined


async def test_the_readme_documents_every_metric_a_live_scrape_shows_and_no_other(net: Net) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Metrics\n", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"`(gpufleet_[a-z0-9_]+)", section))
    live = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in (await scrape(net.url)).families.values()
        if f.name.startswith("gpufleet_")
    }
    assert documented == live, f"undocumented: {sorted(live - documented)}; gone: {sorted(documented - live)}"


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = log.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()


async def _url_from(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        m = re.search(r"metrics at (http://\S+/metrics)", await asyncio.to_thread(log.read_text, errors="replace"))
        if m:
            return m.group(1)
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    text = await asyncio.to_thread(log.read_text, errors="replace")
    raise AssertionError(f"no metrics URL printed: {text[-3000:]}")


@pytest.mark.parametrize("part", ["orchestrator", "projector"])
async def test_a_standalone_process_serves_its_metrics(net: Net, part: str, tmp_path: Path) -> None:
    n = net.net
    if part == "orchestrator":
        a = n.access("orchestrator")
        args = ["-m", "gpufleet", "orchestrator", "run", "--nats", a.url, "--creds", str(a.creds)]
        args += ["--data-dir", str(tmp_path), "--metrics", "127.0.0.1:0"]
        ready = "gpufleet_orchestrator_log_position"
    else:
        a = n.access("auditor", "metrics-projector")
        args = ["-m", "projections", "run", "--url", a.url, "--creds", str(a.creds)]
        args += ["--db", str(tmp_path / "rm.sqlite"), "--metrics", "127.0.0.1:0", "--checkpoint-every", "0"]
        ready = "gpufleet_projector_position"
    log = tmp_path / "out.log"
    proc = _spawn(args, log)
    try:
        url = await _url_from(proc, log)
        head = n.orchestrator.world.position  # type: ignore[union-attr]
        # It follows the same log: its position reaches where the network's orchestrator was.
        s = await scrape_until(url, lambda s: s.total(ready) >= head > 0, f"{ready} reaches {head}")
        assert s.get("process_resident_memory_bytes") > 0  # the process's own figures too
        if part == "projector":
            assert s.get("gpufleet_projector_lag_events") >= 0
        else:
            assert s.get("gpufleet_orchestrator_leader") in (0.0, 1.0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command", [["provider", "run"], ["orchestrator", "run"], ["up"]])
async def test_a_bad_metrics_address_is_one_line_before_anything_starts(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "GPUFLEET_HOME": str(tmp_path)}
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gpufleet", *command, "--metrics", "127.0.0.1:99999"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "metrics" in lines[0] and "port from 0 to 65535" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "nats").exists()


async def test_the_projector_lag_in_seconds_is_the_age_the_server_stamped(nats_server: SecureServer) -> None:
    store = await JetStreamEventStore.connect(nats_server.superuser(), settings=isolated_settings(), create=True)
    try:
        await store.append("task.a", [queued("task.a")], ANY)
        await asyncio.sleep(0.3)
        await store.append("task.b", [queued("task.b")], ANY)
        behind, age = await projector_lag(store, 0)
        # Stored by the server 0.3 s or more ago (the events themselves say 2026-01-01: not used).
        assert behind == 2 and age is not None and 0.3 <= age < 60
        behind, age = await projector_lag(store, 1)
        assert behind == 1 and age is not None and 0 <= age < 0.3 + 60
        assert await projector_lag(store, 2) == (0, 0.0)
    finally:
        await store.close()


async def test_the_intake_backlog_is_what_the_shared_consumer_has_not_acknowledged(nats_server: SecureServer) -> None:
    from nats.js import api

    name = unique("IN").upper()
    topology = Topology(intake_stream=name, intake_prefix=f"{name.lower()}.in")
    nc = await connect_nats(nats_server.superuser(), name="test-intake")
    js = nc.jetstream()
    try:
        await js.add_stream(topology.intake_config())
        config = api.ConsumerConfig(
            durable_name=INTAKE_CONSUMER, ack_policy=api.AckPolicy.EXPLICIT, filter_subject=f"{name.lower()}.in.>"
        )
        await js.add_consumer(name, config=config)
        assert await intake_backlog(js, topology) == (0, 0.0)
        subject = f"{name.lower()}.in.submitter.alice.submit"
        await js.publish(f"{subject}.j0", b"{}")
        await js.publish(f"{subject}.j1", b"{}")
        await asyncio.sleep(1.0)
        await js.publish(f"{subject}.j2", b"{}")  # a second later than the first two
        behind, age = await intake_backlog(js, topology)
        assert behind == 3 and 1.0 <= age < 60  # none delivered yet: the oldest is j0
        sub = await js.pull_subscribe_bind(INTAKE_CONSUMER, name)
        j0, j1 = await sub.fetch(2, timeout=5.0)
        await j0.ack_sync()
        behind, age = await intake_backlog(js, topology)
        # j1 delivered but not acknowledged, j2 not delivered: the oldest without an outcome is j1.
        assert behind == 2 and 1.0 <= age < 60
        await j1.ack_sync()
        (j2,) = await sub.fetch(1, timeout=5.0)
        await j2.ack_sync()
        assert await intake_backlog(js, topology) == (0, 0.0)
    finally:
        await nc.close()
