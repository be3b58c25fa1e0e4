"""Wire codec: envelopes as NATS messages (CloudEvents NATS binding, binary mode) and as JSON lines.

On NATS the body is the event's JSON and the context attributes travel as ``ce-*`` headers, so any
language reads an event with one JSON parse plus its client's header map. For files (exports,
golden logs) the structured mode is used: one JSON object per line with the attributes and ``data``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from events.envelope import Envelope, check_event_id
from events.errors import InvalidPayload, MalformedJson
from events.registry import DEFAULT_REGISTRY, EventRegistry

__all__ = ["decode_message", "encode", "from_json_line", "headers_for", "to_json_line", "to_structured"]


def headers_for(env: Envelope) -> dict[str, str]:
    """The ``ce-*`` headers of an envelope, plus ``Nats-Msg-Id`` for de-duplication."""
    h = {
        "ce-specversion": env.specversion,
        "ce-id": env.id,
        "ce-source": env.source,
        "ce-type": env.type,
        "ce-subject": env.subject,
        "ce-time": env.time.isoformat().replace("+00:00", "Z"),
        "content-type": env.datacontenttype,
        "Nats-Msg-Id": env.id,
    }
    if env.correlationid is not None:
        h["ce-correlationid"] = env.correlationid
    if env.causationid is not None:
        h["ce-causationid"] = env.causationid
    return h


def encode(env: Envelope, registry: EventRegistry = DEFAULT_REGISTRY) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the NATS message for ``env``."""
    return registry.encode(env.data), headers_for(env)


def decode_message(
    stream: str,
    body: bytes,
    headers: Mapping[str, str] | None,
    sequence: int,
    registry: EventRegistry = DEFAULT_REGISTRY,
) -> Envelope:
    """The envelope of ``stream`` stored at ``sequence``; a malformed one raises ``InvalidPayload``."""
    h = headers or {}
    event_id = h.get("ce-id") or h.get("Nats-Msg-Id")
    if not event_id:
        raise InvalidPayload("missing ce-id header", field="ce-id")
    data = registry.decode(body)
    ce_type = h.get("ce-type")
    if ce_type is not None and ce_type != data.type:  # type: ignore[attr-defined]
        raise InvalidPayload(f"header says {ce_type!r} but the body is {data.type!r}", field="ce-type")  # type: ignore[attr-defined]
    return Envelope(
        id=event_id,
        source=h.get("ce-source", ""),
        subject=stream,
        data=data,
        correlationid=h.get("ce-correlationid"),
        causationid=h.get("ce-causationid"),
        sequence=sequence,
    )


def to_structured(env: Envelope) -> dict[str, Any]:
    """Structured-mode CloudEvent as a JSON-ready dict, with the log position as ``sequence``."""
    out = env.attributes()
    out["sequence"] = env.sequence
    out["data"] = env.data.model_dump(mode="json")
    return out


def to_json_line(env: Envelope) -> str:
    """One compact JSON line; stable byte for byte for the same envelope."""
    return json.dumps(to_structured(env), separators=(",", ":"), sort_keys=True)


def from_json_line(line: str | bytes, registry: EventRegistry = DEFAULT_REGISTRY) -> Envelope:
    """Inverse of :func:`to_json_line`; old schema versions are upcast."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise MalformedJson(f"not JSON: {e}", field="line") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), dict):
        raise InvalidPayload("a structured event needs a 'data' object", field="data")
    for name in ("id", "source", "subject"):
        if not isinstance(obj.get(name), str):
            raise InvalidPayload(f"missing or non-string {name!r}", field=name)
    data = registry.validate(obj["data"])
    return Envelope(
        id=check_event_id(obj["id"]),
        source=obj["source"],
        subject=obj["subject"],
        data=data,
        correlationid=obj.get("correlationid"),
        causationid=obj.get("causationid"),
        sequence=int(obj.get("sequence", 0)),
    )
