"""Golden history recorded from a real run: the current code must read it exactly as it was recorded.

The files come from ``python -m tests.golden.record`` (a real orchestrator, a real NumPy runtime and
simulated providers on a secured server). These tests never run the system: they fold, project,
audit and re-decide the recorded log with the code as it is now. A change that alters what an old
log means fails here; if it is intended, it ships an upcaster (so the old log still decodes) and a
re-recording, and the diff of the JSON files is reviewed.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from events import Envelope
from events.registry import DEFAULT_REGISTRY
from tests.golden import history

RERECORD = "if the change is intended, re-record: .venv/bin/python -m tests.golden.record (and review the diff)"


@pytest.fixture(scope="module")
def log() -> list[Envelope]:
    return history.read_log()


@pytest.fixture(scope="module")
def intake() -> list[history.IntakeRecord]:
    return history.read_intake()


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(history.META.read_text())
    return loaded


def differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as paths (every one, so a failure shows the whole story)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got), key=str):
            if k not in got:
                out.append(f"{path}/{k}: missing now")
            elif k not in want:
                out.append(f"{path}/{k}: new, {got[k]!r}")
            else:
                out += differences(want[k], got[k], f"{path}/{k}")
        return out
    if want != got:
        return [f"{path}: {want!r} -> {got!r}"]
    return []


def test_the_recording_is_whole_and_covers_the_catalogue(log: list[Envelope], meta: dict[str, Any]) -> None:
    assert [e.sequence for e in log] == list(range(1, len(log) + 1)), "positions must be 1..n, with no gap"
    types = Counter(e.type for e in log)
    assert dict(sorted(types.items())) == meta["event_types"], "the log decodes to other event types now"
    missing = sorted(set(DEFAULT_REGISTRY.models) - set(types))
    assert not missing, f"the recording exercises no {missing}: extend record.py's scenario and re-record"
    # It is a real run: the orchestrator and the projector wrote it, a real runtime's work is in it.
    assert {e.source for e in log} == {"gpufleet/orchestrator", "gpufleet.projections"}
    assert any(e.type == "TaskProgressed" and e.data.checkpoint is not None for e in log)  # type: ignore[attr-defined]


def test_world_folds_the_recording_to_the_recorded_summary(log: list[Envelope]) -> None:
    want = json.loads(history.WORLD.read_text())
    got = json.loads(json.dumps(history.world_summary(log)))
    diff = differences(want, got)
    assert not diff, "World folds the recorded log differently:\n" + "\n".join(diff[:40]) + f"\n{RERECORD}"


async def test_projections_replay_the_recording_to_the_recorded_tables(log: list[Envelope]) -> None:
    want = json.loads(history.READ_MODELS.read_text())
    got = await history.read_models(log)
    assert sorted(got) == sorted(want), f"the set of tables changed; {RERECORD}"
    for table in sorted(want):
        assert got[table] == want[table], f"table {table} replays differently; {RERECORD}"


async def test_projections_replay_the_same_whatever_the_batches(log: list[Envelope]) -> None:
    assert await history.read_models(log, batch_size=1) == await history.read_models(log, batch_size=10_000)


async def test_the_recording_audits_exactly_as_recorded_and_passes(
    log: list[Envelope], intake: list[history.IntakeRecord]
) -> None:
    report = await history.audit(log, intake)
    assert report.ok, report.render()
    diff = differences(json.loads(history.AUDIT.read_text()), report.to_json())
    assert not diff, "the audit reads the recorded log differently:\n" + "\n".join(diff) + f"\n{RERECORD}"
    assert report.checkpoints_verified >= 1 and all(report.coverage[c] > 0 for c in report.coverage)


def test_the_current_deciders_make_every_recorded_decision_again(
    log: list[Envelope], intake: list[history.IntakeRecord], meta: dict[str, Any]
) -> None:
    problems = history.redecide(log, intake, grace_s=meta["orchestrator"]["lease_grace_s"])
    assert not problems, "re-deciding the recorded log disagrees with it:\n" + "\n".join(problems) + f"\n{RERECORD}"
