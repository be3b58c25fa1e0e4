"""ETAs people read: the one formatting rule, and a job's ETA interval folded from hand-built events."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from rich.console import Console

from actors.world import World
from events import Envelope, new_envelope
from events.job import CountSplit, JobAccepted, JobCompleted, JobSpec, JobSubmitted
from events.task import TaskCompleted, TaskCreated, TaskLeased, TaskProgressed, TaskStarted
from events.types import Estimate, EventModel, Resources, ResultRef
from gpufleet.client import JobStatus, _ends, _status
from gpufleet.eta import Eta, Timings, duration, job_text, says, short, task_text, took
from gpufleet.tables import eta_cell, job_table
from projections.eta import EtaJobRow
from tests.factories import T0, at

JOB = "alice.j1"
_ids = itertools.count(1)


class Log:
    """A job's events, written by hand, folded as ``gpufleet status`` folds them."""

    def __init__(self, tasks: int = 1) -> None:
        self.envs: list[Envelope] = []
        self.tasks = tasks
        spec = JobSpec(workload="sleep", params={"seconds": 1.0}, split=CountSplit(count=tasks))
        self.add(f"job.{JOB}", JobSubmitted(at=T0, job_id=JOB, spec=spec))

    def add(self, stream: str, e: EventModel) -> Log:
        self.envs.append(new_envelope(stream, e, id=f"ev-{next(_ids)}", source="tests"))
        return self

    def accepted(
        self, t: float, pred: float, low: float | None = None, high: float | None = None, created: int | None = None
    ) -> Log:
        self.add(
            f"job.{JOB}",
            JobAccepted(
                at=at(t),
                job_id=JOB,
                task_count=self.tasks,
                predicted_s=pred,
                predicted_low_s=low,
                predicted_high_s=high,
            ),
        )
        for i in range(self.tasks if created is None else created):
            self.add(
                f"task.{JOB}.{i}",
                TaskCreated(
                    at=at(t),
                    task_id=f"{JOB}.{i}",
                    job_id=JOB,
                    index=i,
                    submitter="alice",
                    workload="sleep",
                    params={"seconds": 1.0},
                    resources=Resources(),
                    estimate=Estimate(),
                    timeout_s=600.0,
                ),
            )
        return self

    def leased(self, i: int, t: float, pred: float, low: float | None = None, high: float | None = None) -> Log:
        return self.add(
            f"task.{JOB}.{i}",
            TaskLeased(
                at=at(t),
                task_id=f"{JOB}.{i}",
                lease_id=f"l{i}",
                provider_id="p1",
                attempt=1,
                expires_at=at(t + 600),
                predicted_s=pred,
                predicted_low_s=low,
                predicted_high_s=high,
            ),
        )

    def started(self, i: int, t: float) -> Log:
        return self.add(
            f"task.{JOB}.{i}",
            TaskStarted(at=at(t), task_id=f"{JOB}.{i}", lease_id=f"l{i}", provider_id="p1", expires_at=at(t + 600)),
        )

    def progressed(self, i: int, t: float, fraction: float) -> Log:
        return self.add(
            f"task.{JOB}.{i}",
            TaskProgressed(at=at(t), task_id=f"{JOB}.{i}", lease_id=f"l{i}", provider_id="p1", fraction=fraction),
        )

    def completed(self, i: int, t: float) -> Log:
        return self.add(
            f"task.{JOB}.{i}",
            TaskCompleted(
                at=at(t),
                task_id=f"{JOB}.{i}",
                lease_id=f"l{i}",
                provider_id="p1",
                result=ResultRef(sha256="0" * 64, size=1, inline=1),
                gpu_ms=1,
            ),
        )

    def job_completed(self, t: float) -> Log:
        return self.add(f"job.{JOB}", JobCompleted(at=at(t), job_id=JOB, tasks=self.tasks, gpu_ms=1, cost_micros=0))

    def status(self) -> JobStatus:
        world, timings, last = World(), Timings(), None
        for env in self.envs:
            world.apply(env)
            timings.apply(env)
            if _ends(env, JOB):
                last = env.data
        return _status(JOB, world, last, len(self.envs), timings)


def triple(e: Eta | None) -> tuple[float, float | None, float | None]:
    assert e is not None
    return (pytest.approx(e.seconds), pytest.approx(e.low), pytest.approx(e.high))  # type: ignore[return-value]


# ---- the formatting rule ------------------------------------------------------------------------


def test_one_rule_says_times_intervals_overdue_and_took() -> None:
    assert says(Eta(250.0, 220.0, 305.0)) == "finishes in 4m 10s (3m 40s to 5m 05s)"
    assert says(Eta(2.1, 1.8, 2.6)) == "finishes in ~2.1 s (1.8 to 2.6 s)"
    assert says(Eta(0.0, 0.0, 0.0, overdue_s=12.0, expected_s=190.0)) == "overdue by 12 s (expected 3m 10s)"
    assert says(Eta(250.0)) == "finishes in 4m 10s"  # an old log: no interval, the point only
    assert says(Eta(2.1)) == "finishes in ~2.1 s"
    assert took(252.0, 235.0) == "took 4m 12s (predicted 3m 55s)"
    assert took(252.0) == "took 4m 12s"
    assert short(Eta(1.2, 0.9, 1.6)) == "1.2 s (0.9\N{EN DASH}1.6)"
    assert short(Eta(250.0, 220.0, 305.0)) == "4m 10s (3m 40s\N{EN DASH}5m 05s)"
    assert short(Eta(0.0, overdue_s=12.0, expected_s=190.0)) == "overdue 12 s"
    assert [duration(s) for s in (0.04, 9.96, 59.6, 3599.6, 7380.0, 97200.0)] == [
        "0.0 s",
        "10 s",
        "1m 00s",
        "1h 00m",
        "2h 03m",
        "1d 03h",
    ]


# ---- a job's ETA, from its events -------------------------------------------------------------


def test_before_any_lease_the_acceptance_counts_down_and_then_is_overdue() -> None:
    st = Log().accepted(0.0, 100.0, 80.0, 130.0).status()
    assert triple(st.eta(at(30.0))) == (70.0, 50.0, 100.0)  # the interval shifts by the elapsed time
    assert triple(st.eta(at(90.0))) == (10.0, 0.0, 40.0)  # floored at 0
    late = st.eta(at(140.0))
    assert late is not None and late.overdue_s == pytest.approx(10.0) and late.expected_s == 100.0
    assert job_text(st, at(140.0)) == "overdue by 10 s (expected 1m 40s)"
    assert job_text(st, at(0.0)) == "finishes in 1m 40s (1m 20s to 2m 10s)"
    assert st.eta_s(at(30.0)) == pytest.approx(70.0)  # eta_s keeps working: the same point


def test_old_events_without_intervals_show_the_point_only() -> None:
    st = Log().accepted(0.0, 100.0).status()
    e = st.eta(at(30.0))
    assert e is not None and e.seconds == pytest.approx(70.0) and e.interval is None
    assert job_text(st, at(30.0)) == "finishes in 1m 10s"
    st = Log().accepted(0.0, 100.0).leased(0, 1.0, 10.0).started(0, 2.0).status()
    assert task_text(st.tasks[0], at(5.0)) == "7.0 s"
    assert job_text(st, at(5.0)) == "finishes in ~7.0 s"


def test_a_running_task_counts_down_its_lease_and_the_interval_holds_the_point() -> None:
    st = Log().accepted(0.0, 100.0, 80.0, 130.0).leased(0, 1.0, 10.0, 8.0, 14.0).started(0, 5.0).status()
    task = st.tasks[0]
    assert (task.predicted_low_s, task.predicted_high_s) == (8.0, 14.0)
    assert triple(task.eta(at(5.0))) == (10.0, 8.0, 14.0)  # leased, then started: the whole prediction
    assert triple(task.eta(at(8.0))) == (7.0, 5.0, 11.0)
    assert triple(st.eta(at(8.0))) == (7.0, 5.0, 11.0)  # the job follows its one task now
    assert task_text(task, at(8.0)) == "7.0 s (5.0\N{EN DASH}11)"
    assert job_text(st, at(8.0)) == "finishes in ~7.0 s (5.0 to 11 s)"
    late = task.eta(at(20.0))
    assert late is not None and late.overdue_s == pytest.approx(1.0) and task_text(task, at(20.0)) == "overdue 1.0 s"


def test_progress_extrapolates_the_rate_and_narrows_the_interval() -> None:
    log = Log().accepted(0.0, 100.0, 80.0, 130.0).leased(0, 0.0, 10.0, 8.0, 14.0).started(0, 0.0)
    st = log.progressed(0, 0.2, 0.02).status()  # under 5%: still the lease, counted down
    assert triple(st.eta(at(0.2))) == (9.8, 7.8, 13.8)
    st = log.progressed(0, 2.5, 0.25).status()  # ran 2.5 s for 25%: 7.5 s left
    first = st.eta(at(2.5))
    assert triple(first) == (7.5, 7.5 * (1 - 0.2 * 0.75), 7.5 * (1 + 0.4 * 0.75))
    assert triple(st.eta(at(3.5))) == (6.5, 5.375, 8.75)  # counted down from the report
    st = log.progressed(0, 5.0, 0.5).status()
    second = st.eta(at(5.0))
    assert first is not None and second is not None and first.low is not None and first.high is not None
    assert second.low is not None and second.high is not None
    assert second.low <= second.seconds <= second.high
    assert (second.high - second.low) / second.seconds < (first.high - first.low) / first.seconds


def test_unfinished_tasks_combine_over_the_slots_that_run_them() -> None:
    log = Log(tasks=3).accepted(0.0, 30.0, 25.0, 40.0)
    log.leased(0, 0.0, 10.0, 8.0, 14.0).started(0, 0.0).leased(1, 0.0, 10.0, 8.0, 14.0).started(1, 0.0)
    st = log.status()
    # Two running (10 s each, 8 to 14) and one waiting (the typical lease): 30 s of work on 2 slots.
    assert triple(st.eta(at(0.0))) == (15.0, 12.0, 21.0)
    st = log.completed(0, 9.0).completed(1, 9.0).leased(2, 9.0, 10.0, 8.0, 14.0).started(2, 9.0).status()
    assert triple(st.eta(at(12.0))) == (7.0, 5.0, 11.0)  # one task left, on one slot


def test_tasks_not_created_yet_count_as_waiting_ones_do() -> None:
    """A job's tasks are created in windows (``actors.window``): the ones not created yet wait, and
    count, as the created ones that wait do."""
    for created in (3, 2):
        log = Log(tasks=3).accepted(0.0, 30.0, 25.0, 40.0, created=created)
        log.leased(0, 0.0, 10.0, 8.0, 14.0).started(0, 0.0).leased(1, 0.0, 10.0, 8.0, 14.0).started(1, 0.0)
        st = log.status()
        assert st.not_created == 3 - created
        assert triple(st.eta(at(0.0))) == (15.0, 12.0, 21.0)


def test_a_completed_job_says_how_long_it_took_against_its_prediction() -> None:
    log = Log().accepted(0.0, 60.0, 50.0, 75.0).leased(0, 0.0, 58.0, 50.0, 70.0).started(0, 1.0)
    st = log.completed(0, 63.5).job_completed(65.0).status()
    assert st.eta(at(70.0)) is None and st.eta_s(at(70.0)) == 0.0
    assert st.took_s == pytest.approx(65.0)
    assert job_text(st, at(70.0)) == "took 1m 05s (predicted 1m 00s)"
    assert task_text(st.tasks[0], at(70.0)) == "took 1m 02s"


def test_the_status_table_fits_80_columns_with_its_eta_column() -> None:
    log = Log(tasks=2).accepted(0.0, 30.0, 25.0, 40.0)
    st = log.leased(0, 0.0, 1.2, 0.9, 1.6).started(0, 0.0).status()
    console = Console(width=80, record=True)
    console.print(job_table(st, at(0.0)))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "1.2 s (0.9\N{EN DASH}1.6)" in text and f"{JOB}.1" in text


def test_the_jobs_eta_cell_reads_the_views_interval_and_old_rows_show_the_point() -> None:
    now = T0.timestamp()
    row = EtaJobRow(JOB, predicted_s=300.0, eta_ts=now + 250.0)
    assert eta_cell(row, now) == "4m 10s"
    row.eta_low_ts, row.eta_high_ts = now + 220.0, now + 305.0
    assert eta_cell(row, now) == "4m 10s (3m 40s\N{EN DASH}5m 05s)"
    assert eta_cell(row, now + 317.0) == "overdue 12 s"
    row.status, row.finished_ts, row.actual_s = "completed", now + 252.0, 252.0
    assert eta_cell(row, now + 400.0) == "took 4m 12s"
    assert (at(1.0) - T0) == timedelta(seconds=1)
