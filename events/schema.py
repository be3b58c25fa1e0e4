"""JSON Schema for every event, intake body and workload, generated from the models.

``python -m events.schema DIR`` writes them, and the AsyncAPI document that ties them to their NATS
subjects (``asyncapi.yaml``, see :mod:`events.asyncapi`); ``python -m events.schema --check DIR``
fails when the committed files differ from what the models generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from events.dispatch import Dispatch, Heartbeat
from events.intake import INTAKE_VERBS
from events.live import LiveProgress
from events.registry import CATALOGUE, DEFAULT_REGISTRY
from events.types import EventModel
from events.workloads import WORKLOADS

__all__ = [
    "ASYNCAPI_FILE",
    "check_schemas",
    "event_schema_path",
    "generate_schemas",
    "intake_schema_path",
    "write_schemas",
]

#: The AsyncAPI document, written beside the JSON Schemas it references.
ASYNCAPI_FILE = "asyncapi.yaml"

_BASE = "https://gpufleet.dev/schemas"

_ENVELOPE: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"{_BASE}/envelope.json",
    "title": "gpufleet event envelope (CloudEvents 1.0, structured mode)",
    "description": (
        "On NATS the same attributes travel as ce-* headers (binary mode) and the body is `data`. "
        "`sequence` is the global log position, present on read."
    ),
    "type": "object",
    "required": ["specversion", "id", "source", "type", "subject", "time", "data"],
    "properties": {
        "specversion": {"const": "1.0"},
        "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"},
        "source": {"type": "string"},
        "type": {"type": "string", "enum": sorted(DEFAULT_REGISTRY.models)},
        "subject": {"type": "string", "description": "the aggregate stream, <kind>.<id>"},
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"const": "application/json"},
        "correlationid": {"type": "string"},
        "causationid": {"type": "string"},
        "sequence": {"type": "integer", "minimum": 0},
        "data": {"type": "object", "description": "one event; see events/<type>.v<n>.json"},
    },
    "additionalProperties": False,
}


def _with_id(schema: dict[str, Any], path: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{_BASE}/{path}", **schema}


def event_schema_path(model: type[EventModel]) -> str:
    """Where the schema of an event of the catalogue lives, relative to the schema directory."""
    return f"events/{model.model_fields['type'].default}.v{model.model_fields['v'].default}.json"


def intake_schema_path(role: str, verb: str) -> str:
    """Where the schema of the body of ``gf.in.<role>.<name>.<verb>[.<target>]`` lives."""
    return f"intake/{role}.{verb}.json"


def generate_schemas() -> dict[str, dict[str, Any]]:
    """Relative path -> schema, for everything gpufleet exchanges as JSON."""
    out: dict[str, dict[str, Any]] = {"envelope.json": _ENVELOPE}
    for model in CATALOGUE:
        path = event_schema_path(model)
        out[path] = _with_id(model.model_json_schema(), path)
    for (role, verb), spec in INTAKE_VERBS.items():
        path = intake_schema_path(role, verb)
        out[path] = _with_id(spec.adapter.json_schema(), path)
    for name, c in WORKLOADS.items():
        path = f"workloads/{name}.json"
        out[path] = _with_id(c.params.model_json_schema(), path)
    out["dispatch/dispatch.json"] = _with_id(TypeAdapter(Dispatch).json_schema(), "dispatch/dispatch.json")
    out["dispatch/heartbeat.json"] = _with_id(Heartbeat.model_json_schema(), "dispatch/heartbeat.json")
    out["live/progress.json"] = _with_id(LiveProgress.model_json_schema(), "live/progress.json")
    return out


def _render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _files() -> dict[str, str]:
    """Relative path -> text of every generated file: the JSON Schemas, then the AsyncAPI document."""
    from events.asyncapi import render_asyncapi  # it builds on this module's paths

    out = {rel: _render(schema) for rel, schema in generate_schemas().items()}
    out[ASYNCAPI_FILE] = render_asyncapi()
    return out


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema and the AsyncAPI document under ``directory``; return the paths written."""
    written = []
    for rel, text in _files().items():
        p = directory / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written.append(p)
    return written


def check_schemas(directory: Path) -> list[str]:
    """Relative paths whose committed file is missing or differs from what the models generate."""
    stale = []
    for rel, text in _files().items():
        p = directory / rel
        if not p.is_file() or p.read_text() != text:
            stale.append(rel)
    return stale


def main(argv: list[str]) -> int:
    """CLI: ``[--check] DIR``."""
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    directory = Path(args[0] if args else "schemas")
    if check:
        stale = check_schemas(directory)
        for rel in stale:
            print(f"stale: {directory / rel}")
        return 1 if stale else 0
    for p in write_schemas(directory):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
