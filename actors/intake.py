"""What an intake message asks for: the one translation from a validated message to a command.

The orchestrator applies it to live intake, and the replayer applies it to recorded intake to
re-decide a log: one function, so the two can never drift apart. Pure: time, the command id and the
lease grace arrive as arguments.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from actors.errors import NotYours
from actors.job import CancelJob, SubmitJob
from actors.provider import DrainProvider, LeaveProvider, RegisterProvider
from actors.task import ReportCompleted, ReportFailed, ReportProgress, ReportStarted
from events import InvalidPayload
from events.intake import (
    CompletedReport,
    FailedReport,
    IntakeMessage,
    JobCancellation,
    ProgressReport,
    ProviderDeparture,
    ProviderRegistration,
    StartedReport,
)
from events.job import JobSpec

__all__ = ["intake_command"]

#: Each kind of provider report and the task command that carries it (same field names).
_REPORTS: dict[type, type] = {
    StartedReport: ReportStarted,
    ProgressReport: ReportProgress,
    CompletedReport: ReportCompleted,
    FailedReport: ReportFailed,
}


def intake_command(im: IntakeMessage, command_id: str, at: datetime, grace_s: float) -> Any:
    """The command for the aggregate ``im.kind``/``im.target_id`` that intake message ``im`` asks for.

    The sender is the identity its credentials carry: a submission is the sender's, a report is the
    sender provider's (a report naming another provider is refused with ``NotYours``).
    """
    body, sender = im.body, im.sender
    if isinstance(body, JobSpec):
        return SubmitJob(command_id=command_id, at=at, job_id=im.target_id, spec=body, submitter=sender)
    if isinstance(body, JobCancellation):
        reason = body.reason or "cancelled by the submitter"
        return CancelJob(command_id=command_id, at=at, reason=reason, requester=sender)
    if isinstance(body, ProviderRegistration):
        return RegisterProvider(
            command_id=command_id,
            at=at,
            provider_id=im.target_id,
            name=body.name,
            capabilities=body.capabilities,
            calibration=body.calibration,
            runtime_version=body.runtime_version,
        )
    if isinstance(body, ProviderDeparture):
        departure = DrainProvider if im.verb == "drain" else LeaveProvider
        return departure(command_id=command_id, at=at, reason=body.reason)
    return _report(body, sender, command_id, at, grace_s)


def _report(body: BaseModel, sender: str, command_id: str, at: datetime, grace_s: float) -> Any:
    """The task command for a provider's report: the report's fields, from the sender, with time and grace."""
    command = _REPORTS.get(type(body))
    if command is None:
        raise InvalidPayload("unknown report", field="report")
    if getattr(body, "reason", None) == "unverifiable":
        raise InvalidPayload("only verification decides that a task is unverifiable", field="reason")
    fields = {name: getattr(body, name) for name in type(body).model_fields if name != "report"}
    named = fields.get("provider_id")
    if named is not None and named != sender:
        raise NotYours(f"names provider {named!r}, but these credentials are {sender!r}", field="provider_id")
    fields["provider_id"] = sender
    if command in (ReportStarted, ReportProgress):
        fields["grace_s"] = grace_s
    return command(command_id=command_id, at=at, **fields)
