"""One reputation rule: the scheduler's (World) and the fleet view's agree, event for event."""

from __future__ import annotations

import pytest

from actors.world import World
from events.reputation import reputation
from projections.fleet import FleetView
from tests.golden import history


def test_the_scheduler_and_the_fleet_view_rank_every_provider_alike_through_a_real_history() -> None:
    log = history.read_log(history.HERE / "golden_real_log.jsonl")
    world, fleet = World(), FleetView()
    checked = 0
    for env in log:
        world.apply(env)
        fleet.evolve(env)
        for pid, row in fleet.providers.items():
            rep = world.reputation.get(pid)
            assert rep is not None, pid
            assert rep.value == pytest.approx(row.reputation), (env.sequence, env.type, pid)
            checked += 1
    assert checked > 500
    values = {pid: round(row.reputation, 3) for pid, row in fleet.providers.items()}
    # The history has a clean provider, a flaky one, a deaf one and a lost one: they do not tie.
    assert len(set(values.values())) >= 3, values
    assert values["deaf"] < 0.5 < values["sim-a"], values


def test_the_formula_starts_newcomers_at_a_half_and_refused_reports_count_twice() -> None:
    assert reputation(0, 0, 0, 0) == 0.5
    assert reputation(1, 0, 0, 0) > reputation(0, 0, 0, 0) > reputation(0, 1, 0, 0)
    assert reputation(0, 2, 0, 0) == reputation(0, 0, 2, 0) == reputation(0, 0, 0, 1)
    assert 0 < reputation(0, 10**6, 10**6, 10**6) < reputation(10**6, 0, 0, 0) < 1
