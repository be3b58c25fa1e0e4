"""ETAs for people: a job's or a task's remaining time with its interval, and the one way to say it.

The rules (``JobStatus.eta`` applies them to a job folded from its events):

- A task holding a lease: its lease's prediction (and interval, p10 to p90) minus the time it has
  run; once it reports at least 5% progress, the rate so far extrapolated, its interval the lease's
  relative spread narrowed by the fraction done. Either way counted down from when it was made.
- A job before any of its tasks is leased: its acceptance's prediction, counted down from then.
- A job with tasks under way: the remaining work of its unfinished tasks over the slots running them
  (as ``projections.eta`` does), never less than its longest running task. A task waiting for a
  provider counts as the job's typical lease prediction.
- Past the high end of the prediction it made (the point, without an interval) a job or a task is
  *overdue*. A job's promise is the one made at its acceptance.

Every sentence a person reads about an ETA is written here: ``says`` (a line), ``short`` (a column),
``took`` (a finished job or task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from events import Envelope
from events.job import JobAccepted
from events.task import TaskLeased, TaskProgressed
from projections.eta import MIN_FRACTION_FOR_RATE

if TYPE_CHECKING:
    from gpufleet.client import JobStatus, TaskStatus

__all__ = [
    "Eta",
    "Timings",
    "duration",
    "job_eta",
    "job_text",
    "says",
    "short",
    "task_eta",
    "task_text",
    "took",
]

#: A task holds (or held) a provider: its lease's prediction applies.
_UNDER_LEASE = ("leased", "running")
_FINISHED = ("completed", "dead", "cancelled")
#: Between an interval's ends in a column.
_DASH = "\N{EN DASH}"


@dataclass(frozen=True, slots=True)
class Eta:
    """Seconds left, and the interval they should fall in (None where the log records none).

    ``overdue_s`` > 0: now is that far past the end of the interval its prediction gave (``expected_s``
    seconds in all); ``seconds`` is then what is still expected, if anything is.
    """

    seconds: float
    low: float | None = None
    high: float | None = None
    overdue_s: float = 0.0
    expected_s: float = 0.0

    @property
    def interval(self) -> tuple[float, float] | None:
        """(low, high), when both are known."""
        if self.low is None or self.high is None:
            return None
        return (self.low, self.high)


def _elapsed(since: datetime | None, now: datetime) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


def _bounds(point: float, low: float | None, high: float | None) -> tuple[float, float] | None:
    """A usable interval around ``point``: both ends known, low <= point <= high."""
    if low is None or high is None:
        return None
    return (min(low, point), max(high, point))


def _counted_down(point: float, low: float | None, high: float | None, elapsed: float, expected: float) -> Eta:
    """A prediction of ``point`` (``low`` to ``high``) seconds, made ``elapsed`` seconds ago."""
    bounds = _bounds(point, low, high)
    end = bounds[1] if bounds else point
    overdue = max(0.0, elapsed - end)
    return Eta(
        seconds=max(0.0, point - elapsed),
        low=max(0.0, bounds[0] - elapsed) if bounds else None,
        high=max(0.0, bounds[1] - elapsed) if bounds else None,
        overdue_s=overdue,
        expected_s=expected if overdue > 0.0 else 0.0,
    )


def task_eta(
    *,
    predicted_s: float,
    low_s: float | None,
    high_s: float | None,
    started_at: datetime | None,
    progress: float,
    progress_at: datetime | None,
    now: datetime,
) -> Eta | None:
    """A leased task's remaining time; None without a prediction.

    ``started_at`` None: leased, not started (the whole prediction is left).
    """
    if predicted_s <= 0.0:
        return None
    if (
        progress >= MIN_FRACTION_FOR_RATE
        and started_at is not None
        and progress_at is not None
        and progress_at > started_at
    ):
        f = min(progress, 1.0)
        ran = (progress_at - started_at).total_seconds()
        left = ran * (1.0 - f) / f
        bounds = _bounds(predicted_s, low_s, high_s)
        if bounds is None:
            return _counted_down(left, None, None, _elapsed(progress_at, now), ran + left)
        # The lease's relative spread, narrowed as the work gets done.
        k = 1.0 - f
        low = left * (1.0 - (1.0 - bounds[0] / predicted_s) * k)
        high = left * (1.0 + (bounds[1] / predicted_s - 1.0) * k)
        return _counted_down(left, low, high, _elapsed(progress_at, now), ran + left)
    return _counted_down(predicted_s, low_s, high_s, _elapsed(started_at, now), predicted_s)


def _typical(tasks: Sequence[TaskStatus]) -> Eta | None:
    """The mean lease prediction of the job's tasks (a task still waiting for a provider)."""
    known = [t for t in tasks if t.predicted_s > 0.0]
    if not known:
        return None
    n = len(known)
    point = sum(t.predicted_s for t in known) / n
    if any(t.predicted_low_s is None or t.predicted_high_s is None for t in known):
        return Eta(point)
    low = sum(t.predicted_low_s or 0.0 for t in known) / n
    high = sum(t.predicted_high_s or 0.0 for t in known) / n
    return Eta(point, low, high)


def job_eta(st: JobStatus, now: datetime) -> Eta | None:
    """The job's remaining time by the module's rules; None when ended or when nothing predicts it."""
    if st.ended:
        return None
    since = st.accepted_at or st.submitted_at
    accepted = (
        _counted_down(st.predicted_s, st.predicted_low_s, st.predicted_high_s, _elapsed(since, now), st.predicted_s)
        if st.predicted_s > 0.0 and since is not None
        else None
    )
    if not any(t.attempt > 0 for t in st.tasks):
        return accepted
    unfinished = [t for t in st.tasks if t.status not in _FINISHED]
    typical = _typical(st.tasks)
    parts: list[Eta] = []
    running: list[Eta] = []
    for t in unfinished:
        e = t.eta(now) if t.status in _UNDER_LEASE else None
        if e is not None:
            running.append(e)
        else:
            e = typical
        if e is None:
            return accepted
        parts.append(e)
    # Tasks not created yet (a job's tasks are created in windows) wait as queued ones do.
    later = st.not_created
    if later and typical is None:
        return accepted
    if not parts and not later:
        return Eta(0.0) if accepted is None else Eta(0.0, overdue_s=accepted.overdue_s, expected_s=accepted.expected_s)
    slots = max(1, sum(1 for t in unfinished if t.status in _UNDER_LEASE))

    def combined(values: list[float], extra: float, longest: list[float]) -> float:
        return max((sum(values) + later * extra) / slots, max(longest, default=0.0))

    each = typical if typical is not None else Eta(0.0)
    point = combined([p.seconds for p in parts], each.seconds, [p.seconds for p in running])
    low = high = None
    if all(p.interval is not None for p in parts) and (not later or each.interval is not None):
        low = combined([p.low or 0.0 for p in parts], each.low or 0.0, [p.low or 0.0 for p in running])
        high = combined([p.high or 0.0 for p in parts], each.high or 0.0, [p.high or 0.0 for p in running])
    overdue, expected = (accepted.overdue_s, accepted.expected_s) if accepted else (0.0, 0.0)
    return Eta(point, low, high, overdue, expected)


# ---- the facts the log holds beyond the deciders' state ---------------------------------------------


@dataclass(slots=True)
class _TaskTimes:
    low: float | None = None
    high: float | None = None
    progress_at: datetime | None = None


class Timings:
    """Folds what a job's ETA needs that the deciders' state does not keep: when it was accepted, the
    intervals of its predictions, and when each task last reported progress."""

    def __init__(self) -> None:
        self.accepted_at: datetime | None = None
        self.low: float | None = None
        self.high: float | None = None
        self.tasks: dict[str, _TaskTimes] = {}

    def apply(self, env: Envelope) -> None:
        """Fold one event (any event: those that say nothing of timings are passed over)."""
        e = env.data
        if isinstance(e, JobAccepted):
            self.accepted_at, self.low, self.high = e.at, e.predicted_low_s, e.predicted_high_s
        elif isinstance(e, TaskLeased):
            self.tasks[e.task_id] = _TaskTimes(e.predicted_low_s, e.predicted_high_s)
        elif isinstance(e, TaskProgressed):
            self.tasks.setdefault(e.task_id, _TaskTimes()).progress_at = e.at

    def task(self, task_id: str) -> tuple[float | None, float | None, datetime | None]:
        """A task's (low, high, last progress at)."""
        t = self.tasks.get(task_id) or _TaskTimes()
        return t.low, t.high, t.progress_at


# ---- saying it ----------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """``2.1 s``, ``42 s``, ``4m 05s``, ``2h 03m``, ``3d 04h``."""
    s = max(0.0, seconds)
    if s < 9.95:
        return f"{s:.1f} s"
    if s < 59.5:
        return f"{s:.0f} s"
    if s < 3599.5:
        m, sec = divmod(round(s), 60)
        return f"{m}m {sec:02d}s"
    if s < 86370:
        h, m = divmod(round(s / 60), 60)
        return f"{h}h {m:02d}m"
    d, h = divmod(round(s / 3600), 24)
    return f"{d}d {h:02d}h"


def _number(s: float) -> str:
    return f"{s:.1f}" if s < 9.95 else f"{s:.0f}"


def _in_seconds(eta: Eta) -> bool:
    return max(eta.seconds, eta.high or 0.0) < 59.5


def says(eta: Eta | None) -> str:
    """A sentence: ``finishes in 4m 10s (3m 40s to 5m 05s)``, ``finishes in ~2.1 s (1.8 to 2.6 s)``,
    ``overdue by 12 s (expected 3m 10s)``; ``no estimate yet`` for None."""
    if eta is None:
        return "no estimate yet"
    if eta.overdue_s > 0.0:
        text = f"overdue by {duration(eta.overdue_s)} (expected {duration(eta.expected_s)})"
        return text + (f", ~{duration(eta.seconds)} more" if eta.seconds >= 0.05 else "")
    iv = eta.interval
    if iv is None:
        return f"finishes in ~{duration(eta.seconds)}" if _in_seconds(eta) else f"finishes in {duration(eta.seconds)}"
    if eta.seconds < 0.05:
        return f"finishes in under {duration(iv[1])}" if iv[1] >= 0.05 else "finishes any moment"
    if _in_seconds(eta):
        return f"finishes in ~{duration(eta.seconds)} ({_number(iv[0])} to {_number(iv[1])} s)"
    return f"finishes in {duration(eta.seconds)} ({duration(iv[0])} to {duration(iv[1])})"


def short(eta: Eta | None) -> str:
    """For a column: ``1.2 s (0.9-1.6)``, ``4m 10s (3m 40s-5m 05s)`` (with an en dash), ``overdue 12 s``;
    empty for None."""
    if eta is None:
        return ""
    if eta.overdue_s > 0.0:
        return f"overdue {duration(eta.overdue_s)}"
    iv = eta.interval
    if iv is None:
        return duration(eta.seconds)
    if _in_seconds(eta):
        return f"{duration(eta.seconds)} ({_number(iv[0])}{_DASH}{_number(iv[1])})"
    return f"{duration(eta.seconds)} ({duration(iv[0])}{_DASH}{duration(iv[1])})"


def took(actual_s: float, predicted_s: float = 0.0) -> str:
    """``took 4m 12s (predicted 3m 55s)``; without the prediction when there was none."""
    text = f"took {duration(actual_s)}"
    return text + (f" (predicted {duration(predicted_s)})" if predicted_s > 0.0 else "")


def job_text(st: JobStatus, now: datetime) -> str:
    """What to say of a job's time: ``finishes in ...``/``overdue ...`` while it runs, ``took ...`` once
    completed, empty for a job that ended otherwise."""
    if st.ended:
        actual = st.took_s
        return took(actual, st.predicted_s) if actual is not None else ""
    return says(job_eta(st, now))


def task_text(t: TaskStatus, now: datetime) -> str:
    """A task's time for a column: its ETA while leased or running, ``took ...`` once completed."""
    if t.status == "completed":
        if t.started_at is not None and t.completed_at is not None:
            return took((t.completed_at - t.started_at).total_seconds())
        return ""
    if t.status in _UNDER_LEASE:
        return short(t.eta(now))
    return ""
