"""The project's root exception and the typed errors of the event layer."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = [
    "AccessDenied",
    "ConcurrencyError",
    "GpufleetError",
    "InvalidPayload",
    "MalformedJson",
    "PayloadTooLarge",
    "StoreError",
    "StoreUnavailable",
    "UnknownEventType",
    "UnknownSchemaVersion",
    "first_error",
]


class GpufleetError(Exception):
    """Root of every error gpufleet raises on purpose.

    ``str(err)`` is always one line a person can act on; callers never need a traceback.
    """


class InvalidPayload(GpufleetError):
    """A message or event failed validation; ``field`` names the offending field (dotted path)."""

    def __init__(self, problem: str, *, field: str | None = None) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class MalformedJson(InvalidPayload):
    """The bytes are not a JSON object."""


class UnknownEventType(InvalidPayload):
    """The ``type`` names no event in the catalogue."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"unknown event type {type_name!r}", field="type")
        self.type_name = type_name


class UnknownSchemaVersion(InvalidPayload):
    """The event type is known but not at this schema version, and no upcaster reaches it."""

    def __init__(self, type_name: str, version: object, known: list[int]) -> None:
        super().__init__(
            f"{type_name} has no schema version {version!r} (known: {', '.join(map(str, known))})",
            field="v",
        )
        self.type_name = type_name
        self.version = version


class PayloadTooLarge(InvalidPayload):
    """The encoded payload is over the limit; bulk data belongs in the object store."""

    def __init__(self, size: int, limit: int, what: str = "payload") -> None:
        super().__init__(
            f"{what} is {size} bytes, over the {limit}-byte limit; put bulk data in the object store",
            field=what,
        )
        self.size = size
        self.limit = limit


class ConcurrencyError(GpufleetError):
    """An append's expected position was stale: another writer appended to the stream first."""

    def __init__(self, stream: str, expected: int | None, actual: int | None = None) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        got = f", found {actual}" if actual is not None else ""
        super().__init__(f"stream {stream!r}: expected position {expected}{got}")


class StoreError(GpufleetError):
    """The store refused or failed an operation for a reason other than concurrency or validation."""


class StoreUnavailable(StoreError):
    """The store could not be reached, or did not confirm an operation in time."""


class LogRegressed(StoreError):
    """The log is shorter than, or differs from, what this component already applied: history was lost
    or rewritten behind its back. It stops rather than write a different history on top."""


class AccessDenied(StoreUnavailable):
    """The network refused this identity: no or revoked credentials, or a subject it may not use."""


def first_error(e: ValidationError, prefix: str = "", *, tagged: bool = False) -> InvalidPayload:
    """The first pydantic error as an ``InvalidPayload`` that names the field.

    ``tagged``: the model is a discriminated union, whose first location element is the tag.
    """
    err = e.errors()[0]
    if err["type"] == "json_invalid":
        return MalformedJson(f"body is not valid JSON: {err['ctx'].get('error', err['msg'])}", field="body")
    parts = list(err["loc"])
    if tagged and len(parts) > 1 and err["type"] != "union_tag_invalid":
        parts = parts[1:]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        # The tag itself is the offending field: name it ("report", "split.kind"), not its parent.
        parts.append(str(err.get("ctx", {}).get("discriminator", "")).strip("'\""))
    loc = ".".join(str(p) for p in parts if p != "")
    # An error at the root (a JSON array where an object belongs) is about the whole body.
    field = f"{prefix}.{loc}" if prefix and loc else (loc or prefix or "body")
    return InvalidPayload(err["msg"], field=field)
