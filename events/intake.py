"""Intake: what outsiders send (from any language), and the recorded outcome of each input.

Outsiders publish plain JSON to ``gf.in.<kind>.<id>.<verb>``; the intake stream keeps every message.
The orchestrator validates each one and records exactly one outcome, so that nothing sent is ever
lost or silently dropped:

- accepted with facts: the facts themselves, whose event ids are ``in-<intake seq>.<n>``;
- accepted without facts (a duplicate, a no-op): ``InputAccepted``;
- refused: ``InputRejected`` with the reason and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from events.errors import InvalidPayload, PayloadTooLarge, first_error
from events.job import JobSpec
from events.subjects import INTAKE_PREFIX
from events.types import (
    Calibration,
    Capabilities,
    EventModel,
    FailureReason,
    FloatMap,
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
    """Body of ``gf.in.job.<job_id>.cancel``."""

    reason: str = Field(default="", max_length=2000)


class ProviderRegistration(EventModel):
    """Body of ``gf.in.provider.<provider_id>.register``."""

    name: str = Field(max_length=200)
    capabilities: Capabilities
    calibration: Calibration | None = None
    runtime_version: str = Field(default="", max_length=40)


class ProviderDeparture(EventModel):
    """Body of ``gf.in.provider.<provider_id>.drain`` and ``.leave``."""

    reason: str = Field(default="", max_length=500)


class _Report(EventModel):
    lease_id: Id
    provider_id: Id


class StartedReport(_Report):
    """The provider started the leased task."""

    report: Literal["started"] = "started"


class ProgressReport(_Report):
    """Fraction done and rate; optionally a checkpoint to resume from."""

    report: Literal["progress"] = "progress"
    fraction: float = Field(ge=0.0, le=1.0)
    rate: float = Field(default=0.0, ge=0.0)
    unit: str = Field(default="steps", max_length=32)
    message: str = Field(default="", max_length=500)
    checkpoint: ObjectRef | None = None
    checkpoint_step: int = Field(default=0, ge=0)


class CompletedReport(_Report):
    """The task finished; the result is inline or in the object store, with its digest."""

    report: Literal["completed"] = "completed"
    result: ResultRef
    gpu_ms: int = Field(ge=0)
    metrics: FloatMap = Field(default_factory=dict)


class FailedReport(_Report):
    """The attempt failed, with a classified reason."""

    report: Literal["failed"] = "failed"
    reason: FailureReason
    message: str = Field(default="", max_length=2000)


TaskReport = Annotated[StartedReport | ProgressReport | CompletedReport | FailedReport, Field(discriminator="report")]

#: (kind, verb) -> body model of each intake subject ``gf.in.<kind>.<id>.<verb>``.
INTAKE_VERBS: dict[tuple[str, str], TypeAdapter[object]] = {
    ("job", "submit"): TypeAdapter(JobSpec),
    ("job", "cancel"): TypeAdapter(JobCancellation),
    ("provider", "register"): TypeAdapter(ProviderRegistration),
    ("provider", "drain"): TypeAdapter(ProviderDeparture),
    ("provider", "leave"): TypeAdapter(ProviderDeparture),
    ("task", "report"): TypeAdapter(TaskReport),
}


@dataclass(frozen=True, slots=True)
class IntakeMessage:
    """A validated intake message: which aggregate it targets and what it says."""

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
    if len(parts) != len(prefix) + 3 or parts[: len(prefix)] != prefix:
        raise InvalidPayload(f"not an intake subject: {subject!r}", field="subject")
    kind, target_id, verb = parts[len(prefix) :]
    adapter = INTAKE_VERBS.get((kind, verb))
    if adapter is None:
        known = ", ".join(f"{k}.<id>.{v}" for k, v in INTAKE_VERBS)
        raise InvalidPayload(f"unknown intake subject {subject!r} (known: {known})", field="subject")
    if not is_valid_id(target_id):
        raise InvalidPayload(f"invalid {kind} id {target_id!r}", field="subject")
    try:
        body = adapter.validate_json(data)
    except ValidationError as e:
        raise first_error(e, tagged=(kind, verb) == ("task", "report")) from e
    assert isinstance(body, BaseModel)
    return IntakeMessage(kind=kind, target_id=target_id, verb=verb, body=body)


class InputAccepted(EventModel):
    """Intake message ``intake_seq`` was valid but changed nothing (a duplicate or a no-op).

    An input that changed something needs no ``InputAccepted``: its facts, with ids
    ``in-<intake_seq>.<n>``, are the record.
    """

    type: Literal["InputAccepted"] = "InputAccepted"
    v: Literal[1] = 1
    at: UtcDateTime
    intake_seq: int = Field(ge=1)
    subject: str = Field(max_length=256)
    facts: int = Field(ge=0)
    note: str = Field(default="", max_length=500)


class InputRejected(EventModel):
    """Intake message ``intake_seq`` was refused; ``reason`` and ``field`` say why."""

    type: Literal["InputRejected"] = "InputRejected"
    v: Literal[1] = 1
    at: UtcDateTime
    intake_seq: int = Field(ge=1)
    subject: str = Field(max_length=256)
    reason: str = Field(max_length=2000)
    field: str | None = None
    excerpt: str = Field(default="", max_length=300)
