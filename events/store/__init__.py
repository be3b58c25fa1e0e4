"""Event stores: the protocol, the in-memory store and the JetStream store."""

from events.store.jetstream import JetStreamEventStore, StreamSettings, ensure_stream
from events.store.memory import MemoryEventStore
from events.store.protocol import ANY, NO_STREAM, AppendResult, EventStore, InvalidHandler, log_invalid

__all__ = [
    "ANY",
    "NO_STREAM",
    "AppendResult",
    "EventStore",
    "InvalidHandler",
    "JetStreamEventStore",
    "MemoryEventStore",
    "StreamSettings",
    "ensure_stream",
    "log_invalid",
]
