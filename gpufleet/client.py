"""The Python client for submitters: submit a job, follow its events, get its result, cancel it.

Example (needs a running network, for instance ``gpufleet up``)::

    import asyncio
    from gpufleet import Client

    async def main() -> None:
        async with await Client.connect("nats://127.0.0.1:4222") as client:
            job = await client.submit({"workload": "montecarlo", "params": {"samples": 1_000_000, "seed": 7}})
            async for event in job.events():
                print(event.type)
            for r in await job.result():
                print(r.index, r.value)

    asyncio.run(main())

Everything goes through NATS: the job spec is published to the intake stream (so it is durable the
moment ``submit`` returns), and the job's state is folded from the event log with the same code the
orchestrator uses. Nothing here is Python-specific: see ``examples/`` for Node.js and raw NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import api
from pydantic import ValidationError

from actors.job import ENDED, validate_spec
from actors.world import World
from events import Envelope, InvalidPayload, StoreUnavailable
from events.codec import decode_message
from events.errors import first_error
from events.intake import InputRejected
from events.job import JobCancelled, JobFailed, JobRejected, JobSpec
from events.store.connection import connect_nats
from events.store.topology import Topology
from events.subjects import intake_subject
from events.types import ResultRef, utc_now
from gpufleet.errors import (
    JobCancelledError,
    JobEndedError,
    JobFailedError,
    JobRejectedError,
    ResultIntegrityError,
    UnknownJobError,
)

__all__ = ["Client", "Job", "JobStatus", "TaskResult", "TaskStatus", "new_job_id"]

_TERMINAL = frozenset({"rejected", *ENDED})
#: Where the orchestrator records intake outcomes (a refused submission appears only there).
OUTCOMES = "intake.outcomes"


def new_job_id() -> str:
    """A fresh job id: sortable by time, unique without coordination."""
    return f"j{int(time.time() * 1000):x}{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """One task of a job, as the log tells it."""

    task_id: str
    index: int
    status: str
    provider_id: str | None
    attempt: int
    failures: int
    progress: float
    predicted_s: float
    started_at: datetime | None
    completed_at: datetime | None
    result: ResultRef | None


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job folded from its events."""

    job_id: str
    status: str
    submitter: str
    workload: str
    task_count: int
    tasks: list[TaskStatus]
    predicted_s: float
    cost_micros: int
    reason: str
    field: str | None
    submitted_at: datetime | None
    position: int

    @property
    def ended(self) -> bool:
        """True once the job is completed, failed, cancelled or rejected."""
        return self.status in _TERMINAL

    def count(self, *statuses: str) -> int:
        """How many tasks are in one of ``statuses``."""
        return sum(1 for t in self.tasks if t.status in statuses)

    @property
    def progress(self) -> float:
        """Fraction of the job done: completed tasks plus the running ones' reported progress."""
        if not self.task_count:
            return 1.0 if self.status == "completed" else 0.0
        done = sum(1.0 if t.status == "completed" else t.progress for t in self.tasks)
        return min(1.0, done / self.task_count)

    def eta_s(self, now: datetime | None = None) -> float | None:
        """Seconds until the job should finish: measured progress once there is some, else the prediction."""
        if self.ended or self.submitted_at is None:
            return 0.0 if self.ended else None
        elapsed = ((now or utc_now()) - self.submitted_at).total_seconds()
        p = self.progress
        if p >= 0.05:
            return max(0.0, elapsed * (1.0 - p) / p)
        return max(0.0, self.predicted_s - elapsed) if self.predicted_s else None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A completed task's result: ``value`` when small (inline JSON), ``data`` (verified bytes) otherwise."""

    task_id: str
    index: int
    sha256: str
    size: int
    value: Any = None
    data: bytes | None = None
    object_name: str | None = None


def _spec(spec: JobSpec | Mapping[str, Any]) -> JobSpec:
    if isinstance(spec, JobSpec):
        return spec
    try:
        return JobSpec.model_validate_json(json.dumps(dict(spec)))
    except ValidationError as e:
        raise first_error(e) from e
    except (TypeError, ValueError) as e:
        raise InvalidPayload(f"not a JSON object: {e}", field="spec") from e


class Client:
    """A connection to a gpufleet network. Use :meth:`connect`; close it, or use ``async with``."""

    def __init__(self, nc: NATS, topology: Topology | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.topology = topology or Topology()

    @classmethod
    async def connect(cls, url: str = "nats://127.0.0.1:4222", *, timeout: float = 5.0) -> Client:
        """Connect to the network's NATS server (or cluster) at ``url``.

        Raises ``StoreUnavailable`` with one line when it cannot be reached.
        """
        return cls(await connect_nats(url, name="gpufleet-client", timeout=timeout))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            await self.nc.close()

    async def submit(self, spec: JobSpec | Mapping[str, Any], *, job_id: str | None = None) -> Job:
        """Validate ``spec`` here (typed errors name the field), publish it to intake, return the job.

        The job is durable once this returns: the intake stream keeps it even if no orchestrator runs.
        """
        job_spec = _spec(spec)
        problem = validate_spec(job_spec, utc_now())
        if problem is not None:
            raise problem
        job_id = job_id or new_job_id()
        head = await self._head()
        body = job_spec.model_dump_json().encode()
        # The same job sent again (a retry) is stored once; another spec under a used id still reaches
        # the orchestrator, which refuses it on the record.
        msg_id = f"{job_id}:{hashlib.sha256(body).hexdigest()[:16]}"
        try:
            ack = await self.js.publish(intake_subject("job", job_id, "submit"), body, headers={"Nats-Msg-Id": msg_id})
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"could not submit job {job_id}: {e!s}") from e
        return Job(self, job_id, after=head, intake_seq=ack.seq)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (``UnknownJobError`` on first use if there is none)."""
        return Job(self, job_id, after=None)

    async def _head(self) -> int:
        try:
            info = await self.js.stream_info(self.topology.events.name)
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"the event log is not reachable: {e!s}") from e
        return int(info.state.last_seq)

    async def _first_position(self, job_id: str) -> int | None:
        """The log position of the job's first event, or None if it has none yet."""
        subject = f"{self.topology.events.prefix}.job.{job_id}"
        req = json.dumps({"seq": 1, "next_by_subj": subject}).encode()
        try:
            msg = await self.nc.request(f"$JS.API.DIRECT.GET.{self.topology.events.name}", req, timeout=5.0)
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"the event log is not reachable: {e!s}") from e
        if msg.headers and "Nats-Sequence" in msg.headers:
            return int(msg.headers["Nats-Sequence"])
        return None

    async def _read(
        self, job_id: str, after: int, *, follow: bool, intake_seq: int | None = None
    ) -> AsyncIterator[Envelope]:
        """The job's and its tasks' events after ``after`` (and the refusal of its submission, if
        ``intake_seq`` is given); stops at the head unless ``follow``."""
        prefix = self.topology.events.prefix
        task_prefix = f"task.{job_id}-"
        job_stream = f"job.{job_id}"
        subjects = [f"{prefix}.job.{job_id}", f"{prefix}.task.>"]
        if intake_seq is not None:
            subjects.append(f"{prefix}.{OUTCOMES}")
        end = None if follow else await self._head()
        if end is not None and end <= after:
            return
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            filter_subjects=subjects,
        )
        sub = await self.js.subscribe(
            f"{prefix}.>",
            stream=self.topology.events.name,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=2.0,
        )
        cut = len(prefix) + 1
        try:
            async for msg in sub.messages:
                seq = msg.metadata.sequence.stream
                stream = msg.subject[cut:]
                if stream == job_stream or stream.startswith(task_prefix):
                    with contextlib.suppress(InvalidPayload):  # a malformed record never blocks the rest
                        yield decode_message(stream, msg.data, msg.headers, seq)
                elif stream == OUTCOMES:
                    with contextlib.suppress(InvalidPayload):
                        env = decode_message(stream, msg.data, msg.headers, seq)
                        if isinstance(env.data, InputRejected) and env.data.intake_seq == intake_seq:
                            yield env
                if end is not None and (seq >= end or msg.metadata.num_pending == 0):
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class Job:
    """One job: follow it, wait for it, fetch its result, cancel it."""

    def __init__(self, client: Client, job_id: str, *, after: int | None, intake_seq: int | None = None) -> None:
        self.client = client
        self.id = job_id
        self._after = after
        #: The intake stream's sequence of our submission: its refusal, if any, names it.
        self.intake_seq = intake_seq

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    async def _start(self, *, wait: float = 0.0) -> int:
        if self._after is not None:
            return self._after
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            first = await self.client._first_position(self.id)
            if first is not None:
                self._after = first - 1
                return self._after
            if loop.time() >= deadline:
                raise UnknownJobError(self.id)
            await asyncio.sleep(0.2)

    async def events(self, *, until_ended: bool = True) -> AsyncIterator[Envelope]:
        """Every event of this job and its tasks, from its submission, live.

        Ends after the job's ending event when ``until_ended`` (settlement events may follow it in
        the log). If the connection drops, it resumes where it was.
        """
        after = await self._start(wait=10.0)
        while True:
            try:
                async for env in self.client._read(self.id, after, follow=True, intake_seq=self.intake_seq):
                    after = env.sequence
                    yield env
                    if until_ended and _ends(env, self.id):
                        return
            except (nats.errors.Error, OSError):
                await asyncio.sleep(0.5)  # reconnecting: the connection retries by itself

    async def status(self) -> JobStatus:
        """The job now, folded from the log (``UnknownJobError`` if it does not exist)."""
        after = await self._start()
        world = World()
        last: Any = None
        position = after
        async for env in self.client._read(self.id, after, follow=False, intake_seq=self.intake_seq):
            world.apply(env)
            position = env.sequence
            if _ends(env, self.id):
                last = env.data
        if self.id not in world.jobs:
            if isinstance(last, InputRejected):
                return _refused(self.id, last, position)
            raise UnknownJobError(self.id)
        return _status(self.id, world, last, position)

    async def wait(self, timeout: float | None = None) -> JobStatus:
        """Wait until the job ends; its final status."""

        async def run() -> None:
            async for _ in self.events():
                pass

        if timeout is None:
            await run()
        else:
            await asyncio.wait_for(run(), timeout)
        return await self.status()

    async def result(self, timeout: float | None = None) -> list[TaskResult]:
        """Wait for the job and return each task's result, in task order, every digest verified.

        Raises ``JobRejectedError``, ``JobFailedError`` or ``JobCancelledError`` when it ended otherwise.
        """
        st = await self.wait(timeout)
        if st.status != "completed":
            error: type[JobEndedError] = {
                "rejected": JobRejectedError,
                "failed": JobFailedError,
                "cancelled": JobCancelledError,
            }.get(st.status, JobEndedError)
            raise error(self.id, st.status, st.reason, st.field)
        return [await self.fetch(t) for t in st.tasks]

    async def fetch(self, t: TaskStatus) -> TaskResult:
        """One task's result, fetched from the object store when it is not inline, digest checked."""
        ref = t.result
        if ref is None:
            raise JobEndedError(self.id, "completed", f"task {t.task_id} has no result")
        if ref.object is None:
            data = json.dumps(ref.inline, sort_keys=True, separators=(",", ":")).encode()
            if hashlib.sha256(data).hexdigest() != ref.sha256:
                raise ResultIntegrityError(f"task {t.task_id}: the inline result does not match its sha256")
            return TaskResult(t.task_id, t.index, ref.sha256, ref.size, value=ref.inline)
        try:
            store = await self.client.js.object_store(ref.object.bucket)
            obj = await store.get(ref.object.name)
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"cannot fetch {ref.object.name}: {e!s}") from e
        data = obj.data or b""
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ResultIntegrityError(f"task {t.task_id}: {ref.object.name} does not match its sha256")
        value = None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            value = json.loads(data)
        return TaskResult(t.task_id, t.index, ref.sha256, ref.size, value=value, data=data, object_name=ref.object.name)

    async def cancel(self, reason: str = "") -> None:
        """Ask the network to cancel the job; running tasks are stopped on their providers."""
        await self._start()
        body = json.dumps({"reason": reason[:2000]}).encode()
        try:
            await self.client.js.publish(intake_subject("job", self.id, "cancel"), body)
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"could not cancel job {self.id}: {e!s}") from e


def _ends(env: Envelope, job_id: str) -> bool:
    """True for the event that ends job ``job_id``: its ending, or the refusal of its submission."""
    if env.type == "InputRejected":
        return True
    return env.subject == f"job.{job_id}" and env.type in ("JobCompleted", "JobFailed", "JobCancelled", "JobRejected")


def _refused(job_id: str, e: InputRejected, position: int) -> JobStatus:
    return JobStatus(
        job_id=job_id,
        status="rejected",
        submitter="",
        workload="",
        task_count=0,
        tasks=[],
        predicted_s=0.0,
        cost_micros=0,
        reason=e.reason,
        field=e.field,
        submitted_at=e.at,
        position=position,
    )


def _status(job_id: str, world: World, last: Any, position: int) -> JobStatus:
    job = world.jobs[job_id]
    spec = job.spec
    tasks = []
    for tid in world.job_tasks(job_id):
        t = world.tasks[tid]
        lease = t.lease
        tasks.append(
            TaskStatus(
                task_id=tid,
                index=t.spec.index if t.spec else 0,
                status=t.status,
                provider_id=lease.provider_id if lease else None,
                attempt=t.attempt,
                failures=t.failures,
                progress=t.progress,
                predicted_s=lease.predicted_s if lease else 0.0,
                started_at=lease.started_at if lease else None,
                completed_at=t.completed_at,
                result=t.result,
            )
        )
    reason, field = "", None
    if isinstance(last, JobRejected | InputRejected):
        reason, field = last.reason, last.field
    elif isinstance(last, JobFailed | JobCancelled):
        reason = last.reason
    return JobStatus(
        job_id=job_id,
        status=job.status,
        submitter=spec.submitter if spec else "",
        workload=spec.workload if spec else "",
        task_count=job.task_count,
        tasks=tasks,
        predicted_s=job.predicted_s,
        cost_micros=sum(m.amount_micros for m in job.metered.values()),
        reason=reason,
        field=field,
        submitted_at=job.submitted_at,
        position=position,
    )
