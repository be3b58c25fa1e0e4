"""Catalogue validation and upcasting: every bad body is a typed ``InvalidPayload`` naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from events import (
    CATALOGUE,
    DEFAULT_REGISTRY,
    MAX_EVENT_BYTES,
    EventRegistry,
    InvalidPayload,
    MalformedJson,
    PayloadTooLarge,
    UnknownEventType,
    UnknownSchemaVersion,
)
from events.task import TaskCreated, TaskQueued
from events.types import Estimate, EventModel, Resources, UtcDateTime
from tests.unit.catalogue_samples import SAMPLES, T0

_DELETE: Any = object()
JAN1 = datetime(2026, 1, 1, tzinfo=UTC)


def body_of(type_name: str, **changes: Any) -> dict[str, Any]:
    """The JSON object of the sample event ``type_name``, with ``changes`` applied (_DELETE deletes)."""
    obj: dict[str, Any] = json.loads(DEFAULT_REGISTRY.encode(SAMPLES[type_name]))
    for key, value in changes.items():
        if value is _DELETE:
            del obj[key]
        else:
            obj[key] = value
    return obj


def decode_obj(obj: Any) -> EventModel:
    return DEFAULT_REGISTRY.decode(json.dumps(obj).encode())


def test_samples_cover_the_whole_catalogue() -> None:
    assert sorted(SAMPLES) == sorted(m.model_fields["type"].default for m in CATALOGUE)
    assert all(type(SAMPLES[m.model_fields["type"].default]) is m for m in CATALOGUE)


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_every_sample_is_valid_and_decodes_to_itself(type_name: str) -> None:
    event = decode_obj(body_of(type_name))
    assert event == SAMPLES[type_name]
    assert type(event) is type(SAMPLES[type_name])


# ---- each kind of bad body -------------------------------------------------------------------------


def test_unknown_field_is_refused_naming_it() -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_obj(body_of("TaskQueued", colour="blue"))
    assert info.value.field == "colour"
    assert "colour" in str(info.value)


def test_unknown_nested_field_is_refused_with_its_path() -> None:
    obj = body_of("TaskProgressed")
    obj["checkpoint"]["extra"] = 1
    with pytest.raises(InvalidPayload) as info:
        decode_obj(obj)
    assert info.value.field == "checkpoint.extra"


@pytest.mark.parametrize(
    ("type_name", "field", "value"),
    [
        ("TaskFailed", "attempt", "3"),  # strict: "5" is not an int
        ("TaskFailed", "attempt", 3.0),  # nor is 3.0
        ("TaskFailed", "terminal", 1),  # 1 is not a bool
        ("TaskFailed", "terminal", "true"),
        ("TaskQueued", "task_id", 5),  # 5 is not a string
        ("TaskProgressed", "fraction", "0.5"),
        ("TaskProgressed", "at", 1767225600),  # an epoch is not a datetime here
        ("TaskProgressed", "at", "2026-01-01T00:00:00"),  # a naive datetime is refused
        ("UsageMetered", "gpu_ms", "42"),
        ("UsageMetered", "amount_micros", 1.5),  # money is integer micros
        ("UsageMetered", "amount_micros", -1),
        ("TaskCreated", "params", []),
        ("TaskCreated", "shard", [1, 2, 3]),
        ("TaskFailed", "reason", "bored"),
        ("TaskQueued", "task_id", "has a space"),
    ],
)
def test_wrong_type_is_refused_naming_the_field(type_name: str, field: str, value: Any) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_obj(body_of(type_name, **{field: value}))
    assert type(info.value) is InvalidPayload
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_wrong_nested_type_names_the_dotted_path() -> None:
    obj = body_of("TaskProgressed")
    obj["checkpoint"]["size"] = "1"
    with pytest.raises(InvalidPayload) as info:
        decode_obj(obj)
    assert info.value.field == "checkpoint.size"
    obj = body_of("TaskCreated", resources={"min_vram_mb": "1"})
    with pytest.raises(InvalidPayload) as info:
        decode_obj(obj)
    assert info.value.field == "resources.min_vram_mb"


@pytest.mark.parametrize("field", ["task_id", "at", "lease_id", "fraction"])
def test_missing_field_is_refused_naming_it(field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_obj(body_of("TaskProgressed", **{field: _DELETE}))
    assert info.value.field == field
    assert "required" in str(info.value).lower()


def test_a_default_may_be_omitted() -> None:
    event = decode_obj(body_of("TaskProgressed", message=_DELETE, rate=_DELETE))
    assert event.message == "" and event.rate == 0.0  # type: ignore[attr-defined]


def _created_with_blob(n: int) -> TaskCreated:
    return TaskCreated(
        at=T0,
        task_id="t1",
        job_id="j1",
        index=0,
        submitter="alice",
        workload="noop",
        params={"blob": "x" * n},
        resources=Resources(),
        estimate=Estimate(),
        timeout_s=60.0,
    )


def _exactly(size: int) -> TaskCreated:
    overhead = len(DEFAULT_REGISTRY.encode(_created_with_blob(0)))
    event = _created_with_blob(size - overhead)
    assert len(event.__pydantic_serializer__.to_json(event)) == size
    return event


def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    event = _exactly(MAX_EVENT_BYTES)
    body = DEFAULT_REGISTRY.encode(event)
    assert len(body) == MAX_EVENT_BYTES
    assert DEFAULT_REGISTRY.decode(body) == event


def test_oversized_payload_names_the_limit_on_encode_and_decode() -> None:
    event = _exactly(MAX_EVENT_BYTES + 1)
    with pytest.raises(PayloadTooLarge) as info:
        DEFAULT_REGISTRY.encode(event)
    assert info.value.limit == MAX_EVENT_BYTES == 65536
    assert info.value.size == MAX_EVENT_BYTES + 1
    assert info.value.field == "data"
    assert "65536" in str(info.value)
    body = event.__pydantic_serializer__.to_json(event)
    with pytest.raises(PayloadTooLarge) as info:
        DEFAULT_REGISTRY.decode(body)
    assert info.value.limit == MAX_EVENT_BYTES
    # The size check comes first: even junk that large is "too large", not "malformed".
    with pytest.raises(PayloadTooLarge):
        DEFAULT_REGISTRY.decode(b"{" * (MAX_EVENT_BYTES + 1))


def test_unknown_type_is_refused() -> None:
    with pytest.raises(UnknownEventType) as info:
        decode_obj(body_of("TaskQueued", type="TaskTeleported"))
    assert info.value.field == "type"
    assert info.value.type_name == "TaskTeleported"
    assert "TaskTeleported" in str(info.value)


@pytest.mark.parametrize("body", [{"v": 1, "task_id": "t"}, {"type": 7, "v": 1}, {"type": None}])
def test_missing_or_non_string_type_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_obj(body)
    assert info.value.field == "type"


@pytest.mark.parametrize("version", [0, 2, 99, -1, "1", None, 1.5])
def test_unknown_schema_version_is_refused(version: Any) -> None:
    with pytest.raises(UnknownSchemaVersion) as info:
        decode_obj(body_of("TaskQueued", v=version))
    assert info.value.field == "v"
    assert info.value.type_name == "TaskQueued"
    assert info.value.version == version
    assert "known: 1" in str(info.value)


def test_missing_schema_version_is_refused() -> None:
    with pytest.raises(UnknownSchemaVersion) as info:
        decode_obj(body_of("TaskQueued", v=_DELETE))
    assert info.value.field == "v"


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_bool_or_float_version_is_not_version_one(version: Any) -> None:
    with pytest.raises(UnknownSchemaVersion):
        decode_obj(body_of("TaskQueued", v=version))


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"{not json", "body"), (b"", "body"), (b"\xff\xfe", "body"), (b"[1, 2]", "data"), (b'"s"', "data")],
)
def test_malformed_json_is_refused(body: bytes, field: str) -> None:
    with pytest.raises(MalformedJson) as info:
        DEFAULT_REGISTRY.decode(body)
    assert info.value.field == field


def test_validate_takes_a_parsed_object_with_the_same_errors() -> None:
    assert DEFAULT_REGISTRY.validate(body_of("TaskQueued")) == SAMPLES["TaskQueued"]
    with pytest.raises(InvalidPayload) as info:
        DEFAULT_REGISTRY.validate(body_of("TaskQueued", task_id=5))
    assert info.value.field == "task_id"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(type_name=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_no_mutation_of_a_valid_body_crashes(type_name: str, data: st.DataObject) -> None:
    """Replace, delete or add one field with any JSON value: a valid event or InvalidPayload."""
    obj = body_of(type_name)
    key = data.draw(st.sampled_from([*obj, "extra_field"]))
    if data.draw(st.booleans()) and key in obj:
        del obj[key]
    else:
        obj[key] = data.draw(_json)
    try:
        event = decode_obj(obj)
    except InvalidPayload as e:
        assert e.field, f"no field named for {obj}"
    else:
        assert isinstance(event, EventModel)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    try:
        DEFAULT_REGISTRY.decode(body)
    except InvalidPayload as e:
        assert e.field
    else:  # pragma: no cover - hypothesis will not build a valid event from noise
        pytest.fail(f"noise decoded: {body!r}")


# ---- upcasting -------------------------------------------------------------------------------------


class TaskQueuedV2(EventModel):
    """Version 2 of TaskQueued, test-local: adds a required ``queue`` and renames ``task_id``."""

    type: Literal["TaskQueued"] = "TaskQueued"
    v: Literal[2] = 2
    at: UtcDateTime
    task: str
    queue: str = Field(min_length=1)


class TaskQueuedV3(EventModel):
    """Version 3: ``queue`` became a priority number."""

    type: Literal["TaskQueued"] = "TaskQueued"
    v: Literal[3] = 3
    at: UtcDateTime
    task: str
    priority: int


def v1_to_v2(obj: dict[str, Any]) -> dict[str, Any]:
    obj["task"] = obj.pop("task_id")
    obj["queue"] = "default"
    return obj


def v2_to_v3(obj: dict[str, Any]) -> dict[str, Any]:
    queue = obj.pop("queue")
    obj["priority"] = 5 if queue == "default" else 0
    return obj


V1_BODY = b'{"type":"TaskQueued","v":1,"at":"2026-01-01T00:00:00Z","task_id":"t1"}'


def test_a_v1_body_is_upcast_into_the_v2_model() -> None:
    reg = EventRegistry([TaskQueuedV2])
    reg.register_upcaster("TaskQueued", 1, v1_to_v2)
    event = reg.decode(V1_BODY)
    assert isinstance(event, TaskQueuedV2)
    assert (event.v, event.task, event.queue) == (2, "t1", "default")
    assert event.at == JAN1
    assert reg.known_versions("TaskQueued") == [1, 2]
    # Re-encoding writes the current version.
    assert json.loads(reg.encode(event))["v"] == 2


def test_upcasters_chain_one_version_at_a_time() -> None:
    reg = EventRegistry([TaskQueuedV3])
    reg.register_upcaster("TaskQueued", 2, v2_to_v3)
    reg.register_upcaster("TaskQueued", 1, v1_to_v2)
    event = reg.decode(V1_BODY)
    assert isinstance(event, TaskQueuedV3)
    assert (event.v, event.task, event.priority) == (3, "t1", 5)
    v2 = b'{"type":"TaskQueued","v":2,"at":"2026-01-01T00:00:00Z","task":"t2","queue":"gpu"}'
    assert reg.decode(v2) == TaskQueuedV3(at=event.at, task="t2", priority=0)
    assert reg.known_versions("TaskQueued") == [1, 2, 3]


def test_a_version_without_an_upcaster_is_unknown() -> None:
    reg = EventRegistry([TaskQueuedV2])
    reg.register_upcaster("TaskQueued", 1, v1_to_v2)
    v0 = b'{"type":"TaskQueued","v":0,"at":"2026-01-01T00:00:00Z","id":"t1"}'
    with pytest.raises(UnknownSchemaVersion) as info:
        reg.decode(v0)
    assert info.value.field == "v" and info.value.version == 0
    assert "known: 1, 2" in str(info.value)
    with pytest.raises(UnknownSchemaVersion):
        reg.decode(V1_BODY.replace(b'"v":1', b'"v":3'))


def test_a_gap_in_the_chain_is_unknown() -> None:
    reg = EventRegistry([TaskQueuedV3])
    reg.register_upcaster("TaskQueued", 2, v2_to_v3)  # nothing from 1 to 2
    with pytest.raises(UnknownSchemaVersion) as info:
        reg.decode(V1_BODY)
    assert info.value.version == 1


def test_current_bodies_take_the_fast_path_and_never_call_an_upcaster() -> None:
    calls: list[dict[str, Any]] = []

    def counting(obj: dict[str, Any]) -> dict[str, Any]:
        calls.append(dict(obj))
        return v1_to_v2(obj)

    reg = EventRegistry([TaskQueuedV2, *[m for m in CATALOGUE if m is not TaskQueued]])
    reg.register_upcaster("TaskQueued", 1, counting)
    current = b'{"type":"TaskQueued","v":2,"at":"2026-01-01T00:00:00Z","task":"t1","queue":"q"}'
    assert reg.decode(current) == TaskQueuedV2(at=JAN1, task="t1", queue="q")
    assert calls == []
    # Other types are unaffected, and still validated strictly.
    assert reg.decode(DEFAULT_REGISTRY.encode(SAMPLES["TaskLeased"])) == SAMPLES["TaskLeased"]
    reg.decode(V1_BODY)
    assert len(calls) == 1 and calls[0]["v"] == 1


def test_a_current_body_with_a_bad_field_is_not_mistaken_for_an_old_version() -> None:
    reg = EventRegistry([TaskQueuedV2])
    reg.register_upcaster("TaskQueued", 1, v1_to_v2)
    bad = b'{"type":"TaskQueued","v":2,"at":"2026-01-01T00:00:00Z","task":"t1","queue":""}'
    with pytest.raises(InvalidPayload) as info:
        reg.decode(bad)
    assert type(info.value) is InvalidPayload and info.value.field == "queue"


def test_an_upcast_body_that_is_still_invalid_names_the_field() -> None:
    reg = EventRegistry([TaskQueuedV2])
    reg.register_upcaster("TaskQueued", 1, lambda obj: {**obj, "task": obj.get("task_id")})
    with pytest.raises(InvalidPayload) as info:
        reg.decode(V1_BODY)
    # The careless upcaster kept task_id (now unknown) and added no queue.
    assert info.value.field in {"task_id", "queue"}
    assert not isinstance(info.value, UnknownSchemaVersion)


def test_registry_refuses_twice_registered_types_and_upcasters_for_unknown_types() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        EventRegistry([TaskQueued, TaskQueuedV2])
    reg = EventRegistry([TaskQueuedV2])
    with pytest.raises(UnknownEventType):
        reg.register_upcaster("TaskTeleported", 1, v1_to_v2)


def test_a_registry_with_a_smaller_limit_enforces_it() -> None:
    reg = EventRegistry(CATALOGUE, max_bytes=100)
    with pytest.raises(PayloadTooLarge) as info:
        reg.encode(SAMPLES["TaskCreated"])
    assert info.value.limit == 100 and "100-byte limit" in str(info.value)
