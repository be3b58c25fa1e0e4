"""The async query API over the read models: jobs, tasks, ETAs, the fleet and the balances.

Reads run in a worker thread, so callers on an event loop never block on the database (SQLite or
PostgreSQL: any ``ReadModelStore``). Every answer is
read from the views' tables; ``positions`` tells how far each view has applied the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from projections.chain import AUDIT_CHAIN, ChainRow
from projections.eta import ETA_JOBS, ETA_TASKS, EtaError, EtaJobRow, eta_error
from projections.fleet import PROVIDERS, ProviderRow
from projections.jobs import JOBS, TASKS, JobRow, TaskRow
from projections.ledger import (
    ACCOUNTS,
    LEDGER_JOB_PROVIDERS,
    LEDGER_JOBS,
    AccountRow,
    LedgerJobRow,
)
from projections.quarantine import QuarantineRow, QuarantineView
from projections.storage import CHECKPOINTS, MissingTable, ReadModelStore, Table, open_store

__all__ = ["Balances", "JobDetail", "ReadModels"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobDetail:
    """A job with its tasks (and their results), its ETA and its bill."""

    job: JobRow
    tasks: list[TaskRow]
    eta: EtaJobRow | None
    bill: LedgerJobRow | None

    @property
    def results(self) -> list[tuple[int, str, str | None]]:
        """(index, task id, ResultRef JSON or None) for every task, in index order."""
        return [(t.idx, t.task_id, t.result) for t in sorted(self.tasks, key=lambda t: t.idx)]


@dataclass(frozen=True, slots=True)
class Balances:
    """Every account, totals per submitter and provider, and whether the books balance exactly."""

    accounts: list[AccountRow]
    #: submitter -> (charged, metered on settled jobs, metered in all), in micros.
    submitters: dict[str, tuple[int, int, int]]
    #: provider -> (credited, metered on settled jobs, metered in all), in micros.
    providers: dict[str, tuple[int, int, int]]
    total_debits: int
    total_credits: int
    problems: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        """True when every check of the books holds."""
        return not self.problems


class ReadModels:
    """Queries over a ``ReadModelStore`` that the projector fills."""

    def __init__(self, db: ReadModelStore) -> None:
        self.db = db

    @classmethod
    def open(cls, db: str | Path) -> ReadModels:
        """Read models in the SQLite file at ``db``, or at a ``postgresql://`` URL, read-only."""
        return cls(open_store(db, readonly=True))

    def close(self) -> None:
        """Release the store."""
        self.db.close()

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def _rows(self, table: Table[T], where: dict[str, Any] | None = None, **kw: Any) -> list[T]:
        return [table.make(v) for v in self.db.select(table, where, **kw)]

    def _one(self, table: Table[T], **where: Any) -> T | None:
        rows = self._rows(table, where, limit=1)
        return rows[0] if rows else None

    # ---- jobs and tasks ------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobDetail | None:
        """One job with its tasks, ETA and bill; None if there is no such job."""

        def q() -> JobDetail | None:
            job = self._one(JOBS, job_id=job_id)
            if job is None:
                return None
            tasks = self._rows(TASKS, {"job_id": job_id}, order_by=("idx",))
            return JobDetail(job, tasks, self._one(ETA_JOBS, job_id=job_id), self._one(LEDGER_JOBS, job_id=job_id))

        return await self._run(q)

    async def list_jobs(
        self, status: str | None = None, *, submitter: str | None = None, limit: int = 100
    ) -> list[JobRow]:
        """Jobs, newest first, optionally of one status and one submitter."""
        where: dict[str, Any] = {}
        if status is not None:
            where["status"] = status
        if submitter is not None:
            where["submitter"] = submitter
        return await self._run(lambda: self._rows(JOBS, where, order_by=("submitted_at DESC", "job_id"), limit=limit))

    async def tasks(self, job_id: str) -> list[TaskRow]:
        """The tasks of a job, by index."""
        return await self._run(lambda: self._rows(TASKS, {"job_id": job_id}, order_by=("idx",)))

    async def task(self, task_id: str) -> TaskRow | None:
        """One task."""
        return await self._run(lambda: self._one(TASKS, task_id=task_id))

    async def eta(self, job_id: str) -> EtaJobRow | None:
        """A job's ETA: remaining seconds and the expected finish (epoch seconds)."""
        return await self._run(lambda: self._one(ETA_JOBS, job_id=job_id))

    async def eta_error(self) -> EtaError:
        """Median and p90 of |predicted - actual| / actual over every completed task."""

        def q() -> EtaError:
            rows = self._rows(ETA_TASKS)
            return eta_error((r.predicted_s, r.actual_s) for r in rows if r.actual_s is not None)

        return await self._run(q)

    # ---- fleet and money -----------------------------------------------------------------------

    async def fleet(self, status: str | None = None) -> list[ProviderRow]:
        """Providers (optionally of one status: online, lost, draining, left), by id."""
        where = {"status": status} if status is not None else None
        return await self._run(lambda: self._rows(PROVIDERS, where, order_by=("provider_id",)))

    async def balances(self) -> Balances:
        """The books: every account, per-owner totals, and every way in which they do not balance."""
        return await self._run(self._balances)

    def _balances(self) -> Balances:
        accounts = self._rows(ACCOUNTS, order_by=("account",))
        problems: list[str] = []
        submitters: dict[str, tuple[int, int, int]] = {}
        providers: dict[str, tuple[int, int, int]] = {}
        for a in accounts:
            if a.kind == "submitter":
                submitters[a.owner] = (a.debit_micros, a.settled_metered_micros, a.metered_micros)
                if (a.debit_micros, a.debit_gpu_ms) != (a.settled_metered_micros, a.settled_metered_gpu_ms):
                    problems.append(
                        f"submitter {a.owner}: charged {a.debit_micros}, metered {a.settled_metered_micros}"
                    )
            elif a.kind == "provider":
                providers[a.owner] = (a.credit_micros, a.settled_metered_micros, a.metered_micros)
                if (a.credit_micros, a.credit_gpu_ms) != (a.settled_metered_micros, a.settled_metered_gpu_ms):
                    problems.append(
                        f"provider {a.owner}: credited {a.credit_micros}, metered {a.settled_metered_micros}"
                    )
            elif a.kind == "escrow" and (a.debit_micros, a.debit_gpu_ms) != (a.credit_micros, a.credit_gpu_ms):
                problems.append(f"job {a.owner}: escrow holds {a.credit_micros - a.debit_micros} micros")
        for job in self._rows(LEDGER_JOBS):
            if job.settlements and not job.balanced:
                problems.append(
                    f"job {job.job_id}: metered {job.metered_micros}, charged {job.charged_micros}, "
                    f"credited {job.credited_micros} ({job.settlements} settlement(s), {job.mispriced} mispriced)"
                )
        settled = {j.job_id for j in self._rows(LEDGER_JOBS) if j.settlements}
        for share in [LEDGER_JOB_PROVIDERS.make(v) for v in self.db.scan(LEDGER_JOB_PROVIDERS)]:
            if share.job_id in settled and (share.metered_micros, share.metered_gpu_ms) != (
                share.credited_micros,
                share.credited_gpu_ms,
            ):
                problems.append(
                    f"job {share.job_id}: provider {share.provider_id} credited {share.credited_micros}, "
                    f"metered {share.metered_micros}"
                )
        debits = sum(a.debit_micros for a in accounts)
        credits = sum(a.credit_micros for a in accounts)
        if debits != credits:
            problems.append(f"debits {debits} != credits {credits}")
        return Balances(accounts, submitters, providers, debits, credits, problems)

    # ---- bookkeeping ---------------------------------------------------------------------------

    async def chain(self) -> ChainRow | None:
        """The audit chain's head: position, digest and the last checkpoint seen in the log."""
        return await self._run(lambda: self._one(AUDIT_CHAIN, name="chain"))

    async def quarantined(self) -> list[QuarantineRow]:
        """Stored events the read models skipped (did not decode, or made a view's fold fail), in order."""

        def q() -> list[QuarantineRow]:
            try:
                return sorted(self._rows(QuarantineView.quarantine), key=lambda r: (r.position, r.view))
            except MissingTable:  # a read model written before the quarantine
                return []

        return await self._run(q)

    async def positions(self) -> dict[str, int]:
        """The checkpoint (last applied global position) of every view."""
        table = Table.of(CHECKPOINTS, _CheckpointRow, key=("view",))
        return await self._run(lambda: {r.view: r.position for r in self._rows(table)})


@dataclass(slots=True)
class _CheckpointRow:
    view: str
    position: int
    version: int
