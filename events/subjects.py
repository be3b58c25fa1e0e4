"""NATS names: streams, subjects, buckets; and the mapping from aggregate stream to subject."""

from __future__ import annotations

__all__ = [
    "DISPATCH_PREFIX",
    "DISPATCH_STREAM",
    "EVENTS_STREAM",
    "EVENT_PREFIX",
    "HEARTBEAT_BUCKET",
    "INTAKE_PREFIX",
    "INTAKE_STREAM",
    "OBJECT_BUCKET",
    "dispatch_subject",
    "event_subject",
    "intake_subject",
    "stream_name",
]

EVENTS_STREAM = "GF_EVENTS"
EVENT_PREFIX = "gf.ev"
INTAKE_STREAM = "GF_INTAKE"
INTAKE_PREFIX = "gf.in"
DISPATCH_STREAM = "GF_DISPATCH"
DISPATCH_PREFIX = "gf.dispatch"
HEARTBEAT_BUCKET = "gf_heartbeats"
OBJECT_BUCKET = "gf_objects"


def stream_name(kind: str, aggregate_id: str) -> str:
    """The event stream of one aggregate, for example ``task.j1-0``."""
    return f"{kind}.{aggregate_id}"


def event_subject(stream: str) -> str:
    """The NATS subject that holds aggregate stream ``stream``: one subject per aggregate."""
    return f"{EVENT_PREFIX}.{stream}"


def intake_subject(kind: str, target_id: str, verb: str) -> str:
    """Where outsiders publish, for example ``gf.in.job.j1.submit``."""
    return f"{INTAKE_PREFIX}.{kind}.{target_id}.{verb}"


def dispatch_subject(provider_id: str) -> str:
    """Where the orchestrator tells one provider about its leases and cancellations."""
    return f"{DISPATCH_PREFIX}.{provider_id}"
