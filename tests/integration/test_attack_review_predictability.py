"""Attack review of predictability (issue 17, 4c3ba55) on a real network: ``LocalNetwork`` (a real
nats-server, the orchestrator, the projector with its quote service, a calibrated NumPy provider), and
hostile providers that register over NATS with credentials of their own.

The finding was first a strict xfail and is fixed (a provider's own probes predict its own device; the
class's law is a median of one vote per provider); the other test pins attacks the network withstands.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from events.store.connection import connect_nats
from events.subjects import intake_subject
from events.types import MAX_SECONDS, Calibration, Capabilities, Estimate
from events.workloads import WORKLOADS, validate_params
from gpufleet import Client
from gpufleet.network import LocalNetwork, NetworkConfig
from projections.quote import Quote

pytestmark = pytest.mark.asyncio(loop_scope="module")

MATMUL: dict[str, Any] = {"workload": "matmul", "params": {"n": 512}}


class Net:
    def __init__(self, net: LocalNetwork, alice: Client) -> None:
        self.net = net
        self.alice = alice

    async def quote_until(self, spec: dict[str, Any], ok: Any, what: str) -> Quote:
        """The first quote for ``spec`` that ``ok`` accepts (the projector folds what it sees a moment later)."""
        for _ in range(600):
            q = await self.alice.quote(spec)
            if ok(q):
                return q
            await asyncio.sleep(0.1)
        raise AssertionError(f"never {what}: {q}")

    async def register(self, name: str, caps: Capabilities, cal: Calibration) -> None:
        """Register as provider ``name`` with its own credentials, as any stranger's runtime can."""
        nc = await connect_nats(self.net.access("provider", name), name=f"attack-{name}")
        try:
            body = json.dumps(
                {"name": name, "capabilities": caps.model_dump(mode="json"), "calibration": cal.model_dump(mode="json")}
            )
            await nc.jetstream().publish(intake_subject("provider", name, "register"), body.encode())
        finally:
            await nc.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    config = NetworkConfig(
        data_dir=tmp_path_factory.mktemp("predict-attack") / "net", port=0, provider_backend="cpu", notary=False
    )
    network = await LocalNetwork(config).start()
    a = network.access("submitter", "alice")
    alice = await Client.connect(a.url, creds=a.creds)
    try:
        yield Net(network, alice)
    finally:
        await alice.close()
        await network.stop()


def _matmul(n: int) -> Estimate:
    return WORKLOADS["matmul"].estimate(validate_params("matmul", {"n": n}))


def _finite_numbers(doc: Any) -> bool:
    if isinstance(doc, float):
        return math.isfinite(doc)
    if isinstance(doc, dict):
        return all(_finite_numbers(v) for v in doc.values())
    if isinstance(doc, list):
        return all(_finite_numbers(v) for v in doc)
    return True


def _absurd(k: int) -> Calibration:
    """Probes at every extreme the schema allows: 31 workloads outside the catalogue and a matmul law
    from a 1e24-flop run in 5e-324 s and a tiny one in an hour; fresh figures each time (k)."""
    run = {"estimate": {"flops": 1e24, "bytes_moved": 1e21}, "actual_s": math.nextafter(0.0, 1.0)}
    slow = {"estimate": {"flops": 1.0 + k}, "actual_s": 3600.0}
    probes: dict[str, Any] = {f"no-such-{k}-{j}": [run, slow] for j in range(31)}
    probes["matmul"] = [run, slow, slow, run]
    doc = {"matmul_tflops": {"fp32": 1e6}, "memory_gbps": 1e6, "task_overhead_s": 0.0, "probes": probes}
    return Calibration.model_validate_json(json.dumps(doc))


async def test_a_provider_with_absurd_probes_breaks_no_quote_no_acceptance_and_no_job(net: Net) -> None:
    # How it was checked to be able to fail: the same calibrations fed to the model directly raise
    # nothing and predict finite times (tests/unit/...::test_absurd_probes_within_the_schema_...), and a
    # quote or an acceptance that raised would surface here as an error answer or a missing
    # JobAccepted; a NaN in a quote would be refused by json.dumps(allow_nan=False).
    await net.quote_until(MATMUL, lambda q: q.runnable, "runnable")
    caps = Capabilities(backend="cpu", gpu_model="absurd", vram_mb=1, slots=1024, price_micros=10**6)
    for k in range(12):  # re-registering with fresh calibrations, again and again
        await net.register("mallory", caps, _absurd(k))
    q = await net.quote_until(
        MATMUL, lambda q: any(o.device_class == "cpu:absurd" for o in q.options), "showing mallory"
    )
    assert _finite_numbers(q.to_json()) and q.per_task is not None and q.per_task.low <= q.per_task.high
    # A quote for the most tasks a job may have, on mallory's 1024 slots, is answered too.
    huge = await net.alice.quote({**MATMUL, "split": {"kind": "count", "count": 100_000}})
    assert huge.runnable and huge.finish_s is not None and huge.finish_s.low <= huge.finish_s.high
    # A job under a price ceiling mallory is over: accepted with a sane interval, and done by the
    # network's own provider.
    job = await net.alice.submit({"workload": "sleep", "params": {"seconds": 0.2, "steps": 1}, "max_price_micros": 0})
    seen: dict[str, Any] = {}
    async for env in job.events():
        seen[env.type] = env.data
    assert "JobCompleted" in seen, sorted(seen)
    accepted = seen["JobAccepted"]
    low, high = accepted.predicted_low_s, accepted.predicted_high_s
    assert low is not None and high is not None and 0.0 <= low <= high <= MAX_SECONDS, accepted


# Found by the attack review, now fixed: one stranger registering as the honest provider's device class, with
#  probes at sizes nobody else ran, makes the quote for that class say hours instead of milliseconds
async def test_a_liar_registering_in_the_honest_class_cannot_drag_its_quote(net: Net) -> None:
    before = await net.quote_until(MATMUL, lambda q: q.runnable, "runnable")
    honest = next(o for o in before.options if o.device_class.startswith("cpu:") and o.device_class != "cpu:absurd")
    _, model = honest.device_class.split(":", 1)
    caps = Capabilities(backend="cpu", gpu_model=model, vram_mb=1, slots=1, price_micros=10**6)
    lie = Calibration.model_validate_json(
        json.dumps(
            {
                "matmul_tflops": {"fp32": 0.05},
                "memory_gbps": 10.0,
                "probes": {
                    "matmul": [
                        {"estimate": _matmul(n).model_dump(mode="json"), "actual_s": 3600.0}
                        for n in (300, 400, 600, 700)
                    ]
                },
            }
        )
    )
    await net.register("trudy", caps, lie)
    after = await net.quote_until(
        MATMUL,
        lambda q: any(p.provider_id == "trudy" for o in q.options for p in o.providers),
        "showing trudy",
    )
    dragged = next(o for o in after.options if o.device_class == honest.device_class)
    assert dragged.per_task.seconds <= 3 * honest.per_task.seconds, (honest.per_task, dragged.per_task)
