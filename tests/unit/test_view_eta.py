"""The ETA view: predictions for tasks and jobs, recorded against the actual durations."""

from __future__ import annotations

import math

import pytest

from events.estimates import RuntimeModel
from projections.eta import EtaView, eta_error
from tests.golden.loggen import Sim, random_log


def test_eta_error_median_and_p90() -> None:
    pairs = [(11.0, 10.0), (9.0, 10.0), (12.0, 10.0), (10.0, 10.0), (20.0, 10.0)]
    e = eta_error(pairs)
    assert e.n == 5
    assert e.median == pytest.approx(0.1)
    assert e.p90 == pytest.approx(0.2 + 0.6 * 0.8)  # rank 3.6 of 0..4: between 0.2 and 1.0
    assert math.isnan(eta_error([]).median)
    assert eta_error([(0.0, 5.0), (5.0, 0.0)]).n == 0  # no prediction / no duration: left out


def test_task_prediction_recorded_against_its_actual_duration() -> None:
    s = Sim()
    s.register("a")
    s.submit("j1", "sleep", {"seconds": 4.0, "steps": 4}, count=1)
    s.lease("j1-0", "a")
    s.tick(0.5)
    s.start("j1-0")
    v = EtaView()
    v.fold(s.events)
    t = v.tasks["j1-0"]
    leased = next(e.data for e in s.events if e.type == "TaskLeased")
    assert t.state == "running" and t.predicted_s == leased.predicted_s > 0  # type: ignore[attr-defined]
    assert t.remaining_s == t.predicted_s
    n = len(s.events)
    s.tick(1.0)
    s.progress("j1-0", 0.25)
    v.fold(s.events[n:])
    assert t.remaining_s == pytest.approx(1.0 * 0.75 / 0.25)  # the rate so far, extrapolated
    assert v.jobs["j1"].eta_ts == pytest.approx(s.now.timestamp() + 3.0)
    n = len(s.events)
    s.tick(2.5)
    s.complete("j1-0")
    v.fold(s.events[n:])
    assert t.actual_s == pytest.approx(3.5)
    assert t.abs_rel_error == pytest.approx(abs(t.predicted_s - 3.5) / 3.5)
    assert v.jobs["j1"].status == "completed" and v.jobs["j1"].actual_s == pytest.approx(4.0)


def test_the_model_learns_from_history_like_the_schedulers() -> None:
    s = Sim()
    s.register("a", factor=2.0)
    for i in range(5):
        s.submit(f"j{i}", "matmul", {"n": 4096, "repeat": 10}, count=1)
        s.lease(f"j{i}-0", "a")
        s.start(f"j{i}-0")
        s.tick(s.tasks[f"j{i}-0"].duration)
        s.complete(f"j{i}-0")
    v = EtaView()
    v.fold(s.events)
    tasks = [v.tasks[f"j{i}-0"] for i in range(5)]
    # The view's own model prediction equals the scheduler's (same model, same history, same order).
    assert [t.model_predicted_s for t in tasks] == pytest.approx(
        [t.lease_predicted_s for t in tasks], rel=1e-4
    )  # times in the log have microsecond resolution
    assert tasks[-1].abs_rel_error is not None and tasks[0].abs_rel_error is not None
    assert tasks[-1].abs_rel_error < tasks[0].abs_rel_error  # history corrects the first guess


def test_restart_rebuilds_the_model_exactly() -> None:
    s = random_log(5, max_events=3000)
    half = len(s.events) // 2
    whole = EtaView()
    whole.fold(s.events)
    first = EtaView()
    first.fold(s.events[:half])
    # What a restart does: rows come back from storage, the model is re-learned from them.
    second = EtaView()
    for name, rows in first.data.items():
        second.data[name].update(rows)
    second.loaded()
    assert second.model == first.model
    second.fold(s.events[half:])
    assert second.snapshot() == whole.snapshot()


def test_pure_model_api_matches_events_estimates() -> None:
    assert isinstance(EtaView().model, RuntimeModel)


def test_a_result_held_for_verification_puts_the_task_back_in_the_queue_and_its_run_is_measured() -> None:
    from events.task import TaskResultReturned
    from events.types import ResultRef

    s = Sim()
    s.register("a")
    s.register("b")
    s.submit("j1", "sleep", {"seconds": 4.0, "steps": 4}, count=1)
    s.lease("j1-0", "a")
    s.start("j1-0")
    s.tick(2.0)
    t0 = s.tasks["j1-0"]
    held = TaskResultReturned(
        at=s.now,
        task_id="j1-0",
        lease_id=t0.lease_id or "",
        provider_id="a",
        result=ResultRef(sha256="a" * 64, size=1, inline=1),
        gpu_ms=2000,
        replica=1,
        replicas=2,
        quorum=2,
    )
    s.append("task.j1-0", held)
    v = EtaView()
    v.fold(s.events)
    t = v.tasks["j1-0"]
    assert t.state == "queued" and t.remaining_s > 0  # waiting for its replica, not "running, 0 s left"
    n = len(s.events)
    s.lease("j1-0", "b")
    s.start("j1-0")
    s.tick(3.0)
    s.complete("j1-0")
    v.fold(s.events[n:])
    assert t.state == "done" and t.actual_s == pytest.approx(3.0)  # the last run, on b


def test_a_jobs_tasks_not_created_yet_count_in_its_eta() -> None:
    """A job's tasks come into existence in windows (``actors.window``): its ETA counts the ones not
    created yet as it counts its queued ones, so it is the same whether they exist yet or not."""
    s = Sim()
    s.register("a")
    s.submit("j1", "sleep", {"seconds": 2.0, "steps": 4}, count=40)
    s.lease("j1-0", "a")
    s.start("j1-0")
    s.tick(0.5)
    every = EtaView()
    every.fold(s.events)
    # The same log, as the windows write it: only the first 10 of the 40 tasks created so far.
    windowed = EtaView()
    windowed.fold(
        [e for e in s.events if not (e.type == "TaskCreated" and e.data.index >= 10)]  # type: ignore[attr-defined]
    )
    full, part = every.jobs["j1"], windowed.jobs["j1"]
    assert part.task_count == full.task_count == 40
    assert part.eta_s == pytest.approx(full.eta_s, rel=0.01) and full.eta_s > 30.0
    assert part.eta_high_ts - s.now.timestamp() == pytest.approx(full.eta_high_ts - s.now.timestamp(), rel=0.01)
    # After a restart the view counts the created tasks again from its rows.
    again = EtaView()
    again.tasks, again.jobs = windowed.tasks, windowed.jobs
    again.loaded()
    assert again._created == {"j1": 10}
