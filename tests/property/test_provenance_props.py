"""Properties of the provenance replayer over logs the real deciders made (``tests.golden.decided``):
every such log passes; any edit of a decided value is flagged at that event's position; and a
deleted or repeated event never leaves the full audit (read side and provenance) silent."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.provenance import intake_from, replay
from events import Envelope
from gpufleet.audit import add_provenance
from projections.audit import audit_events
from tests.golden.decided import decided_log

DECIDED = decided_log(2500, providers=6, seed=7)
LOG = DECIDED.log
INTAKE = DECIDED.intake

#: Values that a decision computes from its cause (not taken from the record): any edit must show.
EDITABLE: dict[str, tuple[str, Any]] = {
    "TaskProgressed": ("fraction", lambda v: round(1.0 - v, 3) if v != 0.5 else 0.25),
    "UsageMetered": ("gpu_ms", lambda v: v + 1),
    "SubmitterCharged": ("amount_micros", lambda v: v + 1),
    "ProviderCredited": ("amount_micros", lambda v: v + 1),
    "TaskCompleted": ("gpu_ms", lambda v: v + 7),
    "JobAccepted": ("task_count", lambda v: v + 1),
    "TaskCreated": ("priority", lambda v: (v + 1) % 10),
    "TaskLeased": ("price_micros", lambda v: v + 1),
    "JobCancelled": ("reason", lambda v: v + "!"),
}
TARGETS = [i for i, e in enumerate(LOG) if type(e.data).__name__ in EDITABLE]


def run(log: list[Envelope]) -> Any:
    return asyncio.run(replay(log, intake_from(INTAKE)))


def test_a_log_the_deciders_made_passes() -> None:
    report = run(LOG)
    assert report.ok, "\n".join(map(str, report.problems[:20]))
    assert {c for c, n in report.causes.items() if n} >= {"intake", "reaction", "timer", "lease", "liveness"}
    assert len(TARGETS) > 500


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TARGETS))
def test_any_edit_of_a_decided_value_is_flagged_at_its_position(index: int) -> None:
    env = LOG[index]
    name, change = EDITABLE[type(env.data).__name__]
    data = env.data.model_dump()
    edited = type(env.data).model_validate({**data, name: change(data[name])})
    log = [*LOG[:index], replace(env, data=edited), *LOG[index + 1 :]]
    report = run(log)
    positions = [p.position for p in report.problems]
    assert env.sequence in positions, f"{type(env.data).__name__}.{name} edited at {env.sequence}: {positions[:5]}"
    assert min(positions) == env.sequence, report.problems[:3]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(LOG) - 200), st.booleans())
def test_a_deleted_or_repeated_event_never_passes_the_full_audit(index: int, repeat: bool) -> None:
    """Inside the log, not at its tail: an event deleted from the end leaves a log that is simply
    shorter (a lease that no report followed yet). Only a checkpoint beyond it can tell, which is what
    the signed checkpoints and the watermarks are for."""
    if repeat:
        dup = replace(LOG[index], id=LOG[index].id + "0")  # (the store refuses the same id twice)
        log = [*LOG[: index + 1], dup, *LOG[index + 1 :]]
    else:
        log = [*LOG[:index], *LOG[index + 1 :]]
    log = [e.at_position(i) for i, e in enumerate(log, start=1)]

    async def both() -> Any:
        report = await audit_events(log, {r.seq: r.subject for r in INTAKE})
        return add_provenance(report, await replay(log, intake_from(INTAKE)))

    report = asyncio.run(both())
    assert not report.ok, f"{'repeated' if repeat else 'deleted'} {LOG[index].type} at {index + 1} passed"
