"""The runner (``actors.runner``): intents against the real shells over a real in-memory store that
injects faults on demand (``FaultyStore``): batching, the fallback from a failed batch, retries with
backoff, refusals that are final, and what is in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from actors.job import job_decider
from actors.provider import provider_decider
from actors.reactions import Intent
from actors.runner import BATCH, MIN_BATCH, Runner, batches
from actors.shell import ActorShell
from actors.task import CreateTask, ReportStarted, task_decider
from tests.factories import T0, at
from tests.unit.test_shell import FaultyStore, created


def runner_over(store: FaultyStore) -> Runner:
    def shell(decider: Any) -> ActorShell[Any, Any]:
        return ActorShell(store, decider, source="test")  # type: ignore[arg-type]

    return Runner(shell(job_decider), shell(task_decider), shell(provider_decider))


def create(task_id: str) -> Intent:
    return Intent("task", task_id, CreateTask(command_id=f"ct-{task_id}", at=T0, created=created(task_id)))


async def drained(runner: Runner) -> None:
    """Wait until nothing is in flight (retries spawn more work as they go)."""
    while runner.inflight:
        await asyncio.wait(list(runner.inflight), timeout=10)


async def tasks_created(store: FaultyStore) -> set[str]:
    return {e.stream.removeprefix("task.") for e in await store.log() if e.type == "TaskCreated"}


def appends(store: FaultyStore) -> list[int]:
    """The size of each append tried: 1 for a single-event append, n for an atomic batch of n streams."""
    return [len(streams) for streams, _, _ in store.tried]


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(0, []), (1, [1]), (MIN_BATCH - 1, [1] * (MIN_BATCH - 1)), (MIN_BATCH, [MIN_BATCH]), (1200, [500, 500, 200])],
)
def test_batches_are_single_below_the_minimum_and_capped_above_it(n: int, sizes: list[int]) -> None:
    assert BATCH == 500
    got = list(batches(n))
    assert [end - start for start, end in got] == sizes
    assert [s for s, _ in got] == sorted({s for s, _ in got}) and (not got or got[-1][1] == n)


async def test_many_intents_for_distinct_aggregates_go_out_as_atomic_batches() -> None:
    store = FaultyStore()
    runner = runner_over(store)
    ids = [f"ann.j.{i}" for i in range(BATCH + 20)]
    runner.submit_many([create(t) for t in ids])
    assert len(runner.inflight) == 2  # one batch of BATCH, one of the rest
    await drained(runner)
    assert sorted(appends(store)) == [20, BATCH]
    assert await tasks_created(store) == set(ids)


async def test_a_few_intents_or_repeated_aggregates_go_out_one_by_one() -> None:
    store = FaultyStore()
    runner = runner_over(store)
    few = [create(f"ann.j.{i}") for i in range(MIN_BATCH - 1)]
    # Many, but two of them for the same aggregate: order per aggregate needs them one at a time.
    repeated = [create(f"bob.j.{i}") for i in range(MIN_BATCH)] + [create("bob.j.0")]
    runner.submit_many(few)
    assert len(runner.inflight) == len(few)  # one command each, concurrently
    runner.submit_many(repeated)
    assert len(runner.inflight) == len(few) + len(repeated)
    await drained(runner)
    assert appends(store) == [1] * (len(few) + MIN_BATCH)  # the repeated create changes nothing: no append
    assert len(await tasks_created(store)) == len(few) + MIN_BATCH


async def test_a_failed_batch_falls_back_to_one_by_one_and_everything_lands() -> None:
    store = FaultyStore(down=1)  # the atomic batch fails before anything is written
    runner = runner_over(store)
    ids = [f"ann.j.{i}" for i in range(MIN_BATCH)]
    with capture_logs() as logs:
        runner.submit_many([create(t) for t in ids])
        await drained(runner)
    assert appends(store)[0] == MIN_BATCH and appends(store)[1:] == [1] * MIN_BATCH
    assert await tasks_created(store) == set(ids)
    assert [e["event"] for e in logs if e["event"].startswith("command.")] == ["command.batch_failed"]


async def test_a_store_failure_is_retried_with_backoff_until_the_command_lands() -> None:
    store = FaultyStore(down=2)
    runner = runner_over(store)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with capture_logs() as logs:
        runner.submit(create("ann.j.0"))
        await drained(runner)
    assert appends(store) == [1, 1, 1]
    assert await tasks_created(store) == {"ann.j.0"}
    assert [e["event"] for e in logs] == ["command.retry", "command.retry"]
    assert loop.time() - began >= 0.1 + 0.2 - 0.01  # backed off: 0.1 s, then 0.2 s


async def test_a_refused_command_is_final_and_never_retried() -> None:
    store = FaultyStore()
    runner = runner_over(store)
    started = ReportStarted(command_id="st-1", at=at(2), lease_id="l1", provider_id="p1")
    loop = asyncio.get_running_loop()
    began = loop.time()
    with capture_logs() as logs:
        runner.submit(Intent("task", "ann.nobody.0", started))  # no such task: the decider refuses
        await drained(runner)
    # Refused at once (logged at debug): no retry, no backoff, nothing written.
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == []
    assert loop.time() - began < 0.05
    assert store.tried == [] and await store.log() == []


async def test_what_is_in_flight_is_tracked_until_done() -> None:
    store = FaultyStore(down=1)
    runner = runner_over(store)
    runner.submit(create("ann.j.0"))
    assert len(runner.inflight) == 1
    await asyncio.sleep(0.05)  # the first try failed; the retry is waiting out its backoff
    assert len(runner.inflight) == 1
    await drained(runner)
    assert not runner.inflight and await tasks_created(store) == {"ann.j.0"}
