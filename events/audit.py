"""Audit events: the hash chain's digest at a position, recorded in the log itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.types import EventModel, Sha256, UtcDateTime

__all__ = ["AuditCheckpointed"]


class AuditCheckpointed(EventModel):
    """sha256 chain digest over every event up to and including ``position``."""

    type: Literal["AuditCheckpointed"] = "AuditCheckpointed"
    v: Literal[1] = 1
    at: UtcDateTime
    position: int = Field(ge=0)
    digest: Sha256
    events: int = Field(ge=0)
