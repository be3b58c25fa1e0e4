"""Tasks set aside (no provider of their shape free) come back when a slot of their shape frees up.

Found by the long stateful test (``tests/property/test_orchestration_invariants.py``,
``TestLongOrchestration``, in CI): a task handed back for provider B's free slot, set aside again
(a higher priority took the slot), then handed back for provider A's slot, still counted against B's
free slots, so when B's next slot freed up the task behind it stayed aside beside that free slot.
"""

from __future__ import annotations

from actors.scheduler import PendingTask, Scheduler
from events.types import Capabilities, Estimate, Resources


def caps(slots: int, backend: str = "cuda") -> Capabilities:
    gpu = backend == "cuda"
    return Capabilities(
        backend=backend,  # type: ignore[arg-type]
        gpu_model="x",
        vram_mb=40_000 if gpu else 8_000,
        compute_capability=8.0 if gpu else 0.0,
        slots=slots,
        workloads=("noop",),
    )


def task(task_id: str, submitter: str, priority: int = 5) -> PendingTask:
    return PendingTask(task_id, submitter, priority, "noop", Resources(backend="cuda"), Estimate())


def test_a_task_handed_back_twice_counts_against_one_providers_slot_only() -> None:
    s = Scheduler()
    s.upsert_provider("a", caps(1), None, available=True)
    s.upsert_provider("b", caps(2), None, available=True)
    s.upsert_provider("cpu", caps(1, "cpu"), None, available=True)  # free, but fits no GPU task
    for i in range(3):
        s.enqueue(task(f"u{i}.f.0", f"u{i}"))
    assert sorted(a.provider_id for a in s.assign()) == ["a", "b", "b"]  # every GPU slot taken
    s.enqueue(task("bob.z.0", "bob"))
    s.enqueue(task("bob.x.0", "bob"))
    assert s.assign() == []  # both wait aside
    s.release("b")  # z is handed back for b's slot...
    s.enqueue(task("w.w.0", "w", priority=9))
    assert [(a.task.task_id, a.provider_id) for a in s.assign()] == [("w.w.0", "b")]  # ...which w takes
    s.release("a")  # z is handed back again, now for a's slot
    s.release("b")  # and x for b's: nothing of theirs is left waiting beside a free slot
    placed = {a.task.task_id: a.provider_id for a in s.assign()}
    assert set(placed) == {"bob.z.0", "bob.x.0"} and sorted(placed.values()) == ["a", "b"]
    assert s.pending() == 0
