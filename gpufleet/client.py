"""The Python client for submitters: submit a job, follow its events, get its result, cancel it.

Example (needs a running network, for instance ``gpufleet up``, and a submitter's credentials)::

    import asyncio
    from gpufleet import Client

    async def main() -> None:
        async with await Client.connect("nats://127.0.0.1:4222", creds="alice.creds") as client:
            job = await client.submit({"workload": "montecarlo", "params": {"samples": 1_000_000, "seed": 7}})
            async for event in job.events():
                print(event.type)
            for r in await job.result():
                print(r.index, r.value)

    asyncio.run(main())

Everything goes through NATS as the identity in the credentials: the job spec is published to that
identity's intake subject (so it is durable the moment ``submit`` returns, and its submitter is the
credential, not the body), and the job's state is folded from its events, which the network's event
feed gives to the job's owner and nobody else, with the same code the orchestrator uses. Nothing
here is Python-specific: see ``examples/`` for Node.js and raw NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from actors.job import ENDED, validate_spec
from actors.task import TaskState
from actors.world import World
from events import Envelope, InvalidPayload, StoreUnavailable
from events.aio import cancel_and_wait
from events.codec import from_json_line
from events.errors import AccessDenied, first_error
from events.estimates import run_start
from events.identity import Identity
from events.intake import InputRejected
from events.job import JobCancelled, JobCompleted, JobFailed, JobRejected, JobSpec
from events.live import MAX_LIVE_BYTES, decode_live, is_current, live_envelope
from events.quotas import QUOTA_OPERATION
from events.store.blobs import BlobStore, ObjectIntegrityError
from events.store.connection import Access, connect_nats, raise_if_denied
from events.store.topology import Topology
from events.subjects import (
    api_subject,
    intake_subject,
    job_owner,
    live_filter,
    object_name,
    outcomes_stream,
    submitted_job,
)
from events.task import TaskFailed
from events.tlog import Checkpoint, NoteKey
from events.types import ObjectRef, ResultRef, is_valid_id, utc_now
from events.verification import inline_sha256
from gpufleet.errors import (
    JobCancelledError,
    JobEndedError,
    JobFailedError,
    JobRejectedError,
    ResultIntegrityError,
    UnknownJobError,
)
from gpufleet.eta import Eta, Timings, job_eta, task_eta
from gpufleet.functions import Call, Function
from gpufleet.receipts import CheckpointKeeper, Receipt, fetch_receipt, refresh
from projections.quote import QUOTE_OPERATION, Quote

__all__ = ["Client", "FunctionJob", "Job", "JobStatus", "TaskResult", "TaskStatus", "new_job_id"]

_TERMINAL = frozenset({"rejected", *ENDED})
#: What a job's follower holds of stored events and live messages not yet taken.
_INBOX = 512


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
    #: The lease's prediction interval (p10 to p90): None in leases made before intervals existed.
    predicted_low_s: float | None = None
    predicted_high_s: float | None = None
    #: When the task last reported progress (the rate it reports is measured up to then).
    progress_at: datetime | None = None

    def eta(self, now: datetime | None = None) -> Eta | None:
        """Seconds left with their interval while it holds a lease (``gpufleet.eta``'s rules); else None."""
        if self.status not in ("leased", "running"):
            return None
        return task_eta(
            predicted_s=self.predicted_s,
            low_s=self.predicted_low_s,
            high_s=self.predicted_high_s,
            started_at=self.started_at if self.status == "running" else None,
            progress=self.progress if self.status == "running" else 0.0,
            progress_at=self.progress_at,
            now=now or utc_now(),
        )


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
    #: The acceptance's prediction interval (p10 to p90): None in acceptances before intervals existed.
    predicted_low_s: float | None = None
    predicted_high_s: float | None = None
    #: When it was accepted (``predicted_s`` counts from then) and when it ended.
    accepted_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def ended(self) -> bool:
        """True once the job is completed, failed, cancelled or rejected."""
        return self.status in _TERMINAL

    def count(self, *statuses: str) -> int:
        """How many tasks are in one of ``statuses``."""
        return sum(1 for t in self.tasks if t.status in statuses)

    @property
    def not_created(self) -> int:
        """Tasks of an accepted job that do not exist yet: a job's tasks are created in windows, as its
        submitter's earlier tasks are leased (``actors.window``). They wait, as queued tasks do."""
        return max(0, self.task_count - len(self.tasks)) if self.status in ("accepted", "running") else 0

    @property
    def progress(self) -> float:
        """Fraction of the job done: completed tasks plus the running ones' reported progress."""
        if not self.task_count:
            return 1.0 if self.status == "completed" else 0.0
        done = sum(1.0 if t.status == "completed" else t.progress for t in self.tasks)
        return min(1.0, done / self.task_count)

    def eta(self, now: datetime | None = None) -> Eta | None:
        """Seconds until the job should finish, with their interval: from its acceptance's prediction
        until a task is leased, then from its tasks' leases and progress (``gpufleet.eta``'s rules).
        None once it ended, or when nothing predicts it."""
        return job_eta(self, now or utc_now())

    def eta_s(self, now: datetime | None = None) -> float | None:
        """Seconds until the job should finish (``eta``'s point): 0 once ended, None when unknown."""
        if self.ended:
            return 0.0
        e = self.eta(now)
        return e.seconds if e is not None else None

    @property
    def took_s(self) -> float | None:
        """How long a completed job took from its acceptance (what ``predicted_s`` predicted); else None."""
        since = self.accepted_at or self.submitted_at
        if self.status != "completed" or since is None or self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - since).total_seconds())


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
    """A connection to a gpufleet network as one identity. Use :meth:`connect`; close it, or ``async with``."""

    def __init__(self, nc: NATS, identity: Identity | None = None, topology: Topology | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.identity = identity
        self.topology = topology or Topology()
        #: Resolved at the next reconnection (then replaced): a question in flight when the link
        #: dropped is asked again at once, rather than waited out to its timeout.
        self._reconnect: asyncio.Future[None] | None = None
        #: The last signed checkpoint verified (see :meth:`trust`).
        self.checkpoints: CheckpointKeeper | None = None

    def trust(self, notary_key: NoteKey | str, keep: Path | None = None) -> CheckpointKeeper:
        """Trust checkpoints signed by ``notary_key`` (``network.json``'s ``notary_key``), keeping the
        last one verified in memory and, given ``keep``, in that file across runs."""
        key = notary_key if isinstance(notary_key, NoteKey) else NoteKey.parse(notary_key)
        self.checkpoints = CheckpointKeeper(key, keep)
        return self.checkpoints

    def _keeper(self) -> CheckpointKeeper:
        if self.checkpoints is None:
            raise AccessDenied("no trusted notary key: Client.trust(network.json's notary_key) first")
        return self.checkpoints

    async def checkpoint(self) -> Checkpoint:
        """The latest signed checkpoint, verified with the trusted key and shown (by a consistency
        proof) to extend the last one this client verified: ``HistoryRewritten`` if it does not."""
        me = self.identity or Identity("auditor", "anonymous")
        return await refresh(self.nc, me.role, me.name, self._keeper())

    async def receipt(self, job_id: str) -> Receipt:
        """Inclusion proofs of a job's entries (yours; a provider's: its usage and credits in it),
        verified here, that keep verifying offline with ``Receipt.verify(notary key)``."""
        me = self.identity
        if me is None:
            raise AccessDenied("this client has no credentials: Client.connect(url, creds=PATH)")
        return await fetch_receipt(self.nc, me.role, me.name, self.job_id(job_id), self._keeper())

    def reconnected(self) -> None:
        """The connection came back: wake every request that was in flight when it dropped."""
        if self._reconnect is not None and not self._reconnect.done():
            self._reconnect.set_result(None)
        self._reconnect = None

    def _next_reconnect(self) -> asyncio.Future[None]:
        if self._reconnect is None:
            self._reconnect = asyncio.get_running_loop().create_future()
        return self._reconnect

    @classmethod
    async def connect(
        cls,
        url: str = "nats://127.0.0.1:4222",
        *,
        creds: str | Path | None = None,
        tls_ca: str | Path | None = None,
        timeout: float = 5.0,
    ) -> Client:
        """Connect to the network at ``url`` as the identity in ``creds`` (a NATS ``.creds`` file).

        Raises ``AccessDenied`` (without or with refused credentials) or ``StoreUnavailable``, one line each.
        """
        access = Access(url, Path(creds) if creds else None, Path(tls_ca) if tls_ca else None)
        identity = access.identity()
        holder: list[Client] = []

        async def reconnected() -> None:
            if holder:
                holder[0].reconnected()

        client = cls(
            await connect_nats(access, name="gpufleet-client", timeout=timeout, on_reconnect=reconnected), identity
        )
        holder.append(client)
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            await self.nc.close()

    def _me(self, role: str = "submitter") -> Identity:
        me = self.identity
        if me is None:
            raise AccessDenied("this client has no credentials: Client.connect(url, creds=PATH)")
        if me.role != role:
            raise AccessDenied(f"these credentials are {me}: only a {role} may do that")
        return me

    def job_id(self, name: str) -> str:
        """The full id of job ``name`` (``<submitter>.<name>``); a full id is returned as it is."""
        if job_owner(name) is not None:
            return name
        me = self._me()
        return f"{me.name}.{name}"

    async def submit(self, spec: JobSpec | Mapping[str, Any], *, job_id: str | None = None) -> Job:
        """Validate ``spec`` here (typed errors name the field), publish it to intake, return the job.

        ``job_id`` is the job's name (one token; default: a fresh one); its full id is
        ``<your name>.<name>``. The job is durable once this returns: the intake stream keeps it even
        if no orchestrator runs.
        """
        me = self._me()
        job_spec = _spec(spec)
        problem = validate_spec(job_spec, utc_now())
        if problem is not None:
            raise problem
        name = job_id or new_job_id()
        owner = job_owner(name)
        if owner is not None:
            if owner != me.name:
                raise AccessDenied(f"job {name!r} is {owner!r}'s: you submit as {me.name!r}")
            name = name.partition(".")[2]
        if not is_valid_id(name):
            raise InvalidPayload(f"{name!r} must be one token of letters, digits, '-' or '_'", field="job_id")
        if job_spec.submitter not in ("", me.name):
            raise InvalidPayload(
                f"names {job_spec.submitter!r}, but these credentials are {me.name!r}", field="submitter"
            )
        body = job_spec.model_dump_json(exclude={"submitter"}).encode()
        # The same job sent again (a retry) is stored once; another spec under a used id still reaches
        # the orchestrator, which refuses it on the record.
        msg_id = f"{me.name}.{name}:{hashlib.sha256(body).hexdigest()[:16]}"
        subject = intake_subject("submitter", me.name, "submit", name)
        ack = await self._publish(subject, body, headers={"Nats-Msg-Id": msg_id})
        return Job(self, f"{me.name}.{name}", intake_seq=ack)

    async def quota(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """This identity's quotas and usage, as the orchestrator holds them (``events.quotas``): for a
        submitter ``{"submitter", "limits", "usage"}``; for an auditor every busy submitter's. No answer:
        ``StoreUnavailable``."""
        me = self.identity
        if me is None:
            raise AccessDenied("this client has no credentials: Client.connect(url, creds=PATH)")
        subject = api_subject(me.role, me.name, QUOTA_OPERATION)
        with self._asking("the orchestrator", "is it running?", subject, me):
            msg = await self.nc.request(subject, b"", timeout=timeout)
        doc = _answer(msg.data, "the orchestrator")
        if "error" in doc:
            raise InvalidPayload(str(doc["error"]), field=doc.get("field"))
        return doc

    async def quote(self, spec: JobSpec | Mapping[str, Any], *, timeout: float = 10.0) -> Quote:
        """What submitting ``spec`` now would give: the capable device classes, the predicted time per
        task with its interval, the cost, the start and finish given the queue, or why nothing can run
        it (``projections.quote``). Nothing is submitted and nothing is written to the log.

        A spec the network would refuse raises ``InvalidPayload`` naming the field; no answer,
        ``StoreUnavailable``.
        """
        me = self._me()
        job_spec = _spec(spec)
        problem = validate_spec(job_spec, utc_now())
        if problem is not None:
            raise problem
        if job_spec.submitter not in ("", me.name):
            raise InvalidPayload(
                f"names {job_spec.submitter!r}, but these credentials are {me.name!r}", field="submitter"
            )
        subject = api_subject(me.role, me.name, QUOTE_OPERATION)
        body = job_spec.model_dump_json(exclude={"submitter"}).encode()
        with self._asking("the quote service", "are its projections on?", subject, me):
            msg = await self.nc.request(subject, body, timeout=timeout)
        doc = _answer(msg.data, "the quote service")
        if "error" in doc:
            raise InvalidPayload(f"the network refused to quote it: {doc['error']}", field=doc.get("field"))
        return Quote.from_json(doc)

    @contextlib.contextmanager
    def _asking(self, service: str, hint: str, subject: str, me: Identity) -> Iterator[None]:
        """A request to one of the network's services: NATS failures as one line naming it."""
        try:
            yield
        except nats.errors.NoRespondersError as e:
            raise StoreUnavailable(f"{service} does not answer ({hint})") from e
        except nats.errors.TimeoutError as e:
            raise_if_denied(self.nc, subject, str(me))
            raise StoreUnavailable(f"{service} did not answer in time") from e
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"cannot reach {service}: {e!s}") from e

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        """Publish to intake; the intake stream's sequence. A full intake or a refusal is one clear line."""
        try:
            ack = await self.js.publish(subject, body, headers=headers, timeout=10.0)
        except nats.js.errors.APIError as e:
            if "maximum" in str(e.description or ""):
                raise StoreUnavailable(
                    f"the network's intake is full ({e.description}): nothing was taken; try again later"
                ) from e
            raise StoreUnavailable(f"the network refused the message: {e.description or e}") from e
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise_if_denied(self.nc, subject, str(self.identity or "a client without credentials"))
            raise StoreUnavailable(f"the network did not confirm {subject}: {e!s}") from e
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"could not publish {subject}: {e!s}") from e
        return int(ack.seq)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job, by full id or by your job's name (``UnknownJobError`` on first use)."""
        return Job(self, self.job_id(job_id))

    async def upload(self, data: bytes) -> ObjectRef:
        """Store an input (a sharded job's input, a kernel argument) under your name; its reference."""
        me = self._me()
        return await BlobStore(self.nc, "submitter", me.name, self.topology).put(data)

    async def download(self, ref: ObjectRef) -> bytes:
        """An object you may read (your inputs; your jobs' results), its sha256 checked."""
        me = self.identity
        if me is None:
            raise AccessDenied("this client has no credentials: Client.connect(url, creds=PATH)")
        return await BlobStore(self.nc, me.role, me.name, self.topology).get(ref)

    async def map(
        self,
        fn: Function,
        calls: Iterable[Mapping[str, Any] | Sequence[Any]],
        *,
        name: str | None = None,
        seed: int = 0,
    ) -> FunctionJob:
        """Run ``fn`` (a ``@gpufleet.function``) once per call, as one job of one task per call.

        A call is a dict of arguments by name, or a list of them by position after ``xp``; each is
        JSON or an array. Everything is checked before anything is uploaded (``FunctionArgumentError``
        or ``InvalidPayload`` naming the call and argument). The code archive and each distinct
        array (as ``.npy``) are stored once, by content; ``name`` is the job's name, ``seed`` the
        seed of every call's ``ctx``. ``await job.result()`` gives the return values in call order.
        """
        return await self._run_calls(fn, fn.bind_all(calls), name=name, seed=seed)

    def function_job(self, job_id: str) -> FunctionJob:
        """A handle on an existing job of a function's calls (``map``), by full id or by name."""
        return FunctionJob(self, self.job_id(job_id))

    async def call(self, fn: Function, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the network (a job of one task) and return its value."""
        job = await self._run_calls(fn, [fn.bind(args, kwargs)], name=None, seed=0)
        values = await job.result()
        return values[0]

    async def _run_calls(self, fn: Function, calls: list[Call], *, name: str | None, seed: int) -> FunctionJob:
        from gpu_runtime.usercode import save_npy

        me = self._me()
        blobs: dict[str, bytes] = {}

        def ref(data: bytes) -> ObjectRef:
            # The reference upload will return, known before anything is uploaded: the spec is
            # checked whole first, so a refused one leaves nothing behind.
            digest = hashlib.sha256(data).hexdigest()
            blobs.setdefault(digest, data)
            name = object_name("submitter", me.name, digest)
            return ObjectRef(bucket=self.topology.objects_stream, name=name, sha256=digest, size=len(data))

        archive, _ = fn.archive()
        code = ref(archive)
        spec = fn.spec(code, [(c, {k: ref(save_npy(a)) for k, a in c.arrays.items()}) for c in calls], seed=seed)
        problem = validate_spec(spec, utc_now())
        if problem is not None:
            raise problem
        for data in blobs.values():
            await self.upload(data)
        job = await self.submit(spec, job_id=name)
        return FunctionJob(self, job.id, intake_seq=job.intake_seq)

    async def feed(self, streams: list[str], after: int, *, wait_s: float = 0.0) -> tuple[list[Envelope], int, int]:
        """Events of ``streams`` after ``after`` from the network's feed: (events, read up to, head).

        The feed serves only the streams this identity may read (``events.subjects.readable``).
        """
        me = self.identity
        if me is None:
            raise AccessDenied("this client has no credentials: Client.connect(url, creds=PATH)")
        req = json.dumps({"streams": streams, "after": after, "wait_s": wait_s}).encode()
        subject = api_subject(me.role, me.name, "events")
        with self._asking("the event feed", "is its orchestrator running?", subject, me):
            while True:
                # A server that restarts forgets the question; the answer would never come. So the
                # request races the next reconnection, and is asked again if that comes first.
                reconnect = self._next_reconnect()
                request = asyncio.ensure_future(self.nc.request(subject, req, timeout=wait_s + 10.0))
                racing: list[asyncio.Future[Any]] = [request, reconnect]
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                if request.done():
                    msg = request.result()
                    break
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
                    await request
        doc = _answer(msg.data, "the event feed")
        if "error" in doc:
            raise AccessDenied(f"the event feed refused: {doc['error']}")
        events = [from_json_line(json.dumps(d)) for d in doc["events"]]
        return events, int(doc["last"]), int(doc["head"])

    async def _read(
        self, job_id: str, after: int, *, follow: bool, intake_seq: int | None = None
    ) -> AsyncIterator[Envelope]:
        """The job's and its tasks' events after ``after`` (and the refusal of its submission, if
        ``intake_seq`` is given); stops at the head unless ``follow``."""
        streams = [f"job.{job_id}", f"task.{job_id}.*"]
        owner = job_owner(job_id)
        if intake_seq is not None and owner is not None:
            streams.append(outcomes_stream("submitter", owner))
        while True:
            events, last, head = await self.feed(streams, after, wait_s=20.0 if follow else 0.0)
            for env in events:
                refusal = isinstance(env.data, InputRejected) and env.data.intake_seq == intake_seq
                if env.subject.startswith("intake.") and not refusal:
                    continue  # another message of ours: not about this job
                yield env
            after = max(after, last)
            if not follow and after >= head:
                return


class Job:
    """One job: follow it, wait for it, fetch its result, cancel it."""

    def __init__(self, client: Client, job_id: str, *, intake_seq: int | None = None) -> None:
        self.client = client
        self.id = job_id
        #: The intake stream's sequence of our submission: its refusal, if any, names it.
        self.intake_seq = intake_seq

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    @property
    def name(self) -> str:
        """The job's name, without its owner."""
        return self.id.partition(".")[2] or self.id

    async def events(self, *, until_ended: bool = True, live: bool = True) -> AsyncIterator[Envelope]:
        """Every event of this job and its tasks, from its submission, live.

        Ends after the job's ending event when ``until_ended`` (settlement events may follow it in
        the log). If the connection drops, it resumes where it was.

        With ``live``, the running tasks' live progress comes too (``events.live``: fraction and rate
        are not stored events). Each is a ``TaskProgressed`` without a checkpoint in an envelope whose
        ``source`` is ``events.live.LIVE_SOURCE`` and whose ``sequence`` is the last stored event's
        (``events.live.is_live``), yielded only if its provider and lease are the task's current
        lease as the events before it show: a stale, forged, oversized or malformed one is dropped.
        It is at most once: a watcher that connects (or reconnects) late sees it from then on.
        """
        if self.intake_seq is None:
            try:
                await self._exists(wait=10.0)
            except UnknownJobError:
                refusal = await self._refusal()
                if refusal is None:
                    raise
                yield refusal  # it never became a job: its refusal is all there is
                return
        # Stored events and live messages, in the order they came. Live ones never take more than
        # half of it (a flood of them would otherwise starve the log), and are dropped when it is full.
        inbox: asyncio.Queue[Envelope | tuple[str, bytes] | BaseException] = asyncio.Queue(maxsize=_INBOX)
        subscription = await self._live(inbox) if live else None
        reader = asyncio.get_running_loop().create_task(self._stored(inbox))
        # Folded as it comes, to tell the current lease of each task from a stale or forged one.
        world = World()
        position = 0
        # With our submission's intake sequence, the job's end counts only once that submission's
        # outcome is known: an earlier job under the same id may have ended already (and a different
        # spec under its id is refused: that refusal, not the old job's end, is this job's end).
        decided = self.intake_seq is None
        ended = False
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, tuple):
                    shown = _live_progress(world, *item, position)
                    if shown is not None:
                        yield shown
                    continue
                env = item
                position = env.sequence
                world.apply(env)
                yield env
                if env.type == "InputRejected":
                    return
                decided = decided or env.type == "InputAccepted" or env.id.startswith(f"in-{self.intake_seq}.")
                ended = ended or _ends(env, self.id)
                if until_ended and decided and ended:
                    return
        finally:
            await cancel_and_wait([reader], every_s=0.25, timeout_s=5.0)
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _stored(self, inbox: asyncio.Queue[Envelope | tuple[str, bytes] | BaseException]) -> None:
        """Put the job's stored events in ``inbox`` as they come, resuming after a dropped connection;
        an error that retrying cannot mend goes in ``inbox`` too."""
        after = 0
        try:
            while True:
                try:
                    async for env in self.client._read(self.id, after, follow=True, intake_seq=self.intake_seq):
                        after = env.sequence
                        await inbox.put(env)
                except (nats.errors.Error, OSError):
                    await asyncio.sleep(0.5)  # reconnecting: the connection retries by itself
                except StoreUnavailable as e:
                    if isinstance(e, AccessDenied):
                        raise
                    await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await inbox.put(e)

    async def _live(self, inbox: asyncio.Queue[Envelope | tuple[str, bytes] | BaseException]) -> Any:
        """Subscribe to the job's live progress (core NATS); None for a job from before identities."""
        subject = live_filter(self.id)
        if subject is None:
            return None

        async def heard(msg: Msg) -> None:
            if len(msg.data) <= MAX_LIVE_BYTES and inbox.qsize() < _INBOX // 2:
                inbox.put_nowait((msg.subject, msg.data))

        try:
            return await self.client.nc.subscribe(subject, cb=heard)
        except nats.errors.Error:
            return None  # the stored events still tell the progress of every checkpoint

    async def _exists(self, wait: float) -> None:
        """Raise ``UnknownJobError`` unless the job has an event within ``wait`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        after = 0
        while True:
            left = deadline - loop.time()
            events, last, _ = await self.client.feed([f"job.{self.id}"], after, wait_s=max(0.0, min(left, 5.0)))
            if events:
                return
            after = last
            if loop.time() >= deadline:
                raise UnknownJobError(self.id)

    async def _refusal(self) -> Envelope | None:
        """The latest refusal, at intake, of a submission of this job (from its owner's intake
        outcomes): for a job that never came to be, the reason it did not."""
        owner = job_owner(self.id)
        if owner is None:
            return None
        found: Envelope | None = None
        after = 0
        while True:
            events, last, head = await self.client.feed([outcomes_stream("submitter", owner)], after)
            for env in events:
                if isinstance(env.data, InputRejected) and submitted_job(env.data.subject) == self.id:
                    found = env
            if last <= after or last >= head:
                return found
            after = last

    async def status(self) -> JobStatus:
        """The job now, folded from its events; a submission refused at intake is a ``rejected`` job
        with its reason (``UnknownJobError`` if neither exists)."""
        world = World()
        timings = Timings()
        last: Any = None
        position = 0
        async for env in self.client._read(self.id, 0, follow=False, intake_seq=self.intake_seq):
            position = env.sequence
            if isinstance(env.data, InputRejected):
                # Our submission was refused: whatever else holds this id is not our job.
                return _refused(self.id, env.data, position)
            world.apply(env)
            timings.apply(env)
            if _ends(env, self.id):
                last = env.data
        if self.id not in world.jobs:
            refusal = await self._refusal()
            if refusal is None or not isinstance(refusal.data, InputRejected):
                raise UnknownJobError(self.id)
            return _refused(self.id, refusal.data, refusal.sequence)
        return _status(self.id, world, last, position, timings)

    async def wait(self, timeout: float | None = None) -> JobStatus:
        """Wait until the job ends; its final status."""

        async def run() -> None:
            async for _ in self.events(live=False):
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
        """One task's result, fetched from the objects stream when it is not inline, digest checked."""
        ref = t.result
        if ref is None:
            raise JobEndedError(self.id, "completed", f"task {t.task_id} has no result")
        if ref.object is None:
            if inline_sha256(ref.inline) != ref.sha256:
                raise ResultIntegrityError(f"task {t.task_id}: the inline result does not match its sha256")
            return TaskResult(t.task_id, t.index, ref.sha256, ref.size, value=ref.inline)
        try:
            data = await self.client.download(ref.object)
        except ObjectIntegrityError as e:
            raise ResultIntegrityError(f"task {t.task_id}: {e}") from e
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ResultIntegrityError(f"task {t.task_id}: {ref.object.name} does not match its sha256")
        value = None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            value = json.loads(data)
        return TaskResult(t.task_id, t.index, ref.sha256, ref.size, value=value, data=data, object_name=ref.object.name)

    async def cancel(self, reason: str = "") -> None:
        """Ask the network to cancel the job; running tasks are stopped on their providers."""
        me = self.client._me()
        owner = job_owner(self.id)
        if owner != me.name:
            raise AccessDenied(f"job {self.id!r} is not yours to cancel ({me})")
        body = json.dumps({"reason": reason[:2000]}).encode()
        await self.client._publish(intake_subject("submitter", me.name, "cancel", self.name), body)


class FunctionJob(Job):
    """A job of a ``@gpufleet.function``'s calls (``Client.map``): its result is their return values."""

    async def task_results(self, timeout: float | None = None) -> list[TaskResult]:
        """Wait for the job; each task's raw result (its summary), in call order, digests verified."""
        return await super().result(timeout)

    async def result(self, timeout: float | None = None) -> list[Any]:
        """Wait for the job and return the function's values, in call order (arrays as NumPy arrays).

        A job that failed raises ``JobFailedError`` carrying the function's own traceback as its
        provider reported it; rejected or cancelled ones, ``JobRejectedError``/``JobCancelledError``.
        """
        try:
            results = await super().result(timeout)
        except JobFailedError as e:
            raise await self._failure(e) from None
        return [await self.value(r) for r in results]

    async def value(self, r: TaskResult) -> Any:
        """One task's return value, decoded from its summary (its arrays fetched, digest checked)."""
        from gpu_runtime.errors import WorkloadError
        from gpu_runtime.usercode import decode_result
        from gpu_runtime.workloads.context import load_arrays

        summary = r.value
        if not isinstance(summary, dict) or "value" not in summary:
            raise ResultIntegrityError(f"task {r.task_id}: its result is not a function's summary")
        arrays: dict[str, Any] = {}
        if summary.get("arrays") is not None:
            try:
                ref = ObjectRef.model_validate_json(json.dumps(summary["arrays"]))
            except ValidationError as e:
                raise ResultIntegrityError(f"task {r.task_id}: its arrays are not an object reference") from e
            try:
                arrays = load_arrays(await self.client.download(ref))
            except ObjectIntegrityError as e:
                raise ResultIntegrityError(f"task {r.task_id}: {e}") from e
            except WorkloadError as e:  # a provider's .npz that is no valid one (or would inflate past itself)
                raise ResultIntegrityError(f"task {r.task_id}: its arrays: {e.message}") from e
        return decode_result(summary, arrays)

    async def _failure(self, e: JobFailedError) -> JobFailedError:
        """The job's failure with the dead task's own message (the function's traceback, as its
        provider reported it, up to 2000 characters): the job's reason quotes it, but cut to fit."""
        dead: dict[str, TaskFailed] = {}
        culprit: str | None = None
        async for env in self.client._read(self.id, 0, follow=False):
            if isinstance(env.data, TaskFailed) and env.data.terminal:
                dead[env.data.task_id] = env.data
            elif isinstance(env.data, JobFailed):
                culprit = env.data.task_id
        failed = dead.get(culprit) if culprit is not None else None
        if failed is None:
            return e  # it failed for another reason (its deadline): the job's reason says it all
        reason = f"task {failed.task_id} failed: {failed.reason}: {failed.message}"
        return JobFailedError(self.id, e.status, reason, e.field)


def _answer(data: bytes, service: str) -> dict[str, Any]:
    """A service's JSON object answer (``StoreUnavailable`` for anything else)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise StoreUnavailable(f"{service} answered something that is not JSON") from e
    if not isinstance(doc, dict):
        raise StoreUnavailable(f"{service} answered something that is not a JSON object")
    return doc


def _ends(env: Envelope, job_id: str) -> bool:
    """True for the event that ends job ``job_id``: its ending, or the refusal of its submission."""
    if env.type == "InputRejected":
        return True
    return env.subject == f"job.{job_id}" and env.type in ("JobCompleted", "JobFailed", "JobCancelled", "JobRejected")


def _live_progress(world: World, subject: str, data: bytes, position: int) -> Envelope | None:
    """A live message as the envelope a watcher folds, if it is valid and comes from its task's current
    lease as ``world`` (the job's events so far) shows it; None for anything else (never an error)."""
    try:
        update = decode_live(subject, data)
    except (InvalidPayload, ValueError):
        return None
    t = world.tasks.get(update.task_id)
    lease = t.lease if t is not None else None
    if t is None or lease is None:
        return None
    if not is_current(update, status=t.status, lease_id=lease.lease_id, provider_id=lease.provider_id):
        return None
    return live_envelope(update, received_at=utc_now(), position=position)


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
        ended_at=e.at,
    )


def _status(job_id: str, world: World, last: Any, position: int, timings: Timings | None = None) -> JobStatus:
    """The job as ``world`` folded it; ``timings`` (folded from the same events) adds its predictions'
    intervals and the times its ETA counts from."""
    times = timings or Timings()
    job = world.jobs[job_id]
    spec = job.spec
    tasks = []
    for tid in world.job_tasks(job_id):
        t = world.tasks[tid]
        lease = t.lease
        low, high, progress_at = times.task(tid)
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
                started_at=_began(t),
                completed_at=t.completed_at,
                result=t.result,
                predicted_low_s=low if lease else None,
                predicted_high_s=high if lease else None,
                progress_at=progress_at if lease else None,
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
        predicted_low_s=times.low,
        predicted_high_s=times.high,
        accepted_at=times.accepted_at,
        ended_at=last.at if isinstance(last, JobCompleted | JobFailed | JobCancelled) else None,
    )


def _began(t: TaskState) -> datetime | None:
    """When ``t``'s run began, as the log shows it: its start, or, for a completed task whose completion
    implied its start (a short task reports none: ``events.dispatch.START_REPORT_S``), its lease."""
    lease = t.lease
    if lease is None:
        return None
    if t.status == "completed" and lease.leased_at is not None:
        return run_start(lease.leased_at, lease.started_at)
    return lease.started_at
