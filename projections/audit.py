"""The audit: replay the whole log (domain and intake streams) and check that the network kept its rules.

Checks, each with its findings (an empty list is a pass):

- ``schema``: every stored event validates against the schema of its version.
- ``sequence``: no gaps or forks: positions increase by one, event ids are unique, every aggregate
  stream starts with its creation event and holds only its own kind of events, for its own id.
- ``leases``: every lease went to a registered, online provider with the needed capability
  (backend, VRAM, compute capability, workload) at a price under the task's ceiling.
- ``completions``: every completed task was completed by the provider that held the lease then
  (a provider declared lost still holds its leases until they expire; one that left holds none); no
  task completed twice; exactly one terminal state per task; no forged
  (not the lease holder) or posthumous (after the end) records.
- ``intake``: every intake message got exactly one outcome, and every rejection a reason. The
  outcome of an accepted input is its facts (event ids ``in-<intake seq>.<n>``); an input that
  changed nothing gets ``InputAccepted``; a refused one ``InputRejected`` (beside which only a
  ``TaskResultRejected`` record may carry its id).
- ``ledger``: each completion metered once at ceil(gpu_ms * price / 1000); a job is settled only
  after it ended, each settlement one append of a charge followed by its credits (a late completion
  is settled again, for its delta); at rest charged == sum(metered) == sum(credited) per job, per
  job and provider, per submitter and per provider.
- ``chain``: the hash chain recomputed over the log matches every ``AuditCheckpointed``; the first
  checkpoint that does not names where the log was altered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import nats.errors

from events.audit import AuditCheckpointed
from events.codec import decode_message, from_json_line
from events.envelope import Envelope
from events.errors import InvalidPayload, StoreUnavailable
from events.intake import InputAccepted, InputRejected
from events.job import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSubmitted,
    ProviderCredited,
    SubmitterCharged,
    UsageMetered,
)
from events.metering import billable_ms, metered_amount
from events.placement import misfits
from events.provider import (
    ProviderCalibrated,
    ProviderDraining,
    ProviderLeft,
    ProviderLost,
    ProviderOnline,
    ProviderRegistered,
)
from events.store.jetstream import JetStreamEventStore
from events.store.protocol import EventStore
from events.subjects import INTAKE_STREAM, task_id_of
from events.task import (
    TERMINAL_TASK_STATES,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskQueued,
    TaskResultJudged,
    TaskResultReturned,
    TaskRetried,
    TaskStarted,
)
from events.types import Capabilities, ResultRef
from events.verification import results_agree
from events.workloads import WORKLOADS
from projections.chain import GENESIS, canonical_bytes

__all__ = [
    "CHECKS",
    "AuditReport",
    "Auditor",
    "Finding",
    "audit_events",
    "audit_jetstream",
    "audit_jsonl",
    "read_intake",
]

CHECKS = ("schema", "sequence", "leases", "completions", "intake", "ledger", "chain")

#: The kind of each aggregate stream, the event types it may hold, and the one that creates it.
_STREAM_KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "job": (
        frozenset(
            {
                "JobSubmitted",
                "JobAccepted",
                "JobRejected",
                "JobCompleted",
                "JobFailed",
                "JobCancelled",
                "JobDeadlineMissed",
                "UsageMetered",
                "SubmitterCharged",
                "ProviderCredited",
            }
        ),
        frozenset({"JobSubmitted"}),
    ),
    "task": (
        frozenset(
            {
                "TaskCreated",
                "TaskQueued",
                "TaskLeased",
                "TaskStarted",
                "TaskProgressed",
                "TaskCompleted",
                "TaskFailed",
                "TaskRetried",
                "TaskLeaseExpired",
                "TaskCancelled",
                "TaskResultRejected",
                "TaskResultReturned",
                "TaskResultJudged",
            }
        ),
        frozenset({"TaskCreated"}),
    ),
    "provider": (
        frozenset(
            {
                "ProviderRegistered",
                "ProviderCalibrated",
                "ProviderOnline",
                "ProviderLost",
                "ProviderDraining",
                "ProviderLeft",
            }
        ),
        frozenset({"ProviderRegistered"}),
    ),
    "intake": (frozenset({"InputAccepted", "InputRejected"}), frozenset({"InputAccepted", "InputRejected"})),
    "audit": (frozenset({"AuditCheckpointed"}), frozenset({"AuditCheckpointed"})),
}
#: The id of a fact that an accepted intake message caused: ``in-<intake seq>.<n>``.
_FACT_ID = re.compile(r"^in-(\d+)\.\d+$")
_ID_FIELDS = {"job": "job_id", "task": "task_id", "provider": "provider_id"}
_JOB_ENDINGS = frozenset({"JobCompleted", "JobFailed", "JobCancelled"})
_TERMINAL = TERMINAL_TASK_STATES


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken rule: which check, where in the log (if anywhere), and what."""

    check: str
    position: int | None
    message: str

    def __str__(self) -> str:
        where = f"@{self.position} " if self.position is not None else ""
        return f"[{self.check}] {where}{self.message}"


@dataclass
class AuditReport:
    """The outcome of one audit: findings per check, and what was covered."""

    events: int = 0
    invalid: int = 0
    last_position: int = 0
    intake_messages: int | None = None
    findings: list[Finding] = field(default_factory=list)
    #: How many things each check looked at (so that a pass over nothing is visible).
    coverage: dict[str, int] = field(default_factory=dict)
    chain_digest: str = GENESIS.hex()
    checkpoints_verified: int = 0
    #: The last checkpoint that matched, and the first that did not (where the log diverges).
    last_good_checkpoint: int | None = None
    diverged_at: int | None = None

    @property
    def ok(self) -> bool:
        """True when no check found anything."""
        return not self.findings

    def of(self, check: str) -> list[Finding]:
        """The findings of one check."""
        return [f for f in self.findings if f.check == check]

    def render(self) -> str:
        """A human-readable report, one line per check and one per finding."""
        lines = [
            f"audit of {self.events} events (last position {self.last_position}, {self.invalid} invalid)"
            + (f" and {self.intake_messages} intake messages" if self.intake_messages is not None else ""),
        ]
        # Checks made outside this module (the provenance replayer's) report here too, after ours.
        extra = [c for c in dict.fromkeys([*self.coverage, *(f.check for f in self.findings)]) if c not in CHECKS]
        for check in (*CHECKS, *extra):
            found = self.of(check)
            status = "ok" if not found else f"{len(found)} finding(s)"
            lines.append(f"  {check:<12} {status:<16} covered {self.coverage.get(check, 0)}")
            lines.extend(f"      {f}" for f in found[:50])
            if len(found) > 50:
                lines.append(f"      ... and {len(found) - 50} more")
        lines.append(
            f"  chain digest {self.chain_digest} ({self.checkpoints_verified} checkpoint(s) verified"
            + (f"; diverges at checkpoint {self.diverged_at}" if self.diverged_at is not None else "")
            + ")"
        )
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "ok": self.ok,
            "events": self.events,
            "invalid": self.invalid,
            "last_position": self.last_position,
            "intake_messages": self.intake_messages,
            "coverage": self.coverage,
            "chain_digest": self.chain_digest,
            "checkpoints_verified": self.checkpoints_verified,
            "last_good_checkpoint": self.last_good_checkpoint,
            "diverged_at": self.diverged_at,
            "findings": [{"check": f.check, "position": f.position, "message": f.message} for f in self.findings],
        }


@dataclass
class _Provider:
    caps: Capabilities
    status: str = "registered"


@dataclass
class _Task:
    created: TaskCreated
    state: str = "queued"
    lease_id: str | None = None
    provider_id: str | None = None
    completed_by: str | None = None
    gpu_ms: int = 0
    metered: int = 0
    #: The lease that last ended by expiring (logs before 2026-11 name it in the timeout failure after).
    expired_lease: str | None = None
    #: When the current lease was granted: the bill may not exceed the time from there to completion.
    leased_at: datetime | None = None
    lease_price: int = 0
    #: Results returned under verification, by lease: [provider, gpu_ms, price, agrees_with, verdict].
    returned: dict[str, _Returned] = field(default_factory=dict)
    metered_leases: set[str] = field(default_factory=set)


@dataclass
class _Returned:
    provider_id: str
    gpu_ms: int
    price_micros: int
    agrees_with: frozenset[str]
    result: ResultRef
    verdict: str | None = None
    canonical: str | None = None


@dataclass
class _Job:
    submitter: str
    task_count: int = 0
    status: str = "submitted"
    ended_at: int | None = None
    ending_type: str = ""
    #: Position of the last event of the ending append seen so far (settlement must follow it).
    settle_tail: int | None = None
    metered: dict[str, list[int]] = field(default_factory=dict)  # provider -> [micros, gpu_ms]
    charged: list[int] = field(default_factory=lambda: [0, 0])
    credited: dict[str, list[int]] = field(default_factory=dict)
    charges: int = 0
    metered_tasks: int = 0
    tasks: list[str] = field(default_factory=list)


class Auditor:
    """Folds the log, in order, into the checks; ``report`` adds the intake and the ledger totals."""

    def __init__(self) -> None:
        self.r = AuditReport()
        self.cover: dict[str, int] = defaultdict(int)
        self._last = 0
        self._ids: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        #: Streams whose first event is not their creation event (named once, then skipped).
        self._uncreated: set[str] = set()
        self._providers: dict[str, _Provider] = {}
        self._tasks: dict[str, _Task] = {}
        self._jobs: dict[str, _Job] = {}
        self._outcomes: dict[int, tuple[str, int, str]] = {}
        self._facts: dict[int, int] = {}  # intake seq -> position of its first fact
        self._digest = GENESIS
        self._pending: dict[int, tuple[bytes, int]] = {}
        self._chain_events = 0
        self._handlers = {name[3:]: getattr(self, name) for name in dir(type(self)) if name.startswith("on_")}

    def find(self, check: str, position: int | None, message: str) -> None:
        """Record a finding."""
        self.r.findings.append(Finding(check, position, message))

    # ---- feeding -------------------------------------------------------------------------------

    def _position(self, position: int) -> None:
        self.cover["sequence"] += 1
        if position <= self._last:
            self.find("sequence", position, f"position {position} after {self._last}: out of order or forked")
        elif position != self._last + 1:
            self.find("sequence", position, f"gap: positions {self._last + 1}..{position - 1} are missing")
        self._last = max(self._last, position)
        self.r.last_position = self._last

    def invalid(self, position: int, error: InvalidPayload) -> None:
        """A stored record that does not validate against its schema."""
        self.cover["schema"] += 1
        self.r.invalid += 1
        self._position(position)
        self.find("schema", position, f"does not validate: {error}")

    def feed(self, env: Envelope) -> None:
        """One valid event, in log order."""
        self.cover["schema"] += 1
        self.r.events += 1
        pos = env.sequence
        self._position(pos)
        self._chain(env)
        previous = self._ids.get(env.id)
        if previous is not None:
            self.find("sequence", pos, f"fork: event id {env.id!r} is also at position {previous}")
        self._ids[env.id] = pos
        m = _FACT_ID.match(env.id)
        if m is not None:
            self._fact(int(m.group(1)), env.type, pos)
        if not self._stream(env):
            return
        handler = self._handlers.get(env.type)
        if handler is not None:
            handler(env.data, pos, env)

    def _stream(self, env: Envelope) -> bool:
        kind, _, agg = env.subject.partition(".")
        spec = _STREAM_KINDS.get(kind)
        pos, t = env.sequence, env.type
        if spec is None:
            self.find("sequence", pos, f"{t} in unknown stream {env.subject!r}")
            return False
        allowed, creators = spec
        if t not in allowed:
            self.find("sequence", pos, f"{t} does not belong in stream {env.subject!r}")
            return False
        id_field = _ID_FIELDS.get(kind)
        if id_field is not None and getattr(env.data, id_field) != agg:
            self.find("sequence", pos, f"{t} for {getattr(env.data, id_field)!r} in stream {env.subject!r}")
            return False
        if env.subject in self._uncreated:
            return False  # named once, below: the rest of a stream that never began is not checked again
        first = env.subject not in self._streams
        if first and t not in creators and kind in _ID_FIELDS:
            self.find("sequence", pos, f"stream {env.subject!r} starts with {t}, not its creation event")
            self._uncreated.add(env.subject)
            return False
        self._streams[env.subject] = pos
        # A provider registers again whenever its runtime restarts; any other creation is a fork.
        if not first and t in creators and kind in _ID_FIELDS and t != "ProviderRegistered":
            self.find("sequence", pos, f"fork: a second {t} in stream {env.subject!r}")
            return False
        return True

    def _chain(self, env: Envelope) -> None:
        self._digest = hashlib.sha256(self._digest + canonical_bytes(env)).digest()
        self._chain_events += 1
        self._pending[env.sequence] = (self._digest, self._chain_events)

    # ---- providers -----------------------------------------------------------------------------

    def on_ProviderRegistered(self, e: ProviderRegistered, pos: int, env: Envelope) -> None:
        self._providers[e.provider_id] = _Provider(e.capabilities)

    def _provider_status(self, pid: str, status: str) -> None:
        p = self._providers.get(pid)
        if p is not None:
            p.status = status

    def on_ProviderCalibrated(self, e: ProviderCalibrated, pos: int, env: Envelope) -> None:
        pass

    def on_ProviderOnline(self, e: ProviderOnline, pos: int, env: Envelope) -> None:
        self._provider_status(e.provider_id, "online")

    def on_ProviderLost(self, e: ProviderLost, pos: int, env: Envelope) -> None:
        self._provider_status(e.provider_id, "lost")

    def on_ProviderDraining(self, e: ProviderDraining, pos: int, env: Envelope) -> None:
        self._provider_status(e.provider_id, "draining")

    def on_ProviderLeft(self, e: ProviderLeft, pos: int, env: Envelope) -> None:
        self._provider_status(e.provider_id, "left")

    # ---- jobs ----------------------------------------------------------------------------------

    def on_JobSubmitted(self, e: JobSubmitted, pos: int, env: Envelope) -> None:
        self._jobs[e.job_id] = _Job(e.spec.submitter)

    def on_JobAccepted(self, e: JobAccepted, pos: int, env: Envelope) -> None:
        job = self._jobs[e.job_id]
        if job.status != "submitted":
            self.find("sequence", pos, f"job {e.job_id} accepted while {job.status}")
        job.status = "accepted"
        job.task_count = e.task_count

    def on_JobRejected(self, e: JobRejected, pos: int, env: Envelope) -> None:
        job = self._jobs[e.job_id]
        if job.status != "submitted":
            self.find("sequence", pos, f"job {e.job_id} rejected while {job.status}")
        job.status = "rejected"

    def _job_end(self, job_id: str, pos: int, env: Envelope) -> None:
        job = self._jobs[job_id]
        self.cover["ledger"] += 1
        if job.ended_at is not None:
            self.find("completions", pos, f"job {job_id} ended twice (first at {job.ended_at})")
            return
        # A job may be cancelled before it is even decided; every other ending needs an accepted job.
        if job.status != "accepted" and not (env.type == "JobCancelled" and job.status == "submitted"):
            self.find("sequence", pos, f"job {job_id} ended ({env.type}) while {job.status}")
        job.ended_at = pos
        job.ending_type = env.type
        job.settle_tail = pos
        job.status = "ended"

    def on_JobCompleted(self, e: JobCompleted, pos: int, env: Envelope) -> None:
        self._job_end(e.job_id, pos, env)
        job = self._jobs[e.job_id]
        tasks = [self._tasks[tid] for tid in job.tasks]
        unfinished = [t.created.task_id for t in tasks if t.state != "completed"]
        if unfinished or len(tasks) != job.task_count:
            self.find("completions", pos, f"job {e.job_id} completed with tasks not completed: {unfinished}")
        cost = sum(m[0] for m in job.metered.values())
        gpu = sum(m[1] for m in job.metered.values())
        if (e.cost_micros, e.gpu_ms) != (cost, gpu):
            self.find(
                "ledger",
                pos,
                f"job {e.job_id} completed with cost {e.cost_micros}/{e.gpu_ms}ms, metered {cost}/{gpu}ms",
            )

    def on_JobFailed(self, e: JobFailed, pos: int, env: Envelope) -> None:
        self._job_end(e.job_id, pos, env)

    def on_JobCancelled(self, e: JobCancelled, pos: int, env: Envelope) -> None:
        self._job_end(e.job_id, pos, env)

    def on_UsageMetered(self, e: UsageMetered, pos: int, env: Envelope) -> None:
        self.cover["ledger"] += 1
        job = self._jobs[e.job_id]
        if job.ended_at is not None:
            self.find("ledger", pos, f"usage of {e.task_id} metered after job {e.job_id} ended")
        if e.amount_micros != metered_amount(e.gpu_ms, e.price_micros):
            self.find(
                "ledger",
                pos,
                f"usage of {e.task_id}: {e.amount_micros} micros for {e.gpu_ms} ms at {e.price_micros}; "
                f"expected {metered_amount(e.gpu_ms, e.price_micros)}",
            )
        if e.submitter != job.submitter:
            self.find("ledger", pos, f"usage of {e.task_id} billed to {e.submitter}, job is {job.submitter}'s")
        task = self._tasks.get(e.task_id)
        if task is None or task.created.job_id != e.job_id or task.state != "completed":
            self.find("ledger", pos, f"usage metered for {e.task_id}, which is not a completed task of {e.job_id}")
        elif e.lease_id is not None:
            r = task.returned.get(e.lease_id)
            if r is None or r.verdict != "valid":
                self.find("ledger", pos, f"usage of {e.task_id} metered for {e.lease_id}, not a valid result")
            elif (r.provider_id, r.gpu_ms, r.price_micros) != (e.provider_id, e.gpu_ms, e.price_micros):
                self.find("ledger", pos, f"usage of {e.task_id}/{e.lease_id} metered otherwise than it was returned")
            if e.lease_id in task.metered_leases:
                self.find("ledger", pos, f"usage of {e.task_id}/{e.lease_id} metered twice")
            task.metered_leases.add(e.lease_id)
            task.metered = 1
        else:
            task.metered += 1
            if task.metered > 1:
                self.find("ledger", pos, f"usage of {e.task_id} metered twice")
            if task.completed_by != e.provider_id or task.gpu_ms != e.gpu_ms:
                self.find(
                    "ledger",
                    pos,
                    f"usage of {e.task_id} metered to {e.provider_id} for {e.gpu_ms} ms; "
                    f"completed by {task.completed_by} in {task.gpu_ms} ms",
                )
        m = job.metered.setdefault(e.provider_id, [0, 0])
        m[0] += e.amount_micros
        m[1] += e.gpu_ms
        job.metered_tasks += 1

    def _settlement(self, job_id: str, pos: int, what: str) -> _Job:
        job = self._jobs[job_id]
        self.cover["ledger"] += 1
        if job.ended_at is None:
            self.find("ledger", pos, f"{what} for {job_id} before the job ended")
        if what == "charge":
            job.settle_tail = pos
        else:
            if job.settle_tail is None or pos != job.settle_tail + 1:
                self.find("ledger", pos, f"{what} for {job_id} is not in the append of its charge")
            job.settle_tail = pos
        return job

    def on_SubmitterCharged(self, e: SubmitterCharged, pos: int, env: Envelope) -> None:
        job = self._settlement(e.job_id, pos, "charge")
        job.charges += 1
        if e.submitter != job.submitter:
            self.find("ledger", pos, f"job {e.job_id} charged to {e.submitter}, not {job.submitter}")
        job.charged[0] += e.amount_micros
        job.charged[1] += e.gpu_ms

    def on_ProviderCredited(self, e: ProviderCredited, pos: int, env: Envelope) -> None:
        job = self._settlement(e.job_id, pos, "credit")
        if job.charges == 0:
            self.find("ledger", pos, f"provider {e.provider_id} credited for {e.job_id} before any charge")
        c = job.credited.setdefault(e.provider_id, [0, 0])
        c[0] += e.amount_micros
        c[1] += e.gpu_ms

    # ---- tasks ---------------------------------------------------------------------------------

    def on_TaskCreated(self, e: TaskCreated, pos: int, env: Envelope) -> None:
        job = self._jobs.get(e.job_id)
        if job is None or job.status != "accepted" or e.task_id != task_id_of(e.job_id, e.index):
            self.find("sequence", pos, f"task {e.task_id} is not a task of an accepted job {e.job_id}")
        elif e.index >= job.task_count:
            self.find("sequence", pos, f"task {e.task_id}: index {e.index} beyond the job's {job.task_count} tasks")
        if job is not None:
            job.tasks.append(e.task_id)
        self._tasks[e.task_id] = _Task(e)

    def _task(self, task_id: str, pos: int, what: str) -> _Task | None:
        t = self._tasks[task_id]
        if t.state in _TERMINAL:
            check = "completions" if what == "TaskCompleted" else "sequence"
            reason = "completed twice" if t.state == "completed" and what == "TaskCompleted" else "after its end"
            self.find(check, pos, f"{what} for {task_id} {reason} (it is {t.state})")
            return None
        return t

    def on_TaskLeased(self, e: TaskLeased, pos: int, env: Envelope) -> None:
        t = self._task(e.task_id, pos, "TaskLeased")
        self.cover["leases"] += 1
        if t is None:
            return
        if t.state != "queued":
            self.find("sequence", pos, f"{e.task_id} leased while {t.state}")
        c = t.created
        p = self._providers.get(e.provider_id)
        problems: list[str] = []
        if p is None:
            problems.append("an unknown provider")
        else:
            if p.status != "online":
                problems.append(f"a provider that is {p.status}")
            # The placement rule itself (events.placement), less the price: a lease's price is checked
            # as recorded, below (the provider's price may have changed since it registered).
            problems += misfits(p.caps, c.resources, c.workload, None, c.submitter)
        if c.max_price_micros is not None and e.price_micros > c.max_price_micros:
            problems.append(f"price {e.price_micros} over the ceiling {c.max_price_micros}")
        if problems:
            self.find("leases", pos, f"{e.task_id} leased to {e.provider_id}: " + "; ".join(problems))
        if any(r.provider_id == e.provider_id for r in t.returned.values()):
            self.find("leases", pos, f"{e.task_id}: a replica leased to {e.provider_id}, which returned one already")
        t.state = "leased"
        t.lease_id = e.lease_id
        t.provider_id = e.provider_id
        t.leased_at = e.at
        t.lease_price = e.price_micros

    def _holder(self, t: _Task, lease_id: str | None, provider_id: str | None) -> bool:
        return t.state in ("leased", "running") and t.lease_id == lease_id and t.provider_id == provider_id

    def on_TaskStarted(self, e: TaskStarted, pos: int, env: Envelope) -> None:
        t = self._task(e.task_id, pos, "TaskStarted")
        if t is None:
            return
        if t.state != "leased" or not self._holder(t, e.lease_id, e.provider_id):
            self.find("sequence", pos, f"{e.task_id} started by {e.provider_id}/{e.lease_id} while {t.state}")
        t.state = "running"

    def _overbilled(self, t: _Task, gpu_ms: int, at: datetime, pos: int) -> None:
        if t.leased_at is not None:
            most = billable_ms(gpu_ms, t.leased_at, at, t.created.timeout_s)
            if gpu_ms > most:
                self.find(
                    "ledger",
                    pos,
                    f"{t.created.task_id} billed {gpu_ms} ms of GPU time, more than the {most} ms observed "
                    "from its lease to its completion, within its timeout",
                )

    def on_TaskResultReturned(self, e: TaskResultReturned, pos: int, env: Envelope) -> None:
        self.cover["completions"] += 1
        t = self._task(e.task_id, pos, "TaskResultReturned")
        if t is None:
            return
        if not self._holder(t, e.lease_id, e.provider_id):
            self.find("completions", pos, f"forged: {e.task_id} result returned by {e.provider_id}/{e.lease_id}")
        if t.created.verify is None:
            self.find("completions", pos, f"{e.task_id}: a result held for verification, but the task has none")
        unknown = [x for x in e.agrees_with if x not in t.returned]
        if unknown or e.replica != len(t.returned) + 1:
            self.find("completions", pos, f"{e.task_id}: replica {e.replica} names results never returned {unknown}")
        if e.price_micros != t.lease_price:
            self.find(
                "ledger", pos, f"{e.task_id}: result held at {e.price_micros}, its lease's price is {t.lease_price}"
            )
        self._overbilled(t, e.gpu_ms, e.at, pos)
        self._agreement(t, e, pos)
        t.returned[e.lease_id] = _Returned(e.provider_id, e.gpu_ms, e.price_micros, frozenset(e.agrees_with), e.result)
        t.state = "queued"
        t.lease_id = None

    def _agreement(self, t: _Task, e: TaskResultReturned, pos: int) -> None:
        """Compare again what the log says this result agrees with, where the results travel inline
        (the log holds them): the same rule the decider used (``events.verification``)."""
        c, policy = WORKLOADS.get(t.created.workload), t.created.verify
        if c is None or policy is None or e.result.object is not None:
            return
        for lease_id, r in t.returned.items():
            if r.result.object is not None:
                continue  # stored as an object: the auditor would have to fetch it (not done here)
            agrees = results_agree(e.result, r.result, c.compare, policy.tolerance, c.ignore)
            if agrees != (lease_id in e.agrees_with):
                said = "agrees" if lease_id in e.agrees_with else "disagrees"
                self.find(
                    "completions", pos, f"{e.task_id}: {e.lease_id} {said} with {lease_id}, compared again it does not"
                )

    def on_TaskResultJudged(self, e: TaskResultJudged, pos: int, env: Envelope) -> None:
        self.cover["completions"] += 1
        t = self._tasks[e.task_id]
        r = t.returned.get(e.lease_id)
        if r is None or r.provider_id != e.provider_id or r.verdict is not None:
            self.find("completions", pos, f"{e.task_id}: a verdict on {e.lease_id}, not a result awaiting one")
            return
        if e.verdict in ("valid", "invalid"):
            canon = t.returned.get(e.canonical or "")
            if canon is None:
                self.find("completions", pos, f"{e.task_id}: judged against {e.canonical}, not a returned result")
            else:
                agrees = e.lease_id == e.canonical or e.canonical in r.agrees_with or e.lease_id in canon.agrees_with
                if agrees != (e.verdict == "valid"):
                    self.find("completions", pos, f"{e.task_id}: {e.lease_id} judged {e.verdict} against the log")
        if e.gpu_ms != r.gpu_ms:
            self.find("ledger", pos, f"{e.task_id}: {e.lease_id} judged at {e.gpu_ms} ms, returned at {r.gpu_ms} ms")
        r.verdict = e.verdict
        r.canonical = e.canonical

    def on_TaskCompleted(self, e: TaskCompleted, pos: int, env: Envelope) -> None:
        self.cover["completions"] += 1
        t = self._task(e.task_id, pos, "TaskCompleted")
        if t is None:
            return
        if e.verified_by:
            r = t.returned.get(e.lease_id)
            valid = [x for x, y in t.returned.items() if y.verdict == "valid" and y.canonical == e.lease_id]
            pending = [x for x, y in t.returned.items() if y.verdict is None]
            if r is None or r.provider_id != e.provider_id or r.gpu_ms != e.gpu_ms or len(valid) != e.verified_by:
                self.find("completions", pos, f"{e.task_id}: completed with a result no quorum verified")
            elif pending:
                self.find("completions", pos, f"{e.task_id}: completed with results still unjudged: {pending}")
            t.state = "completed"
            t.completed_by = e.provider_id
            t.gpu_ms = e.gpu_ms
            return
        if not self._holder(t, e.lease_id, e.provider_id):
            self.find(
                "completions",
                pos,
                f"forged: {e.task_id} completed by {e.provider_id}/{e.lease_id}, "
                f"but the lease is {t.provider_id}/{t.lease_id} ({t.state})",
            )
        else:
            # The lease is the authority, not the orchestrator's suspicion: a provider declared lost
            # still holds its leases until they expire (a reaction that follows the loss), and work
            # it reported in that window is its work. A provider that left, or never came online,
            # holds nothing.
            p = self._providers.get(e.provider_id)
            if p is None or p.status not in ("online", "draining", "lost"):
                status = p.status if p else "unknown"
                self.find("completions", pos, f"{e.task_id} completed by {e.provider_id} while {status}")
            self._overbilled(t, e.gpu_ms, e.at, pos)
        t.state = "completed"
        t.completed_by = e.provider_id
        t.gpu_ms = e.gpu_ms

    def on_TaskFailed(self, e: TaskFailed, pos: int, env: Envelope) -> None:
        t = self._task(e.task_id, pos, "TaskFailed")
        if t is None:
            return
        timed_out = e.reason == "timeout" and t.state == "queued" and e.lease_id == t.expired_lease
        if e.lease_id is not None and not self._holder(t, e.lease_id, e.provider_id) and not timed_out:
            self.find("sequence", pos, f"{e.task_id} failed under {e.provider_id}/{e.lease_id}, not the lease")
        t.state = "dead" if e.terminal else "retrying"

    def on_TaskRetried(self, e: TaskRetried, pos: int, env: Envelope) -> None:
        t = self._task(e.task_id, pos, "TaskRetried")
        if t is not None and t.state != "retrying":
            self.find("sequence", pos, f"{e.task_id} retried while {t.state}")

    def on_TaskQueued(self, e: TaskQueued, pos: int, env: Envelope) -> None:
        t = self._task(e.task_id, pos, "TaskQueued")
        if t is None:
            return
        if t.state not in ("retrying", "queued"):
            self.find("sequence", pos, f"{e.task_id} queued while {t.state}")
        t.state = "queued"

    def on_TaskLeaseExpired(self, e: TaskLeaseExpired, pos: int, env: Envelope) -> None:
        t = self._task(e.task_id, pos, "TaskLeaseExpired")
        if t is None:
            return
        if not self._holder(t, e.lease_id, e.provider_id):
            self.find("sequence", pos, f"{e.task_id}: lease {e.lease_id} expired, but it is not the lease")
        t.state = "queued"
        t.expired_lease = e.lease_id

    def on_TaskCancelled(self, e: TaskCancelled, pos: int, env: Envelope) -> None:
        t = self._task(e.task_id, pos, "TaskCancelled")
        if t is not None:
            t.state = "cancelled"

    # ---- intake --------------------------------------------------------------------------------

    def _fact(self, seq: int, type_name: str, pos: int) -> None:
        first = self._facts.get(seq)
        if first is None:
            self.cover["intake"] += 1
            self._facts[seq] = pos
        outcome = self._outcomes.get(seq)
        if outcome is not None and not (outcome[2] == "InputRejected" and type_name == "TaskResultRejected"):
            self.find("intake", pos, f"intake message {seq} has facts and also {outcome[2]} (at {outcome[1]})")

    def _outcome(self, seq: int, subject: str, pos: int, type_name: str) -> None:
        self.cover["intake"] += 1
        if seq in self._outcomes:
            self.find("intake", pos, f"intake message {seq} has a second outcome (first at {self._outcomes[seq][1]})")
            return
        self._outcomes[seq] = (subject, pos, type_name)
        if seq in self._facts and type_name == "InputAccepted":
            self.find("intake", pos, f"intake message {seq} has facts (from {self._facts[seq]}) and InputAccepted")

    def on_InputAccepted(self, e: InputAccepted, pos: int, env: Envelope) -> None:
        self._outcome(e.intake_seq, e.subject, pos, "InputAccepted")

    def on_InputRejected(self, e: InputRejected, pos: int, env: Envelope) -> None:
        self._outcome(e.intake_seq, e.subject, pos, "InputRejected")
        if not e.reason.strip():
            self.find("intake", pos, f"intake message {e.intake_seq} rejected without a reason")

    # ---- chain ---------------------------------------------------------------------------------

    def on_AuditCheckpointed(self, e: AuditCheckpointed, pos: int, env: Envelope) -> None:
        self.cover["chain"] += 1
        recorded = self._pending.get(e.position)
        if recorded is None:
            self.find("chain", pos, f"checkpoint for position {e.position}, which is not in the recomputed chain")
            ok = False
        else:
            digest, count = recorded
            ok = digest.hex() == e.digest and count == e.events
            # The chain is cumulative: after the first divergence every later checkpoint diverges too,
            # and says nothing new. The first is the finding; ``diverged_at`` keeps its position.
            if not ok and self.r.diverged_at is None:
                self.find(
                    "chain",
                    pos,
                    f"the log diverges from checkpoint at position {e.position}: recorded {e.digest[:16]}… "
                    f"({e.events} events), recomputed {digest.hex()[:16]}… ({count} events); "
                    f"the last matching checkpoint is at {self.r.last_good_checkpoint or 0}",
                )
        if ok:
            self.r.checkpoints_verified += 1
            self.r.last_good_checkpoint = e.position
        elif self.r.diverged_at is None:
            self.r.diverged_at = e.position
        for p in [p for p in self._pending if p < e.position]:
            del self._pending[p]

    # ---- the end -------------------------------------------------------------------------------

    def report(self, intake: Mapping[int, str] | None = None) -> AuditReport:
        """Finish: check intake outcomes and the books, and return the report."""
        r = self.r
        r.chain_digest = self._digest.hex()
        if intake is not None:
            r.intake_messages = len(intake)
            for seq, subject in sorted(intake.items()):
                outcome = self._outcomes.get(seq)
                if outcome is None and seq not in self._facts:
                    self.find("intake", None, f"intake message {seq} ({subject}) has no outcome")
                elif outcome is not None and outcome[0] != subject:
                    self.find("intake", outcome[1], f"outcome of intake {seq} names {outcome[0]}, it was {subject}")
            for seq, pos in sorted([(q, o[1]) for q, o in self._outcomes.items()] + list(self._facts.items())):
                if seq not in intake:
                    self.find("intake", pos, f"an outcome for intake message {seq}, which does not exist")
        self._books()
        for task_id, t in self._tasks.items():
            unjudged = sorted(x for x, r in t.returned.items() if r.verdict is None)
            if t.state in _TERMINAL and unjudged:
                self.find("completions", None, f"{task_id} ended ({t.state}) with results never judged: {unjudged}")
            if t.state == "completed" and t.metered == 0:
                job = self._jobs.get(t.created.job_id)
                if job is not None and job.ended_at is not None:
                    self.find("ledger", None, f"{task_id} completed but its usage was never metered")
        r.coverage = {c: self.cover.get(c, 0) for c in CHECKS}
        return r

    def _books(self) -> None:
        per_submitter: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # metered, charged
        per_provider: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # metered, credited
        for job_id, job in self._jobs.items():
            metered = sum(m[0] for m in job.metered.values())
            metered_ms = sum(m[1] for m in job.metered.values())
            if job.ended_at is None:
                if job.charges or job.credited:
                    self.find("ledger", None, f"job {job_id} settled but never ended")
                continue
            if job.charged != [metered, metered_ms]:
                self.find("ledger", None, f"job {job_id} charged {job.charged}, metered {[metered, metered_ms]}")
            for pid in sorted(set(job.metered) | set(job.credited)):
                m = job.metered.get(pid, [0, 0])
                c = job.credited.get(pid, [0, 0])
                if m != c:
                    self.find("ledger", None, f"job {job_id}: provider {pid} credited {c}, metered {m}")
                per_provider[pid][0] += m[0]
                per_provider[pid][1] += c[0]
            per_submitter[job.submitter][0] += metered
            per_submitter[job.submitter][1] += job.charged[0]
        for who, (owed, paid) in sorted(per_submitter.items()):
            if owed != paid:
                self.find("ledger", None, f"submitter {who}: charged {paid}, metered {owed} on settled jobs")
        for who, (owed, paid) in sorted(per_provider.items()):
            if owed != paid:
                self.find("ledger", None, f"provider {who}: credited {paid}, metered {owed} on settled jobs")
        total_charged = sum(c for _, c in per_submitter.values())
        total_credited = sum(c for _, c in per_provider.values())
        if total_charged != total_credited:
            self.find("ledger", None, f"charged {total_charged} in all, credited {total_credited}")


# ---- sources -----------------------------------------------------------------------------------

LogRecord = Envelope | tuple[int, InvalidPayload]


async def audit_events(
    records: AsyncIterable[LogRecord] | Iterable[LogRecord], intake: Mapping[int, str] | None = None
) -> AuditReport:
    """Audit a log given as envelopes (and ``(position, error)`` for records that did not decode)."""
    auditor = Auditor()
    if isinstance(records, AsyncIterable):
        async for rec in records:
            _feed(auditor, rec)
    else:
        for rec in records:
            _feed(auditor, rec)
    return auditor.report(intake)


def _feed(auditor: Auditor, rec: LogRecord) -> None:
    if isinstance(rec, Envelope):
        auditor.feed(rec)
    else:
        auditor.invalid(*rec)


def read_jsonl(path: str | Path) -> Iterable[LogRecord]:
    """The records of a JSON-lines copy of the log (``to_json_line``); bad lines become errors."""
    with Path(path).open("rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield from_json_line(line)
            except InvalidPayload as e:
                try:
                    position = int(json.loads(line).get("sequence", n))
                except (ValueError, AttributeError):
                    position = n
                yield (position, e)


async def audit_jsonl(path: str | Path, intake: Mapping[int, str] | None = None) -> AuditReport:
    """Audit a JSON-lines copy of the log."""
    return await audit_events(read_jsonl(path), intake)


async def read_intake(store: JetStreamEventStore, stream: str = INTAKE_STREAM) -> dict[int, str]:
    """Sequence -> subject of every message on the intake stream, read with direct gets (no consumer)."""
    end = await _stream_head(store, stream)
    return {m.sequence: m.subject async for m in store.read_raw(stream, end=end)}


async def _stream_head(store: JetStreamEventStore, stream: str) -> int:
    try:
        info = await store.js.stream_info(stream)
    except (nats.errors.Error, OSError) as e:
        raise StoreUnavailable(f"cannot read stream {stream}: {e!s}") from e
    return int(info.state.last_seq)


async def _jetstream_records(store: JetStreamEventStore) -> AsyncIterator[LogRecord]:
    s = store.settings
    cut = len(s.prefix) + 1
    end = await store.head()
    async for m in store.read_raw(end=end):  # the stream holds only the event subjects
        try:
            yield decode_message(m.subject[cut:], m.data, m.headers, m.sequence)
        except InvalidPayload as e:
            yield (m.sequence, e)


async def audit_jetstream(store: JetStreamEventStore, *, intake_stream: str | None = INTAKE_STREAM) -> AuditReport:
    """Audit the event stream of ``store`` and, unless None, the intake stream on the same server."""
    intake = await read_intake(store, intake_stream) if intake_stream else None
    return await audit_events(_jetstream_records(store), intake)


async def audit_store(store: EventStore, intake: Mapping[int, str] | None = None) -> AuditReport:
    """Audit any ``EventStore`` through ``read_all`` (records that do not decode are skipped by it)."""
    return await audit_events(store.read_all(0), intake)
