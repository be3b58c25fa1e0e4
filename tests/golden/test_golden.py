"""Golden log: the recorded history replays to exactly the recorded read models and audit."""

from __future__ import annotations

import json

from projections.audit import audit_jsonl
from tests.golden.make_golden import AUDIT, LOG, READ_MODELS, load_intake, replay


async def test_golden_log_replays_to_the_recorded_read_models_table_by_table() -> None:
    expected = json.loads(READ_MODELS.read_text())
    actual = json.loads(json.dumps(await replay()))
    assert sorted(actual) == sorted(expected), "the set of tables changed"
    for table in sorted(expected):
        assert actual[table] == expected[table], f"table {table} replays differently"


async def test_golden_log_audits_exactly_as_recorded() -> None:
    report = await audit_jsonl(LOG, load_intake())
    assert report.ok, report.render()
    assert report.to_json() == json.loads(AUDIT.read_text())
    assert report.checkpoints_verified == 3
    assert all(report.coverage[c] > 0 for c in report.coverage)
