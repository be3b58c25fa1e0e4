"""Re-decide a recorded history: every decision in the log is made again by the current deciders.

Each aggregate's events were appended one decision at a time, with ids ``<command id>.<n>``. For each
decision this rebuilds the command: from its intake message when the command id is ``in-<seq>``
(decoded again by the current intake schema and translated as the orchestrator translates it), or
else from the events themselves (the reactions', the scheduler's and the timers' commands carry
nothing the events do not). Then, on the state folded from the recorded events before it:

- ``decide(command, state)`` must give exactly the recorded events;
- the same command again, on the state after them, must change nothing (or be refused);
- every intake outcome must still hold: a rejected message is still rejected, naming the same field,
  and a message accepted with no facts still changes nothing.

It is the check Temporal's ``Replayer`` makes: new code, old histories, the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from actors.decider import Decider
from actors.errors import DomainError
from actors.ids import split_event_id
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
from actors.provider import (
    HeartbeatLapsed,
    HeartbeatSeen,
    RegisterProvider,
    provider_decider,
)
from actors.reactions import plan_task
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
    task_decider,
)
from events import Envelope, InvalidPayload
from events.intake import (
    InputAccepted,
    InputRejected,
    decode_intake,
)
from events.job import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadlineMissed,
    JobFailed,
    JobRejected,
    JobSpec,
    JobSubmitted,
    SubmitterCharged,
    UsageMetered,
)
from events.provider import ProviderLost, ProviderOnline
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskQueued,
    TaskResultJudged,
    TaskResultReturned,
)
from events.types import EventModel
from events.verification import VerifyPolicy
from tests.golden.history import IntakeRecord

__all__ = ["Decision", "redecide"]

DECIDERS: dict[str, Decider[Any, Any]] = {"job": job_decider, "task": task_decider, "provider": provider_decider}

#: Commands that are not idempotent by design: the same progress report again is new progress, and a
#: provider that registers again has restarted (whatever it ran is lost). Redelivered intake is
#: recognised by its command id in the shell instead.
_NOT_IDEMPOTENT = (ReportProgress, RegisterProvider)
#: Commands whose repetition is refused: a lease on a task that is no longer queued, a failure
#: reported again after it ended the lease (refused with a record).
_REFUSED_AGAIN = (ReportFailed, LeaseTask)


@dataclass
class Decision:
    """The events one command appended to one aggregate stream, in order."""

    stream: str
    command_id: str
    envs: list[Envelope] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.stream.split(".", 1)[0]

    @property
    def aggregate_id(self) -> str:
        return self.stream.split(".", 1)[1]

    @property
    def events(self) -> list[EventModel]:
        return [e.data for e in self.envs]

    @property
    def at(self) -> datetime:
        at: datetime = self.envs[0].data.at  # type: ignore[attr-defined]
        return at

    @property
    def intake_seq(self) -> int | None:
        head, _, seq = self.command_id.partition("-")
        return int(seq) if head == "in" and seq.isdigit() else None


def decisions(log: list[Envelope]) -> list[Decision | Envelope]:
    """The aggregate streams' decisions, in the order of their first event, with every other event
    (intake outcomes, audit checkpoints) in place."""
    out: list[Decision | Envelope] = []
    last: dict[str, Decision] = {}
    for env in log:
        kind = env.subject.split(".", 1)[0]
        if kind not in DECIDERS:
            out.append(env)
            continue
        cid = split_event_id(env.id)
        d = last.get(env.subject)
        if d is None or d.command_id != cid:
            d = last[env.subject] = Decision(env.subject, cid)
            out.append(d)
        d.envs.append(env)
    return out


# ---- commands, rebuilt -----------------------------------------------------------------------------


def intake_command(rec: IntakeRecord, command_id: str, at: datetime, grace_s: float) -> tuple[str, str, Any]:
    """(kind, aggregate id, command) of an intake message, by the orchestrator's own translation.

    ``InvalidPayload`` or ``DomainError`` if it refuses.
    """
    im = decode_intake(rec.subject, rec.body)
    return im.kind, im.target_id, translate_intake(im, command_id, at, grace_s)


def internal_command(
    d: Decision, job_spec: Callable[[str], JobSpec | None], job_verify: Callable[[str], VerifyPolicy | None]
) -> Any:
    """The reaction's, scheduler's or timer's command that made decision ``d`` (they carry what the events say)."""
    # Verdicts on held results come first when a task ends (cancelled, unverifiable): the command is
    # known by the event after them.
    e = next((x for x in d.events if not isinstance(x, TaskResultJudged)), d.events[0])
    cid, at = d.command_id, d.at
    match e:
        case TaskCreated():
            spec = job_spec(e.job_id)
            if spec is None:
                raise LookupError(f"task {e.task_id} was created for job {e.job_id}, which is not in the log before it")
            created = plan_task(e.job_id, spec, e.index, e.at, job_verify(e.job_id))
            return CreateTask(command_id=cid, at=at, created=created)
        case TaskLeased():
            return LeaseTask(
                command_id=cid,
                at=at,
                lease_id=e.lease_id,
                provider_id=e.provider_id,
                expires_at=e.expires_at,
                predicted_s=e.predicted_s,
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
            # The network's default policy is configuration, like the ETA: recorded in the event.
            return DecideJob(command_id=cid, at=at, predicted_s=e.predicted_s, default_verify=e.verify)
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
            return SubmitJob(command_id=cid, at=at, job_id=e.job_id, spec=e.spec, submitter=e.spec.submitter or None)
        case ProviderLost():
            return HeartbeatLapsed(command_id=cid, at=at, reason=e.reason)
        case ProviderOnline():
            return HeartbeatSeen(command_id=cid, at=at)
    raise LookupError(f"no command is known to start with {type(e).__name__}")


def _verification_inputs(cmd: ReportCompleted, events: list[EventModel]) -> ReportCompleted:
    """The orchestrator's inputs to a completion (the spot-check draw and the sender's trust), as the
    log recorded them: the draw is random, so it is part of the record, not of the decision."""
    for e in events:
        spot = getattr(e, "spot", None)
        if isinstance(e, TaskCompleted | TaskResultReturned) and spot is not None:
            return replace(cmd, draw=spot.draw, trust=spot.consecutive_valid)
    return cmd


# ---- re-deciding -----------------------------------------------------------------------------------


def _show(events: list[EventModel]) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in events]


def _first_difference(got: list[EventModel], want: list[EventModel]) -> str:
    g, w = _show(got), _show(want)
    if [x["type"] for x in g] != [x["type"] for x in w]:
        return f"events {[x['type'] for x in g]} instead of {[x['type'] for x in w]}"
    for a, b in zip(g, w, strict=True):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return f"{a['type']}.{k} = {a.get(k)!r} instead of {b.get(k)!r}"
    return "equal as JSON, different as models"


def redecide(log: list[Envelope], intake: list[IntakeRecord], *, grace_s: float) -> list[str]:
    """Every way the current deciders disagree with the recorded decisions; empty when none do.

    ``grace_s`` is the orchestrator's ``lease_grace_s`` when the log was recorded (it goes into the
    started and progress reports' commands).
    """
    messages = {r.seq: r for r in intake}
    states: dict[str, Any] = {}
    problems: list[str] = []
    checked = 0

    def state_of(stream: str) -> Any:
        kind = stream.split(".", 1)[0]
        return states.get(stream) or DECIDERS[kind].initial_state()

    def job_spec(job_id: str) -> JobSpec | None:
        j = states.get(f"job.{job_id}")
        return j.spec if j is not None else None

    def job_verify(job_id: str) -> VerifyPolicy | None:
        j = states.get(f"job.{job_id}")
        return j.verify if j is not None else None

    for item in decisions(log):
        if isinstance(item, Envelope):
            if isinstance(item.data, InputRejected | InputAccepted):
                problems += _outcome(item, messages, state_of, grace_s)
            continue
        d = item
        where = f"{d.stream} at {d.envs[0].sequence} ({d.command_id})"
        decider = DECIDERS[d.kind]
        before = state_of(d.stream)
        after = decider.fold(d.events, before)
        states[d.stream] = after  # the log is the truth, whatever the deciders say now
        try:
            seq = d.intake_seq
            if seq is not None:
                rec = messages.get(seq)
                if rec is None:
                    problems.append(f"{where}: intake message {seq} is not in the recording")
                    continue
                kind, target, cmd = intake_command(rec, d.command_id, d.at, grace_s)
                if f"{kind}.{target}" != d.stream:
                    problems.append(f"{where}: intake message {seq} now addresses {kind}.{target}")
                    continue
                if isinstance(cmd, ReportCompleted):
                    cmd = _verification_inputs(cmd, d.events)
            else:
                cmd = internal_command(d, job_spec, job_verify)
        except (InvalidPayload, DomainError, LookupError) as e:
            problems.append(f"{where}: its command cannot be rebuilt any more: {e}")
            continue
        try:
            got = decider.decide(cmd, before)
        except DomainError as e:
            problems.append(f"{where}: {type(cmd).__name__} is now refused: {e}")
            continue
        checked += 1
        if got != d.events:
            problems.append(
                f"{where}: {type(cmd).__name__} now decides differently: {_first_difference(got, d.events)}"
            )
            continue
        if isinstance(cmd, _NOT_IDEMPOTENT) or any(type(e).__name__ == "TaskResultRejected" for e in got):
            continue
        try:
            again = decider.decide(cmd, after)
        except DomainError:
            again = []
        if again and not (
            isinstance(cmd, _REFUSED_AGAIN) and all(type(e).__name__ == "TaskResultRejected" for e in again)
        ):
            problems.append(f"{where}: {type(cmd).__name__} again is not a no-op: {[type(e).__name__ for e in again]}")
    if checked == 0:
        problems.append("no decision was re-decided")
    return problems


def _outcome(
    env: Envelope, messages: dict[int, IntakeRecord], state_of: Callable[[str], Any], grace_s: float
) -> list[str]:
    """An intake message with no facts: still rejected (same field), or still accepted with no change."""
    e = env.data
    assert isinstance(e, InputRejected | InputAccepted)
    where = f"intake message {e.intake_seq} ({e.subject})"
    rec = messages.get(e.intake_seq)
    if rec is None:
        return [f"{where} is not in the recording"]
    if rec.subject != e.subject:
        return [f"{where}: the recording has it on {rec.subject}"]
    try:
        kind, target, cmd = intake_command(rec, env.id, e.at, grace_s)
        events = DECIDERS[kind].decide(cmd, state_of(f"{kind}.{target}"))
    except (InvalidPayload, DomainError) as refused:
        if isinstance(e, InputAccepted):
            return [f"{where} was accepted, and is now refused: {refused}"]
        now = getattr(refused, "field", None)
        if now != e.field:
            return [f"{where} is still refused, but for field {now!r} instead of {e.field!r}: {refused}"]
        return []
    if isinstance(e, InputRejected):
        return [f"{where} was refused ({e.reason}), and is now accepted: {[type(x).__name__ for x in events]}"]
    if events and e.note != "no change (a duplicate)":
        return [f"{where} changed nothing, and now would: {[type(x).__name__ for x in events]}"]
    return []
