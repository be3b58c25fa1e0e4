"""Live progress, pure: its subjects, its bounded model, and the rule that decides whom a reader believes."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import InvalidPayload, PayloadTooLarge
from events.live import MAX_LIVE_BYTES, LiveProgress, LiveUpdate, decode_live, is_current, is_live, live_envelope
from events.subjects import live_filter, live_sender, live_subject
from events.task import TaskProgressed

AT = datetime(2026, 1, 1, tzinfo=UTC)


def body(**kw: object) -> bytes:
    fields: dict[str, object] = {"lease_id": "l1", "fraction": 0.5, "rate": 2.0, "at": AT, **kw}
    return LiveProgress.model_validate(fields).model_dump_json().encode()


def test_the_subject_names_submitter_job_index_and_provider_and_reads_back() -> None:
    subject = live_subject("alice.j1.7", "p1")
    assert subject == "gf.live.alice.j1.7.p1"
    assert live_sender(subject) == ("alice.j1.7", "p1")
    assert live_filter("alice.j1") == "gf.live.alice.j1.*.*"


@pytest.mark.parametrize(
    ("task_id", "provider"),
    [("j1-0", "p1"), ("t123", "p1"), ("alice.j1.0", "p.1"), ("alice.j1.0", "*"), ("alice.j>.0", "p1")],
)
def test_a_task_without_an_owner_or_a_name_that_is_no_token_has_no_live_subject(task_id: str, provider: str) -> None:
    assert live_subject(task_id, provider) is None


@pytest.mark.parametrize(
    "subject",
    [
        "gf.live.alice.j1.0",  # no provider
        "gf.live.alice.j1.0.p1.x",
        "gf.live.alice.j1.07.p1",  # not how an index is written: no second name for task 7
        "gf.live.alice.j1.-1.p1",
        "gf.live.alice.j1.x.p1",
        "gf.in.alice.j1.0.p1",
        "gf.live.alice.j1.0." + "p" * 65,
    ],
)
def test_anything_but_a_live_subject_names_no_sender(subject: str) -> None:
    assert live_sender(subject) is None
    with pytest.raises(InvalidPayload):
        decode_live(subject, body())


def test_a_valid_message_decodes_and_a_bad_one_names_its_field() -> None:
    update = decode_live("gf.live.alice.j1.0.p1", body())
    assert update == LiveUpdate("alice.j1.0", "p1", LiveProgress(lease_id="l1", fraction=0.5, rate=2.0, at=AT))
    cases = [
        (body()[:-1], "body"),
        (b'{"lease_id":"l1","fraction":1.5,"at":"2026-01-01T00:00:00Z"}', "fraction"),
        (b'{"lease_id":"l1","fraction":0.5,"at":"2026-01-01T00:00:00"}', "at"),
        (b'{"lease_id":"l1","fraction":0.5,"at":"2026-01-01T00:00:00Z","checkpoint":null}', "checkpoint"),
    ]
    for data, field in cases:
        with pytest.raises(InvalidPayload) as info:
            decode_live("gf.live.alice.j1.0.p1", data)
        assert info.value.field == field, data


def test_an_oversized_message_is_refused_unread() -> None:
    data = b'{"lease_id":"l1","fraction":0.5,"at":"2026-01-01T00:00:00Z","message":"' + b"x" * MAX_LIVE_BYTES + b'"}'
    with pytest.raises(PayloadTooLarge):
        decode_live("gf.live.alice.j1.0.p1", data)
    with pytest.raises(InvalidPayload):
        # Under the byte limit, the model still bounds each field.
        decode_live("gf.live.alice.j1.0.p1", body().replace(b'"message":""', b'"message":"' + b"x" * 201 + b'"'))


@given(st.binary(max_size=2 * MAX_LIVE_BYTES), st.text(max_size=80))
def test_no_input_raises_anything_but_invalid_payload(data: bytes, subject: str) -> None:
    for s in (subject, "gf.live.alice.j1.0.p1"):
        with contextlib.suppress(InvalidPayload):
            decode_live(s, data)


def test_only_the_current_lease_holder_is_believed() -> None:
    update = decode_live("gf.live.alice.j1.0.p1", body())
    assert is_current(update, status="running", lease_id="l1", provider_id="p1")
    assert is_current(update, status="leased", lease_id="l1", provider_id="p1")
    assert not is_current(update, status="running", lease_id="l1", provider_id="p2")  # another's subject
    assert not is_current(update, status="running", lease_id="l2", provider_id="p1")  # a stale lease
    assert not is_current(update, status="running", lease_id=None, provider_id=None)
    for ended in ("queued", "completed", "dead", "cancelled"):
        assert not is_current(update, status=ended, lease_id="l1", provider_id="p1")


def test_a_reader_sees_it_as_progress_without_a_checkpoint_timed_by_its_own_clock() -> None:
    update = decode_live("gf.live.alice.j1.0.p1", body(at=AT + timedelta(days=365)))  # a provider's clock lies
    env = live_envelope(update, received_at=AT, position=42)
    assert is_live(env) and env.sequence == 42 and env.subject == "task.alice.j1.0"
    assert isinstance(env.data, TaskProgressed)
    assert env.data.at == AT and env.data.checkpoint is None and env.data.fraction == 0.5
    assert (env.data.provider_id, env.data.lease_id) == ("p1", "l1")
