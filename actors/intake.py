"""What an intake message asks for: the one table from a validated message to a command.

The orchestrator applies it to live intake, and the replayer applies it to recorded intake to
re-decide a log: one table, so the two can never drift apart. Pure: time, the command id and the
lease grace arrive as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.errors import NotYours
from actors.job import CancelJob, SubmitJob
from actors.provider import DrainProvider, LeaveProvider, RegisterProvider
from actors.task import ReportCompleted, ReportFailed, ReportProgress, ReportStarted
from events import InvalidPayload
from events.intake import IntakeMessage, JobCancellation, ProviderRegistration
from events.job import JobSpec

__all__ = [
    "INTAKE_COMMANDS",
    "IntakeKey",
    "Translation",
    "UnknownIntake",
    "intake_command",
    "intake_key",
    "translation_of",
]

#: What picks an intake message's command: the sender's role, the subject's verb, and for a provider's
#: report its kind (``"started"``, ``"progress"``...); ``""`` for every other verb.
IntakeKey = tuple[str, str, str]
#: Builds the command of class ``command`` for one message: ``(command, message, command id, at, grace_s)``.
Build = Callable[[type[Any], IntakeMessage, str, datetime, float], Any]


@dataclass(frozen=True, slots=True)
class Translation:
    """How one kind of intake message becomes a command: the command's class, and how it is built."""

    command: type[Any]
    build: Build


class UnknownIntake(InvalidPayload):
    """The table has no command for this intake message (recorded as its rejection, never a crash)."""

    def __init__(self, key: IntakeKey) -> None:
        role, verb, report = key
        what = f"report {report!r}" if verb == "report" else f"{role} verb {verb!r}"
        super().__init__(f"unknown {what}: no command for it", field="report" if verb == "report" else "subject")
        self.key = key


def _submit(command: type[Any], im: IntakeMessage, command_id: str, at: datetime, grace_s: float) -> Any:
    """A submission is the sender's: the job id came from the subject, the spec is the body."""
    spec = im.body
    if not isinstance(spec, JobSpec):  # pragma: no cover - decode_intake gave this verb this model
        raise InvalidPayload(f"not a job spec: {type(spec).__name__}", field="body")
    return command(command_id=command_id, at=at, job_id=im.target_id, spec=spec, submitter=im.sender)


def _cancel(command: type[Any], im: IntakeMessage, command_id: str, at: datetime, grace_s: float) -> Any:
    """Only the job's submitter may cancel it: the decider checks ``requester``."""
    body = im.body
    reason = (body.reason if isinstance(body, JobCancellation) else "") or "cancelled by the submitter"
    return command(command_id=command_id, at=at, reason=reason, requester=im.sender)


def _register(command: type[Any], im: IntakeMessage, command_id: str, at: datetime, grace_s: float) -> Any:
    """A registration is for the provider the credentials name (the subject's target is the sender)."""
    body = im.body
    if not isinstance(body, ProviderRegistration):  # pragma: no cover - decode_intake gave this verb this model
        raise InvalidPayload(f"not a registration: {type(body).__name__}", field="body")
    return command(
        command_id=command_id,
        at=at,
        provider_id=im.target_id,
        name=body.name,
        capabilities=body.capabilities,
        calibration=body.calibration,
        runtime_version=body.runtime_version,
    )


def _depart(command: type[Any], im: IntakeMessage, command_id: str, at: datetime, grace_s: float) -> Any:
    """Drain or leave: the verb picked the command, the body only carries a reason."""
    return command(command_id=command_id, at=at, reason=getattr(im.body, "reason", ""))


def _report(command: type[Any], im: IntakeMessage, command_id: str, at: datetime, grace_s: float) -> Any:
    """The task command for a provider's report: the report's fields (same names), from the sender,
    with time, and the lease grace for the reports that extend a lease."""
    body = im.body
    if getattr(body, "reason", None) == "unverifiable":
        raise InvalidPayload("only verification decides that a task is unverifiable", field="reason")
    fields = {name: getattr(body, name) for name in type(body).model_fields if name != "report"}
    named = fields.get("provider_id")
    if named is not None and named != im.sender:
        raise NotYours(f"names provider {named!r}, but these credentials are {im.sender!r}", field="provider_id")
    fields["provider_id"] = im.sender
    if command in (ReportStarted, ReportProgress):
        fields["grace_s"] = grace_s
    return command(command_id=command_id, at=at, **fields)


#: Every kind of intake message (``events.intake.INTAKE_VERBS``, and each kind of report) and its command.
INTAKE_COMMANDS: dict[IntakeKey, Translation] = {
    ("submitter", "submit", ""): Translation(SubmitJob, _submit),
    ("submitter", "cancel", ""): Translation(CancelJob, _cancel),
    ("provider", "register", ""): Translation(RegisterProvider, _register),
    ("provider", "drain", ""): Translation(DrainProvider, _depart),
    ("provider", "leave", ""): Translation(LeaveProvider, _depart),
    ("provider", "report", "started"): Translation(ReportStarted, _report),
    ("provider", "report", "progress"): Translation(ReportProgress, _report),
    ("provider", "report", "completed"): Translation(ReportCompleted, _report),
    ("provider", "report", "failed"): Translation(ReportFailed, _report),
}


def intake_key(im: IntakeMessage) -> IntakeKey:
    """The key of ``im`` in ``INTAKE_COMMANDS``."""
    report = getattr(im.body, "report", "") if im.verb == "report" else ""
    return (im.role, im.verb, report if isinstance(report, str) else "")


def translation_of(im: IntakeMessage) -> Translation:
    """The table's entry for ``im``; ``UnknownIntake`` (an ``InvalidPayload``) if it has none."""
    key = intake_key(im)
    translation = INTAKE_COMMANDS.get(key)
    if translation is None:
        raise UnknownIntake(key)
    return translation


def intake_command(im: IntakeMessage, command_id: str, at: datetime, grace_s: float) -> Any:
    """The command for the aggregate ``im.kind``/``im.target_id`` that intake message ``im`` asks for.

    The sender is the identity its credentials carry: a submission is the sender's, a report is the
    sender provider's (a report naming another provider is refused with ``NotYours``).
    """
    translation = translation_of(im)
    return translation.build(translation.command, im, command_id, at, grace_s)
