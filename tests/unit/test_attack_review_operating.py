"""Attack review of the dashboard and the PostgreSQL read models (issue 15): the pure findings.

- A PostgreSQL password given as a URL query parameter (``?password=``, ``?sslpassword=``, both
  libpq's own) was printed, logged and written to ``network.json`` as it was.
- A read-model write that failed was surfaced to one caller only: the next commit wrote the batch
  after it, checkpoint and all, so the read models silently lost the failed batch's rows.
- A job page listed every task of the job (up to 100,000, a submitter's choice): each push of it
  rendered and sent them all. The ledger page likewise listed every account, one escrow per job
  ever settled, and every problem found in the books. The jobs page (the first page) read the ETA
  row of every job ever submitted to show the newest 100.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import MemoryEventStore
from gpufleet.dashboard import Changes, Source, create_app
from gpufleet.dashboard import data as dashboard_data
from gpufleet.dashboard.data import TASKS_SHOWN
from projections import Projector, SqliteStore
from projections.eta import ETA_JOBS, EtaJobRow
from projections.jobs import JOBS, TASKS, JobRow, TaskRow
from projections.ledger import ACCOUNTS, AccountRow
from projections.query import ReadModels
from projections.storage import (
    ReadModelStore,
    ReadModelUnavailable,
    Table,
    Value,
    describe_db,
    open_store,
    without_password,
)
from tests.factories import created

SECRET = "hunter2"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://gf@127.0.0.1:1/rm?password={SECRET}",
        f"postgresql://gf@127.0.0.1:1/rm?schema=net1&password={SECRET}&sslmode=disable",
        f"postgres://gf:{SECRET}@127.0.0.1:1/rm?sslpassword={SECRET}",
        f"postgresql://gf@127.0.0.1:1/rm?PASSWORD={SECRET}",
        f"postgresql://gf:{SECRET}#x?y@127.0.0.1:1/rm",  # libpq reads all of it before @ as the password
        f"postgresql://gf:{SECRET}%zz@127.0.0.1:1/rm",  # libpq's own error quotes the bad token
        f"postgresql://gf@127.0.0.1:1/rm?password={SECRET}%zz",
    ],
)
def test_a_password_in_the_url_query_is_never_shown_or_written(url: str) -> None:
    assert SECRET not in describe_db(url)
    assert SECRET not in without_password(url)
    assert "127.0.0.1:1/rm" in describe_db(url) and "gf" in without_password(url)
    with pytest.raises(ReadModelUnavailable) as err:
        open_store(url)
    assert SECRET not in str(err.value)


async def test_the_projector_never_commits_past_a_failed_write(tmp_path: Path) -> None:
    store = MemoryEventStore()
    db = SqliteStore(tmp_path / "rm.sqlite")
    calls: list[int] = []

    def fail_first_write(position: int) -> None:  # a real fault inside the real transaction
        calls.append(position)
        if len(calls) == 1:
            raise OSError("disk gone for a moment")

    projector = Projector(store, db, in_transaction=fail_first_write)
    await store.append("task.job1-0", [created("task.job1-0")], expected=None)
    with pytest.raises(OSError):
        await projector.catch_up()  # the write of task 0 failed (a ticker could have swallowed this)
    await store.append("task.job1-1", [created("task.job1-1")], expected=None)
    with contextlib.suppress(Exception):  # refusing is right; writing on top of the lost batch is not
        await projector.catch_up()
    stored = {r[0] for r in db.scan(TASKS)}
    checkpoint = db.checkpoint("jobs").position
    # Never a checkpoint past task 0's event without task 0's row.
    assert checkpoint < 1 or "job1-0" in stored, (checkpoint, stored)
    db.close()


async def test_a_job_page_shows_a_bounded_number_of_tasks(tmp_path: Path) -> None:
    path = tmp_path / "rm.sqlite"
    db = SqliteStore(path)
    db.ensure([JOBS, TASKS])
    n = TASKS_SHOWN + 57
    job = JobRow("mallory.huge", submitter="mallory", workload="sleep", status="running", task_count=n)
    tasks = [TaskRow(f"mallory.huge.{i}", job_id=job.job_id, idx=i, submitter="mallory") for i in range(n)]
    with db.transaction() as tx:
        tx.upsert(JOBS, [dataclasses.astuple(job)])
        tx.upsert(TASKS, [dataclasses.astuple(t) for t in tasks])
    app = create_app(Source(ReadModels(db), Changes()), allowed_hosts=["testserver"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        for path_ in ("/jobs/mallory.huge", "/fragment/job?job=mallory.huge"):
            html = (await http.get(path_)).text
            rows = re.findall(r'<tr class="task"', html)
            assert len(rows) == TASKS_SHOWN, (path_, len(rows))
            assert f"first {TASKS_SHOWN} of {n} tasks" in html
    db.close()


async def test_the_ledger_page_shows_a_bounded_number_of_accounts(tmp_path: Path) -> None:
    shown = getattr(dashboard_data, "ACCOUNTS_SHOWN", 200)
    db = SqliteStore(tmp_path / "rm.sqlite")
    Projector(MemoryEventStore(), db).open()  # every table
    n = shown + 40
    escrows = [
        AccountRow(f"escrow:mallory.j{i}", kind="escrow", owner=f"mallory.j{i}", credit_micros=1) for i in range(n)
    ]
    with db.transaction() as tx:  # each escrow unbalanced, so each one is also a problem in the books
        tx.upsert(ACCOUNTS, [dataclasses.astuple(a) for a in escrows])
    app = create_app(Source(ReadModels(db), Changes()), allowed_hosts=["testserver"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        html = (await http.get("/fragment/ledger")).text
    assert html.count("<td>escrow:mallory.j") <= shown
    assert html.count("<li>job mallory.j") <= shown
    assert f"first {shown} of {n} accounts" in html
    db.close()


class CountingStore(SqliteStore):
    """The real SQLite store, counting the rows its selections return."""

    rows_read = 0

    def select(
        self,
        table: Table[Any],
        where: Mapping[str, Value] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[tuple[Value, ...]]:
        rows = super().select(table, where, order_by, limit)
        self.rows_read += len(rows)
        return rows


async def test_the_jobs_page_reads_only_what_it_shows(tmp_path: Path) -> None:
    db = CountingStore(tmp_path / "rm.sqlite")
    Projector(MemoryEventStore(), db).open()
    shown, n = dashboard_data.JOBS_SHOWN, dashboard_data.JOBS_SHOWN + 300
    jobs = [
        JobRow(f"mallory.j{i}", submitter="mallory", submitted_at=f"2026-01-01T00:{i // 60:02}:{i % 60:02}")
        for i in range(n)
    ]
    with db.transaction() as tx:
        tx.upsert(JOBS, [dataclasses.astuple(j) for j in jobs])
        tx.upsert(ETA_JOBS, [dataclasses.astuple(EtaJobRow(j.job_id, submitter="mallory")) for j in jobs])
    store: ReadModelStore = db
    app = create_app(Source(ReadModels(store), Changes()), allowed_hosts=["testserver"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        html = (await http.get("/fragment/jobs")).text
    assert html.count('<tr class="job"') == shown
    assert db.rows_read <= 2 * shown, f"{db.rows_read} rows read to show {shown} jobs"
    db.close()


@pytest.mark.parametrize("fail_in", ["write", "chain"])
async def test_a_live_projector_stops_with_the_error_that_stopped_it_never_as_if_cancelled(
    tmp_path: Path, fail_in: str
) -> None:
    """Live, a failed write (or a ticker whose checkpoint append fails) stops ``run`` with that error,
    however many inner parts cancelled it: a caller that restarts on errors must see one, not a
    cancellation it would take for a stop."""
    store = MemoryEventStore()
    db = SqliteStore(tmp_path / "rm.sqlite")
    live: list[int] = []

    def fail_live_write(position: int) -> None:
        live.append(position)
        if fail_in == "write" and position >= 2:
            raise OSError("disk gone for a moment")

    projector = Projector(store, db, in_transaction=fail_live_write, flush_interval=0.01, checkpoint_every=1)
    await store.append("task.job1-0", [created("task.job1-0")], expected=None)
    if fail_in == "chain":

        async def broken_append(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the log refused the checkpoint")

        store.append = broken_append  # type: ignore[method-assign]
    task = asyncio.create_task(projector.run())
    await asyncio.sleep(0.1)
    if fail_in == "write":
        await store.append("task.job1-1", [created("task.job1-1")], expected=None)
    else:
        await MemoryEventStore.append(store, "task.job1-1", [created("task.job1-1")], expected=None)
    done, _ = await asyncio.wait([task], timeout=10)
    assert done, "the projector went on after its failure"
    assert not task.cancelled(), "the projector's failure looked like a stop from outside"
    expected = OSError if fail_in == "write" else RuntimeError
    assert isinstance(task.exception(), expected), task.exception()
    db.close()
