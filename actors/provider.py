"""The provider aggregate: registered capabilities and the liveness transitions (never heartbeats)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from actors.decider import Decider
from actors.errors import UnknownAggregate
from events.provider import (
    ProviderCalibrated,
    ProviderDraining,
    ProviderLeft,
    ProviderLost,
    ProviderOnline,
    ProviderRegistered,
)
from events.types import Calibration, Capabilities, EventModel

__all__ = [
    "DrainProvider",
    "HeartbeatLapsed",
    "HeartbeatSeen",
    "LeaveProvider",
    "ProviderCommand",
    "ProviderState",
    "ProviderStatus",
    "RegisterProvider",
    "provider_decider",
]

ProviderStatus = Literal["none", "online", "lost", "draining", "left"]


@dataclass(frozen=True, slots=True)
class ProviderState:
    """A provider as its decider sees it."""

    status: ProviderStatus = "none"
    provider_id: str = ""
    name: str = ""
    capabilities: Capabilities | None = None
    calibration: Calibration | None = None
    #: Status before it was lost: a provider lost while draining goes back to draining.
    was_draining: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Command:
    command_id: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterProvider(_Command):
    """The provider runtime started and says what its device is and can do."""

    provider_id: str
    name: str
    capabilities: Capabilities
    calibration: Calibration | None = None
    runtime_version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatSeen(_Command):
    """A heartbeat arrived (only a lost provider changes: it is online again)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatLapsed(_Command):
    """No heartbeat within the TTL."""

    reason: str = "heartbeat expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainProvider(_Command):
    """Finish the running work, take nothing new."""

    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveProvider(_Command):
    """The provider leaves the network."""

    reason: str = ""


ProviderCommand = RegisterProvider | HeartbeatSeen | HeartbeatLapsed | DrainProvider | LeaveProvider


def initial_state() -> ProviderState:
    """A provider that never registered."""
    return ProviderState()


def decide(cmd: ProviderCommand, s: ProviderState) -> list[EventModel]:
    """The events that ``cmd`` causes in state ``s``."""
    if isinstance(cmd, RegisterProvider):
        out: list[EventModel] = []
        if s.status in ("online", "draining"):
            # A runtime that registers again has restarted: whatever it was running is gone.
            out.append(ProviderLost(at=cmd.at, provider_id=cmd.provider_id, reason="restarted (registered again)"))
        if s.status == "none" or s.capabilities != cmd.capabilities or s.name != cmd.name or out:
            out.append(
                ProviderRegistered(
                    at=cmd.at,
                    provider_id=cmd.provider_id,
                    name=cmd.name,
                    capabilities=cmd.capabilities,
                    runtime_version=cmd.runtime_version,
                )
            )
        if cmd.calibration is not None and cmd.calibration != s.calibration:
            out.append(ProviderCalibrated(at=cmd.at, provider_id=cmd.provider_id, calibration=cmd.calibration))
        if s.status != "online" or out:
            out.append(ProviderOnline(at=cmd.at, provider_id=cmd.provider_id))
        return out
    if s.status == "none":
        raise UnknownAggregate("provider", "")
    match cmd:
        case HeartbeatSeen():
            if s.status == "lost":
                return [ProviderOnline(at=cmd.at, provider_id=s.provider_id)]
            return []
        case HeartbeatLapsed():
            if s.status in ("online", "draining"):
                return [ProviderLost(at=cmd.at, provider_id=s.provider_id, reason=cmd.reason)]
            return []
        case DrainProvider():
            if s.status in ("online", "lost"):
                return [ProviderDraining(at=cmd.at, provider_id=s.provider_id, reason=cmd.reason)]
            return []
        case LeaveProvider():
            if s.status != "left":
                return [ProviderLeft(at=cmd.at, provider_id=s.provider_id, reason=cmd.reason)]
            return []
    raise TypeError(f"not a provider command: {cmd!r}")


def evolve(s: ProviderState, e: EventModel) -> ProviderState:
    """The state after event ``e``."""
    match e:
        case ProviderRegistered():
            return replace(
                s,
                status="online",
                provider_id=e.provider_id,
                name=e.name,
                capabilities=e.capabilities,
                was_draining=False,
            )
        case ProviderCalibrated():
            return replace(s, calibration=e.calibration)
        case ProviderOnline():
            return replace(s, status="draining" if s.was_draining else "online", was_draining=False)
        case ProviderLost():
            return replace(s, status="lost", was_draining=s.status == "draining")
        case ProviderDraining():
            return replace(s, status="draining")
        case ProviderLeft():
            return replace(s, status="left", was_draining=False)
    return s


def _decide(cmd: object, s: ProviderState) -> list[EventModel]:
    return decide(cmd, s)  # type: ignore[arg-type]


provider_decider: Decider[ProviderCommand, ProviderState] = Decider("provider", initial_state, _decide, evolve)
