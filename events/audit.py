"""Audit events: the hash chain's digest at a position, recorded in the log itself."""

from __future__ import annotations

from typing import Literal

from events.types import Count, EventModel, Sha256, UtcDateTime

__all__ = ["AuditCheckpointed"]


class AuditCheckpointed(EventModel):
    """sha256 chain digest over every event up to and including ``position``."""

    type: Literal["AuditCheckpointed"] = "AuditCheckpointed"
    v: Literal[1] = 1
    at: UtcDateTime
    position: Count
    digest: Sha256
    events: Count
