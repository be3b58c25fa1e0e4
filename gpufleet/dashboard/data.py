"""What each page shows, read from the read models in one worker-thread call per page.

Every function here takes a ``ReadModelStore`` and returns plain data (rows and numbers); the
templates turn it into HTML. Reading through the store's ``select`` keeps every query on the
``ReadModelStore`` protocol, so the pages work on any implementation of it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from gpufleet.eta import Eta, duration, short, took
from gpufleet.tables import eta_cell
from projections.chain import ChainRow
from projections.eta import ETA_JOBS, ETA_TASKS, EtaError, EtaJobRow, EtaTaskRow, eta_error
from projections.fleet import PROVIDERS, ProviderRow
from projections.jobs import JOBS, TASKS, JobRow, TaskRow
from projections.ledger import (
    LEDGER_JOB_PROVIDERS,
    LEDGER_JOBS,
    POSTINGS,
    AccountRow,
    LedgerJobProviderRow,
    LedgerJobRow,
    PostingRow,
)
from projections.quarantine import QuarantineRow
from projections.query import Balances, ReadModels
from projections.storage import MissingTable, ReadModelStore, Table

__all__ = [
    "AuditData",
    "ChartData",
    "FleetData",
    "JobData",
    "JobsData",
    "LedgerData",
    "audit_data",
    "chart_data",
    "fleet_data",
    "job_data",
    "jobs_data",
    "ledger_data",
]

R = TypeVar("R")

#: Jobs on the jobs page, tasks drawn per job there, rows read for the charts.
JOBS_SHOWN = 100
TASK_BARS = 48
#: Tasks listed on a job's page (a job may have 100,000: the page says how many more there are).
TASKS_SHOWN = 500
CHART_TASKS = 5000
POSTINGS_SHOWN = 200
#: Accounts and problems listed on the ledger page (there is an escrow account per job ever charged).
ACCOUNTS_SHOWN = 200


def _rows(db: ReadModelStore, table: Table[R], where: dict[str, Any] | None = None, **kw: Any) -> list[R]:
    try:
        return [table.make(v) for v in db.select(table, where, **kw)]
    except (sqlite3.OperationalError, MissingTable):  # a table not created yet (a store no projector opened)
        return []


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def task_eta_text(row: EtaTaskRow | None, state: str, now: float) -> str:
    """A task's time: ``took 1.3 s`` once done; time left with its interval while it waits or runs."""
    if row is None:
        return ""
    if row.actual_s is not None:
        return took(row.actual_s)
    if state not in ("leased", "running") or row.eta_ts is None:
        return ""  # waiting for a provider: the job's ETA counts it; its own time starts with a lease
    # The view's remaining time and interval were computed as of (eta_ts - remaining_s).
    as_of = row.eta_ts - row.remaining_s
    left = row.eta_ts - now
    low, high = as_of + row.remaining_low_s - now, as_of + row.remaining_high_s - now
    if high < 0:
        return short(Eta(0.0, overdue_s=-high, expected_s=row.predicted_s))
    return short(Eta(max(0.0, left), max(0.0, low), high))


# ---- jobs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobLine:
    job: JobRow
    eta: str
    tasks: list[TaskRow]


@dataclass(frozen=True, slots=True)
class JobsData:
    jobs: list[JobLine]
    counts: dict[str, int]
    refused: list[JobRow]


def jobs_data(db: ReadModelStore, now: float, submitter: str | None = None) -> JobsData:
    """The newest jobs with their ETA and per-task progress, counts by status, and the refusals."""
    where = {"submitter": submitter} if submitter else None
    jobs = _rows(db, JOBS, where, order_by=("submitted_at DESC", "job_id"), limit=JOBS_SHOWN)
    # The shown jobs' own ETA rows: never every job's ever submitted (one key lookup each).
    etas = {r.job_id: r for j in jobs for r in _rows(db, ETA_JOBS, {"job_id": j.job_id}, limit=1)}
    lines = []
    for j in jobs:
        tasks = _rows(db, TASKS, {"job_id": j.job_id}, order_by=("idx",), limit=TASK_BARS) if j.task_count else []
        lines.append(JobLine(j, eta_cell(etas.get(j.job_id), now), tasks))
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    refused = [j for j in jobs if j.status == "rejected"]
    return JobsData(lines, counts, refused)


@dataclass(frozen=True, slots=True)
class TaskLine:
    task: TaskRow
    eta: str
    predicted: str
    result: dict[str, Any] | None
    #: The ETA view's row the ``eta`` was said from (live progress says it again: ``dashboard.live``).
    eta_row: EtaTaskRow | None = None


@dataclass(frozen=True, slots=True)
class JobData:
    job: JobRow
    eta: str
    eta_row: EtaJobRow | None
    tasks: list[TaskLine]
    bill: LedgerJobRow | None
    shares: list[LedgerJobProviderRow]

    @property
    def checkpoints(self) -> bool:
        """Whether any task checkpointed (the column shows only then)."""
        return any(t.task.checkpoint_step for t in self.tasks)

    @property
    def verified(self) -> bool:
        """Whether the job runs under verification, or any task has replicas (the column shows then)."""
        return self.job.verify != "none" or any(t.task.replicas or t.task.verified_by for t in self.tasks)


def _result(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        ref: dict[str, Any] = json.loads(text)
    except ValueError:
        return {"sha256": "", "size": 0, "shown": text[:200]}
    inline = ref.get("inline")
    obj = ref.get("object")
    if inline is not None:
        shown = json.dumps(inline, sort_keys=True)
        ref["shown"] = shown if len(shown) <= 200 else shown[:199] + "\N{HORIZONTAL ELLIPSIS}"
    elif isinstance(obj, dict):
        ref["shown"] = f"object {obj.get('bucket', '')}/{obj.get('name', '')}"
    else:
        ref["shown"] = ""
    return ref


def job_data(db: ReadModelStore, job_id: str, now: float) -> JobData | None:
    """One job: its tasks (attempts, providers, checkpoints, results, verification), ETA and bill."""
    jobs = _rows(db, JOBS, {"job_id": job_id}, limit=1)
    if not jobs:
        return None
    job = jobs[0]
    eta_rows = _rows(db, ETA_JOBS, {"job_id": job_id}, limit=1)
    eta_row = eta_rows[0] if eta_rows else None
    # A job may have 100,000 tasks (the submitter's choice): the page lists the first TASKS_SHOWN.
    shown = _rows(db, TASKS, {"job_id": job_id}, order_by=("idx",), limit=TASKS_SHOWN)
    if job.task_count <= TASKS_SHOWN:
        task_etas = {r.task_id: r for r in _rows(db, ETA_TASKS, {"job_id": job_id}, limit=TASKS_SHOWN)}
    else:
        task_etas = {r.task_id: r for t in shown for r in _rows(db, ETA_TASKS, {"task_id": t.task_id}, limit=1)}
    lines = []
    for t in shown:
        e = task_etas.get(t.task_id)
        predicted = ""
        if e is not None and e.predicted_s > 0:
            predicted = duration(e.predicted_s)
            if e.predicted_high_s > 0:
                predicted += f" ({duration(e.predicted_low_s)}\N{EN DASH}{duration(e.predicted_high_s)})"
        lines.append(TaskLine(t, task_eta_text(e, t.state, now), predicted, _result(t.result), e))
    bills = _rows(db, LEDGER_JOBS, {"job_id": job_id}, limit=1)
    shares = _rows(db, LEDGER_JOB_PROVIDERS, {"job_id": job_id}, order_by=("provider_id",), limit=TASKS_SHOWN)
    return JobData(job, eta_cell(eta_row, now), eta_row, lines, bills[0] if bills else None, shares)


# ---- fleet ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderLine:
    p: ProviderRow
    workloads: list[str]
    extra: dict[str, str]
    calibration: dict[str, str]


@dataclass(frozen=True, slots=True)
class FleetData:
    providers: list[ProviderLine]
    counts: dict[str, int]
    slots: int
    running: int


def _flat(doc: Any, limit: int = 8) -> dict[str, str]:
    """A JSON object's scalar members (numbers rounded), at most ``limit``: for a compact cell."""
    out: dict[str, str] = {}
    if not isinstance(doc, dict):
        return out
    for k, v in doc.items():
        if len(out) >= limit:
            break
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, float):
            out[str(k)] = f"{v:.4g}"
        elif isinstance(v, int | str) and str(v) != "":
            out[str(k)] = str(v)[:80]
    return out


def fleet_data(db: ReadModelStore) -> FleetData:
    """Every provider: capabilities, liveness, utilisation, reputation and earnings."""
    lines = []
    for p in _rows(db, PROVIDERS, order_by=("provider_id",)):
        try:
            workloads = [str(w) for w in json.loads(p.workloads)]
        except (ValueError, TypeError):
            workloads = []
        try:
            caps = json.loads(p.capabilities)
        except ValueError:
            caps = {}
        try:
            calibration = json.loads(p.calibration) if p.calibration else {}
        except ValueError:
            calibration = {}
        extra = _flat(caps.get("extra", {}) if isinstance(caps, dict) else {})
        lines.append(ProviderLine(p, workloads, extra, _flat(calibration)))
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.p.status] = counts.get(line.p.status, 0) + 1
    live = [ln.p for ln in lines if ln.p.status == "online"]
    return FleetData(lines, counts, sum(p.slots for p in live), sum(p.running for p in live))


# ---- ledger --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerData:
    books: Balances
    postings: list[PostingRow]
    jobs: list[LedgerJobRow]
    #: The accounts listed: submitters' and providers' first, then escrows, at most ACCOUNTS_SHOWN.
    accounts: list[AccountRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def ledger_data(models: ReadModels) -> LedgerData:
    """The books (every account and whether they balance), the latest postings and the jobs' bills."""
    books = await models.balances()

    def rest() -> tuple[list[PostingRow], list[LedgerJobRow]]:
        db = models.db
        postings = _rows(db, POSTINGS, order_by=("position DESC", "leg"), limit=POSTINGS_SHOWN)
        return postings, _rows(db, LEDGER_JOBS, order_by=("job_id",), limit=POSTINGS_SHOWN)

    postings, jobs = await asyncio.to_thread(rest)
    accounts = sorted(books.accounts, key=lambda a: a.kind == "escrow")[:ACCOUNTS_SHOWN]
    return LedgerData(books, postings, jobs, accounts, books.problems[:ACCOUNTS_SHOWN])


# ---- audit ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditData:
    chain: ChainRow | None
    quarantined: list[QuarantineRow]
    findings: list[str]
    positions: dict[str, int]


async def audit_data(models: ReadModels) -> AuditData:
    """The hash chain's head and last recorded checkpoint, what the books and views found, the quarantine."""
    try:
        chain = await models.chain()
        positions = await models.positions()
    except (sqlite3.OperationalError, MissingTable):  # tables not created yet
        chain, positions = None, {}
    quarantined = await models.quarantined()
    books = await models.balances()
    findings = [f"books: {p}" for p in books.problems]
    findings += [f"quarantined: position {q.position} ({q.view}): {q.reason}" for q in quarantined]
    return AuditData(chain, quarantined[:500], findings, positions)


# ---- charts --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChartData:
    #: (seconds since the first, tasks completed per minute) over the sampled window.
    throughput: list[tuple[float, float]]
    #: (seconds since the first, tasks waiting for a provider).
    queue: list[tuple[float, float]]
    #: (predicted s, actual s) per completed task, and per finished job.
    eta_tasks: list[tuple[float, float]]
    eta_jobs: list[tuple[float, float]]
    error: EtaError
    sampled: int = 0
    notes: list[str] = field(default_factory=list)


def chart_data(db: ReadModelStore, buckets: int = 40) -> ChartData:
    """Throughput and queue depth over time (from the tasks' own timestamps), and ETAs against reality."""
    tasks = _rows(db, TASKS, order_by=("position DESC",), limit=CHART_TASKS)
    spans: list[tuple[float, float | None, float | None]] = []  # created, left the queue, completed
    for t in tasks:
        created = _ts(t.created_at)
        if created is None:
            continue
        left = _ts(t.leased_at) or _ts(t.finished_at)
        done = _ts(t.finished_at) if t.state == "completed" else None
        spans.append((created, left, done))
    throughput: list[tuple[float, float]] = []
    queue: list[tuple[float, float]] = []
    if spans:
        start = min(s[0] for s in spans)
        end = max(max(s[0], s[1] or 0.0, s[2] or 0.0) for s in spans)
        width = max((end - start) / buckets, 1e-3)
        done_at = sorted(s[2] for s in spans if s[2] is not None)
        for i in range(buckets + 1):
            edge = start + i * width
            n = sum(1 for d in done_at if edge - width < d <= edge) if i else 0
            throughput.append((edge - start, n * 60.0 / width))
            waiting = sum(1 for c, left, _ in spans if c <= edge and (left is None or left > edge))
            queue.append((edge - start, float(waiting)))
    eta_tasks = [
        (r.predicted_s, r.actual_s)
        for r in _rows(db, ETA_TASKS, order_by=("completed_pos DESC",), limit=CHART_TASKS)
        if r.actual_s is not None and r.predicted_s > 0
    ]
    eta_jobs = [
        (r.predicted_s, r.actual_s)
        for r in _rows(db, ETA_JOBS, limit=CHART_TASKS)
        if r.actual_s is not None and r.predicted_s > 0
    ]
    notes = [] if len(tasks) < CHART_TASKS else [f"the latest {CHART_TASKS} tasks"]
    return ChartData(throughput, queue, eta_tasks, eta_jobs, eta_error(eta_tasks), len(tasks), notes)
