"""The event registry: every event type, its current schema version, and upcasters for old ones."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from events.audit import AuditCheckpointed
from events.errors import (
    InvalidPayload,
    MalformedJson,
    PayloadTooLarge,
    UnknownEventType,
    UnknownSchemaVersion,
    first_error,
)
from events.intake import InputAccepted, InputRejected
from events.job import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadlineMissed,
    JobFailed,
    JobRejected,
    JobSubmitted,
    ProviderCredited,
    SubmitterCharged,
    UsageMetered,
)
from events.provider import (
    ProviderCalibrated,
    ProviderDraining,
    ProviderLeft,
    ProviderLost,
    ProviderOnline,
    ProviderRegistered,
)
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskProgressed,
    TaskQueued,
    TaskResultJudged,
    TaskResultRejected,
    TaskResultReturned,
    TaskRetried,
    TaskStarted,
)
from events.types import EventModel

__all__ = ["CATALOGUE", "DEFAULT_REGISTRY", "MAX_EVENT_BYTES", "Event", "EventRegistry", "Upcaster"]

#: The largest encoded event body. Events carry facts and references, never bulk data.
MAX_EVENT_BYTES = 64 * 1024

CATALOGUE: tuple[type[EventModel], ...] = (
    JobSubmitted,
    JobAccepted,
    JobRejected,
    JobCompleted,
    JobFailed,
    JobCancelled,
    JobDeadlineMissed,
    TaskCreated,
    TaskQueued,
    TaskLeased,
    TaskStarted,
    TaskProgressed,
    TaskCompleted,
    TaskFailed,
    TaskRetried,
    TaskLeaseExpired,
    TaskCancelled,
    TaskResultRejected,
    TaskResultReturned,
    TaskResultJudged,
    ProviderRegistered,
    ProviderCalibrated,
    ProviderOnline,
    ProviderLost,
    ProviderDraining,
    ProviderLeft,
    UsageMetered,
    SubmitterCharged,
    ProviderCredited,
    InputAccepted,
    InputRejected,
    AuditCheckpointed,
)

#: Any event of the catalogue: a discriminated union on ``type``.
Event = Annotated[
    JobSubmitted
    | JobAccepted
    | JobRejected
    | JobCompleted
    | JobFailed
    | JobCancelled
    | JobDeadlineMissed
    | TaskCreated
    | TaskQueued
    | TaskLeased
    | TaskStarted
    | TaskProgressed
    | TaskCompleted
    | TaskFailed
    | TaskRetried
    | TaskLeaseExpired
    | TaskCancelled
    | TaskResultRejected
    | TaskResultReturned
    | TaskResultJudged
    | ProviderRegistered
    | ProviderCalibrated
    | ProviderOnline
    | ProviderLost
    | ProviderDraining
    | ProviderLeft
    | UsageMetered
    | SubmitterCharged
    | ProviderCredited
    | InputAccepted
    | InputRejected
    | AuditCheckpointed,
    Field(discriminator="type"),
]

#: Turns the JSON object of version ``n`` of an event into version ``n + 1``.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _literal_default(model: type[EventModel], name: str) -> Any:
    return model.model_fields[name].default


class EventRegistry:
    """Decodes event bodies of any known version into the current models.

    The fast path validates JSON straight into the current model. Only a body at an older schema
    version takes the slow path: parsed, upcast step by step, then validated.
    """

    def __init__(self, models: Iterable[type[EventModel]], *, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.models: dict[str, type[EventModel]] = {}
        self.versions: dict[str, int] = {}
        for m in models:
            name = _literal_default(m, "type")
            if name in self.models:
                raise ValueError(f"event type {name} registered twice")
            self.models[name] = m
            self.versions[name] = int(_literal_default(m, "v"))
        self.max_bytes = max_bytes
        members: Any = tuple(self.models.values())
        union: Any = Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007
        self._adapter: TypeAdapter[Any] = TypeAdapter(union)
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register_upcaster(self, type_name: str, from_version: int, fn: Upcaster) -> None:
        """Teach the registry to read ``type_name`` at ``from_version``, one version at a time."""
        if type_name not in self.models:
            raise UnknownEventType(type_name)
        self._upcasters[(type_name, from_version)] = fn

    def known_versions(self, type_name: str) -> list[int]:
        """Every version of ``type_name`` this registry can read."""
        olds = sorted(v for (t, v) in self._upcasters if t == type_name)
        return [*olds, self.versions[type_name]]

    def decode(self, body: bytes | str) -> EventModel:
        """Validate one event body; problems raise a typed ``InvalidPayload`` naming the field."""
        if len(body) > self.max_bytes:
            raise PayloadTooLarge(len(body), self.max_bytes, "data")
        try:
            event: EventModel = self._adapter.validate_json(body)
        except ValidationError as e:
            return self._slow_path(body, e)
        if "v" not in event.model_fields_set:
            # Without a version it could be any version: reading it as the current one could misread it.
            name = event.type  # type: ignore[attr-defined]
            raise UnknownSchemaVersion(name, None, self.known_versions(name))
        return event

    def validate(self, obj: dict[str, Any]) -> EventModel:
        """Validate an already parsed JSON object (golden files, exports)."""
        return self.decode(json.dumps(obj, separators=(",", ":")))

    def encode(self, event: EventModel) -> bytes:
        """The body of an event: compact JSON; over the size limit raises ``PayloadTooLarge``."""
        body = event.__pydantic_serializer__.to_json(event)
        if len(body) > self.max_bytes:
            raise PayloadTooLarge(len(body), self.max_bytes, "data")
        return body

    def _slow_path(self, body: bytes | str, error: ValidationError) -> EventModel:
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise first_error(error, tagged=True) from error
        if not isinstance(obj, dict):
            raise MalformedJson("an event body must be a JSON object", field="data")
        type_name = obj.get("type")
        if not isinstance(type_name, str):
            raise InvalidPayload("missing or non-string event type", field="type")
        if type_name not in self.models:
            raise UnknownEventType(type_name)
        version = obj.get("v")
        current = self.versions[type_name]
        if not isinstance(version, int) or isinstance(version, bool) or version > current:
            raise UnknownSchemaVersion(type_name, version, self.known_versions(type_name))
        if version == current:
            raise first_error(error, tagged=True) from error
        while version < current:
            up = self._upcasters.get((type_name, version))
            if up is None:
                raise UnknownSchemaVersion(type_name, version, self.known_versions(type_name))
            obj = up(dict(obj))
            version += 1
            obj["v"] = version
        try:
            upcast: EventModel = self._adapter.validate_json(json.dumps(obj))
        except ValidationError as e:
            raise first_error(e, tagged=True) from e
        return upcast


DEFAULT_REGISTRY = EventRegistry(CATALOGUE)
