"""Provider events: registration, calibration, and the liveness transitions (never heartbeats)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.types import Calibration, Capabilities, EventModel, Id, UtcDateTime

__all__ = [
    "ProviderCalibrated",
    "ProviderDraining",
    "ProviderLeft",
    "ProviderLost",
    "ProviderOnline",
    "ProviderRegistered",
]


class ProviderRegistered(EventModel):
    """A provider joined with the capabilities its runtime detected on the device."""

    type: Literal["ProviderRegistered"] = "ProviderRegistered"
    v: Literal[1] = 1
    at: UtcDateTime
    provider_id: Id
    name: str = Field(max_length=200)
    capabilities: Capabilities
    runtime_version: str = Field(default="", max_length=40)


class ProviderCalibrated(EventModel):
    """The provider measured its throughput; the scheduler's runtime estimates use it."""

    type: Literal["ProviderCalibrated"] = "ProviderCalibrated"
    v: Literal[1] = 1
    at: UtcDateTime
    provider_id: Id
    calibration: Calibration


class ProviderOnline(EventModel):
    """The provider is heartbeating and takes work."""

    type: Literal["ProviderOnline"] = "ProviderOnline"
    v: Literal[1] = 1
    at: UtcDateTime
    provider_id: Id


class ProviderLost(EventModel):
    """The provider's heartbeat lapsed; every lease it held is revoked."""

    type: Literal["ProviderLost"] = "ProviderLost"
    v: Literal[1] = 1
    at: UtcDateTime
    provider_id: Id
    reason: str = Field(default="heartbeat expired", max_length=500)


class ProviderDraining(EventModel):
    """The provider finishes its running work and takes nothing new."""

    type: Literal["ProviderDraining"] = "ProviderDraining"
    v: Literal[1] = 1
    at: UtcDateTime
    provider_id: Id
    reason: str = Field(default="", max_length=500)


class ProviderLeft(EventModel):
    """The provider left the network."""

    type: Literal["ProviderLeft"] = "ProviderLeft"
    v: Literal[1] = 1
    at: UtcDateTime
    provider_id: Id
    reason: str = Field(default="", max_length=500)
