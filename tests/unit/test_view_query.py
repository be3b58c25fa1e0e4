"""The async query API over the golden read models."""

from __future__ import annotations

import json
from pathlib import Path

from events import MemoryEventStore
from projections import Projector, SqliteStore
from projections.query import ReadModels
from tests.golden.loggen import golden_scenario


async def golden_db(tmp_path: Path) -> Path:
    sim = golden_scenario()
    store = MemoryEventStore()
    for stream, group in sim.appends:
        await store.append(stream, group, expected=None)
    db = SqliteStore(tmp_path / "rm.db")
    await Projector(store, db).catch_up()
    db.close()
    return tmp_path / "rm.db"


async def test_queries(tmp_path: Path) -> None:
    q = ReadModels.open(await golden_db(tmp_path))
    job = await q.get_job("j1")
    assert job is not None
    assert job.job.status == "completed" and job.job.submitter == "alice"
    assert [t.task_id for t in job.tasks] == ["j1-0", "j1-1"]
    results = job.results
    assert [r[0] for r in results] == [0, 1] and all(r[2] for r in results)
    assert json.loads(results[0][2] or "{}")["inline"] == {"task": "j1-0", "attempt": 1}
    assert job.eta is not None and job.eta.actual_s is not None
    assert job.bill is not None and job.bill.balanced == 1
    assert await q.get_job("nope") is None

    assert [j.job_id for j in await q.list_jobs("failed")] == ["j6", "j5"]  # newest first
    assert {j.job_id for j in await q.list_jobs(submitter="alice")} == {"j1", "j3"}
    assert len(await q.list_jobs(limit=2)) == 2
    assert (await q.task("j2-0")) is not None
    assert [t.state for t in await q.tasks("j3")] == ["cancelled", "cancelled"]
    assert (await q.eta("j1")) == job.eta

    fleet = {p.provider_id: p for p in await q.fleet()}
    assert {k: p.status for k, p in fleet.items()} == {"gpu-a": "online", "gpu-b": "online", "cpu-c": "left"}
    assert [p.provider_id for p in await q.fleet("left")] == ["cpu-c"]
    assert fleet["gpu-b"].times_lost == 1 and fleet["gpu-b"].refused_reports == 1

    books = await q.balances()
    assert books.balanced, books.problems
    assert books.total_debits == books.total_credits > 0
    assert sum(c for c, _, _ in books.submitters.values()) == sum(c for c, _, _ in books.providers.values())
    assert sum(p.earnings_micros for p in fleet.values()) == books.total_debits // 2

    err = await q.eta_error()
    assert err.n == 4  # four completions in the story
    positions = await q.positions()
    assert set(positions) == {"jobs", "fleet", "ledger", "eta", "audit_chain", "quarantine"}
    assert await q.quarantined() == []
    assert set(positions.values()) == {len(golden_scenario().events)}
    chain = await q.chain()
    assert chain is not None and chain.checkpoints == 3
    q.close()
