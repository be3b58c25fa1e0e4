"""gpufleet events: the catalogue, the envelope and codec, subjects, schemas, and the event stores.

This package imports nothing else of gpufleet's: everything else builds on it.
"""

from events.codec import decode_message, encode, from_json_line, headers_for, to_json_line, to_structured
from events.envelope import Envelope, new_envelope
from events.errors import (
    AccessDenied,
    ConcurrencyError,
    GpufleetError,
    InvalidPayload,
    LogRegressed,
    MalformedJson,
    PayloadTooLarge,
    StoreError,
    StoreUnavailable,
    UnknownEventType,
    UnknownSchemaVersion,
)
from events.registry import CATALOGUE, DEFAULT_REGISTRY, MAX_EVENT_BYTES, Event, EventRegistry
from events.store import ANY, NO_STREAM, AppendResult, EventStore, JetStreamEventStore, MemoryEventStore

__all__ = [
    "ANY",
    "CATALOGUE",
    "DEFAULT_REGISTRY",
    "MAX_EVENT_BYTES",
    "NO_STREAM",
    "AccessDenied",
    "AppendResult",
    "ConcurrencyError",
    "Envelope",
    "Event",
    "EventRegistry",
    "EventStore",
    "GpufleetError",
    "InvalidPayload",
    "JetStreamEventStore",
    "LogRegressed",
    "MalformedJson",
    "MemoryEventStore",
    "PayloadTooLarge",
    "StoreError",
    "StoreUnavailable",
    "UnknownEventType",
    "UnknownSchemaVersion",
    "decode_message",
    "encode",
    "from_json_line",
    "headers_for",
    "new_envelope",
    "to_json_line",
    "to_structured",
]
