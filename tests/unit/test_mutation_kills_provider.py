"""Provider decider rules that mutation testing (bench/mutation.py) found no test for.

Registering again is the case the other tests leave open: a runtime that comes back after being lost
with nothing changed is only online again, with new capabilities it records them, and one that
registers while draining has restarted. And two liveness transitions: a draining provider can be lost,
and a lost one can be drained. A provider that left comes back online, whatever it was doing when it left.
"""

from __future__ import annotations

from actors.provider import DrainProvider, HeartbeatLapsed, RegisterProvider, provider_decider
from events.provider import (
    ProviderCalibrated,
    ProviderDraining,
    ProviderLeft,
    ProviderLost,
    ProviderOnline,
    ProviderRegistered,
)
from events.types import Calibration, Capabilities
from tests.factories import at
from tests.unit.decider_spec import given

P = provider_decider
CAPS = Capabilities(backend="cuda", gpu_model="H100", vram_mb=81559, compute_capability=9.0, slots=2, price_micros=500)
CAL = Calibration(matmul_tflops={"fp16": 700.0}, memory_gbps=3000.0)


def register(t: float, caps: Capabilities = CAPS, calibration: Calibration | None = CAL) -> RegisterProvider:
    return RegisterProvider(
        command_id=f"r{t}", at=at(t), provider_id="p1", name="box", capabilities=caps, calibration=calibration
    )


ONLINE = (
    ProviderRegistered(at=at(0), provider_id="p1", name="box", capabilities=CAPS),
    ProviderCalibrated(at=at(0), provider_id="p1", calibration=CAL),
    ProviderOnline(at=at(0), provider_id="p1"),
)
LOST = (*ONLINE, ProviderLost(at=at(5), provider_id="p1", reason="heartbeat expired"))
DRAINING = (*ONLINE, ProviderDraining(at=at(3), provider_id="p1"))


def test_a_lost_provider_that_registers_again_unchanged_is_only_back_online() -> None:
    state = given(P, *LOST).when(register(9)).then(ProviderOnline(at=at(9), provider_id="p1"))
    assert state.status == "online" and state.capabilities == CAPS and state.calibration == CAL


def test_a_lost_provider_that_registers_again_without_a_calibration_keeps_the_one_it_had() -> None:
    state = given(P, *LOST).when(register(9, calibration=None)).then(ProviderOnline(at=at(9), provider_id="p1"))
    assert state.calibration == CAL


def test_a_lost_provider_that_registers_with_new_capabilities_records_them() -> None:
    bigger = CAPS.model_copy(update={"slots": 4})
    state = (
        given(P, *LOST)
        .when(register(9, caps=bigger))
        .then(
            ProviderRegistered(at=at(9), provider_id="p1", name="box", capabilities=bigger),
            ProviderOnline(at=at(9), provider_id="p1"),
        )
    )
    assert state.status == "online" and state.capabilities == bigger


def test_a_provider_that_registers_while_draining_has_restarted() -> None:
    lost, *_ = given(P, *DRAINING).when(register(9)).then_types("ProviderLost", "ProviderRegistered", "ProviderOnline")
    assert isinstance(lost, ProviderLost) and "restarted" in lost.reason


def test_a_draining_provider_whose_heartbeat_lapses_is_lost() -> None:
    state = (
        given(P, *DRAINING)
        .when(HeartbeatLapsed(command_id="h", at=at(6)))
        .then(ProviderLost(at=at(6), provider_id="p1"))
    )
    assert state.status == "lost" and state.was_draining


def test_a_lost_provider_can_be_drained() -> None:
    state = (
        given(P, *LOST)
        .when(DrainProvider(command_id="d", at=at(6), reason="owner asked"))
        .then(ProviderDraining(at=at(6), provider_id="p1", reason="owner asked"))
    )
    assert state.status == "draining"


def test_a_provider_that_left_while_lost_during_a_drain_comes_back_online() -> None:
    history = (
        *DRAINING,
        ProviderLost(at=at(4), provider_id="p1", reason="heartbeat expired"),
        ProviderLeft(at=at(5), provider_id="p1"),
    )
    state = given(P, *history).when(register(9)).then(ProviderOnline(at=at(9), provider_id="p1"))
    assert state.status == "online"
