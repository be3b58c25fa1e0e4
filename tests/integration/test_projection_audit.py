"""The audit over a real JetStream log and intake stream: it passes a clean log, and catches forged,
double and tampered records, missing outcomes, invalid events and unbalanced books."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from events import JetStreamEventStore, new_envelope, to_json_line
from events.job import ProviderCredited
from events.task import TaskCompleted
from events.types import ResultRef
from projections import Projector, SqliteStore
from projections.audit import AuditReport, audit_jetstream, audit_jsonl, read_intake
from tests.golden.loggen import Sim, golden_scenario
from tests.secure import SecureServer


async def write(store: JetStreamEventStore, sim: Sim, *, live: Projector | None = None) -> None:
    """Append the simulation as the orchestrator would (atomic appends, expected positions) and
    publish its intake messages."""
    for subject, body in sim.intake:
        await store.js.publish(subject, body)
    last: dict[str, int] = {}
    for i, (stream, group) in enumerate(sim.appends):
        result = await store.append(stream, group, expected=last.get(stream, 0))
        last[stream] = result.last
        if live is not None and i % 7 == 0:
            await asyncio.sleep(0.02)  # let the live projector follow (and checkpoint)


def forge_completion(sim: Sim, task_id: str, provider: str, lease: str, n: int) -> object:
    result = ResultRef(sha256="0" * 64, size=0)
    event = TaskCompleted(at=sim.now, task_id=task_id, lease_id=lease, provider_id=provider, result=result, gpu_ms=5)
    return new_envelope(f"task.{task_id}", event, id=f"forged-{n}", source="mallory")


@pytest.fixture
async def clean(own_nats_server: SecureServer, tmp_path: Path) -> tuple[JetStreamEventStore, Sim, AuditReport]:
    """The golden story written to a fresh server while a live projector appends chain checkpoints."""
    # The synthetic log is written as raw storage (no orchestrator decides it): an unrestricted writer.
    store = await JetStreamEventStore.connect(own_nats_server.superuser())
    sim = golden_scenario(checkpoint_every=None)
    sim.submit("jx", count=1)  # one more job, left running: a target for forgeries
    sim.lease("jx-0", "gpu-a")
    sim.start("jx-0")
    live = Projector(store, SqliteStore(tmp_path / "live.db"), checkpoint_every=25, flush_interval=0.01)
    runner = asyncio.create_task(live.run())
    await write(store, sim, live=live)
    head = await store.head()
    while live.position < head:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    report = await audit_jetstream(store)
    return store, sim, report


async def test_a_clean_log_passes_and_the_live_checkpoints_verify(
    clean: tuple[JetStreamEventStore, Sim, AuditReport],
) -> None:
    store, sim, report = clean
    assert report.ok, report.render()
    assert report.intake_messages == len(sim.intake)
    assert report.checkpoints_verified >= 3  # appended by the live projector, every 25 events
    assert report.diverged_at is None
    assert all(n > 0 for n in report.coverage.values()), report.coverage
    assert "PASS" in report.render()
    await store.close()


async def test_forged_and_double_completions_are_caught(
    clean: tuple[JetStreamEventStore, Sim, AuditReport],
) -> None:
    store, sim, _ = clean
    holder = sim.tasks["jx-0"]
    # Not the lease holder, a made-up lease, then a second completion of a completed task.
    for n, (task, provider, lease) in enumerate(
        [("jx-0", "gpu-b", holder.lease_id or ""), ("jx-0", "gpu-a", "l999"), ("j2-0", "gpu-a", "l7")]
    ):
        await store.append(f"task.{task}", [forge_completion(sim, task, provider, lease, n)], expected=None)  # type: ignore[list-item]
    report = await audit_jetstream(store)
    found = [f.message for f in report.of("completions")]
    assert any("forged: jx-0 completed by gpu-b" in m for m in found), found
    assert any("completed twice" in m and "jx-0" in m for m in found), found  # the second forgery
    assert any("completed twice" in m and "j2-0" in m for m in found), found
    assert not report.ok
    await store.close()


async def test_unbalanced_books_missing_outcomes_and_invalid_events_are_caught(
    clean: tuple[JetStreamEventStore, Sim, AuditReport],
) -> None:
    store, sim, _ = clean
    extra = ProviderCredited(at=sim.now, job_id="j1", provider_id="gpu-a", amount_micros=7, gpu_ms=0)
    await store.append("job.j1", [new_envelope("job.j1", extra, id="forged-credit", source="mallory")], None)
    js = store.js
    await js.publish("gf.in.job.jz.submit", b'{"workload":"noop"}')  # nobody recorded an outcome
    await js.publish("gf.ev.task.j1-0", b'{"type":"TaskQueued","v":1}', headers={"ce-id": "junk"})
    report = await audit_jetstream(store)
    ledger = [f.message for f in report.of("ledger")]
    assert any("not in the append of its charge" in m for m in ledger), ledger
    assert any("provider gpu-a credited" in m for m in ledger), ledger
    assert any("has no outcome" in m for m in (f.message for f in report.of("intake")))
    assert [f.message.split(":")[0] for f in report.of("schema")] == ["does not validate"]
    intake = await read_intake(store)
    assert len(intake) == len(sim.intake) + 1
    await store.close()


async def test_a_tampered_copy_names_where_it_diverges(
    clean: tuple[JetStreamEventStore, Sim, AuditReport],
    tmp_path: Path,
) -> None:
    store, _, report = clean
    copy = tmp_path / "copy.jsonl"
    lines = [to_json_line(env) async for env in store.read_all()]
    copy.write_text("\n".join(lines) + "\n")
    intake = await read_intake(store)
    assert (await audit_jsonl(copy, intake)).ok  # the faithful copy verifies

    # Alter one progress report (nothing but the chain can tell), late enough to follow a checkpoint.
    checkpoints = sorted(json.loads(line)["data"]["position"] for line in lines if '"type":"AuditCheckpointed"' in line)
    victim = next(i for i, line in enumerate(lines) if '"type":"TaskProgressed"' in line and i + 1 > checkpoints[0])
    obj = json.loads(lines[victim])
    obj["data"]["fraction"] = 0.99
    tampered = [*lines]
    tampered[victim] = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    copy.write_text("\n".join(tampered) + "\n")
    bad = await audit_jsonl(copy, intake)
    position = obj["sequence"]
    first_after = min(c for c in checkpoints if c >= position)
    assert bad.diverged_at == first_after
    assert bad.last_good_checkpoint == max(c for c in checkpoints if c < position)
    assert [f.check for f in bad.findings] and {f.check for f in bad.findings} == {"chain"}
    assert f"diverges from checkpoint at position {first_after}" in bad.findings[0].message
    assert report.chain_digest != bad.chain_digest
    await store.close()
