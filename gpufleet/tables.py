"""Tables people read: the fleet (shared by ``gpufleet providers`` and the demo), a job's tasks
(``gpufleet status``), and the ETA cell of ``gpufleet jobs``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from events.verification import spot_probability
from gpufleet.eta import Eta, short, task_text, took

if TYPE_CHECKING:
    from gpufleet.client import JobStatus

__all__ = ["eta_cell", "fleet_table", "job_table"]


def fleet_table(rows: list[Any]) -> Table:
    """The fleet: each provider's verified id, state, device, load, record, trust and earnings.

    Narrow enough for an 80-column terminal: the slots go with the load (``50%/2``); the results
    judged invalid follow the completed ones, in brackets, when there are any; trust is the count of
    valid results in a row, with the chance that its next paid result is spot-checked; earnings are
    in credits.
    """
    t = Table(title=f"{len(rows)} provider(s)", box=box.SIMPLE_HEAVY, pad_edge=False)
    for col in ("provider", "state", "device", "busy", "done", "trust", "rep.", "earned"):
        t.add_column(col, no_wrap=col != "device", min_width=10 if col == "device" else None)
    for r in rows:
        device = f"{r.backend} {r.gpu_model}" + (f" {r.vram_mb // 1024} GiB" if r.vram_mb else "")
        done = f"{r.completions} ({r.invalid_results})" if r.invalid_results else str(r.completions)
        t.add_row(
            r.provider_id,
            r.status,
            device,
            f"{r.utilisation:.0%}/{r.slots}",
            done,
            f"{r.consecutive_valid} ({spot_probability(r.consecutive_valid):.0%})",
            f"{r.reputation:.2f}",
            f"{r.earnings_micros / 1e6:.4f}",
        )
    return t


def job_table(st: JobStatus, now: datetime) -> Table:
    """A job's tasks: state (with the attempt, from the second on), provider, progress and time
    (``1.2 s (0.9-1.6)`` while it runs, ``took 1.3 s`` once done). 80 columns hold it for the ids
    ``submit`` makes; a longer task id folds before the time does."""
    t = Table(title=f"job {st.job_id}: {st.status}", box=box.SIMPLE_HEAVY, pad_edge=False)
    for col in ("task", "state", "provider", "done", "eta"):
        t.add_column(col, no_wrap=col in ("eta", "done"), overflow="fold", justify="right" if col == "done" else "left")
    for task in st.tasks:
        t.add_row(
            task.task_id,
            task.status + (f" #{task.attempt}" if task.attempt > 1 else ""),
            task.provider_id or "",
            f"{task.progress:.0%}",
            task_text(task, now),
        )
    return t


def eta_cell(row: Any, now: float) -> str:
    """The ETA view's row of a job (``projections.eta.EtaJobRow``) as a ``gpufleet jobs`` cell: time left
    with its interval, ``overdue 12 s`` past its high end, ``took 4m 12s`` once completed. ``now`` and
    the row's times are epoch seconds; rows from before intervals existed show the point only."""
    if row is None:
        return ""
    if row.finished_ts is not None:
        return took(row.actual_s) if row.status == "completed" and row.actual_s is not None else ""
    if row.eta_ts is None:
        return ""
    low_ts = getattr(row, "eta_low_ts", None)
    high_ts = getattr(row, "eta_high_ts", None)
    end = high_ts if high_ts is not None else row.eta_ts
    if now > end:
        return short(Eta(0.0, overdue_s=now - end, expected_s=row.predicted_s))
    if low_ts is None or high_ts is None:
        return short(Eta(row.eta_ts - now))
    return short(Eta(max(0.0, row.eta_ts - now), max(0.0, low_ts - now), high_ts - now))
