"""Live progress on the dashboard: the newest word of each running task, laid over the read models.

Read models are folded from the log, and live progress is not in the log (``events.live``), so it
never enters them: replaying the log must give the same read models, byte for byte. The dashboard
instead keeps the newest live message of each task in memory (bounded), and shows it where it shows
progress, for a task whose current lease, as its read model row says, is the message's provider and
lease; anything else is ignored. A job's page says its running tasks' ETAs again from it, by the ETA
view's own rule (``projections.eta.progress_remaining``). Each message wakes the pages (at most every
``every_s`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import structlog

from events.errors import InvalidPayload
from events.live import MAX_LIVE_BYTES, LiveUpdate, decode_live, is_current
from events.store.connection import Access, connect_nats
from events.subjects import LIVE_PREFIX
from gpufleet.dashboard.data import JobData, JobLine, JobsData, TaskLine, task_eta_text
from gpufleet.dashboard.notify import Changes
from projections.eta import progress_remaining
from projections.jobs import JobRow, TaskRow

__all__ = ["LiveProgressCache", "live_subjects"]

_log = structlog.get_logger("gpufleet.dashboard")


def live_subjects(access: Access) -> str | None:
    """What ``access``'s identity may hear of live progress: an auditor everyone's, a submitter its own
    jobs'; None for any other identity (live progress is published in the edge account, which the hub's
    users never hear)."""
    identity = access.identity()
    if identity is None:
        return None
    if identity.role == "auditor":
        return f"{LIVE_PREFIX}.>"
    if identity.role == "submitter":
        return f"{LIVE_PREFIX}.{identity.name}.>"
    return None


class LiveProgressCache:
    """The newest live message of each task (at most ``limit`` tasks, the least recently heard go first)."""

    def __init__(self, changes: Changes, *, limit: int = 10_000, every_s: float = 0.5) -> None:
        self.changes = changes
        self.limit = limit
        self.every_s = every_s
        #: Task id -> its newest live message and when it was heard (epoch seconds: this clock, not
        #: the provider's).
        self.latest: OrderedDict[str, tuple[LiveUpdate, float]] = OrderedDict()
        self._nc: Any = None
        self._notified = 0.0
        self._pending: asyncio.TimerHandle | None = None

    def heard(self, subject: str, data: bytes) -> bool:
        """Take one live message; False (and nothing kept) for one that is oversized or invalid."""
        if len(data) > MAX_LIVE_BYTES:
            return False
        try:
            update = decode_live(subject, data)
        except (InvalidPayload, ValueError):
            return False
        self.latest.pop(update.task_id, None)
        self.latest[update.task_id] = (update, time.time())
        while len(self.latest) > self.limit:
            self.latest.popitem(last=False)
        self._wake()
        return True

    def _wake(self) -> None:
        """Wake the pages now, or once ``every_s`` after the last wake-up."""
        if self._pending is not None:
            return
        wait = self._notified + self.every_s - time.monotonic()
        if wait <= 0.0:
            self._notify()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop (fed by hand): at once
            self._notify()
            return
        self._pending = loop.call_later(wait, self._notify)

    def _notify(self) -> None:
        self._pending = None
        self._notified = time.monotonic()
        self.changes.notify()

    def _current(self, row: TaskRow) -> tuple[LiveUpdate, float] | None:
        """The newest live message of ``row``'s task, if its current lease sent it."""
        heard = self.latest.get(row.task_id)
        if heard is None or not is_current(
            heard[0], status=row.state, lease_id=row.lease_id, provider_id=row.provider_id
        ):
            return None
        return heard

    def task(self, row: TaskRow) -> TaskRow:
        """``row`` with its live progress, if its current lease sent some; else ``row`` itself."""
        heard = self._current(row)
        if heard is None:
            return row
        p = heard[0].progress
        return replace(row, progress=p.fraction, rate=p.rate, unit=p.unit, message=p.message or row.message)

    def _line(self, line: TaskLine, now: float) -> TaskLine:
        """A task's line with its live progress, and its ETA said again from it (the view's rule)."""
        heard = self._current(line.task)
        if heard is None:
            return line
        task = self.task(line.task)
        row = line.eta_row
        if row is None or task.state != "running" or row.started_ts is None or row.actual_s is not None:
            return replace(line, task=task)
        at = heard[1]
        point, low, high = progress_remaining(row, at, heard[0].progress.fraction)
        again = replace(row, remaining_s=point, remaining_low_s=low, remaining_high_s=high, eta_ts=at + point)
        return replace(line, task=task, eta=task_eta_text(again, task.state, now), eta_row=again)

    def _job(self, job: JobRow, before: list[TaskRow], after: list[TaskRow]) -> JobRow:
        if job.task_count <= 0:
            return job
        delta = sum(a.progress - b.progress for a, b in zip(after, before, strict=True))
        if not delta:
            return job
        return replace(job, progress=min(1.0, max(0.0, job.progress + delta / job.task_count)))

    def jobs(self, data: JobsData) -> JobsData:
        """The jobs page with live progress."""
        lines = []
        for line in data.jobs:
            tasks = [self.task(t) for t in line.tasks]
            lines.append(JobLine(self._job(line.job, line.tasks, tasks), line.eta, tasks))
        return replace(data, jobs=lines)

    def job(self, data: JobData, now: float | None = None) -> JobData:
        """A job's page with live progress, and its tasks' ETAs said from it."""
        when = time.time() if now is None else now
        lines = [self._line(t, when) for t in data.tasks]
        job = self._job(data.job, [t.task for t in data.tasks], [t.task for t in lines])
        return replace(data, job=job, tasks=lines)

    async def start(self, access: Access, subject: str) -> None:
        """Subscribe to ``subject`` (core NATS) on a connection of ``access``'s own."""
        self._nc = await connect_nats(access, name="gpufleet-dashboard-live")

        async def heard(msg: Any) -> None:
            self.heard(msg.subject, msg.data)

        await self._nc.subscribe(subject, cb=heard)

    async def close(self) -> None:
        """Stop listening."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
