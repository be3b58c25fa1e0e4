"""Helpers for orchestration tests: a whole network on one real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from actors.world import World
from events.job import ProviderCredited, SubmitterCharged, UsageMetered
from events.store import JetStreamEventStore
from events.subjects import intake_subject
from events.task import TaskCompleted


async def submit(nc: NATS, job_id: str, spec: dict[str, Any]) -> None:
    """Publish a job to intake, as any client in any language would."""
    await nc.jetstream().publish(intake_subject("job", job_id, "submit"), json.dumps(spec).encode())


async def read_world(store: JetStreamEventStore) -> tuple[World, list[Any]]:
    """The world folded from the whole log, and the log itself."""
    w = World()
    log = []
    async for env in store.read_all():
        w.apply(env)
        log.append(env)
    return w, log


async def wait_for(
    store: JetStreamEventStore, predicate: Callable[[World], bool], timeout: float = 60.0, poll: float = 0.5
) -> tuple[World, list[Any]]:
    """Poll the log until ``predicate`` holds on the world it folds to."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        w, log = await read_world(store)
        if predicate(w):
            return w, log
        if loop.time() > deadline:
            statuses = Counter(j.status for j in w.jobs.values())
            tasks = Counter(t.status for t in w.tasks.values())
            raise AssertionError(f"timed out: jobs {dict(statuses)}, tasks {dict(tasks)}")
        await asyncio.sleep(poll)


def all_jobs_ended(n: int) -> Callable[[World], bool]:
    """At least ``n`` jobs, none still running."""
    return lambda w: len(w.jobs) >= n and all(j.status not in ("none", "accepted") for j in w.jobs.values())


def assert_exactly_once(log: list[Any]) -> None:
    """No task completed twice; every job's books balance."""
    completions = Counter(e.subject for e in log if isinstance(e.data, TaskCompleted))
    assert completions and max(completions.values()) == 1, completions.most_common(3)
    per_job: dict[str, list[int]] = {}
    for e in log:
        if isinstance(e.data, UsageMetered | SubmitterCharged | ProviderCredited):
            row = per_job.setdefault(e.data.job_id, [0, 0, 0])
            idx = 0 if isinstance(e.data, UsageMetered) else 1 if isinstance(e.data, SubmitterCharged) else 2
            row[idx] += e.data.amount_micros
    for job_id, (metered, charged, credited) in per_job.items():
        assert metered == charged == credited, (job_id, metered, charged, credited)
