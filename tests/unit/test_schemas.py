"""The committed JSON Schemas match the models; other languages rely on them."""

from __future__ import annotations

import json
from pathlib import Path

from events.schema import check_schemas, generate_schemas, write_schemas

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schemas_are_current() -> None:
    stale = check_schemas(ROOT / "schemas")
    assert not stale, f"regenerate with: python -m events.schema schemas  (stale: {stale})"


def test_a_changed_model_makes_a_schema_stale(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    assert check_schemas(tmp_path) == []
    victim = tmp_path / "events" / "TaskLeased.v1.json"
    schema = json.loads(victim.read_text())
    schema["properties"]["lease_id"]["pattern"] = ".*"
    victim.write_text(json.dumps(schema))
    assert check_schemas(tmp_path) == ["events/TaskLeased.v1.json"]


def test_every_event_has_a_versioned_schema() -> None:
    schemas = generate_schemas()
    names = [p for p in schemas if p.startswith("events/")]
    assert len(names) == 32
    leased = schemas["events/TaskLeased.v1.json"]
    assert leased["properties"]["type"]["const"] == "TaskLeased"
    assert "lease_id" in leased["required"]
    assert leased["additionalProperties"] is False
