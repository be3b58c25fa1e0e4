"""The fleet view: liveness, capabilities, utilisation, reputation and earnings."""

from __future__ import annotations

import json

import pytest

from projections.fleet import FleetView, reputation
from tests.golden.loggen import Sim


def test_registration_capabilities_and_calibration() -> None:
    s = Sim()
    s.register("a", vram_mb=81920, cc=9.0, slots=4, price=2500, workloads=("matmul",))
    v = FleetView()
    v.fold(s.events)
    p = v.providers["a"]
    assert (p.status, p.vram_mb, p.compute_capability, p.slots, p.price_micros) == ("online", 81920, 9.0, 4, 2500)
    assert json.loads(p.workloads) == ["matmul"]
    assert p.calibration is not None and json.loads(p.calibration)["matmul_tflops"]["fp32"] == 50.0
    assert p.reputation == 0.5 and p.utilisation == 0.0


def test_liveness_transitions() -> None:
    s = Sim()
    s.register("a")
    v = FleetView()
    s.lose("a")
    v.fold(s.events)
    assert v.providers["a"].status == "lost" and v.providers["a"].times_lost == 1
    n = len(s.events)
    s.back_online("a")
    s.drain("a")
    v.fold(s.events[n:])
    assert v.providers["a"].status == "draining"
    n = len(s.events)
    s.leave("a")
    s.back_online("a")  # a stray transition after leaving does not resurrect it
    v.fold(s.events[n:])
    assert v.providers["a"].status == "left"


def test_utilisation_completions_earnings_and_reputation() -> None:
    s = Sim()
    s.register("a", slots=2, price=1000)
    s.register("b", slots=1)
    s.submit("j1", count=2)
    s.lease("j1-0", "a")
    s.lease("j1-1", "a")
    v = FleetView()
    v.fold(s.events)
    assert v.providers["a"].running == 2 and v.providers["a"].utilisation == 1.0
    assert set(v.leases) == {"j1-0", "j1-1"}
    n = len(s.events)
    s.start("j1-0")
    s.complete("j1-0")
    s.start("j1-1")
    s.complete("j1-1")
    v.fold(s.events[n:])
    a = v.providers["a"]
    assert (a.running, a.completions, a.leases) == (0, 2, 2)
    assert a.busy_ms > 0
    assert a.earnings_micros == -(-a.busy_ms * 1000 // 1000)  # the job settled: credited its share
    assert a.reputation == reputation(2, 0, 0, 0) == 0.75
    assert v.leases == {}


def test_faults_lost_leases_and_refused_reports_lower_reputation() -> None:
    s = Sim()
    s.register("a", slots=3)
    s.register("b", slots=3)
    s.submit("j1", count=3, max_attempts=3)
    for i in range(3):
        s.lease(f"j1-{i}", "a")
    s.start("j1-0")
    s.fail("j1-0", "worker_crashed")  # a fault
    s.start("j1-1")
    s.fail("j1-1", "invalid_params")  # not the provider's fault (and terminal)
    s.refuse("j1-2", "a", lease="old")
    v = FleetView()
    v.fold(s.events)
    a = v.providers["a"]
    assert (a.failures, a.faults, a.refused_reports) == (2, 1, 1)
    assert a.reputation == pytest.approx(1 / (0 + 1 + 0 + 2 + 2))


def test_provider_lost_mid_task_releases_its_leases() -> None:
    s = Sim()
    s.register("a", slots=2)
    s.register("b")
    s.submit("j1", count=2)
    s.lease("j1-0", "a")
    s.lease("j1-1", "a")
    s.start("j1-0")
    s.lose("a")
    v = FleetView()
    v.fold(s.events)
    a = v.providers["a"]
    assert (a.status, a.running, a.lost_leases) == ("lost", 0, 2)
    assert v.leases == {}
    assert a.reputation == reputation(0, 0, 2, 0)


def test_reputation_formula_bounds() -> None:
    assert reputation(0, 0, 0, 0) == 0.5
    assert 0 < reputation(0, 100, 100, 100) < 0.01
    assert reputation(1000, 0, 0, 0) == pytest.approx(1.0, abs=1e-3)
