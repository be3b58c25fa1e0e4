"""The audit over a real JetStream log and intake stream: it passes a clean log, and catches forged,
double and tampered records, missing outcomes, invalid events and unbalanced books."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path

import pytest

from events import JetStreamEventStore, new_envelope, to_json_line
from events.job import ProviderCredited, SubmitterCharged
from events.task import TaskCompleted
from events.types import ResultRef
from projections import Projector, SqliteStore
from projections.audit import AuditReport, audit_jetstream, audit_jsonl, read_intake, read_jsonl
from projections.chain import GENESIS, chain_step
from tests.golden.loggen import Sim, golden_scenario
from tests.integration.audited import assert_findings, eventually
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
            # The live projector follows (and checkpoints) as the log grows, not once at the end.
            at = result.last
            await eventually(lambda: live.position >= at, f"the live projector to fold {at}", poll=0.01)  # noqa: B023


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
    await eventually(lambda: live.position >= head, f"the live projector to fold the whole log (to {head})", poll=0.01)
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
    head = await store.head()
    # Not the lease holder, a made-up lease, then a second completion of a completed task.
    for n, (task, provider, lease) in enumerate(
        [("jx-0", "gpu-b", holder.lease_id or ""), ("jx-0", "gpu-a", "l999"), ("j2-0", "gpu-a", "l7")]
    ):
        await store.append(f"task.{task}", [forge_completion(sim, task, provider, lease, n)], expected=None)  # type: ignore[list-item]
    report = await audit_jetstream(store)
    lease = f"{holder.provider}/{holder.lease_id}"
    assert_findings(
        report,
        [
            (
                "completions",
                head + 1,
                f"forged: jx-0 completed by gpu-b/{holder.lease_id}, but the lease is {lease} (running)",
            ),
            # The forgery was recorded as the task's end: the second one finds it completed.
            ("completions", head + 2, "TaskCompleted for jx-0 completed twice (it is completed)"),
            ("completions", head + 3, "TaskCompleted for j2-0 completed twice (it is completed)"),
        ],
    )
    assert not report.ok
    await store.close()


async def test_unbalanced_books_missing_outcomes_and_invalid_events_are_caught(
    clean: tuple[JetStreamEventStore, Sim, AuditReport],
) -> None:
    store, sim, _ = clean
    # The books as they stand (they balance: the clean log passes), to name what the forgery unbalances.
    credited: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    charged = 0
    async for env in store.read_all():
        if isinstance(env.data, ProviderCredited):
            row = credited[(env.data.job_id, env.data.provider_id)]
            row[0] += env.data.amount_micros
            row[1] += env.data.gpu_ms
        elif isinstance(env.data, SubmitterCharged):
            charged += env.data.amount_micros
    j1 = credited[("j1", "gpu-a")]
    gpu_a = sum(amount for (_, pid), (amount, _) in credited.items() if pid == "gpu-a")
    head = await store.head()

    extra = ProviderCredited(at=sim.now, job_id="j1", provider_id="gpu-a", amount_micros=7, gpu_ms=0)
    await store.append("job.j1", [new_envelope("job.j1", extra, id="forged-credit", source="mallory")], None)
    js = store.js
    await js.publish("gf.in.job.jz.submit", b'{"workload":"noop"}')  # nobody recorded an outcome
    await js.publish("gf.ev.task.j1-0", b'{"type":"TaskQueued","v":1}', headers={"ce-id": "junk"})
    report = await audit_jetstream(store)
    assert_findings(
        report,
        [
            ("schema", head + 2, "does not validate: at: Field required"),
            ("intake", None, f"intake message {len(sim.intake) + 1} (gf.in.job.jz.submit) has no outcome"),
            ("ledger", head + 1, "credit for j1 is not in the append of its charge"),
            ("ledger", None, f"job j1: provider gpu-a credited {[j1[0] + 7, j1[1]]}, metered {j1}"),
            ("ledger", None, f"provider gpu-a: credited {gpu_a + 7}, metered {gpu_a} on settled jobs"),
            ("ledger", None, f"charged {charged} in all, credited {charged + 7}"),
        ],
    )
    assert (report.events, report.invalid, report.last_position) == (head + 1, 1, head + 2)
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
    last_good = max(c for c in checkpoints if c < position)
    assert bad.diverged_at == first_after
    assert bad.last_good_checkpoint == last_good
    # Exactly one finding: the first checkpoint after the alteration, with the digest it recorded and
    # the one the altered log hashes to (recomputed here: sha256 over the previous digest and the event).
    at, recorded, events = next(
        (env.sequence, env.data.digest, env.data.events)
        for env in read_jsonl(copy)
        if env.type == "AuditCheckpointed" and env.data.position == first_after  # type: ignore[union-attr]
    )
    digest, count = GENESIS, 0
    for env in read_jsonl(copy):
        if env.sequence > first_after:  # type: ignore[union-attr]
            break
        digest, count = chain_step(digest, env), count + 1  # type: ignore[arg-type]
    message = (
        f"the log diverges from checkpoint at position {first_after}: recorded {recorded[:16]}… ({events} events), "
        f"recomputed {digest.hex()[:16]}… ({count} events); the last matching checkpoint is at {last_good}"
    )
    assert_findings(bad, [("chain", at, message)])
    assert report.chain_digest != bad.chain_digest
    await store.close()
