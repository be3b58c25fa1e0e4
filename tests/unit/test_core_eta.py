"""The orchestrator's ETA at acceptance (``Core.predict_job``): the queue ahead of a job counts,
including the tasks of jobs accepted a moment before whose tasks are not created yet."""

from __future__ import annotations

import itertools

import pytest

from actors.core import Core
from actors.reactions import plan_task
from events import new_envelope
from events.job import CountSplit, JobAccepted, JobSpec, JobSubmitted
from events.provider import ProviderOnline, ProviderRegistered
from events.types import Capabilities, EventModel
from tests.factories import at

CAPS = Capabilities(backend="cpu", gpu_model="cpu", vram_mb=0, slots=1)
_ids = itertools.count(1)


def spec(who: str, tasks: int, seconds: float = 1.0, priority: int = 5) -> JobSpec:
    return JobSpec(
        workload="sleep",
        params={"seconds": seconds},
        split=CountSplit(count=tasks),
        submitter=who,
        priority=priority,
    )


def apply(core: Core, stream: str, *events: EventModel) -> None:
    for e in events:
        core.apply(new_envelope(stream, e, id=f"ev-{next(_ids)}", source="tests"), live=False)


def network() -> Core:
    core = Core()
    apply(
        core,
        "provider.p1",
        ProviderRegistered(at=at(0), provider_id="p1", name="p1", capabilities=CAPS),
        ProviderOnline(at=at(0), provider_id="p1"),
    )
    return core


def accept(core: Core, job_id: str, s: JobSpec, *, create: bool) -> None:
    apply(
        core,
        f"job.{job_id}",
        JobSubmitted(at=at(1), job_id=job_id, spec=s),
        JobAccepted(at=at(1), job_id=job_id, task_count=s.task_count()),
    )
    if create:
        for i in range(s.task_count()):
            apply(core, f"task.{job_id}.{i}", plan_task(job_id, s, i, at(1), None))


def test_an_empty_network_predicts_the_job_alone() -> None:
    core = network()
    one = core.predict_job(spec("bob", 1), at(2))
    three = core.predict_job(spec("bob", 3), at(2))
    assert one is not None and three is not None
    assert three.seconds == pytest.approx(3 * one.seconds)  # one slot: one after another
    assert three.low < three.seconds < three.high


@pytest.mark.parametrize("created", [True, False])
def test_work_accepted_just_before_counts_whether_or_not_its_tasks_exist_yet(created: bool) -> None:
    core = network()
    alone = core.predict_job(spec("bob", 2), at(2))
    accept(core, "alice.big", spec("alice", 10, priority=9), create=created)  # higher priority: all ahead
    behind = core.predict_job(spec("bob", 2), at(2))
    assert alone is not None and behind is not None
    assert behind.seconds == pytest.approx(alone.seconds * 6, rel=0.05)  # (10 + 2) tasks, not 2


def test_a_promise_is_kept_once_and_forgotten_when_its_tasks_are_created() -> None:
    core = network()
    s = spec("alice", 4)
    accept(core, "alice.j", s, create=False)
    assert core.promised["alice.j"][2] == 4
    apply(core, "task.alice.j.0", plan_task("alice.j", s, 0, at(1), None))
    assert core.promised["alice.j"][2] == 3
    for i in range(1, 4):
        apply(core, f"task.alice.j.{i}", plan_task("alice.j", s, i, at(1), None))
    assert "alice.j" not in core.promised


def test_nothing_capable_means_no_prediction() -> None:
    core = network()
    cuda = JobSpec(workload="sleep", params={"seconds": 1.0}, submitter="bob", resources={"backend": "cuda"})
    assert core.predict_job(cuda, at(2)) is None


def test_a_submission_not_yet_decided_counts_for_the_next_but_not_for_itself() -> None:
    core = network()
    alone = core.predict_job(spec("alice", 10, priority=9), at(2))
    s = spec("alice", 10, priority=9)
    apply(core, "job.alice.x", JobSubmitted(at=at(1), job_id="alice.x", spec=s))
    # its own decision, taken right after its submission is in the log, does not queue it behind itself
    assert core.predict_job(s, at(2), "alice.x") == alone
    # while a submission decided a moment later waits behind it
    bob_alone = network().predict_job(spec("bob", 2), at(2))
    behind = core.predict_job(spec("bob", 2), at(2), "bob.y")
    assert bob_alone is not None and behind is not None
    assert behind.seconds == pytest.approx(bob_alone.seconds * 6, rel=0.05)


def test_the_orchestrator_and_the_eta_view_learn_the_same_handover_and_a_job_pays_it_per_task() -> None:
    from projections.eta import EtaView
    from tests.golden.loggen import Sim

    s = Sim()
    s.register("p")
    s.submit("j1", "sleep", {"seconds": 0.01, "steps": 1}, count=3)
    for i in range(3):  # one slot: each task leased 0.2 s after the last ended, started 0.1 s later
        s.tick(0.2)
        s.lease(f"j1-{i}", "p")
        s.tick(0.1)
        s.start(f"j1-{i}")
        s.tick(0.01)
        s.complete(f"j1-{i}")
    core = Core()
    for env in s.events:
        core.apply(env, live=False)
    view = EtaView()
    view.fold(s.events)
    dclass = core.scheduler.providers["p"].dclass
    # the first start had no lease ending before it (0.1 s); the next two handed over in 0.3 s
    assert core.runtime.handoff(dclass) == pytest.approx((0.1 + 0.3 + 0.3) / 3, abs=1e-3)
    assert view.model.handoff(dclass) == pytest.approx(core.runtime.handoff(dclass), rel=1e-6)
    # a restarted view has it back, as it stood
    again = EtaView()
    for name, rows in view.data.items():
        again.data[name].update(rows)
    again.loaded()
    assert again.model.handoff(dclass) == view.model.handoff(dclass)
    # a job of many tiny tasks on the one slot: each pays the handover, not only its own run
    tiny = JobSpec(workload="sleep", params={"seconds": 0.01, "steps": 1}, split=CountSplit(count=10), submitter="b")
    p = core.predict_job(tiny, s.now)
    assert p is not None
    slots = core.scheduler.providers["p"].capabilities.slots
    run = core.scheduler.predict("sleep", plan_task("b.j", tiny, 0, s.now, None).estimate, tiny.resources)
    assert run is not None
    waves = -(-10 // slots)
    assert p.seconds == pytest.approx(waves * (run.seconds + core.runtime.handoff(dclass)), rel=1e-6)
