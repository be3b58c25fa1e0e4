"""Intake: what outsiders send (from any language), and the recorded outcome of each input.

Outsiders publish plain JSON to ``gf.in.<role>.<name>.<verb>[.<target>]``, where ``<role>.<name>`` is
the identity of their credentials: the server lets nobody else publish there, so the subject is the
proof of who sent it, and it is kept with the message in the intake stream. The orchestrator
validates each message and records exactly one outcome, so that nothing sent is ever lost or
silently dropped:

- accepted with facts: the facts themselves, whose event ids are ``in-<intake seq>.<n>``;
- accepted without facts (a duplicate, a no-op): ``InputAccepted``;
- refused: ``InputRejected`` with the reason and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from events.errors import InvalidPayload, PayloadTooLarge, first_error
from events.job import JobSpec
from events.subjects import INTAKE_PREFIX, job_id_of
from events.types import (
    MAX_COUNT,
    MAX_MEASURE,
    TASK_ID_PATTERN,
    Calibration,
    Capabilities,
    Count,
    EventModel,
    FailureReason,
    FloatMap,
    GpuMs,
    Id,
    ObjectRef,
    ResultRef,
    UtcDateTime,
    is_valid_id,
)

__all__ = [
    "INTAKE_VERBS",
    "MAX_INTAKE_BYTES",
    "CompletedReport",
    "FailedReport",
    "InputAccepted",
    "InputRejected",
    "IntakeMessage",
    "IntakeVerb",
    "JobCancellation",
    "ProgressReport",
    "ProviderDeparture",
    "ProviderRegistration",
    "StartedReport",
    "TaskReport",
    "decode_intake",
]

#: The largest intake message the orchestrator accepts; bulk inputs go to the object store. The intake
#: stream stores messages up to twice this (and the server's max_payload, 1 MiB by default, caps what
#: can be published at all), so an oversized input is kept and rejected with a reason, not lost.
MAX_INTAKE_BYTES = 512 * 1024


class JobCancellation(EventModel):
    """Body of ``gf.in.submitter.<name>.cancel.<job>``."""

    reason: str = Field(default="", max_length=2000)


class ProviderRegistration(EventModel):
    """Body of ``gf.in.provider.<name>.register``: the provider's id is its credential's name."""

    name: str = Field(max_length=200)
    capabilities: Capabilities
    calibration: Calibration | None = None
    runtime_version: str = Field(default="", max_length=40)


class ProviderDeparture(EventModel):
    """Body of ``gf.in.provider.<name>.drain`` and ``.leave``."""

    reason: str = Field(default="", max_length=500)


class _Report(EventModel):
    lease_id: Id
    #: Optional: the reporting provider is the credential. If given, it must name that provider.
    provider_id: Id | None = None


class StartedReport(_Report):
    """The provider started the leased task."""

    report: Literal["started"] = "started"


class ProgressReport(_Report):
    """Fraction done and rate; optionally a checkpoint to resume from."""

    report: Literal["progress"] = "progress"
    fraction: float = Field(ge=0.0, le=1.0)
    rate: float = Field(default=0.0, ge=0.0, le=MAX_MEASURE)
    unit: str = Field(default="steps", max_length=32)
    message: str = Field(default="", max_length=500)
    checkpoint: ObjectRef | None = None
    checkpoint_step: Count = 0


class CompletedReport(_Report):
    """The task finished; the result is inline or in the object store, with its digest."""

    report: Literal["completed"] = "completed"
    result: ResultRef
    gpu_ms: GpuMs
    metrics: FloatMap = Field(default_factory=dict)


class FailedReport(_Report):
    """The attempt failed, with a classified reason."""

    report: Literal["failed"] = "failed"
    reason: FailureReason
    message: str = Field(default="", max_length=2000)


TaskReport = Annotated[StartedReport | ProgressReport | CompletedReport | FailedReport, Field(discriminator="report")]


@dataclass(frozen=True, slots=True)
class IntakeVerb:
    """One kind of intake message: who sends it, what it targets, and the model of its body."""

    role: str
    verb: str
    #: The aggregate it is a command for.
    kind: str
    #: What follows the verb in the subject: nothing (the sender itself), a job name, or a task id.
    target: Literal["self", "job", "task"]
    adapter: TypeAdapter[object]
    summary: str

    def subject_pattern(self) -> str:
        """The subject, with ``{name}`` and the target as placeholders."""
        base = f"{INTAKE_PREFIX}.{self.role}.{{name}}.{self.verb}"
        return base + {"self": "", "job": ".{job}", "task": ".{taskId}"}[self.target]


#: (role, verb) -> every intake subject ``gf.in.<role>.<name>.<verb>[.<target>]`` and its body.
INTAKE_VERBS: dict[tuple[str, str], IntakeVerb] = {
    (v.role, v.verb): v
    for v in (
        IntakeVerb(
            "submitter",
            "submit",
            "job",
            "job",
            TypeAdapter(JobSpec),
            "Submit job <name>.<job>: a spec written once for any GPU. The same spec again under the same "
            "name changes nothing; a different spec under a used name is refused.",
        ),
        IntakeVerb(
            "submitter",
            "cancel",
            "job",
            "job",
            TypeAdapter(JobCancellation),
            "Cancel one of your jobs: its unfinished tasks are cancelled and their leases revoked.",
        ),
        IntakeVerb(
            "provider",
            "register",
            "provider",
            "self",
            TypeAdapter(ProviderRegistration),
            "Register (or re-register) as the provider your credentials name, with measured capabilities.",
        ),
        IntakeVerb("provider", "drain", "provider", "self", TypeAdapter(ProviderDeparture), "Stop taking new leases."),
        IntakeVerb("provider", "leave", "provider", "self", TypeAdapter(ProviderDeparture), "Leave the network."),
        IntakeVerb(
            "provider",
            "report",
            "task",
            "task",
            TypeAdapter(TaskReport),
            "Report on a task you hold a lease on: started, progress, completed or failed, with the lease id.",
        ),
    )
}

_TASK_ID = re.compile(TASK_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class IntakeMessage:
    """A validated intake message: who sent it, which aggregate it targets, and what it says."""

    role: str
    #: The sender's name: the identity its credentials carry (the server checked them).
    sender: str
    kind: str
    target_id: str
    verb: str
    body: BaseModel


def decode_intake(subject: str, data: bytes) -> IntakeMessage:
    """Validate one intake message; any problem raises an ``InvalidPayload`` naming the field."""
    if len(data) > MAX_INTAKE_BYTES:
        raise PayloadTooLarge(len(data), MAX_INTAKE_BYTES, "body")
    parts = subject.split(".")
    prefix = INTAKE_PREFIX.split(".")
    if len(parts) < len(prefix) + 3 or parts[: len(prefix)] != prefix:
        raise InvalidPayload(f"not an intake subject: {subject!r}", field="subject")
    role, sender, verb = parts[len(prefix) : len(prefix) + 3]
    target = ".".join(parts[len(prefix) + 3 :])
    spec = INTAKE_VERBS.get((role, verb))
    if spec is None:
        known = ", ".join(v.subject_pattern() for v in INTAKE_VERBS.values())
        raise InvalidPayload(f"unknown intake subject {subject!r} (known: {known})", field="subject")
    if not is_valid_id(sender):
        raise InvalidPayload(f"invalid {role} name {sender!r}", field="subject")
    if spec.target == "self":
        if target:
            raise InvalidPayload(f"{subject!r}: nothing may follow {verb!r}", field="subject")
        target_id = sender
    elif spec.target == "job":
        if not is_valid_id(target):
            raise InvalidPayload(f"invalid job name {target!r}: one token of letters, digits, - or _", field="subject")
        target_id = job_id_of(sender, target)
    else:
        if not _TASK_ID.match(target):
            raise InvalidPayload(f"invalid task id {target!r}", field="subject")
        target_id = target
    try:
        body = spec.adapter.validate_json(data)
    except ValidationError as e:
        raise first_error(e, tagged=spec.target == "task") from e
    assert isinstance(body, BaseModel)
    return IntakeMessage(role=role, sender=sender, kind=spec.kind, target_id=target_id, verb=verb, body=body)


class InputAccepted(EventModel):
    """Intake message ``intake_seq`` was valid but changed nothing (a duplicate or a no-op).

    An input that changed something needs no ``InputAccepted``: its facts, with ids
    ``in-<intake_seq>.<n>``, are the record.
    """

    type: Literal["InputAccepted"] = "InputAccepted"
    v: Literal[1] = 1
    at: UtcDateTime
    intake_seq: int = Field(ge=1, le=MAX_COUNT)
    subject: str = Field(max_length=256)
    facts: int = Field(ge=0, le=MAX_COUNT)
    note: str = Field(default="", max_length=500)


class InputRejected(EventModel):
    """Intake message ``intake_seq`` was refused; ``reason`` and ``field`` say why."""

    type: Literal["InputRejected"] = "InputRejected"
    v: Literal[1] = 1
    at: UtcDateTime
    intake_seq: int = Field(ge=1, le=MAX_COUNT)
    subject: str = Field(max_length=256)
    reason: str = Field(max_length=2000)
    field: str | None = None
    excerpt: str = Field(default="", max_length=300)
