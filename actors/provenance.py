"""Provenance: every event in the log has a legitimate cause, and that cause makes exactly this event.

The replayer of ``gpufleet replay --audit``, in the spirit of Temporal's: new code, old histories,
the same decisions. Each aggregate's events were appended one decision at a time, with ids
``<command id>.<n>``. For each decision it finds the cause and rebuilds the command from it:

- **an intake message** (command id ``in-<seq>``): the message is read from the intake stream, decoded
  by the current schema and translated as the orchestrator translates it. The translation checks the
  sender's identity, which the message's subject carries and the server's permissions enforce, against
  the target (a provider reports only on its own leases; a submitter cancels only its own jobs). One
  message causes one decision, or one recorded outcome.
- **a reaction** to an earlier event, or whatever a restarted orchestrator still owed: the replayer runs
  the orchestrator's own core (``actors.core.Core``: the same world, reactions and reconciliation) over
  the log, and the decision must be one that the core asked for by then.
- **a durable timer** (a lease's expiry, a retry's backoff, a deadline, a verification's wait): the
  core arms its timers from the log as the orchestrator does; the timer must be due by the decision's
  time, and the decider itself refuses one that fires early.
- **a lease by the scheduler**: the task was queued, and the provider was registered, online, had a
  free slot and fits the task by the placement rule (``events.placement``) at the lease's price.
- **a window** (``actors.window``): a task of an accepted job is created when its submitter's window
  has room, which depends on the orchestrator's configuration and timing, not on the log alone. The
  creation is checked for legality: the job was accepted, the index is one of its tasks, the command
  id is the one derived for that task (so it is created once), and the task is exactly the job's plan
  for that index (``actors.reactions.plan_task``).
- **liveness** (a provider lost or back online): judged from heartbeats in a KV bucket, which the log
  does not hold. These decisions are checked for legality only and counted as taken on trust.

Then, on the state folded from the log before it, the aggregate's decider must decide exactly the
recorded events. Anything else is a :class:`Problem` naming the event, its position and what is wrong.
There is no second fold of the domain here: states come from the deciders' ``evolve``, owed commands
from the reactions, due times from the core's timers.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Protocol

import nats.errors
import nats.js.errors

from actors.core import MIN_LEASE_START_S, Core
from actors.decider import Decider
from actors.errors import DomainError
from actors.ids import derive_id, split_event_id
from actors.intake import intake_command as translate_intake
from actors.job import (
    CancelJob,
    CompleteJob,
    DecideJob,
    FailJob,
    MeterUsage,
    MissDeadline,
    SettleJob,
    Share,
    SubmitJob,
    job_decider,
)
from actors.provider import HeartbeatLapsed, HeartbeatSeen, RegisterProvider, provider_decider
from actors.reactions import Intent, plan_task, reconcile
from actors.task import (
    CancelTask,
    CreateTask,
    ExpireLease,
    ExpireVerification,
    LeaseTask,
    QueueTask,
    ReportCompleted,
    ReportFailed,
    ReportProgress,
    TaskState,
    task_decider,
)
from actors.world import World
from events import Envelope, InvalidPayload
from events.errors import GpufleetError, StoreUnavailable
from events.intake import InputAccepted, InputRejected, decode_intake
from events.job import (
    ENDED_JOB_STATES,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadlineMissed,
    JobFailed,
    JobRejected,
    JobSubmitted,
    SubmitterCharged,
    UsageMetered,
)
from events.placement import misfits
from events.provider import ProviderLost, ProviderOnline
from events.store.blobs import BlobStore
from events.store.jetstream import JetStreamEventStore
from events.subjects import INTAKE_PREFIX, job_of_task
from events.task import (
    TERMINAL_TASK_STATES,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskQueued,
    TaskResultJudged,
    TaskResultReturned,
    TaskStarted,
)
from events.types import EventModel, ObjectRef
from events.verification import objects_to_compare

__all__ = [
    "CAUSES",
    "QUOTA",
    "IntakeRecord",
    "IntakeSource",
    "Problem",
    "ProvenanceReport",
    "Replayer",
    "intake_from",
    "intake_stream_source",
    "object_loader",
    "replay",
    "stream_head",
]

DECIDERS: dict[str, Decider[Any, Any]] = {"job": job_decider, "task": task_decider, "provider": provider_decider}
#: What can cause a decision, in the report's order.
CAUSES = ("intake", "outcome", "reaction", "timer", "lease", "window", "liveness")
#: Intake refusals for a quota (``events.quotas``): the limits are the operator's configuration and
#: the rates are of arrivals, neither of which the log holds. Taken on trust, and counted apart.
QUOTA = "quota"

#: Commands that are not idempotent by design: the same progress report again is new progress, and a
#: provider that registers again has restarted. Redelivered intake is recognised by command id instead.
_NOT_IDEMPOTENT = (ReportProgress, RegisterProvider)
#: Commands whose repetition is refused with a record: a lease on a task no longer queued, a failure
#: reported again after it ended the lease.
_REFUSED_AGAIN = (ReportFailed, LeaseTask)
#: How many of an aggregate's recent states an intake outcome may have been decided on (an outcome
#: whose append was retried can follow many decisions on a busy aggregate).
_RECENT_STATES = 64
#: Seconds of log time an ended aggregate's recent states are kept (an intake outcome's append is
#: retried with a backoff of at most 5 s, a message redelivered after 20 s).
_ENDED_KEPT_S = 600.0
#: Statuses after which an aggregate decides nothing more (its recent states go after a while).
_ENDED_STATES = TERMINAL_TASK_STATES | ENDED_JOB_STATES
#: Commands a timer issues.
_TIMED = (ExpireLease, ExpireVerification, MissDeadline, QueueTask)


@dataclass(frozen=True, slots=True)
class IntakeRecord:
    """One message of the intake stream, as stored."""

    seq: int
    subject: str
    body: bytes


class IntakeSource(Protocol):
    """Where the replayer reads intake messages: each one by its sequence, once."""

    async def take(self, seq: int) -> IntakeRecord | None:
        """The message at ``seq`` (None if the intake stream does not hold it)."""
        ...


class _MapIntake:
    def __init__(self, records: Iterable[IntakeRecord]) -> None:
        self._by_seq = {r.seq: r for r in records}

    async def take(self, seq: int) -> IntakeRecord | None:
        return self._by_seq.get(seq)


def intake_from(records: Iterable[IntakeRecord] | Mapping[int, IntakeRecord]) -> IntakeSource:
    """An intake source over messages in memory (a recording, a test)."""
    return _MapIntake(records.values() if isinstance(records, Mapping) else records)


class _StreamIntake:
    """Reads the intake stream in order, ahead of the log as far as the log asks, and forgets each
    message once it is taken: memory holds only the messages read ahead and not yet used."""

    def __init__(self, messages: AsyncIterator[IntakeRecord]) -> None:
        self._it = messages
        self._ahead: dict[int, IntakeRecord] = {}
        self._read = 0
        self._done = False

    async def take(self, seq: int) -> IntakeRecord | None:
        while not self._done and self._read < seq:
            try:
                rec = await anext(self._it)
            except StopAsyncIteration:
                self._done = True
                break
            self._read = rec.seq
            self._ahead[rec.seq] = rec
        return self._ahead.pop(seq, None)


def intake_stream_source(messages: AsyncIterable[IntakeRecord]) -> IntakeSource:
    """An intake source over the intake stream, read once, in order (``messages`` ascending by seq)."""
    return _StreamIntake(aiter(messages))


@dataclass(frozen=True, slots=True)
class Problem:
    """An event without a legitimate cause, or one its cause does not make."""

    position: int
    stream: str
    event: str
    message: str

    def __str__(self) -> str:
        return f"{self.event} on {self.stream} at position {self.position}: {self.message}"


@dataclass
class ProvenanceReport:
    """What the replayer re-decided, by cause, and every problem."""

    events: int = 0
    decisions: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    #: Decisions whose inputs the replayer could not read (a result object no longer stored, say).
    unchecked: int = 0
    #: The lease grace the log was written with (inferred from the first started report).
    grace_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when every decision has its cause, and its cause makes it."""
        return not self.problems and self.decisions > 0

    @property
    def on_trust(self) -> int:
        """Decisions taken on the orchestrator's word (liveness: heartbeats are not in the log; quota
        refusals: the limits are configuration, the rates are of arrivals)."""
        return self.causes["liveness"] + self.causes[QUOTA]

    def summary(self) -> str:
        """One line: how many decisions, by cause."""
        by = ", ".join(f"{self.causes[c]} {c}" for c in (*CAUSES, QUOTA) if self.causes[c])
        extra = f"; {self.unchecked} not re-decided (inputs unreadable)" if self.unchecked else ""
        return f"re-decided {self.decisions} decisions over {self.events} events ({by or 'none'}){extra}"


@dataclass
class _Decision:
    stream: str
    command_id: str
    envs: list[Envelope]

    @property
    def kind(self) -> str:
        return self.stream.split(".", 1)[0]

    @property
    def aggregate_id(self) -> str:
        return self.stream.split(".", 1)[1]

    @property
    def position(self) -> int:
        return self.envs[0].sequence

    @cached_property
    def events(self) -> list[EventModel]:
        return [e.data for e in self.envs]

    @property
    def at(self) -> datetime:
        at: datetime = self.envs[0].data.at  # type: ignore[attr-defined]
        return at

    @property
    def intake_seq(self) -> int | None:
        head, _, seq = self.command_id.partition("-")
        return int(seq) if head == "in" and seq.isascii() and seq.isdigit() else None

    @cached_property
    def lead(self) -> EventModel:
        """The event that names the command: verdicts on held results come first when a task ends."""
        return next((x for x in self.events if not isinstance(x, TaskResultJudged)), self.events[0])


class _NoCause(Exception):
    """The decision has no legitimate cause (the message says why)."""


#: Loads a result object by reference, for comparisons (None: the replayer cannot read objects).
LoadObject = Callable[[ObjectRef], Awaitable[Any]]


class Replayer:
    """Feed it the log in order (``feed``), then ``finish`` for the report.

    ``grace_s`` is the orchestrator's lease grace when the log was written; None infers it from the
    first started report and holds every later one to it. ``idempotence`` also checks that each
    command, decided again on the state after it, changes nothing (the golden tests ask for it).
    """

    def __init__(
        self,
        intake: IntakeSource,
        *,
        grace_s: float | None = None,
        load_object: LoadObject | None = None,
        idempotence: bool = False,
        max_problems: int = 10_000,
    ) -> None:
        self.intake = intake
        self.report = ProvenanceReport(grace_s=grace_s)
        self._load = load_object
        self._idempotence = idempotence
        self._max_problems = max_problems
        # The orchestrator's own core, fed the log as a live orchestrator is fed it: its world is the
        # deciders' fold, its reactions and timers say what is owed when.
        self.core = Core(materialise=False)
        # Placement is checked against the world (``_lease_allowed``), and the ETA of an acceptance is
        # taken from the record: the replayer needs no scheduler's queues.
        self.core.scheduler = _Unscheduled()  # type: ignore[assignment]
        self._owed: dict[tuple[str, str], Intent] = {}
        #: (stream, command type) -> the command ids of the owed intents of that type outstanding.
        self._owed_of: dict[tuple[str, str], dict[str, None]] = {}
        self._intake_used: dict[int, int] = {}
        self._current: _Decision | None = None
        self._last_cid: dict[str, tuple[str, int]] = {}
        #: The last states of each live aggregate, before each of its recent decisions (intake outcomes
        #: are judged on them: see ``_outcome``); an aggregate's ring goes when it ends.
        self._recent: dict[str, deque[tuple[datetime, Any]]] = {}
        self._ended: deque[tuple[datetime, str]] = deque()

    # ---- feeding -----------------------------------------------------------------------------------

    async def feed(self, env: Envelope) -> None:
        """The next event of the log."""
        self.report.events += 1
        kind, _, _ = env.subject.partition(".")
        if kind in DECIDERS:
            cid = split_event_id(env.id)
            cur = self._current
            if cur is not None and cur.stream == env.subject and cur.command_id == cid:
                cur.envs.append(env)
                return
            await self._flush()
            self._current = _Decision(env.subject, cid, [env])
            return
        await self._flush()
        try:
            if isinstance(env.data, InputAccepted | InputRejected):
                await self._outcome(env)
            self.core.apply(env, live=False)
        except (StoreUnavailable, _Unreadable):
            raise
        except Exception as e:  # a hostile record is a finding, never the replayer's crash
            self._problem(env.sequence, env.subject, type(env.data).__name__, f"{type(e).__name__}: {e}")

    async def finish(self) -> ProvenanceReport:
        """The report, once the whole log has been fed."""
        await self._flush()
        if self.report.decisions == 0 and self.report.events:
            self._problem(0, "-", "-", "no decision was re-decided")
        return self.report

    async def _flush(self) -> None:
        d, self._current = self._current, None
        if d is not None:
            await self._decision(d)

    # ---- one decision ------------------------------------------------------------------------------

    def _problem(self, position: int, stream: str, event: str, message: str) -> None:
        if len(self.report.problems) < self._max_problems:
            one_line = " ".join(message.split())  # errors of pydantic and others span lines
            self.report.problems.append(Problem(position, stream, event, one_line[:1000]))

    async def _decision(self, d: _Decision) -> None:
        decider = DECIDERS[d.kind]
        world = self.core.world
        before = _state(world, d.kind, d.aggregate_id) or decider.initial_state()
        name = type(d.lead).__name__
        last = self._last_cid.get(d.stream)
        if last is not None and last[0] == d.command_id:
            self._problem(
                d.position, d.stream, name, f"a second decision of command {d.command_id} (the first at {last[1]})"
            )
        self._last_cid[d.stream] = (d.command_id, d.position)
        try:
            cause, cmd = await self._cause(d, before)
        except _NoCause as e:
            self._problem(d.position, d.stream, name, str(e))
            self._apply(d, owe=False)
            self._remember(d, before)
            return
        except _Unreadable:
            self.report.unchecked += 1
            self._apply(d)
            self._remember(d, before)
            return
        except Exception as e:  # a record no cause could make crashed its rebuilding: that is the finding
            self._problem(d.position, d.stream, name, f"its command cannot be rebuilt: {type(e).__name__}: {e}")
            self._apply(d, owe=False)
            self._remember(d, before)
            return
        self.report.decisions += 1
        self.report.causes[cause] += 1
        problem = self._redecide(decider, cmd, before, d)
        if problem is not None and cause in ("reaction", "timer"):
            # Owed, but the recorded command differs from the one owed at that event (a restarted
            # orchestrator reconciled it later, at its own time): the reconciled command must make it.
            again = self._reconciled(d, before)
            if again is not None and self._redecide(decider, again, before, d) is None:
                problem = None
        if problem is not None:
            index, text = problem
            where = d.envs[min(index, len(d.envs) - 1)]
            self._problem(where.sequence, d.stream, type(where.data).__name__, f"{type(cmd).__name__} ({cause}) {text}")
        elif self._idempotence:
            self._check_idempotent(decider, cmd, d)
        self._apply(d, owe=problem is None)
        self._remember(d, before)

    def _remember(self, d: _Decision, before: Any) -> None:
        self._recent.setdefault(d.stream, deque(maxlen=_RECENT_STATES)).append((d.at, before))
        after = _state(self.core.world, d.kind, d.aggregate_id)
        if getattr(after, "status", None) in _ENDED_STATES:
            # An outcome decided while it lived may still come (its append retried): its states are kept
            # for a while of log time after it ended, then forgotten, so memory follows live work.
            self._ended.append((d.at, d.stream))
        while self._ended and (d.at - self._ended[0][0]).total_seconds() > _ENDED_KEPT_S:
            _, stream = self._ended.popleft()
            ring = self._recent.get(stream)
            if ring is not None and ring[-1][0] <= d.at - timedelta(seconds=_ENDED_KEPT_S):
                del self._recent[stream]

    def _apply(self, d: _Decision, *, owe: bool = True) -> None:
        """Fold ``d`` into the world; ``owe``: and owe its reactions. A flagged decision is folded (what
        follows is judged on the state the orchestrator saw) but owes nothing: a forged acceptance of
        100,000 tasks must not make the replayer hold 100,000 owed creations."""
        for env in d.envs:
            try:
                fx = self.core.apply(env, live=owe)
            except Exception as e:  # the orchestrator's core would fail on it too: say so, and go on
                self._problem(
                    env.sequence,
                    d.stream,
                    type(env.data).__name__,
                    f"the orchestrator cannot apply it: {type(e).__name__}: {e}",
                )
                continue
            for intent in fx.intents:
                self._owe(intent)

    def _owe(self, intent: Intent) -> None:
        key = (f"{intent.kind}.{intent.aggregate_id}", intent.command.command_id)
        self._owed_of.setdefault((key[0], type(intent.command).__name__), {})[key[1]] = None
        self._owed[key] = intent

    def _settle_owed(self, key: tuple[str, str]) -> Intent | None:
        intent = self._owed.pop(key, None)
        if intent is not None:
            by_type = (key[0], type(intent.command).__name__)
            ids = self._owed_of.get(by_type, {})
            ids.pop(key[1], None)
            if not ids:
                self._owed_of.pop(by_type, None)
        return intent

    def _redecide(self, decider: Decider[Any, Any], cmd: Any, before: Any, d: _Decision) -> tuple[int, str] | None:
        """None when ``cmd`` decides exactly the recorded events; else (index of the first recorded event
        that differs, what differs)."""
        try:
            got = decider.decide(cmd, before)
        except DomainError as e:
            return 0, f"is refused by the decider: {e}"
        except Exception as e:  # the state no legitimate history reaches
            return 0, f"cannot be decided: {type(e).__name__}: {e}"
        if got != d.events:
            index, text = _first_difference(got, d.events)
            return index, f"decides differently: {text}"
        return None

    def _check_idempotent(self, decider: Decider[Any, Any], cmd: Any, d: _Decision) -> None:
        if isinstance(cmd, _NOT_IDEMPOTENT) or any(type(e).__name__ == "TaskResultRejected" for e in d.events):
            return
        after = decider.fold(d.events, _state(self.core.world, d.kind, d.aggregate_id) or decider.initial_state())
        try:
            again = decider.decide(cmd, after)
        except DomainError:
            again = []
        if again and not (
            isinstance(cmd, _REFUSED_AGAIN) and all(type(e).__name__ == "TaskResultRejected" for e in again)
        ):
            self._problem(
                d.position,
                d.stream,
                type(d.lead).__name__,
                f"{type(cmd).__name__} again is not a no-op: {[type(e).__name__ for e in again]}",
            )

    # ---- causes ------------------------------------------------------------------------------------

    async def _cause(self, d: _Decision, before: Any) -> tuple[str, Any]:
        """(cause, command) of decision ``d``, or ``_NoCause``."""
        seq = d.intake_seq
        if seq is not None:
            return "intake", await self._intake_command(d, seq)
        for intent in self.core.due(d.at):  # every timer due by now is owed from now on
            self._owe(intent)
        owed = self._settle_owed((d.stream, d.command_id))
        if owed is not None:
            cause = "timer" if isinstance(owed.command, _TIMED) else "reaction"
            return cause, self._owed_command(owed.command, d)
        cmd = self._from_events(d)
        if isinstance(cmd, LeaseTask):
            self._lease_allowed(cmd, d, before)
            return "lease", cmd
        if isinstance(cmd, CreateTask):
            self._creation_allowed(cmd, d)
            return "window", cmd
        if isinstance(cmd, HeartbeatLapsed | HeartbeatSeen):
            return "liveness", cmd
        if (again := self._owed_under_another_id(d, type(cmd).__name__, before)) is not None:
            # Owed under another id: a timer armed again (its id names its due time), or a command a
            # restarted orchestrator reconciled. The owed command itself (its fields, not the record's:
            # a forged meter or expiry of the same type must not pass) must make the recorded events,
            # and the decider's own checks (a lease expires only when it is due) whether it was owed now.
            return "timer" if isinstance(again, _TIMED) else "reaction", again
        if (reconciled := self._reconciled(d, before)) is not None:
            return "reaction", reconciled
        raise _NoCause(
            f"no cause: command {d.command_id} is no intake message, no reaction owed by an earlier event, "
            "no due timer, no lease by the scheduler and no liveness judgement"
        )

    def _owed_under_another_id(self, d: _Decision, command_type: str, before: Any) -> Any:
        """The owed command of ``command_type`` on ``d``'s stream that, issued under ``d``'s id at ``d``'s
        time, decides exactly ``d``'s events (settled), or None."""
        decider = DECIDERS[d.kind]
        for cid in list(self._owed_of.get((d.stream, command_type), ())):
            intent = self._owed[(d.stream, cid)]
            cmd = self._owed_command(replace(intent.command, command_id=d.command_id), d)
            if self._redecide(decider, cmd, before, d) is None:
                self._settle_owed((d.stream, cid))
                return cmd
        return None

    def _reconciled(self, d: _Decision, before: Any) -> Any:
        """The command a restarted orchestrator would owe for ``d`` now (by id), or None."""
        core = self.core
        for intent in reconcile(_near(core.world, d), d.at, core.predict_job, core.default_verify):
            if f"{intent.kind}.{intent.aggregate_id}" == d.stream and intent.command.command_id == d.command_id:
                return intent.command
        return None

    def _owed_command(self, cmd: Any, d: _Decision) -> Any:
        """An owed command, as it was issued: its time is the decision's; what only configuration and
        the scheduler's model knew is taken from the record (the ETA and the network's default policy)."""
        if isinstance(cmd, DecideJob):
            e = d.lead
            if isinstance(e, JobAccepted):
                return replace(
                    cmd,
                    at=d.at,
                    predicted_s=e.predicted_s,
                    predicted_low_s=e.predicted_low_s,
                    predicted_high_s=e.predicted_high_s,
                    default_verify=e.verify,
                )
            return replace(cmd, at=d.at)
        if isinstance(cmd, CreateTask):
            created = replace_model(cmd.created, at=d.at)
            return replace(cmd, at=d.at, created=created)
        return cmd if cmd.at == d.at else replace(cmd, at=d.at)

    def _lease_allowed(self, cmd: LeaseTask, d: _Decision, before: TaskState) -> None:
        """The scheduler's lease: a registered, online provider with a free slot that fits the task."""
        world = self.core.world
        p = world.providers.get(cmd.provider_id)
        why: list[str] = []
        if d.command_id != f"ls-{cmd.lease_id}":
            why.append(f"its command id {d.command_id} is not the scheduler's for lease {cmd.lease_id}")
        spec = before.spec
        start_s = (cmd.expires_at - cmd.at).total_seconds()
        if start_s < MIN_LEASE_START_S - 1e-3:
            why.append(
                f"it gives {start_s:.3f} s to start, under the least an orchestrator gives ({MIN_LEASE_START_S:g} s)"
            )
        if p is None or p.capabilities is None:
            why.append(f"provider {cmd.provider_id} never registered")
        else:
            if p.status != "online":
                why.append(f"provider {cmd.provider_id} is {p.status}")
            busy = len(world.active.get(cmd.provider_id, ()))
            if busy >= p.capabilities.slots:
                why.append(f"provider {cmd.provider_id} has no free slot ({busy} of {p.capabilities.slots} leased)")
            if spec is not None:
                why += misfits(p.capabilities, spec.resources, spec.workload, spec.max_price_micros, spec.submitter)
            if cmd.price_micros != p.capabilities.price_micros:
                why.append(f"price {cmd.price_micros} is not the provider's {p.capabilities.price_micros}")
        if why:
            raise _NoCause("a lease the scheduler would not make: " + "; ".join(why))

    def _creation_allowed(self, cmd: CreateTask, d: _Decision) -> None:
        """A window's creation: a task of a job accepted before it, under the id derived for it."""
        e = cmd.created
        job = self.core.world.jobs.get(e.job_id)
        if job is None or job.status in ("none", "submitted", "rejected"):
            raise _NoCause(f"task {e.task_id} was created for job {e.job_id}, which was never accepted before it")
        want = derive_id("ct-", e.job_id, e.index)
        if d.command_id != want:
            raise _NoCause(f"its command id {d.command_id} is not the one derived for task {e.task_id} ({want})")

    async def _intake_command(self, d: _Decision, seq: int) -> Any:
        first = self._intake_used.get(seq)
        if first is not None:
            raise _NoCause(f"intake message {seq} already caused the decision at position {first}")
        self._intake_used[seq] = d.position
        rec = await self.intake.take(seq)
        if rec is None:
            raise _NoCause(f"it names intake message {seq}, which the intake stream does not hold")
        kind, target, cmd = self._translate(rec, d.command_id, d.at, d)
        if f"{kind}.{target}" != d.stream:
            raise _NoCause(f"intake message {seq} ({rec.subject}) addresses {kind}.{target}, not {d.stream}")
        if isinstance(cmd, ReportCompleted):
            cmd = await self._verification_inputs(cmd, d)
        return cmd

    def _translate(self, rec: IntakeRecord, cid: str, at: datetime, d: _Decision | None) -> tuple[str, str, Any]:
        try:
            im = decode_intake(rec.subject, rec.body)
        except InvalidPayload as e:
            raise _NoCause(f"intake message {rec.seq} is refused by the intake schema: {e}") from e
        grace = self.report.grace_s
        if grace is None and d is not None and isinstance(d.lead, TaskStarted):
            grace = self.report.grace_s = _grace_of(d.lead, self.core.world.tasks.get(d.aggregate_id))
        try:
            cmd = translate_intake(im, cid, at, grace or 0.0)
        except (InvalidPayload, DomainError) as e:
            raise _NoCause(f"intake message {rec.seq} ({rec.subject}) is refused: {e}") from e
        return im.kind, im.target_id, cmd

    async def _verification_inputs(self, cmd: ReportCompleted, d: _Decision) -> ReportCompleted:
        """The orchestrator's inputs to a completion: the spot-check draw (random, so part of the
        record), the sender's trust as recorded, and result objects read again by name."""
        for e in d.events:
            spot = getattr(e, "spot", None)
            if isinstance(e, TaskCompleted | TaskResultReturned) and spot is not None:
                cmd = replace(cmd, draw=spot.draw, trust=spot.consecutive_valid)
                break
        t = self.core.world.tasks.get(d.aggregate_id)
        if t is None or t.spec is None or t.spec.verify is None:
            return cmd
        objects = objects_to_compare([c.result for c in t.candidates], cmd.result, cmd.provider_id)
        if not objects:
            return cmd
        if self._load is None:
            raise _Unreadable
        loaded: dict[str, Any] = {}
        for obj in objects:
            try:
                loaded[obj.name] = await self._load(obj)
            except (OSError, ValueError, LookupError, RecursionError, MemoryError):
                continue  # unreadable to the orchestrator too: it agreed with nothing
        return replace(cmd, loaded=loaded)

    def _from_events(self, d: _Decision) -> Any:
        """The command an internal decision was made by, as its events tell it."""
        e = d.lead
        cid, at = d.command_id, d.at
        match e:
            case TaskCreated():
                job = self.core.world.jobs.get(e.job_id)
                if job is None or job.spec is None:
                    raise _NoCause(f"task {e.task_id} was created for job {e.job_id}, not in the log before it")
                if not 0 <= e.index < job.task_count:
                    raise _NoCause(f"task index {e.index} is outside job {e.job_id}'s {job.task_count} task(s)")
                created = plan_task(e.job_id, job.spec, e.index, e.at, job.verify)
                return CreateTask(command_id=cid, at=at, created=created)
            case TaskLeased():
                return LeaseTask(
                    command_id=cid,
                    at=at,
                    lease_id=e.lease_id,
                    provider_id=e.provider_id,
                    expires_at=e.expires_at,
                    predicted_s=e.predicted_s,
                    predicted_low_s=e.predicted_low_s,
                    predicted_high_s=e.predicted_high_s,
                    price_micros=e.price_micros,
                )
            case TaskLeaseExpired():
                return ExpireLease(command_id=cid, at=at, lease_id=e.lease_id, reason=e.reason)
            case TaskQueued():
                return QueueTask(command_id=cid, at=at)
            case TaskCancelled():
                return CancelTask(command_id=cid, at=at, reason=e.reason)
            case TaskFailed() if e.reason == "unverifiable" and e.lease_id is None:
                return ExpireVerification(command_id=cid, at=at)
            case JobAccepted():
                return DecideJob(
                    command_id=cid,
                    at=at,
                    predicted_s=e.predicted_s,
                    predicted_low_s=e.predicted_low_s,
                    predicted_high_s=e.predicted_high_s,
                    default_verify=e.verify,
                )
            case JobRejected():
                return DecideJob(command_id=cid, at=at)
            case UsageMetered():
                shares = tuple(
                    Share(m.lease_id, m.provider_id, m.gpu_ms, m.price_micros)
                    for m in d.events
                    if isinstance(m, UsageMetered) and m.lease_id is not None
                )
                return MeterUsage(
                    command_id=cid,
                    at=at,
                    task_id=e.task_id,
                    provider_id=e.provider_id,
                    gpu_ms=e.gpu_ms,
                    price_micros=e.price_micros,
                    shares=shares,
                )
            case JobCompleted():
                return CompleteJob(command_id=cid, at=at)
            case SubmitterCharged():
                return SettleJob(command_id=cid, at=at)
            case JobFailed() if e.task_id is not None:
                return FailJob(command_id=cid, at=at, task_id=e.task_id, reason=e.reason)
            case JobCancelled():
                return CancelJob(command_id=cid, at=at, reason=e.reason)
            case JobDeadlineMissed():
                return MissDeadline(command_id=cid, at=at)
            case JobSubmitted():
                who = e.spec.submitter or None
                return SubmitJob(command_id=cid, at=at, job_id=e.job_id, spec=e.spec, submitter=who)
            case ProviderLost():
                return HeartbeatLapsed(command_id=cid, at=at, reason=e.reason)
            case ProviderOnline():
                return HeartbeatSeen(command_id=cid, at=at)
        raise _NoCause(f"no command is known to start with {type(e).__name__} outside intake")

    # ---- intake outcomes ---------------------------------------------------------------------------

    async def _outcome(self, env: Envelope) -> None:
        """An intake message with no facts: still refused (for the same field), or still accepted with
        no change. Either way it is that message's one outcome."""
        e = env.data
        assert isinstance(e, InputAccepted | InputRejected)
        name = type(e).__name__
        seq = e.intake_seq
        first = self._intake_used.get(seq)
        if first is not None:
            self._problem(env.sequence, env.subject, name, f"intake message {seq} already had its outcome at {first}")
            return
        self._intake_used[seq] = env.sequence
        rec = await self.intake.take(seq)
        where = f"intake message {seq} ({e.subject})"
        if rec is None:
            self._problem(env.sequence, env.subject, name, f"{where} is not in the intake stream")
            return
        if rec.subject != e.subject:
            self._problem(env.sequence, env.subject, name, f"{where}: the intake stream has it on {rec.subject}")
            return
        self.report.decisions += 1
        if isinstance(e, InputRejected) and (e.field or "").startswith("quota."):
            impossible = _no_quota_refuses(rec.subject, rec.body, e.field or "")
            if impossible is not None:
                self._problem(env.sequence, env.subject, name, f"{where}: {impossible}")
                return
            self.report.causes[QUOTA] += 1  # the operator's limits, on trust (see QUOTA)
            return
        self.report.causes["outcome"] += 1
        try:
            im = decode_intake(rec.subject, rec.body)
        except InvalidPayload as refused:
            verdict = self._outcome_verdict(e, where, refused, [])
        else:
            # The orchestrator decided the message on the aggregate as it stood then, and appended the
            # outcome to another stream: other decisions on the aggregate may stand between (many
            # messages are decided at once, by one or more orchestrators). Any of its recent states
            # that makes the recorded outcome is its cause.
            stream = f"{im.kind}.{im.target_id}"
            current = _state(self.core.world, im.kind, im.target_id) or DECIDERS[im.kind].initial_state()
            verdict = "?"
            # The states the aggregate held at any moment since the message came in: the current one, and
            # each that a decision replaced at or after the message's time.
            since = [state for at, state in reversed(self._recent.get(stream, ())) if at >= e.at]
            for state in [current, *since]:
                try:
                    cmd = translate_intake(im, env.id, e.at, self.report.grace_s or 0.0)
                    events = DECIDERS[im.kind].decide(cmd, state)
                except (InvalidPayload, DomainError) as refused:
                    found = self._outcome_verdict(e, where, refused, [])
                else:
                    found = self._outcome_verdict(e, where, None, events)
                if found is None:
                    verdict = None
                    break
                if verdict == "?":
                    verdict = found  # what the state at the outcome's position says, if none agrees
        if verdict is not None:
            self._problem(env.sequence, env.subject, name, verdict)

    @staticmethod
    def _outcome_verdict(
        e: InputAccepted | InputRejected, where: str, refused: Exception | None, events: list[EventModel]
    ) -> str | None:
        """None when deciding the message (``refused`` or ``events``) makes the recorded outcome."""
        if refused is not None:
            if isinstance(e, InputAccepted):
                return f"{where} was accepted, and is refused: {refused}"
            now = getattr(refused, "field", None)
            if now != e.field:
                return f"{where} is refused for field {now!r}, not {e.field!r} as recorded: {refused}"
            return None
        if isinstance(e, InputRejected):
            return f"{where} was refused ({e.reason}), and is accepted: {_names(events)}"
        if events and e.note != "no change (a duplicate)":
            return f"{where} changed nothing, and would: {_names(events)}"
        return None


#: Quotas that refuse any message of a submitter's (its rate, before the message is even decoded)...
_RATE_QUOTAS = frozenset({"quota.intake_per_s"})
#: ...and those that refuse only a job submission (``actors.admission.Admission.admit_job``).
_JOB_QUOTAS = frozenset({"quota.jobs_in_flight", "quota.tasks_queued", "quota.object_bytes"})


def _no_quota_refuses(subject: str, body: bytes, field: str) -> str | None:
    """Why no quota could have refused this intake message for ``field`` (None: one could). Quota
    refusals are taken on trust, but only where the orchestrator applies a quota: providers are never
    refused for one, ``tasks_running`` and ``intake_burst`` refuse nothing, and the job quotas only a
    submission."""
    if not subject.startswith(f"{INTAKE_PREFIX}.submitter."):
        return f"refused for {field}, but only a submitter's messages are refused for a quota"
    if field in _RATE_QUOTAS:
        return None
    if field not in _JOB_QUOTAS:
        return f"refused for {field}, which refuses no message"
    try:
        im = decode_intake(subject, body)
    except InvalidPayload:
        return f"refused for {field}, but it does not decode: it was refused for that, before any quota"
    if (im.kind, im.verb) != ("job", "submit"):
        return f"refused for {field}, which refuses only a job submission"
    return None


class _Unscheduled:
    """The scheduler's interface, keeping nothing: the replayer places no work."""

    def enqueue(self, *args: Any, **kw: Any) -> None:
        pass

    def discard(self, *args: Any) -> None:
        pass

    def occupy(self, *args: Any) -> None:
        pass

    def release(self, *args: Any) -> None:
        pass

    def started(self, *args: Any) -> None:
        pass

    def ended(self, *args: Any) -> None:
        pass

    def set_reputation(self, *args: Any) -> None:
        pass

    def set_weight(self, *args: Any) -> None:
        pass

    def upsert_provider(self, *args: Any, **kw: Any) -> None:
        pass

    def predict(self, *args: Any) -> None:
        return None

    def assign(self, *args: Any) -> list[Any]:
        return []


class _Unreadable(Exception):
    """A decision's inputs cannot be read by this replayer (no object store access)."""


class _Having(set[str]):
    """A job's tasks that claims to hold every task but ``missing``: reconciling one aggregate plans
    the creation of that task alone, not of every task a (forged) acceptance of 100,000 left missing."""

    def __init__(self, members: Iterable[str], missing: str | None) -> None:
        super().__init__(members)
        self.missing = missing

    def __contains__(self, task_id: object) -> bool:
        return task_id != self.missing


def _near(world: World, d: _Decision) -> World:
    """The part of ``world`` that what is owed to ``d``'s aggregate depends on: its job, the job's
    tasks (for a job) or the task (for a task) and the providers holding its lease. Reconciling it
    costs the aggregate's size, not the whole world's, for each decision that asks."""
    near = World()
    if d.kind == "job":
        job_id, missing = d.aggregate_id, None
        members = set(world.tasks_by_job.get(d.aggregate_id, ()))
    elif d.kind == "task":
        t = world.tasks.get(d.aggregate_id)
        job_id = t.spec.job_id if t is not None and t.spec is not None else job_of_task(d.aggregate_id)
        members = {d.aggregate_id} & world.tasks_by_job.get(job_id, set())
        missing = None if members else d.aggregate_id
        for provider_id, held in world.active.items():
            p = world.providers.get(provider_id)
            if members and d.aggregate_id in held and p is not None:
                near.providers[provider_id] = p
                near.active[provider_id] = {d.aggregate_id}
    else:
        return near
    if (job := world.jobs.get(job_id)) is not None:
        near.jobs[job_id] = job
    near.tasks = {task_id: world.tasks[task_id] for task_id in members}
    near.tasks_by_job[job_id] = _Having(members, missing)
    return near


def _state(world: Any, kind: str, aggregate_id: str) -> Any:
    table = {"job": world.jobs, "task": world.tasks, "provider": world.providers}[kind]
    return table.get(aggregate_id)


def _grace_of(started: TaskStarted, task: TaskState | None) -> float | None:
    if task is None or task.spec is None:
        return None
    return round((started.expires_at - started.at).total_seconds() - task.spec.timeout_s, 3)


def replace_model(model: Any, **changes: Any) -> Any:
    """A pydantic event with some fields changed (validated like the original)."""
    return type(model).model_validate({**model.model_dump(), **changes})


def _names(events: list[EventModel]) -> list[str]:
    return [type(x).__name__ for x in events]


def _first_difference(got: list[EventModel], want: list[EventModel]) -> tuple[int, str]:
    """(index of the first recorded event that differs, what differs)."""
    g = [e.model_dump(mode="json") for e in got]
    w = [e.model_dump(mode="json") for e in want]
    for i, (a, b) in enumerate(zip(g, w, strict=False)):
        if a["type"] != b["type"]:
            break
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                shown = json.dumps(a.get(k), default=str)[:200]
                recorded = json.dumps(b.get(k), default=str)[:200]
                return i, f"{a['type']}.{k} = {shown} instead of the recorded {recorded}"
    else:
        i = min(len(g), len(w))
    return i, f"events {[x['type'] for x in g]} instead of the recorded {[x['type'] for x in w]}"


async def replay(
    log: Iterable[Envelope] | AsyncIterable[Envelope],
    intake: IntakeSource,
    *,
    grace_s: float | None = None,
    load_object: LoadObject | None = None,
    idempotence: bool = False,
) -> ProvenanceReport:
    """Re-decide a whole log (in order) against its intake; the report lists every problem."""
    r = Replayer(intake, grace_s=grace_s, load_object=load_object, idempotence=idempotence)
    if isinstance(log, AsyncIterable):
        async for env in log:
            await r.feed(env)
    else:
        for env in log:
            await r.feed(env)
    return await r.finish()


def object_loader(store: JetStreamEventStore) -> LoadObject:
    """Result objects read by name from the network's object stream, as the auditor ``store`` is."""
    blobs = BlobStore(store.nc, "auditor", "replay")

    async def load(ref: ObjectRef) -> Any:
        try:
            return json.loads(await blobs.get(ref))
        except GpufleetError as e:
            raise LookupError(str(e)) from e

    return load


async def stream_head(store: JetStreamEventStore, stream: str) -> int:
    """The last sequence of ``stream`` on the store's server (0 when it does not exist)."""
    try:
        info = await store.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0
    except (nats.errors.Error, OSError) as e:
        raise StoreUnavailable(f"cannot read stream {stream}: {e!s}") from e
    return int(info.state.last_seq)
