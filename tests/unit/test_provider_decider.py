"""The provider decider: registration and the liveness transitions."""

from __future__ import annotations

from actors.errors import UnknownAggregate
from actors.provider import (
    DrainProvider,
    HeartbeatLapsed,
    HeartbeatSeen,
    LeaveProvider,
    RegisterProvider,
    provider_decider,
)
from events.provider import ProviderDraining, ProviderLeft, ProviderLost, ProviderOnline, ProviderRegistered
from events.types import Calibration, Capabilities
from tests.factories import at
from tests.unit.decider_spec import given

P = provider_decider
CAPS = Capabilities(backend="cuda", gpu_model="H100", vram_mb=81559, compute_capability=9.0, slots=2, price_micros=500)
CAL = Calibration(matmul_tflops={"fp16": 700.0}, memory_gbps=3000.0)


def register(n: int = 0, caps: Capabilities = CAPS) -> RegisterProvider:
    return RegisterProvider(
        command_id=f"r{n}", at=at(n), provider_id="p1", name="box", capabilities=caps, calibration=CAL
    )


def registered() -> tuple[ProviderRegistered, ProviderOnline]:
    return (
        ProviderRegistered(at=at(0), provider_id="p1", name="box", capabilities=CAPS),
        ProviderOnline(at=at(0), provider_id="p1"),
    )


def test_registration_records_capabilities_calibration_and_online() -> None:
    state = given(P).when(register()).then_types("ProviderRegistered", "ProviderCalibrated", "ProviderOnline")
    s = P.fold(state)
    assert s.status == "online" and s.capabilities == CAPS and s.calibration == CAL


def test_registering_again_means_the_runtime_restarted() -> None:
    lost, *_ = (
        given(P, *registered())
        .when(register(1))
        .then_types("ProviderLost", "ProviderRegistered", "ProviderCalibrated", "ProviderOnline")
    )
    assert "restarted" in lost.reason  # type: ignore[attr-defined]


def test_heartbeat_lapse_and_return() -> None:
    given(P, *registered()).when(HeartbeatLapsed(command_id="h", at=at(5))).then(
        ProviderLost(at=at(5), provider_id="p1")
    )
    lost = ProviderLost(at=at(5), provider_id="p1")
    given(P, *registered(), lost).when(HeartbeatLapsed(command_id="h", at=at(6))).then()
    given(P, *registered(), lost).when(HeartbeatSeen(command_id="s", at=at(7))).then(
        ProviderOnline(at=at(7), provider_id="p1")
    )
    given(P, *registered()).when(HeartbeatSeen(command_id="s", at=at(7))).then()


def test_drain_then_leave() -> None:
    state = (
        given(P, *registered())
        .when(DrainProvider(command_id="d", at=at(3)))
        .then(ProviderDraining(at=at(3), provider_id="p1"))
    )
    assert state.status == "draining"
    draining = ProviderDraining(at=at(3), provider_id="p1")
    given(P, *registered(), draining).when(LeaveProvider(command_id="l", at=at(4))).then(
        ProviderLeft(at=at(4), provider_id="p1")
    )
    given(P, *registered(), draining, ProviderLeft(at=at(4), provider_id="p1")).when(
        LeaveProvider(command_id="l", at=at(5))
    ).then()


def test_lost_while_draining_comes_back_draining() -> None:
    history = (
        *registered(),
        ProviderDraining(at=at(3), provider_id="p1"),
        ProviderLost(at=at(4), provider_id="p1"),
        ProviderOnline(at=at(5), provider_id="p1"),
    )
    assert P.fold(history).status == "draining"


def test_unknown_provider_commands_are_refused() -> None:
    given(P).when(HeartbeatLapsed(command_id="h", at=at(1))).then_raises(UnknownAggregate)
