"""``actors.dispatcher.grant``: the dispatch message of a task's current lease says what the log says
of the lease and of the task (its spec, its attempt, where to resume from)."""

from __future__ import annotations

from dataclasses import replace

from actors.dispatcher import grant
from actors.task import TaskState
from events import MemoryEventStore
from events.types import ObjectRef
from tests.unit.test_shell import leased, shell_over

CHECKPOINT = ObjectRef(bucket="gf-objects", name="provider/p1/ck-1", sha256="ab" * 32, size=10)


async def leased_state(task_id: str = "ann.j.3") -> TaskState:
    shell = shell_over(MemoryEventStore())
    await leased(shell, task_id)
    state, _ = await shell.state(task_id)
    return state


async def test_a_grant_carries_the_lease_the_spec_and_the_attempt() -> None:
    t = await leased_state()
    g = grant("ann.j.3", t)
    assert g is not None and t.spec is not None and t.lease is not None
    assert (g.task_id, g.job_id, g.provider_id, g.lease_id) == ("ann.j.3", "ann.j", "p1", "l1")
    assert (g.expires_at, g.predicted_s, g.attempt) == (t.lease.expires_at, t.lease.predicted_s, t.attempt)
    assert (g.workload, g.params, g.timeout_s) == (t.spec.workload, t.spec.params, t.spec.timeout_s)
    assert (g.input, g.shard) == (t.spec.input, t.spec.shard)
    assert (g.resume_from, g.resume_step) == (None, 0)


async def test_a_grant_of_a_sharded_task_names_its_input_and_its_shard() -> None:
    t = await leased_state()
    assert t.spec is not None
    sharded = replace(t, spec=t.spec.model_copy(update={"input": CHECKPOINT, "shard": (3, 8)}))
    g = grant("ann.j.3", sharded)
    assert g is not None and (g.input, g.shard) == (CHECKPOINT, (3, 8))


async def test_a_grant_resumes_from_the_tasks_checkpoint_and_its_step_only_with_one() -> None:
    t = await leased_state()
    g = grant("ann.j.3", replace(t, checkpoint=CHECKPOINT, checkpoint_step=40))
    assert g is not None and (g.resume_from, g.resume_step) == (CHECKPOINT, 40)
    # A step without a checkpoint to resume from means nothing: the run starts over.
    g = grant("ann.j.3", replace(t, checkpoint=None, checkpoint_step=40))
    assert g is not None and (g.resume_from, g.resume_step) == (None, 0)


async def test_no_grant_without_a_lease_or_a_spec() -> None:
    t = await leased_state()
    assert grant("ann.j.3", replace(t, lease=None)) is None
    assert grant("ann.j.3", replace(t, spec=None)) is None
    assert grant("ann.j.3", TaskState()) is None
