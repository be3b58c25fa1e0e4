"""The wire codec: binary-mode NATS messages with ``ce-*`` headers, and byte-stable JSON lines."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    DEFAULT_REGISTRY,
    Envelope,
    InvalidPayload,
    MalformedJson,
    UnknownSchemaVersion,
    decode_message,
    encode,
    from_json_line,
    headers_for,
    new_envelope,
    to_json_line,
    to_structured,
)
from events.job import UsageMetered
from events.task import TaskFailed, TaskProgressed
from events.types import (
    MAX_BYTES,
    MAX_COUNT,
    MAX_GPU_MS,
    MAX_MEASURE,
    MAX_MICROS,
    MAX_PRICE_MICROS,
    EventModel,
    ObjectRef,
)
from tests.unit.catalogue_samples import SAMPLES


def envelope_of(event: EventModel, correlationid: str | None = None, causationid: str | None = None) -> Envelope:
    """An envelope on a stream named after the event's first word: ``task.j1-0``, ``job.j1-0``..."""
    name = type(event).__name__
    kind = re.match(r"[A-Z][a-z]+", name).group().lower()  # type: ignore[union-attr]
    return new_envelope(
        f"{kind}.j1-0",
        event,
        id=f"ev-{name}",
        source="svc/tests",
        correlationid=correlationid,
        causationid=causationid,
    )


def same(a: Envelope, b: Envelope) -> bool:
    return (a.id, a.source, a.subject, a.data, a.correlationid, a.causationid, a.sequence) == (
        b.id,
        b.source,
        b.subject,
        b.data,
        b.correlationid,
        b.causationid,
        b.sequence,
    )


def test_headers_are_the_cloudevents_binding_plus_msg_id() -> None:
    env = envelope_of(SAMPLES["TaskLeased"], correlationid="corr-1", causationid="cause-1")
    body, headers = encode(env)
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "ev-TaskLeased",
        "ce-source": "svc/tests",
        "ce-type": "TaskLeased",
        "ce-subject": "task.j1-0",
        "ce-time": "2026-01-02T03:04:05.678901Z",
        "content-type": "application/json",
        "Nats-Msg-Id": "ev-TaskLeased",
        "ce-correlationid": "corr-1",
        "ce-causationid": "cause-1",
    }
    assert json.loads(body)["type"] == "TaskLeased"
    assert body == DEFAULT_REGISTRY.encode(env.data)


def test_optional_extensions_are_left_out_when_absent() -> None:
    headers = headers_for(envelope_of(SAMPLES["TaskQueued"]))
    assert "ce-correlationid" not in headers and "ce-causationid" not in headers


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_every_catalogue_type_round_trips_as_a_message(type_name: str) -> None:
    env = envelope_of(SAMPLES[type_name], correlationid="c1", causationid="k1")
    body, headers = encode(env)
    got = decode_message(env.subject, body, headers, 17)
    assert same(got, env.at_position(17))
    assert type(got.data) is type(env.data)
    assert got.type == type_name and got.time == env.time
    # Encoding what was decoded gives the same bytes: replay is byte for byte.
    assert encode(got) == (body, headers)


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_every_catalogue_type_round_trips_as_a_byte_stable_json_line(type_name: str) -> None:
    env = envelope_of(SAMPLES[type_name], causationid="k1").at_position(5)
    line = to_json_line(env)
    assert "\n" not in line
    back = from_json_line(line)
    assert same(back, env)
    assert to_json_line(back) == line
    assert from_json_line(line.encode()).data == env.data


def test_json_line_is_sorted_compact_and_structured() -> None:
    env = envelope_of(SAMPLES["TaskQueued"]).at_position(3)
    line = to_json_line(env)
    obj = json.loads(line)
    assert list(obj) == sorted(obj)
    assert ", " not in line and ": " not in line
    assert obj == {
        "data": {"at": "2026-01-02T03:04:05.678901Z", "task_id": "j1-0", "type": "TaskQueued", "v": 1},
        "datacontenttype": "application/json",
        "id": "ev-TaskQueued",
        "sequence": 3,
        "source": "svc/tests",
        "specversion": "1.0",
        "subject": "task.j1-0",
        "time": "2026-01-02T03:04:05.678901Z",
        "type": "TaskQueued",
    }
    assert to_structured(env) == obj


def test_non_utc_times_are_normalised_so_the_encoding_is_stable() -> None:
    plus_two = timezone(timedelta(hours=2))
    fields = {"task_id": "t", "reason": "timeout", "attempt": 1, "terminal": False}
    a = TaskFailed(at=datetime(2026, 1, 1, 2, 0, tzinfo=plus_two), **fields)  # type: ignore[arg-type]
    b = TaskFailed(at=datetime(2026, 1, 1, 0, 0, tzinfo=UTC), **fields)  # type: ignore[arg-type]
    assert DEFAULT_REGISTRY.encode(a) == DEFAULT_REGISTRY.encode(b)
    assert b'"at":"2026-01-01T00:00:00Z"' in DEFAULT_REGISTRY.encode(a)


def test_decode_message_falls_back_to_msg_id_and_tolerates_missing_optional_headers() -> None:
    env = envelope_of(SAMPLES["TaskQueued"])
    body, _ = encode(env)
    got = decode_message("task.j1-0", body, {"Nats-Msg-Id": "only-msg-id"}, 9)
    assert (got.id, got.source, got.correlationid, got.sequence) == ("only-msg-id", "", None, 9)
    assert got.data == env.data


@pytest.mark.parametrize("headers", [None, {}, {"ce-source": "x"}])
def test_decode_message_without_an_id_is_invalid(headers: dict[str, str] | None) -> None:
    body, _ = encode(envelope_of(SAMPLES["TaskQueued"]))
    with pytest.raises(InvalidPayload) as info:
        decode_message("task.j1-0", body, headers, 1)
    assert info.value.field == "ce-id"


def test_decode_message_refuses_a_header_type_that_contradicts_the_body() -> None:
    body, headers = encode(envelope_of(SAMPLES["TaskQueued"]))
    with pytest.raises(InvalidPayload) as info:
        decode_message("task.j1-0", body, {**headers, "ce-type": "TaskLeased"}, 1)
    assert info.value.field == "ce-type"


def test_decode_message_passes_body_errors_through_typed() -> None:
    with pytest.raises(MalformedJson):
        decode_message("task.x", b"{oops", {"ce-id": "a"}, 1)
    with pytest.raises(UnknownSchemaVersion):
        decode_message("task.x", b'{"type":"TaskQueued","v":5}', {"ce-id": "a"}, 1)


BAD_ID_LINE = (
    '{"id":"a b","source":"s","subject":"task.t",'
    '"data":{"type":"TaskQueued","v":1,"at":"2026-01-01T00:00:00Z","task_id":"t"}}'
)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("not json", "line"),
        ("[]", "data"),
        ('{"id":"a","source":"s","subject":"task.t"}', "data"),
        ('{"id":"a","source":"s","subject":"task.t","data":[]}', "data"),
        ('{"source":"s","subject":"task.t","data":{}}', "id"),
        ('{"id":"a","source":1,"subject":"task.t","data":{}}', "source"),
        ('{"id":"a","source":"s","data":{}}', "subject"),
        (
            '{"id":"a b","source":"s","subject":"task.t","data":{"type":"TaskQueued","v":1,'
            '"at":"2026-01-01T00:00:00Z","task_id":"t"}}',
            "id",
        ),
        ('{"id":"a","source":"s","subject":"task.t","data":{"type":"TaskQueued","v":1}}', "at"),
    ],
)
def test_from_json_line_errors_name_the_field(line: str, field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        from_json_line(line)
    assert info.value.field == field


# ---- generated events ------------------------------------------------------------------------------

_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z")
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.timezones()).filter(
    lambda t: t.utcoffset() is not None
)
# Up to the catalogue's own bounds, edges included (a cap below them would hide an overflow there).
_finite = st.floats(min_value=0.0, max_value=MAX_MEASURE, allow_nan=False, allow_infinity=False)
_refs = st.builds(
    ObjectRef,
    bucket=st.from_regex(r"\A[A-Za-z0-9_-]{1,16}\Z"),
    name=st.text(min_size=1, max_size=40),
    sha256=st.from_regex(r"\A[0-9a-f]{64}\Z"),
    size=st.integers(min_value=0, max_value=MAX_BYTES),
)
_events = st.one_of(
    st.builds(
        TaskProgressed,
        at=_times,
        task_id=_ids,
        lease_id=_ids,
        provider_id=_ids,
        fraction=st.floats(min_value=0.0, max_value=1.0),
        rate=_finite,
        unit=st.text(max_size=32),
        message=st.text(max_size=500),
        checkpoint=st.none() | _refs,
        checkpoint_step=st.integers(min_value=0, max_value=MAX_COUNT),
    ),
    st.builds(
        UsageMetered,
        at=_times,
        job_id=_ids,
        task_id=_ids,
        provider_id=_ids,
        submitter=st.text(max_size=30),
        gpu_ms=st.integers(min_value=0, max_value=MAX_GPU_MS),
        price_micros=st.integers(min_value=0, max_value=MAX_PRICE_MICROS),
        amount_micros=st.integers(min_value=0, max_value=MAX_MICROS),
    ),
    st.builds(
        TaskFailed,
        at=_times,
        task_id=_ids,
        lease_id=st.none() | _ids,
        provider_id=st.none() | _ids,
        reason=st.sampled_from(["out_of_memory", "timeout", "kernel_error", "cancelled"]),
        message=st.text(max_size=200),
        attempt=st.integers(min_value=0, max_value=1000),
        terminal=st.booleans(),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    event=_events,
    event_id=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,40}\Z"),
    source=st.text(max_size=40).filter(lambda s: "\r" not in s and "\n" not in s),
    correlation=st.none() | _ids,
    sequence=st.integers(min_value=0, max_value=2**53),
)
def test_generated_events_round_trip_both_ways(
    event: EventModel, event_id: str, source: str, correlation: str | None, sequence: int
) -> None:
    env = new_envelope("task.gen", event, id=event_id, source=source, correlationid=correlation)
    env = env.at_position(sequence)
    body, headers = encode(env)
    got = decode_message("task.gen", body, headers, sequence)
    assert same(got, env)
    assert encode(got) == (body, headers)
    line = to_json_line(env)
    back = from_json_line(line)
    assert same(back, env)
    assert to_json_line(back) == line


def test_a_non_finite_float_cannot_be_written_unreadable() -> None:
    event = SAMPLES["TaskProgressed"].model_copy(update={"rate": float("inf")})
    try:
        body = DEFAULT_REGISTRY.encode(TaskProgressed.model_validate(event.model_dump()))
    except (InvalidPayload, ValueError):
        return  # refused on the way in: fine
    assert DEFAULT_REGISTRY.decode(body) == event
