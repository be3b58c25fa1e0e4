"""Intake decoding: every subject kind, who sent it, and every way a message from outside can be wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from events import InvalidPayload, MalformedJson, PayloadTooLarge
from events.intake import (
    INTAKE_VERBS,
    MAX_INTAKE_BYTES,
    CompletedReport,
    FailedReport,
    JobCancellation,
    ProgressReport,
    ProviderDeparture,
    ProviderRegistration,
    StartedReport,
    decode_intake,
)
from events.job import CountSplit, JobSpec, ParamsSplit
from events.subjects import intake_subject

SHA = "0f" * 32
CAPS = {"backend": "cuda", "gpu_model": "RTX 4090", "vram_mb": 24564, "compute_capability": 8.9}
REPORT = {"lease_id": "l1", "provider_id": "p1"}
SUBMIT = "gf.in.submitter.alice.submit.j1"
REGISTER = "gf.in.provider.p1.register"
REPORT_TO = "gf.in.provider.p1.report.alice.j1.0"

# (role, sender, verb, target in the subject, body, model, aggregate kind, aggregate id)
VALID: list[tuple[str, str, str, str, dict[str, Any], type, str, str]] = [
    ("submitter", "alice", "submit", "j1", {"workload": "matmul", "params": {"n": 64}}, JobSpec, "job", "alice.j1"),
    ("submitter", "alice", "cancel", "j1", {"reason": "changed my mind"}, JobCancellation, "job", "alice.j1"),
    ("submitter", "alice", "cancel", "j1", {}, JobCancellation, "job", "alice.j1"),
    ("provider", "p1", "register", "", {"name": "box", "capabilities": CAPS}, ProviderRegistration, "provider", "p1"),
    ("provider", "p1", "drain", "", {"reason": "maintenance"}, ProviderDeparture, "provider", "p1"),
    ("provider", "p1", "leave", "", {}, ProviderDeparture, "provider", "p1"),
    ("provider", "p1", "report", "alice.j1.0", {**REPORT, "report": "started"}, StartedReport, "task", "alice.j1.0"),
    ("provider", "p1", "report", "j1-0", {"lease_id": "l1", "report": "started"}, StartedReport, "task", "j1-0"),
    (
        "provider",
        "p1",
        "report",
        "alice.j1.0",
        {**REPORT, "report": "progress", "fraction": 0.25},
        ProgressReport,
        "task",
        "alice.j1.0",
    ),
    (
        "provider",
        "p1",
        "report",
        "alice.j1.12",
        {**REPORT, "report": "completed", "result": {"sha256": SHA, "size": 3}, "gpu_ms": 7},
        CompletedReport,
        "task",
        "alice.j1.12",
    ),
    (
        "provider",
        "p1",
        "report",
        "alice.j1.0",
        {**REPORT, "report": "failed", "reason": "timeout"},
        FailedReport,
        "task",
        "alice.j1.0",
    ),
]


def test_every_intake_verb_has_a_valid_case_here() -> None:
    assert {(r, v) for r, _, v, *_ in VALID} == set(INTAKE_VERBS)


@pytest.mark.parametrize(("role", "sender", "verb", "target", "body", "model", "kind", "aggregate"), VALID)
def test_valid_messages_decode_with_their_sender(
    role: str, sender: str, verb: str, target: str, body: dict[str, Any], model: type, kind: str, aggregate: str
) -> None:
    msg = decode_intake(intake_subject(role, sender, verb, target), json.dumps(body).encode())
    assert (msg.role, msg.sender, msg.kind, msg.target_id, msg.verb) == (role, sender, kind, aggregate, verb)
    assert type(msg.body) is model
    assert contains(msg.body.model_dump(mode="json"), body)


def contains(big: Any, small: Any) -> bool:
    """``small``'s keys all appear in ``big`` with the same values, recursively."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    return bool(big == small)


def test_submit_fills_defaults_and_parses_the_split() -> None:
    body = {"workload": "noop", "split": {"kind": "params", "params": [{"a": 1}, {"a": 2}]}}
    spec = decode_intake("gf.in.submitter.bob.submit.j9", json.dumps(body).encode()).body
    assert isinstance(spec, JobSpec) and isinstance(spec.split, ParamsSplit)
    assert spec.task_count() == 2 and spec.task_params(1) == {"a": 2}
    plain = decode_intake("gf.in.submitter.bob.submit.j9", b'{"workload":"noop"}').body
    assert isinstance(plain, JobSpec) and isinstance(plain.split, CountSplit)
    # The submitter is not the body's to say: left empty, the orchestrator fills in the credential.
    assert (plain.priority, plain.submitter, plain.timeout_s) == (5, "", 600.0)


@pytest.mark.parametrize(
    "subject",
    [
        "gf.in.submitter.alice",  # too short
        "gf.ev.submitter.alice.submit.j1",  # not the intake prefix
        "xx.in.submitter.alice.submit.j1",
        "",
        "gf.in",
    ],
)
def test_a_subject_that_is_not_intake_is_refused(subject: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, b"{}")
    assert info.value.field == "subject"
    assert "not an intake subject" in str(info.value)


@pytest.mark.parametrize(
    "subject",
    [
        "gf.in.submitter.alice.frobnicate.j1",
        "gf.in.submitter.alice.register",  # a submitter cannot register as a provider
        "gf.in.provider.p1.submit.j1",  # nor a provider submit
        "gf.in.job.j1.submit",  # the subjects before identities
        "gf.in.task.t1.report",
        "gf.in.martian.m1.register",
    ],
)
def test_an_unknown_role_or_verb_is_refused_listing_the_known_ones(subject: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, b"{}")
    assert info.value.field == "subject"
    assert "gf.in.submitter.{name}.submit.{job}" in str(info.value)
    assert "gf.in.provider.{name}.report.{taskId}" in str(info.value)


@pytest.mark.parametrize("target", ["-j1", "j$1", "_x", "a" * 65, "ü"])
def test_an_invalid_job_name_is_refused(target: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(f"gf.in.submitter.alice.submit.{target}", b'{"workload":"noop"}')
    assert info.value.field == "subject"
    assert "invalid job name" in str(info.value)


@pytest.mark.parametrize("sender", ["-a", "a$", "_x", "a" * 65, "ü"])
def test_an_invalid_sender_name_is_refused(sender: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(f"gf.in.submitter.{sender}.submit.j1", b'{"workload":"noop"}')
    assert info.value.field == "subject"
    assert "invalid submitter name" in str(info.value)


@pytest.mark.parametrize(
    "subject",
    [
        "gf.in.submitter.alice.submit",  # no job name
        "gf.in.submitter.alice.submit.a.b",  # a job name is one token
        "gf.in.provider.p1.register.p2",  # a provider registers only itself
        "gf.in.provider.p1.report",  # which task?
        "gf.in.provider.p1.report.alice.j1",  # a job, not a task
        "gf.in.provider.p1.report.alice.j1.x",  # the index is a number
        "gf.in.provider.p1.report.alice.j1.01",
    ],
)
def test_a_missing_or_malformed_target_is_refused(subject: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, b"{}")
    assert info.value.field == "subject"


@pytest.mark.parametrize("body", [b"{nope", b"", b'{"workload":"noop"} trailing', b"\xff"])
def test_malformed_json_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedJson) as info:
        decode_intake(SUBMIT, body)
    assert info.value.field == "body"


@pytest.mark.parametrize("subject", [SUBMIT, REPORT_TO])
def test_a_body_that_is_not_an_object_is_refused_naming_the_body(subject: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, b"[1, 2]")
    assert info.value.field == "body"


def test_an_oversized_body_is_refused_before_parsing() -> None:
    big = b"{" + b" " * MAX_INTAKE_BYTES + b"}"
    with pytest.raises(PayloadTooLarge) as info:
        decode_intake(SUBMIT, big)
    assert info.value.field == "body"
    assert info.value.limit == MAX_INTAKE_BYTES
    assert f"over the {MAX_INTAKE_BYTES}-byte limit" in str(info.value)
    # Up to the limit is fine (and then validated as usual).
    body = json.dumps({"workload": "noop", "labels": {"pad": "x"}}).encode()
    body = body[:-2] + b" " * (MAX_INTAKE_BYTES - len(body)) + body[-2:]
    assert len(body) == MAX_INTAKE_BYTES
    assert isinstance(decode_intake(SUBMIT, body).body, JobSpec)


@pytest.mark.parametrize(
    ("subject", "body", "field"),
    [
        (SUBMIT, {"workload": "noop", "priority": "5"}, "priority"),
        (SUBMIT, {"workload": 5}, "workload"),
        (SUBMIT, {}, "workload"),
        (SUBMIT, {"workload": "noop", "color": "red"}, "color"),
        (SUBMIT, {"workload": "noop", "deadline": "2026-01-01T00:00:00"}, "deadline"),
        (SUBMIT, {"workload": "noop", "split": {"kind": "count", "count": "3"}}, "split.count.count"),
        (SUBMIT, {"workload": "noop", "split": {"kind": "weird"}}, "split.kind"),
        (SUBMIT, {"workload": "noop", "split": {}}, "split.kind"),
        (SUBMIT, {"workload": "noop", "resources": {"backend": "tpu"}}, "resources.backend"),
        (SUBMIT, {"workload": "noop", "submitter": "bad name"}, "submitter"),
        ("gf.in.submitter.alice.cancel.j1", {"reason": 5}, "reason"),
        (REGISTER, {"name": "x"}, "capabilities"),
        (REGISTER, {"name": "x", "capabilities": {**CAPS, "vram_mb": "8"}}, "capabilities.vram_mb"),
        ("gf.in.provider.p1.drain", {"reason": ["x"]}, "reason"),
        (REPORT_TO, {**REPORT, "report": "progress", "fraction": "0.5"}, "fraction"),
        (REPORT_TO, {**REPORT, "report": "progress", "fraction": 1.5}, "fraction"),
        (
            REPORT_TO,
            {**REPORT, "report": "completed", "result": {"sha256": SHA, "size": 1}, "gpu_ms": "3"},
            "gpu_ms",
        ),
        (REPORT_TO, {**REPORT, "report": "completed", "gpu_ms": 3}, "result"),
        (REPORT_TO, {**REPORT, "report": "failed", "reason": "bored"}, "reason"),
        (REPORT_TO, {"report": "started", "provider_id": "p1"}, "lease_id"),
        (REPORT_TO, {**REPORT, "report": "started", "provider_id": "bad id"}, "provider_id"),
        (REPORT_TO, {**REPORT, "report": "exploded"}, "report"),
        (REPORT_TO, {**REPORT, "report": 5}, "report"),
        (REPORT_TO, REPORT, "report"),
    ],
)
def test_wrong_fields_are_refused_naming_them(subject: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, json.dumps(body).encode())
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert "\n" not in str(info.value)
