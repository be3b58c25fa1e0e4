"""The ``tasks_running`` quota in the scheduler: a submitter at its limit is parked, never over it,
whatever its priority, and comes back as soon as one of its leases ends."""

from __future__ import annotations

from actors.scheduler import Scheduler
from tests.unit.test_scheduler_aside import caps, task


def limited(limits: dict[str, int]) -> Scheduler:
    s = Scheduler()
    s.running_limit = lambda who: limits.get(who, 1_000)
    s.upsert_provider("p", caps(8), None, available=True)
    return s


def test_a_submitter_at_its_running_quota_waits_and_the_others_take_the_free_slots() -> None:
    s = limited({"mallory": 2})
    for i in range(10):
        s.enqueue(task(f"mallory.j.{i}", "mallory", priority=9))  # a higher priority does not help
    for i in range(3):
        s.enqueue(task(f"bob.j.{i}", "bob"))
    placed = [a.task.submitter for a in s.assign()]
    assert sorted(placed) == ["bob", "bob", "bob", "mallory", "mallory"]
    assert s.running == {"mallory": 2, "bob": 3}
    assert s.assign() == []  # three slots free, and mallory still at its quota
    s.release("p")
    s.ended("mallory")  # one of mallory's leases ended: one more of its tasks may run
    assert [a.task.task_id for a in s.assign()] == ["mallory.j.2"]  # in its order
    assert s.running["mallory"] == 2


def test_a_lease_seen_in_the_log_counts_against_the_quota_and_its_end_frees_it() -> None:
    s = limited({"alice": 1})
    s.started("alice")  # leased before a restart (or by another orchestrator)
    s.enqueue(task("alice.j.0", "alice"))
    assert s.assign() == []
    s.ended("alice")
    assert [a.task.task_id for a in s.assign()] == ["alice.j.0"]


def test_without_a_quota_nothing_is_held_back() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(4), None, available=True)
    for i in range(4):
        s.enqueue(task(f"alice.j.{i}", "alice"))
    assert len(s.assign()) == 4
    for _ in range(4):
        s.ended("alice")
    assert s.running == {}
