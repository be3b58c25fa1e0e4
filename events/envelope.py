"""The event envelope: CloudEvents attributes around one event, plus its position once stored."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from events.errors import InvalidPayload
from events.types import EventModel

__all__ = ["EVENT_ID_PATTERN", "Envelope", "new_envelope"]

#: Event ids double as ``Nats-Msg-Id``; shells derive them from the command id, so a retry repeats them.
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_STREAM = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9][A-Za-z0-9_-]{0,63}){1,3}$")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event in the log, with the CloudEvents 1.0 context attributes.

    ``subject`` is the aggregate's stream (``task.j1-0``); ``time`` is the event's ``at``;
    ``sequence`` is the global position in the log, attached on read (0 until stored).
    """

    id: str
    source: str
    subject: str
    data: EventModel
    correlationid: str | None = None
    causationid: str | None = None
    sequence: int = 0
    specversion: str = field(default="1.0")
    datacontenttype: str = field(default="application/json")

    @property
    def type(self) -> str:
        """The CloudEvents ``type``: the event's class name, such as ``TaskLeased``."""
        t: str = self.data.type  # type: ignore[attr-defined]
        return t

    @property
    def time(self) -> datetime:
        """When the fact happened: the ``at`` of the event."""
        t: datetime = self.data.at  # type: ignore[attr-defined]
        return t

    @property
    def stream(self) -> str:
        """Alias of ``subject``: the aggregate stream this event belongs to."""
        return self.subject

    def at_position(self, sequence: int) -> Envelope:
        """This envelope, as stored at global position ``sequence``."""
        return replace(self, sequence=sequence)

    def attributes(self) -> dict[str, Any]:
        """The CloudEvents context attributes, without the data."""
        attrs: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": self.datacontenttype,
        }
        if self.correlationid is not None:
            attrs["correlationid"] = self.correlationid
        if self.causationid is not None:
            attrs["causationid"] = self.causationid
        return attrs


def check_event_id(value: str, field_name: str = "id") -> str:
    """``value`` if it is a valid event id, else ``InvalidPayload``."""
    if not _EVENT_ID.match(value):
        raise InvalidPayload(f"invalid event id {value!r}", field=field_name)
    return value


def check_stream(value: str) -> str:
    """``value`` if it names an aggregate stream ``<kind>.<id>`` (an id of one to three tokens), else an error."""
    if not _STREAM.match(value):
        raise InvalidPayload(f"invalid stream name {value!r}; expected <kind>.<id>", field="subject")
    return value


def new_envelope(
    stream: str,
    data: EventModel,
    *,
    id: str,
    source: str,
    correlationid: str | None = None,
    causationid: str | None = None,
) -> Envelope:
    """An envelope for a new event, validating the id and stream name."""
    return Envelope(
        id=check_event_id(id),
        source=source,
        subject=check_stream(stream),
        data=data,
        correlationid=correlationid,
        causationid=causationid,
    )
