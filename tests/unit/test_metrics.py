"""Metrics without a network: the fixed-bucket histogram, the registry and its exposition (a real HTTP
server on a real socket, and the ASGI app mounted in a real Starlette app), and each component's
collector over the component's real objects (an orchestrator's world, a provider runtime's counts,
a projector over the in-memory store)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries
from starlette.applications import Starlette
from starlette.routing import Route

from actors.metrics import OrchestratorCollector
from actors.orchestrator import Orchestrator
from events import ANY, InvalidPayload, MemoryEventStore, new_envelope
from events.intake import InputRejected
from events.job import JobRejected
from events.metrics import MetricsRegistry, metrics_app, parse_listen, render, serve_metrics
from events.stats import Histogram
from events.types import Calibration, utc_now
from gpu_runtime.metrics import ProviderCollector
from gpu_runtime.service import ProviderRuntime, RuntimeConfig
from projections.metrics import ProjectorCollector, _parse_stamp
from projections.projector import Projector
from projections.storage import SqliteStore
from tests.factories import T0, created, queued

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def samples(registry: MetricsRegistry) -> Samples:
    body, _ = await render(registry)
    out: Samples = {}
    for f in text_string_to_metric_families(body.decode()):
        for s in f.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


# ---- the histogram -------------------------------------------------------------------------------


def test_a_histogram_counts_each_observation_in_the_first_bucket_that_holds_it() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    # Prometheus buckets are "at most": 0.1 is in le=0.1, 1.0 in le=1.0, 7.0 only in +Inf.
    assert h.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert h.count == 5 and h.sum == pytest.approx(8.65)


async def test_histogram_buckets_are_exposed_cumulative_with_sum_and_count() -> None:
    from events.metrics import histogram_family

    h = Histogram((0.001, 0.01))
    for v in (0.0005, 0.005, 0.005, 0.5):
        h.observe(v)

    class One:
        def collect(self) -> list[object]:
            return [histogram_family("t_seconds", "t", ["mode"], [(["x"], h)])]

    reg = MetricsRegistry()
    reg.register(One())  # type: ignore[arg-type]
    s = await samples(reg)
    assert s[key("t_seconds_bucket", mode="x", le="0.001")] == 1
    assert s[key("t_seconds_bucket", mode="x", le="0.01")] == 3
    assert s[key("t_seconds_bucket", mode="x", le="+Inf")] == 4 == s[key("t_seconds_count", mode="x")]
    assert s[key("t_seconds_sum", mode="x")] == pytest.approx(0.5105)


# ---- the registry and its exposition -------------------------------------------------------------


def test_listen_addresses_default_to_this_machine_and_bad_ones_name_the_problem() -> None:
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("metrics-host:80") == ("metrics-host", 80)
    for bad, says in (
        ("127.0.0.1:99999", "port from 0 to 65535"),
        ("host:", "port from 0 to 65535"),
        ("host:http", "port from 0 to 65535"),
        ("[::1]9464", "[ADDRESS]:PORT"),
        ("[nonsense]:1", "not an IPv6 address"),
        ("a/b:80", "not a host name"),
    ):
        with pytest.raises(InvalidPayload, match=re.escape(says)) as e:
            parse_listen(bad)
        assert e.value.field == "metrics" and "\n" not in str(e.value)


class Lagging:
    """A collector that asks for something at scrape time, and can fail to get it."""

    def __init__(self) -> None:
        self.fail = False
        self.value: float | None = None
        self.asked = 0

    async def refresh(self) -> None:
        self.asked += 1
        self.value = None
        if self.fail:
            raise ConnectionError("the server went away")
        self.value = 42.0

    def describe(self) -> list[object]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        return [GaugeMetricFamily("t_lag", "a lag")]

    def collect(self) -> list[object]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        g = GaugeMetricFamily("t_lag", "a lag")
        if self.value is not None:
            g.add_metric([], self.value)
        return [g]


async def test_collectors_refresh_before_each_scrape_and_a_failed_figure_is_left_out() -> None:
    reg = MetricsRegistry()
    c = Lagging()
    reg.register(c)  # type: ignore[arg-type]
    assert (await samples(reg))[key("t_lag")] == 42.0 and c.asked == 1
    c.fail = True
    assert key("t_lag") not in await samples(reg)  # unknown, not a stale 42 nor a failed scrape
    assert c.asked == 2
    reg.unregister(c)  # type: ignore[arg-type]
    await samples(reg)
    assert c.asked == 2


async def test_registries_are_per_network_and_one_refuses_a_second_collector_of_the_same_part() -> None:
    a, b = MetricsRegistry(), MetricsRegistry()
    orch_a, orch_b = Orchestrator(NATS()), Orchestrator(NATS())
    a.register(OrchestratorCollector(orch_a))
    b.register(OrchestratorCollector(orch_b))  # another network in the same process: no collision
    orch_b.leases_granted = 7
    assert (await samples(a))[key("gpufleet_orchestrator_leases_total")] == 0
    assert (await samples(b))[key("gpufleet_orchestrator_leases_total")] == 7
    with pytest.raises(DuplicateTimeseries):
        a.register(OrchestratorCollector(orch_b))


async def test_served_over_http_on_the_event_loop_only_at_metrics() -> None:
    reg = MetricsRegistry(process=True)
    reg.register(Lagging())  # type: ignore[arg-type]
    server = await serve_metrics("127.0.0.1", 0, reg)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        async with httpx.AsyncClient() as http:
            r = await http.get(server.url)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "t_lag 42.0" in r.text and "process_cpu_seconds_total" in r.text
            om = await http.get(server.url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")
            head = await http.head(server.url)
            assert head.status_code == 200 and head.content == b""
            assert (await http.get(server.url.replace("/metrics", "/"))).status_code == 404
            assert (await http.post(server.url)).status_code == 405
        # Garbage on the socket gets a 400, and the server goes on.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NONSENSE\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
        async with httpx.AsyncClient() as http:
            assert (await http.get(server.url)).status_code == 200
    finally:
        await server.close()


async def test_a_taken_port_is_one_line_naming_it() -> None:
    first = await serve_metrics("127.0.0.1", 0, MetricsRegistry())
    try:
        with pytest.raises(InvalidPayload, match=f"127.0.0.1:{first.port}") as e:
            await serve_metrics("127.0.0.1", first.port, MetricsRegistry())
        assert e.value.field == "metrics"
    finally:
        await first.close()


async def test_the_asgi_app_mounted_in_starlette_serves_the_same_text() -> None:
    reg = MetricsRegistry()
    reg.register(Lagging())  # type: ignore[arg-type]
    web = Starlette(routes=[Route("/metrics", metrics_app(reg))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://dash") as http:
        r = await http.get("/metrics")
        assert r.status_code == 200 and "t_lag 42.0" in r.text
        assert (await http.head("/metrics")).content == b""
        assert (await http.post("/metrics")).status_code == 405


# ---- the orchestrator ----------------------------------------------------------------------------


async def test_the_orchestrator_collector_names_its_live_figures() -> None:
    orch = Orchestrator(NATS())
    reg = MetricsRegistry()
    reg.register(OrchestratorCollector(orch))
    apply = orch.core.apply
    for env in (created("task.t1"), queued("task.t1"), created("task.t2")):
        apply(env, live=False)
    at = T0

    def rejected(stream: str, seq: int) -> None:
        event = InputRejected(at=at, intake_seq=seq, subject=f"gf.in.{stream[7:]}.x", reason="bad")
        apply(new_envelope(stream, event, id=f"in-{seq}", source="t").at_position(100 + seq), live=False)

    rejected("intake.submitter.alice", 1)
    rejected("intake.submitter.alice", 2)
    rejected("intake.provider.gpu-1", 3)
    rejected("intake.outcomes", 4)  # recorded before per-sender streams: no sender to name
    job_rejected = JobRejected(at=at, job_id="bob.j1", reason="no", field="params")
    apply(new_envelope("job.bob.j1", job_rejected, id="dj-1", source="t").at_position(200), live=False)
    orch.tasks.conflicts = 3
    orch.store.append_seconds.observe(0.002)
    orch.store.batch_append_seconds.observe(0.02)
    orch.store.on_invalid(7, InvalidPayload("broken", field="data"))
    orch.store.on_invalid(7, InvalidPayload("broken", field="data"))  # read again: the same event

    s = await samples(reg)
    p = "gpufleet_orchestrator"
    assert s[key(f"{p}_queue_depth", backend="any", workload="noop")] == 2
    assert s[key(f"{p}_admission_refusals_total", submitter="alice", stage="intake")] == 2
    assert s[key(f"{p}_admission_refusals_total", submitter="bob", stage="decision")] == 1
    assert s[key(f"{p}_intake_refusals_total", role="submitter")] == 2
    assert s[key(f"{p}_intake_refusals_total", role="provider")] == 1
    assert s[key(f"{p}_intake_refusals_total", role="")] == 1
    assert not [k for k in s if k[0] == f"{p}_admission_refusals_total" and ("submitter", "") in k[1]]
    assert s[key(f"{p}_concurrency_conflicts_total", aggregate="task")] == 3
    assert s[key(f"{p}_concurrency_conflicts_total", aggregate="job")] == 0
    assert s[key(f"{p}_append_seconds_bucket", mode="single", le="0.0025")] == 1
    assert s[key(f"{p}_append_seconds_bucket", mode="single", le="0.001")] == 0
    assert s[key(f"{p}_append_seconds_count", mode="batch")] == 1
    assert s[key(f"{p}_quarantined_events_total")] == 1
    assert s[key(f"{p}_log_position")] == 200
    assert s[key(f"{p}_leader")] == 0
    # Nothing asked of the server yet (no refresh): the intake lag is unknown, so left out.
    assert key(f"{p}_intake_lag_messages") not in s
    # The queue empties: the class reads 0, it does not vanish from graphs.
    orch.core.scheduler.discard("t1")
    orch.core.scheduler.discard("t2")
    assert (await samples(reg))[key(f"{p}_queue_depth", backend="any", workload="noop")] == 0


# ---- a provider runtime --------------------------------------------------------------------------


async def test_the_provider_collector_names_outcomes_failures_and_calibration() -> None:
    r = ProviderRuntime(RuntimeConfig(provider_id="gpu-1"))
    reg = MetricsRegistry()
    reg.register(ProviderCollector(r))
    r.stats.ended("completed")
    r.stats.ended("completed")
    r.stats.ended("failed", "timeout")
    r.stats.ended("revoked")
    r.calibration = Calibration(matmul_tflops={"fp32": 1.5, "fp16": 3.0}, memory_gbps=12.5, task_overhead_s=0.002)
    s = await samples(reg)
    p, who = "gpufleet_provider", {"provider": "gpu-1"}
    assert s[key(f"{p}_tasks_total", outcome="completed", **who)] == 2
    assert s[key(f"{p}_tasks_total", outcome="failed", **who)] == 1
    assert s[key(f"{p}_tasks_total", outcome="revoked", **who)] == 1
    assert s[key(f"{p}_tasks_total", outcome="unreported", **who)] == 0  # there from the start, for rate()
    assert s[key(f"{p}_task_failures_total", reason="timeout", **who)] == 1
    assert s[key(f"{p}_task_failures_total", reason="out_of_memory", **who)] == 0
    assert s[key(f"{p}_peak_flops", precision="fp16", **who)] == 3.0e12
    assert s[key(f"{p}_memory_bandwidth_bytes_per_second", **who)] == 12.5e9
    assert s[key(f"{p}_task_overhead_seconds", **who)] == 0.002
    assert s[key(f"{p}_worker_restarts_total", **who)] == 0 and s[key(f"{p}_slots", **who)] == 0


# ---- the projector -------------------------------------------------------------------------------


def test_jetstream_timestamps_are_read_to_the_microsecond() -> None:
    t = _parse_stamp("2026-12-01T00:50:00.123456789Z")
    assert t is not None and t.isoformat() == "2026-12-01T00:50:00.123456+00:00"
    assert _parse_stamp("2026-12-01T00:50:00Z") is not None
    assert _parse_stamp("2026-12-01T01:50:00.5+01:00") == _parse_stamp("2026-12-01T00:50:00.5Z")
    assert _parse_stamp("yesterday") is None and _parse_stamp("") is None


async def test_the_projector_lag_is_asked_of_the_log_at_scrape_time(tmp_path: Path) -> None:
    store = MemoryEventStore()
    for i in range(3):
        await store.append(f"task.t{i}", [queued(f"task.t{i}")], ANY)
    db = SqliteStore(str(tmp_path / "rm.sqlite"))
    projector = Projector(store, db)
    projector.open()
    reg = MetricsRegistry()
    reg.register(ProjectorCollector(projector))
    p = "gpufleet_projector"
    behind = await samples(reg)
    assert behind[key(f"{p}_lag_events")] == 3 and behind[key(f"{p}_position")] == 0
    # The oldest event not folded was made at T0 (the memory store keeps no time of its own).
    assert behind[key(f"{p}_lag_seconds")] == pytest.approx((utc_now() - T0).total_seconds(), abs=60)
    await projector.catch_up()
    caught = await samples(reg)
    assert caught[key(f"{p}_lag_events")] == 0 and caught[key(f"{p}_lag_seconds")] == 0
    assert caught[key(f"{p}_position")] == 3 and caught[key(f"{p}_events_applied_total")] == 3
    assert caught[key(f"{p}_commits_total")] >= 1
    # The log grows while the projector stands still: the lag grows with it (it is asked, not kept).
    await store.append("task.t9", [queued("task.t9")], ANY)
    assert (await samples(reg))[key(f"{p}_lag_events")] == 1
    db.close()
