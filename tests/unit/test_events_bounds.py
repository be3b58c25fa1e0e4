"""Every number in the catalogue has a range, and a value outside it is refused naming the field.

A provider once reported ``gpu_ms = 10**20``: it was stored, and the projector died on it at every
restart (SQLite integers are 64-bit). These tests walk the JSON Schema of every stored event, every
intake body and every dispatch message, so a new field without bounds fails here, and they push every
bounded top-level field of every sample event one step past its bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import TypeAdapter

from events import DEFAULT_REGISTRY
from events.dispatch import Dispatch, Heartbeat
from events.errors import InvalidPayload
from events.intake import INTAKE_VERBS, decode_intake
from events.job import MAX_JOB_GPU_S, MAX_TASKS_PER_JOB, UNBOUNDED_TASKS
from events.types import MAX_GPU_MS, MAX_MICROS, MAX_PRICE_MICROS, MAX_TIMEOUT_S, MAX_TOTAL_GPU_MS
from tests.unit.catalogue_samples import SAMPLES


def _numbers(schema: dict[str, Any], defs: dict[str, Any], path: str, seen: set[str]) -> Iterator[tuple[str, dict]]:
    """Every (path, schema) of an integer or number anywhere in ``schema``, following $refs once."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return
        yield from _numbers(defs[name], defs, path, seen | {name})
        return
    kind = schema.get("type")
    if kind in ("integer", "number"):
        yield path, schema
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from _numbers(sub, defs, f"{path}[{i}]" if key == "prefixItems" else path, seen)
    for name, sub in schema.get("properties", {}).items():
        yield from _numbers(sub, defs, f"{path}.{name}" if path else name, seen)
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            yield from _numbers(sub, defs, f"{path}[]", seen)


def _models() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, model in sorted(DEFAULT_REGISTRY.models.items()):
        yield f"event {name}", model.model_json_schema()
    for (role, verb), v in sorted(INTAKE_VERBS.items()):
        yield f"intake {role}.{verb}", v.adapter.json_schema()
    yield "dispatch", TypeAdapter(Dispatch).json_schema()
    yield "heartbeat", Heartbeat.model_json_schema()


def _all_numbers() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for where, schema in _models():
        for path, s in _numbers(schema, schema.get("$defs", {}), "", set()):
            out.append((where, path, s))
    return out


def test_the_walk_finds_the_numbers_it_should() -> None:
    paths = {(w, p) for w, p, _ in _all_numbers()}
    assert ("event TaskCompleted", "gpu_ms") in paths
    assert ("event UsageMetered", "amount_micros") in paths
    assert ("event ProviderRegistered", "capabilities.price_micros") in paths
    assert ("intake provider.report", "gpu_ms") in paths
    assert ("event TaskCompleted", "metrics[]") in paths
    assert len(paths) > 60


def test_every_number_in_the_catalogue_has_both_bounds() -> None:
    unbounded = [
        f"{where}: {path}"
        for where, path, s in _all_numbers()
        if "const" not in s
        and "enum" not in s
        and not (("maximum" in s or "exclusiveMaximum" in s) and ("minimum" in s or "exclusiveMinimum" in s))
    ]
    assert unbounded == []


def test_no_valid_job_can_overflow_the_ledgers_64_bit_integers() -> None:
    per_task = -(-MAX_GPU_MS * MAX_PRICE_MICROS // 1000)
    # A job of up to UNBOUNDED_TASKS tasks, each billed its longest at the highest price...
    assert per_task * UNBOUNDED_TASKS <= MAX_MICROS < 2**63
    assert MAX_GPU_MS * UNBOUNDED_TASKS <= MAX_TOTAL_GPU_MS < 2**63
    # ...and a bigger one (up to MAX_TASKS_PER_JOB), whose worst case validate_spec bounds.
    assert MAX_JOB_GPU_S * MAX_PRICE_MICROS <= MAX_MICROS
    assert MAX_JOB_GPU_S * 1000 <= MAX_TOTAL_GPU_MS
    assert MAX_TASKS_PER_JOB > UNBOUNDED_TASKS
    assert int(MAX_TIMEOUT_S * 1000) == MAX_GPU_MS


def _past(s: dict[str, Any]) -> Any:
    top = s["maximum"] if "maximum" in s else s["exclusiveMaximum"]
    if s.get("type") == "integer":
        return int(top) + 1
    return math.nextafter(float(top), math.inf) if "maximum" in s else float(top)


def _below(s: dict[str, Any]) -> Any:
    low = s.get("minimum", s.get("exclusiveMinimum"))
    if s.get("type") == "integer":
        return int(low) - 1
    return math.nextafter(float(low), -math.inf) if "minimum" in s else float(low)


def _top_level_bounded(name: str) -> list[tuple[str, dict[str, Any]]]:
    schema = DEFAULT_REGISTRY.models[name].model_json_schema()
    out = []
    for field, sub in schema.get("properties", {}).items():
        for branch in sub.get("anyOf", [sub]):
            if branch.get("type") in ("integer", "number") and ("maximum" in branch or "exclusiveMaximum" in branch):
                out.append((field, branch))
    return out


_CASES = [(name, field, s) for name in sorted(SAMPLES) for field, s in _top_level_bounded(name)]


@pytest.mark.parametrize(("name", "field", "schema"), _CASES, ids=[f"{n}.{f}" for n, f, _ in _CASES])
def test_a_stored_number_past_its_bound_is_refused_naming_the_field(name: str, field: str, schema: dict) -> None:
    body = json.loads(DEFAULT_REGISTRY.encode(SAMPLES[name]))
    for bad in (_past(schema), _below(schema)):
        body[field] = bad
        with pytest.raises(InvalidPayload) as info:
            DEFAULT_REGISTRY.decode(json.dumps(body))
        assert info.value.field == field, (bad, info.value)


def test_the_bounds_themselves_are_accepted() -> None:
    body = json.loads(DEFAULT_REGISTRY.encode(SAMPLES["UsageMetered"]))
    body.update(gpu_ms=MAX_GPU_MS, price_micros=MAX_PRICE_MICROS, amount_micros=MAX_MICROS)
    e = DEFAULT_REGISTRY.decode(json.dumps(body))
    assert (e.gpu_ms, e.amount_micros) == (MAX_GPU_MS, MAX_MICROS)  # type: ignore[attr-defined]


_RESULT = {"sha256": "ab" * 32, "size": 3, "inline": 1}


@pytest.mark.parametrize(
    ("subject", "body", "field"),
    [
        (
            "gf.in.provider.p1.report.j.t.0",
            {"report": "completed", "lease_id": "l1", "result": _RESULT, "gpu_ms": 10**12},
            "gpu_ms",
        ),
        (
            "gf.in.provider.p1.report.j.t.0",
            {"report": "completed", "lease_id": "l1", "result": _RESULT, "gpu_ms": 10**20},
            "gpu_ms",
        ),
        (
            "gf.in.provider.p1.report.j.t.0",
            {"report": "completed", "lease_id": "l1", "result": _RESULT, "gpu_ms": 1, "metrics": {"x": 1e300}},
            "metrics.x",
        ),
        (
            "gf.in.provider.p1.report.j.t.0",
            {"report": "progress", "lease_id": "l1", "fraction": 0.5, "checkpoint_step": 2**63},
            "checkpoint_step",
        ),
        ("gf.in.submitter.alice.submit.j1", {"workload": "noop", "max_price_micros": 10**12}, "max_price_micros"),
        ("gf.in.submitter.alice.submit.j1", {"workload": "noop", "timeout_s": 1e9}, "timeout_s"),
        (
            "gf.in.submitter.alice.submit.j1",
            {"workload": "noop", "resources": {"min_vram_mb": 2**40}},
            "resources.min_vram_mb",
        ),
    ],
)
def test_out_of_range_intake_is_refused_naming_the_field(subject: str, body: dict, field: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_intake(subject, json.dumps(body).encode())
    assert info.value.field == field, info.value


def test_a_registration_priced_past_the_bound_is_refused() -> None:
    reg = json.loads(DEFAULT_REGISTRY.encode(SAMPLES["ProviderRegistered"]))
    body = {"name": "p1", "capabilities": {**reg["capabilities"], "price_micros": MAX_PRICE_MICROS + 1}}
    with pytest.raises(InvalidPayload) as info:
        decode_intake("gf.in.provider.p1.register", json.dumps(body).encode())
    assert info.value.field == "capabilities.price_micros", info.value
