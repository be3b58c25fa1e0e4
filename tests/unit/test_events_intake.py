"""Intake decoding: every subject kind, and every way a message from outside can be wrong."""

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
SUBMIT, REGISTER, REPORT_TO = "gf.in.job.j1.submit", "gf.in.provider.p1.register", "gf.in.task.t1.report"

VALID: list[tuple[str, str, str, dict[str, Any], type]] = [
    ("job", "j1", "submit", {"workload": "matmul", "params": {"n": 64}}, JobSpec),
    ("job", "j1", "cancel", {"reason": "changed my mind"}, JobCancellation),
    ("job", "j1", "cancel", {}, JobCancellation),
    ("provider", "p1", "register", {"name": "box", "capabilities": CAPS}, ProviderRegistration),
    ("provider", "p1", "drain", {"reason": "maintenance"}, ProviderDeparture),
    ("provider", "p1", "leave", {}, ProviderDeparture),
    ("task", "j1-0", "report", {**REPORT, "report": "started"}, StartedReport),
    ("task", "j1-0", "report", {**REPORT, "report": "progress", "fraction": 0.25}, ProgressReport),
    (
        "task",
        "j1-0",
        "report",
        {**REPORT, "report": "completed", "result": {"sha256": SHA, "size": 3}, "gpu_ms": 7},
        CompletedReport,
    ),
    ("task", "j1-0", "report", {**REPORT, "report": "failed", "reason": "timeout"}, FailedReport),
]


def test_every_intake_verb_has_a_valid_case_here() -> None:
    assert {(k, v) for k, _, v, _, _ in VALID} == set(INTAKE_VERBS)


@pytest.mark.parametrize(("kind", "target", "verb", "body", "model"), VALID)
def test_valid_messages_decode(kind: str, target: str, verb: str, body: dict[str, Any], model: type) -> None:
    msg = decode_intake(intake_subject(kind, target, verb), json.dumps(body).encode())
    assert (msg.kind, msg.target_id, msg.verb) == (kind, target, verb)
    assert type(msg.body) is model
    assert contains(msg.body.model_dump(mode="json"), body)


def contains(big: Any, small: Any) -> bool:
    """``small``'s keys all appear in ``big`` with the same values, recursively."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    return bool(big == small)


def test_submit_fills_defaults_and_parses_the_split() -> None:
    body = {"workload": "noop", "split": {"kind": "params", "params": [{"a": 1}, {"a": 2}]}}
    spec = decode_intake("gf.in.job.j9.submit", json.dumps(body).encode()).body
    assert isinstance(spec, JobSpec) and isinstance(spec.split, ParamsSplit)
    assert spec.task_count() == 2 and spec.task_params(1) == {"a": 2}
    plain = decode_intake("gf.in.job.j9.submit", b'{"workload":"noop"}').body
    assert isinstance(plain, JobSpec) and isinstance(plain.split, CountSplit)
    assert (plain.priority, plain.submitter, plain.timeout_s) == (5, "anonymous", 600.0)


@pytest.mark.parametrize(
    "subject",
    [
        "gf.in.job.j1",  # too short
        "gf.in.job.j1.submit.now",  # too long
        "gf.ev.job.j1.submit",  # not the intake prefix
        "xx.in.job.j1.submit",
        "",
        "gf.in",
    ],
)
def test_a_subject_that_is_not_intake_is_refused(subject: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, b"{}")
    assert info.value.field == "subject"
    assert "not an intake subject" in str(info.value)


@pytest.mark.parametrize("subject", ["gf.in.job.j1.frobnicate", "gf.in.task.t1.submit", "gf.in.martian.m1.register"])
def test_an_unknown_verb_is_refused_listing_the_known_ones(subject: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, b"{}")
    assert info.value.field == "subject"
    assert "job.<id>.submit" in str(info.value) and "task.<id>.report" in str(info.value)


@pytest.mark.parametrize("target", ["-j1", "j$1", "_x", "a" * 65, "ü"])
def test_an_invalid_id_is_refused(target: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(f"gf.in.job.{target}.submit", b'{"workload":"noop"}')
    assert info.value.field == "subject"
    assert "invalid job id" in str(info.value)


@pytest.mark.parametrize("body", [b"{nope", b"", b'{"workload":"noop"} trailing', b"\xff"])
def test_malformed_json_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedJson) as info:
        decode_intake("gf.in.job.j1.submit", body)
    assert info.value.field == "body"


@pytest.mark.parametrize("subject", ["gf.in.job.j1.submit", "gf.in.task.t1.report"])
def test_a_body_that_is_not_an_object_is_refused_naming_the_body(subject: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, b"[1, 2]")
    assert info.value.field == "body"


def test_an_oversized_body_is_refused_before_parsing() -> None:
    big = b"{" + b" " * MAX_INTAKE_BYTES + b"}"
    with pytest.raises(PayloadTooLarge) as info:
        decode_intake("gf.in.job.j1.submit", big)
    assert info.value.field == "body"
    assert info.value.limit == MAX_INTAKE_BYTES
    assert f"over the {MAX_INTAKE_BYTES}-byte limit" in str(info.value)
    # Up to the limit is fine (and then validated as usual).
    body = json.dumps({"workload": "noop", "labels": {"pad": "x"}}).encode()
    body = body[:-2] + b" " * (MAX_INTAKE_BYTES - len(body)) + body[-2:]
    assert len(body) == MAX_INTAKE_BYTES
    assert isinstance(decode_intake("gf.in.job.j1.submit", body).body, JobSpec)


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
        ("gf.in.job.j1.cancel", {"reason": 5}, "reason"),
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
