"""Live progress for people: a bar per job and per task, with an ETA, folded from the log as it grows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from actors.world import World
from events import Envelope
from events.intake import InputRejected
from events.types import utc_now
from gpufleet.client import Job, JobStatus, TaskStatus, _ends, _refused, _status
from gpufleet.eta import Timings, job_text, task_text

__all__ = ["JobTracker", "watch_jobs"]

_STYLE = {
    "completed": "green",
    "failed": "red",
    "dead": "red",
    "cancelled": "yellow",
    "rejected": "red",
    "running": "cyan",
    "leased": "cyan",
    "queued": "dim",
    "waiting": "magenta",
}


class JobTracker:
    """Folds one job's events as they arrive (the same fold as the orchestrator's)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.world = World()
        self.timings = Timings()
        self.last: object = None
        self.position = 0
        self.done = asyncio.Event()

    def apply(self, env: Envelope) -> None:
        """Fold one event."""
        self.world.apply(env)
        self.timings.apply(env)
        self.position = env.sequence
        if _ends(env, self.job.id):
            self.last = env.data
            self.done.set()

    async def run(self) -> None:
        """Follow the job to its end (reconnecting if the connection drops)."""
        async for env in self.job.events():
            self.apply(env)
        self.done.set()

    def status(self) -> JobStatus | None:
        """The job as folded so far, or None before its first event."""
        if self.job.id not in self.world.jobs:
            if isinstance(self.last, InputRejected):
                return _refused(self.job.id, self.last, self.position)
            return None
        return _status(self.job.id, self.world, self.last, self.position, self.timings)


def _job_line(st: JobStatus, now: datetime) -> str:
    """The job, then its time on a line of its own (an 80-column terminal has no room for both)."""
    style = _STYLE.get(st.status, "white")
    done = st.count("completed")
    when = job_text(st, now)
    return f"[bold]{st.job_id}[/] {st.workload} [{style}]{st.status}[/] {done}/{st.task_count} tasks" + (
        f"\n  {escape(when)}" if when else ""
    )


def _task_line(t: TaskStatus, now: datetime) -> str:
    """A task under its job: by index (the job's id is on the line above), state, provider, time."""
    style = _STYLE.get(t.status, "white")
    where = f" on {t.provider_id}" if t.provider_id and t.status in ("leased", "running") else ""
    when = task_text(t, now)
    return f"  └ task {t.index} [{style}]{t.status}[/]{where}" + (f" {escape(when)}" if when else "")


async def watch_jobs(jobs: Sequence[Job], console: Console, *, task_rows: int = 8) -> list[JobStatus]:
    """Show live bars until every job ends; their final statuses."""
    trackers = [JobTracker(j) for j in jobs]
    runners = [asyncio.create_task(t.run()) for t in trackers]
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=30), TextColumn("{task.percentage:>3.0f}%"))
    bars: dict[str, TaskID] = {}
    try:
        with Progress(*columns, console=console, transient=False, refresh_per_second=8) as progress:
            while True:
                now = utc_now()
                for tr in trackers:
                    st = tr.status()
                    if st is None:
                        continue
                    key = st.job_id
                    if key not in bars:
                        bars[key] = progress.add_task(_job_line(st, now), total=1.0)
                    progress.update(bars[key], description=_job_line(st, now), completed=st.progress)
                    for t in st.tasks[:task_rows]:
                        tkey = t.task_id
                        line = _task_line(t, now)
                        if tkey not in bars:
                            bars[tkey] = progress.add_task(line, total=1.0)
                        progress.update(
                            bars[tkey], description=line, completed=1.0 if t.status == "completed" else t.progress
                        )
                if all(tr.done.is_set() for tr in trackers):
                    break
                await asyncio.sleep(0.2)
    finally:
        for r in runners:
            r.cancel()
        for r in runners:
            with contextlib.suppress(BaseException):
                await r
    return [st for tr in trackers if (st := tr.status()) is not None]
