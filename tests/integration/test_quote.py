"""Quotes from a real network: ``LocalNetwork`` (a real nats-server, the orchestrator, the projector
with its quote service, and a calibrated NumPy provider) asked by a submitter over NATS, then the
quoted job submitted and its actual duration compared."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from events import InvalidPayload
from events.estimates import BASES
from events.store import JetStreamEventStore
from events.subjects import INTAKE_STREAM, api_subject
from gpufleet import Client
from gpufleet.network import LocalNetwork, NetworkConfig
from projections.quote import Quote

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
SPEC: dict[str, Any] = {"workload": "matmul", "params": {"n": 512, "repeat": 4}, "split": {"kind": "count", "count": 3}}


class Net:
    def __init__(self, net: LocalNetwork, alice: Client, log: JetStreamEventStore) -> None:
        self.net = net
        self.alice = alice
        self.log = log

    async def heads(self) -> tuple[int, int]:
        """The domain log's last position and the intake stream's."""
        intake = await self.log.js.stream_info(INTAKE_STREAM)
        return await self.log.head(), int(intake.state.last_seq)

    async def runnable(self, spec: dict[str, Any]) -> Quote:
        """The quote, once the projector has seen the provider online (at start-up it may not yet)."""
        for _ in range(600):
            q = await self.alice.quote(spec)
            if q.runnable:
                return q
            await asyncio.sleep(0.1)
        raise AssertionError(f"never runnable: {q}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    config = NetworkConfig(
        data_dir=tmp_path_factory.mktemp("quote") / "net", port=0, provider_backend="cpu", notary=False
    )
    network = await LocalNetwork(config).start()
    a = network.access("submitter", "alice")
    alice = await Client.connect(a.url, creds=a.creds)
    log = await JetStreamEventStore.connect(network.access("auditor", "quote-test"), reads="direct")
    try:
        yield Net(network, alice, log)
    finally:
        await alice.close()
        await log.close()
        await network.stop()


async def test_a_quote_appends_nothing_to_the_log(net: Net) -> None:
    await net.runnable(SPEC)
    before = await net.heads()
    for spec in (SPEC, {**SPEC, "resources": {"backend": "cuda"}}, {**SPEC, "max_price_micros": 0}):
        await net.alice.quote(spec)
    with pytest.raises(InvalidPayload):
        await net.alice.quote({**SPEC, "params": {"n": 0}})
    assert await net.heads() == before


async def test_a_quote_before_a_submission_and_the_actual_after(net: Net) -> None:
    # Work whose length the network can know (a sleep), so the comparison measures the quote, not the
    # machine's load: 3 tasks of 0.5 s on the provider's slots, nothing queued.
    spec = {"workload": "sleep", "params": {"seconds": 0.5, "steps": 2}, "split": {"kind": "count", "count": 3}}
    q = await net.runnable(spec)
    assert q.submitter == "alice" and q.tasks == 3 and q.online == 1
    (option,) = q.options
    assert option.device_class.startswith("cpu:") and option.slots >= 1
    assert [p.price_micros for p in option.providers] == [0]
    p = q.per_task
    assert p is not None and p.basis in BASES and 0.0 < p.low < p.seconds < p.high
    assert q.finish_s is not None and 0.0 < q.finish_s.low < q.finish_s.expected < q.finish_s.high
    assert q.finish_s.expected == pytest.approx(0.5 * math.ceil(3 / option.slots), rel=0.2)
    assert q.cost_micros is not None and q.cost_micros.high == 0  # the local provider is free
    job = await net.alice.submit(spec)
    times = {}
    async for env in job.events():
        times[env.type] = env.time
    assert "JobCompleted" in times, times
    actual = (times["JobCompleted"] - times["JobAccepted"]).total_seconds()
    # Generous: the quote knows the work and the slots, not the network's own latencies.
    assert q.finish_s.low / 3 <= actual <= q.finish_s.high * 3, (actual, q.finish_s)


async def test_a_cuda_job_on_a_cpu_network_has_no_capable_provider_and_says_why(net: Net) -> None:
    await net.runnable(SPEC)
    q = await net.alice.quote({**SPEC, "resources": {"backend": "cuda"}})
    assert not q.runnable and not q.options and q.finish_s is None and q.online == 1
    assert q.why == {"backend": "needs cuda; the one online provider is cpu"}
    assert q.ruled_out == {"backend": 1}


async def test_bad_and_oversized_requests_get_typed_errors_and_the_service_keeps_answering(net: Net) -> None:
    subject = api_subject("submitter", "alice", "quote")

    async def ask(body: bytes) -> dict[str, Any]:
        msg = await net.alice.nc.request(subject, body, timeout=10.0)
        doc = json.loads(msg.data)
        assert isinstance(doc, dict)
        return doc

    assert (await ask(b"{not json"))["field"] == "body"
    assert (await ask(b"[1, 2]"))["field"] == "body"
    assert (await ask(json.dumps({**SPEC, "params": {"n": "big"}}).encode()))["field"] == "params.n"
    assert (await ask(json.dumps({**SPEC, "submitter": "mallory"}).encode()))["field"] == "submitter"
    assert (await ask(json.dumps({**SPEC, "deadline": "2001-01-01T00:00:00Z"}).encode()))["field"] == "deadline"
    big = json.dumps({**SPEC, "labels": {"x": "y" * 600_000}}).encode()
    oversized = await ask(big)
    assert oversized["field"] == "body" and "at most" in oversized["error"]
    with pytest.raises(InvalidPayload) as refused:
        await net.alice.quote({**SPEC, "workload": "no-such-thing"})
    assert refused.value.field == "workload"
    assert (await ask(json.dumps(SPEC).encode()))["runnable"] is True


async def cli(net: Net, *args: str) -> tuple[int, str, str]:
    """``gpufleet ARGS`` as a user on the network's machine runs it: (exit code, stdout, stderr)."""
    env = {**os.environ, "GPUFLEET_HOME": str(net.net.config.data_dir), "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpufleet", *args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_quotes_as_a_table_and_as_json(net: Net) -> None:
    await net.runnable(SPEC)
    code, out, err = await cli(net, "quote", "--workload", "matmul", "-p", "n=512", "--tasks", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["runnable"] and doc["tasks"] == 2 and doc["options"][0]["device_class"].startswith("cpu:")
    code, out, err = await cli(net, "quote", "--workload", "matmul", "-p", "n=512", "--backend", "cuda")
    assert code == 0 and "nothing can run this" in out and "backend: needs cuda" in out, out + err
    code, out, err = await cli(net, "quote", "--workload", "matmul", "-p", "n=512")
    assert code == 0 and "per task" in out and "\u2013" in out and "finishes in" in out, out + err


async def test_submit_with_a_max_eta_below_the_quote_is_refused_up_front(net: Net) -> None:
    await net.runnable(SPEC)
    before = await net.heads()
    code, out, text = await cli(net, "submit", "--workload", "matmul", "-p", "n=512", "--max-eta", "0.001")
    assert code == 1 and not out, (out, text)
    assert text.count("\n") == 1 and "not submitted" in text and "over --max-eta" in text, text
    assert await net.heads() == before  # nothing reached the intake, nothing the log
