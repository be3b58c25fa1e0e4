"""The intake table (``actors.intake.INTAKE_COMMANDS``): every kind of intake message has exactly one
command, each message becomes the command of its entry, and a message the table does not know is a
typed refusal that names the field, never a crash."""

from __future__ import annotations

import json
import typing
from datetime import datetime
from typing import Any

import pytest

from actors.errors import NotYours
from actors.intake import INTAKE_COMMANDS, IntakeKey, UnknownIntake, intake_command, intake_key, translation_of
from actors.job import CancelJob, JobCommand, SubmitJob
from actors.provider import DrainProvider, LeaveProvider, ProviderCommand, RegisterProvider
from actors.task import ReportCompleted, ReportFailed, ReportProgress, ReportStarted, TaskCommand
from events import InvalidPayload
from events.intake import INTAKE_VERBS, IntakeMessage, JobCancellation, TaskReport, decode_intake
from events.subjects import intake_subject
from events.types import EventModel
from tests.factories import T0
from tests.unit.test_events_intake import VALID

#: The specification the table must meet, spelled out: what each kind of intake message asks for.
EXPECTED: dict[IntakeKey, type] = {
    ("submitter", "submit", ""): SubmitJob,
    ("submitter", "cancel", ""): CancelJob,
    ("provider", "register", ""): RegisterProvider,
    ("provider", "drain", ""): DrainProvider,
    ("provider", "leave", ""): LeaveProvider,
    ("provider", "report", "started"): ReportStarted,
    ("provider", "report", "progress"): ReportProgress,
    ("provider", "report", "completed"): ReportCompleted,
    ("provider", "report", "failed"): ReportFailed,
}
#: Each aggregate kind and the commands its decider takes.
COMMANDS_OF = {"job": JobCommand, "task": TaskCommand, "provider": ProviderCommand}
GRACE_S = 12.5


def report_kinds() -> list[str]:
    """Every ``report`` a provider can send, read from the intake model itself."""
    union = typing.get_args(TaskReport)[0]
    return [model.model_fields["report"].default for model in typing.get_args(union)]


def every_intake_kind() -> set[IntakeKey]:
    """Every kind of intake message the intake accepts: each verb, and each kind of report."""
    keys: set[IntakeKey] = set()
    for role, verb in INTAKE_VERBS:
        keys |= {(role, verb, k) for k in report_kinds()} if verb == "report" else {(role, verb, "")}
    return keys


def message(role: str, sender: str, verb: str, target: str, body: dict[str, Any]) -> IntakeMessage:
    return decode_intake(intake_subject(role, sender, verb, target), json.dumps(body).encode())


def test_every_kind_of_intake_message_has_exactly_one_entry_and_no_entry_is_extra() -> None:
    assert set(report_kinds()) == {"started", "progress", "completed", "failed"}
    assert set(INTAKE_COMMANDS) == every_intake_kind()


def test_each_entry_builds_its_own_command_for_the_aggregate_its_subject_targets() -> None:
    assert {key: t.command for key, t in INTAKE_COMMANDS.items()} == EXPECTED
    commands = [t.command for t in INTAKE_COMMANDS.values()]
    assert len(set(commands)) == len(commands)  # no two kinds of message ask for the same command
    for (role, verb, _), t in INTAKE_COMMANDS.items():
        assert t.command in typing.get_args(COMMANDS_OF[INTAKE_VERBS[(role, verb)].kind])


@pytest.mark.parametrize(("role", "sender", "verb", "target", "body", "model", "kind", "aggregate"), VALID)
def test_every_valid_message_becomes_the_command_of_its_entry(
    role: str, sender: str, verb: str, target: str, body: dict[str, Any], model: type, kind: str, aggregate: str
) -> None:
    im = message(role, sender, verb, target, body)
    cmd = intake_command(im, "in-7", T0, GRACE_S)
    assert type(cmd) is EXPECTED[intake_key(im)] is translation_of(im).command
    assert (cmd.command_id, cmd.at) == ("in-7", T0)
    # The sender is the identity of the credentials, whatever the body says.
    who = {
        SubmitJob: "submitter",
        CancelJob: "requester",
        RegisterProvider: "provider_id",
        DrainProvider: None,
        LeaveProvider: None,
    }.get(type(cmd), "provider_id")
    if who is not None:
        assert getattr(cmd, who) == sender
    if isinstance(cmd, SubmitJob):
        assert cmd.job_id == aggregate and cmd.spec is im.body
    if isinstance(cmd, ReportStarted | ReportProgress):
        assert cmd.grace_s == GRACE_S  # the reports that extend a lease carry the grace
    if isinstance(cmd, CancelJob):
        assert cmd.reason == (body.get("reason") or "cancelled by the submitter")
    if isinstance(cmd, DrainProvider | LeaveProvider):
        assert cmd.reason == body.get("reason", "")


class PausedReport(EventModel):
    """A kind of report the network does not know (a newer runtime's, say)."""

    report: str = "paused"
    lease_id: str = "l1"


@pytest.mark.parametrize(
    ("im", "key", "field"),
    [
        (
            IntakeMessage("submitter", "alice", "job", "alice.j1", "pause", JobCancellation()),
            ("submitter", "pause", ""),
            "subject",
        ),
        (
            IntakeMessage("provider", "p1", "task", "alice.j1.0", "report", PausedReport()),
            ("provider", "report", "paused"),
            "report",
        ),
        (
            IntakeMessage("auditor", "eve", "job", "alice.j1", "submit", JobCancellation()),
            ("auditor", "submit", ""),
            "subject",
        ),
    ],
)
def test_a_message_the_table_does_not_know_is_a_typed_refusal_naming_the_field(
    im: IntakeMessage, key: IntakeKey, field: str
) -> None:
    with pytest.raises(UnknownIntake) as caught:
        intake_command(im, "in-1", T0, GRACE_S)
    assert isinstance(caught.value, InvalidPayload)  # recorded as the message's rejection, like any bad input
    assert caught.value.key == key and caught.value.field == field
    assert key[1] in str(caught.value) and (key[2] or key[0]) in str(caught.value)


def test_a_report_naming_another_provider_or_claiming_unverifiable_is_refused() -> None:
    lease = {"lease_id": "l1", "report": "failed", "reason": "timeout"}
    with pytest.raises(NotYours) as caught:
        intake_command(message("provider", "p1", "report", "alice.j1.0", {**lease, "provider_id": "p2"}), "in-1", T0, 1)
    assert caught.value.field == "provider_id"
    with pytest.raises(InvalidPayload) as refused:
        intake_command(
            message("provider", "p1", "report", "alice.j1.0", {**lease, "reason": "unverifiable"}), "in-2", T0, 1
        )
    assert refused.value.field == "reason"


def test_the_translation_is_pure_the_same_message_gives_the_same_command() -> None:
    im = message("provider", "p1", "report", "alice.j1.0", {"lease_id": "l1", "report": "progress", "fraction": 0.5})
    at = datetime(2026, 1, 2, tzinfo=T0.tzinfo)
    assert intake_command(im, "in-3", at, 3.0) == intake_command(im, "in-3", at, 3.0)


def test_only_a_report_is_keyed_by_its_kind() -> None:
    # A body with a ``report`` field under another verb is still that verb's message.
    drain = IntakeMessage("provider", "p1", "provider", "p1", "drain", PausedReport())
    assert intake_key(drain) == ("provider", "drain", "")
    assert type(intake_command(drain, "in-4", T0, GRACE_S)) is DrainProvider
