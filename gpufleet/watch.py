"""Live progress for people: a bar per job and per task, with an ETA, folded from the log as it grows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from actors.world import World
from events import Envelope
from events.intake import InputRejected
from gpufleet.client import Job, JobStatus, _ends, _refused, _status

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
        self.last: object = None
        self.position = 0
        self.done = asyncio.Event()

    def apply(self, env: Envelope) -> None:
        """Fold one event."""
        self.world.apply(env)
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
        return _status(self.job.id, self.world, self.last, self.position)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "eta ?"
    if seconds < 1:
        return "eta <1s"
    if seconds < 120:
        return f"eta {seconds:.0f}s"
    return f"eta {seconds / 60:.0f}m"


def _job_line(st: JobStatus) -> str:
    style = _STYLE.get(st.status, "white")
    done = st.count("completed")
    return (
        f"[bold]{st.job_id}[/] {st.workload} [{style}]{st.status}[/] "
        f"{done}/{st.task_count} tasks, {_eta(st.eta_s()) if not st.ended else 'done'}"
    )


async def watch_jobs(jobs: Sequence[Job], console: Console, *, task_rows: int = 8) -> list[JobStatus]:
    """Show live bars until every job ends; their final statuses."""
    trackers = [JobTracker(j) for j in jobs]
    runners = [asyncio.create_task(t.run()) for t in trackers]
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=30), TextColumn("{task.percentage:>3.0f}%"))
    bars: dict[str, TaskID] = {}
    try:
        with Progress(*columns, console=console, transient=False, refresh_per_second=8) as progress:
            while True:
                for tr in trackers:
                    st = tr.status()
                    if st is None:
                        continue
                    key = st.job_id
                    if key not in bars:
                        bars[key] = progress.add_task(_job_line(st), total=1.0)
                    progress.update(bars[key], description=_job_line(st), completed=st.progress)
                    for t in st.tasks[:task_rows]:
                        tkey = t.task_id
                        style = _STYLE.get(t.status, "white")
                        where = f" on {t.provider_id}" if t.provider_id and t.status in ("leased", "running") else ""
                        eta = ""
                        if t.status == "running" and t.predicted_s and t.progress > 0:
                            eta = f" {_eta(t.predicted_s * (1 - t.progress))}"
                        line = f"  └ {t.task_id} [{style}]{t.status}[/]{where}{eta}"
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
