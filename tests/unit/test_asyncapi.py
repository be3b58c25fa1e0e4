"""The committed AsyncAPI document is structurally valid AsyncAPI 3 and covers the whole wire contract."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from events.asyncapi import AUDIT_CHAIN_STREAM, INTAKE_OUTCOMES_STREAM, generate_asyncapi, render_asyncapi
from events.intake import INTAKE_VERBS
from events.registry import CATALOGUE
from events.schema import ASYNCAPI_FILE
from events.subjects import event_subject, intake_subject

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")


def committed() -> dict[str, Any]:
    doc = yaml.safe_load((SCHEMAS / ASYNCAPI_FILE).read_text())
    assert isinstance(doc, dict)
    return doc


def pointer(doc: Any, fragment: str) -> Any:
    """Follow a JSON pointer (``/a/b``) into ``doc``; KeyError when it leads nowhere."""
    node = doc
    for raw in fragment.lstrip("/").split("/") if fragment.strip("/") else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_committed_document_is_the_generated_one() -> None:
    assert (SCHEMAS / ASYNCAPI_FILE).read_text() == render_asyncapi()
    assert committed() == generate_asyncapi()


def test_structure_is_asyncapi_3() -> None:
    doc = committed()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert {s["protocol"] for s in doc["servers"].values()} == {"nats"}
    for section in ("channels", "operations"):
        assert doc[section] and all(COMPONENT_KEY.match(k) for k in doc[section])
    for kind, items in doc["components"].items():
        assert all(COMPONENT_KEY.match(k) for k in items), kind
    for cid, ch in doc["channels"].items():
        assert isinstance(ch["address"], str) and ch["messages"], cid
        # every {parameter} of the address is declared, and nothing else
        assert set(re.findall(r"\{(\w+)\}", ch["address"])) == set(ch.get("parameters", {})), cid
    for oid, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), oid
        channel = op["channel"]["$ref"]
        assert channel.startswith("#/channels/")
        for m in op["messages"]:  # a subset of the operation's channel's messages
            assert m["$ref"].startswith(channel + "/messages/"), (oid, m)
        assert op["tags"], oid
    for mid, msg in doc["components"]["messages"].items():
        # Everything is JSON but the raw chunks of an object (a manifest is JSON in the same channel).
        assert msg["contentType"] == ("application/octet-stream" if mid == "ObjectPart" else "application/json"), mid
        assert set(msg["payload"]) == {"schemaFormat", "schema"}, mid


def test_every_ref_resolves() -> None:
    doc = committed()
    all_refs = refs(doc)
    assert len(all_refs) > 100
    files = set()
    for ref in all_refs:
        target, _, fragment = ref.partition("#")
        if not target:
            pointer(doc, fragment)  # an internal component
            continue
        path = SCHEMAS / target
        assert path.is_file(), f"{ref} names no committed file"
        pointer(json.loads(path.read_text()), fragment)
        files.add(target)
    # every event and intake schema is used; the envelope (structured mode) and workloads are not messages
    committed_files = {str(p.relative_to(SCHEMAS)) for p in SCHEMAS.glob("*/*.json")}
    assert {f for f in committed_files if not f.startswith("workloads/")} == files


def test_every_intake_verb_and_event_has_its_channel() -> None:
    doc = committed()
    addresses = {ch["address"]: ch for ch in doc["channels"].values()}
    target = {"self": "", "job": "{job}", "task": "{taskId}"}
    for (role, verb), spec in INTAKE_VERBS.items():
        address = intake_subject(role, "{name}", verb, target[spec.target])
        ch = addresses[address]
        (msg,) = ch["messages"].values()
        payload = pointer(doc, msg["$ref"].removeprefix("#"))["payload"]["schema"]["$ref"]
        assert payload == f"intake/{role}.{verb}.json"
    seen: dict[str, list[str]] = {}
    for ch in doc["channels"].values():
        if ch["address"].startswith("gf.ev."):
            for name in ch["messages"]:
                seen.setdefault(name, []).append(ch["address"])
    types = [m.model_fields["type"].default for m in CATALOGUE]
    assert sorted(seen) == sorted(types)
    assert all(len(where) == 1 for where in seen.values()), seen
    assert seen["TaskLeased"] == ["gf.ev.task.{submitter}.{job}.{index}"]
    assert seen["ProviderCredited"] == ["gf.ev.job.{submitter}.{job}"]
    assert seen["InputRejected"] == ["gf.ev.intake.{role}.{name}"]
    assert seen["AuditCheckpointed"] == ["gf.ev.audit.chain"]
    assert {"gf.dispatch.{providerId}", "$KV.gf_heartbeats.{providerId}"} <= set(addresses)


def test_domain_events_carry_the_cloudevents_headers() -> None:
    doc = committed()
    headers = doc["components"]["schemas"]["CloudEventHeaders"]
    assert {"ce-specversion", "ce-id", "ce-source", "ce-type", "ce-subject", "ce-time", "Nats-Msg-Id"} <= set(
        headers["required"]
    )
    leased = doc["components"]["messages"]["TaskLeased"]
    assert leased["headers"]["allOf"][0] == {"$ref": "#/components/schemas/CloudEventHeaders"}
    assert leased["headers"]["allOf"][1]["properties"]["ce-type"]["const"] == "TaskLeased"


def test_each_role_has_its_operations() -> None:
    ops = committed()["operations"]
    by_role: dict[str, set[tuple[str, str]]] = {}
    for op in ops.values():
        role = op["tags"][0]["$ref"].rsplit("/", 1)[1]
        by_role.setdefault(role, set()).add((op["action"], op["channel"]["$ref"].rsplit("/", 1)[1]))
    assert {("send", "submitterSubmit"), ("receive", "jobEvents"), ("receive", "intakeOutcomes")} <= by_role[
        "submitter"
    ]
    assert {
        ("send", "providerRegister"),
        ("send", "heartbeat"),
        ("receive", "dispatch"),
        ("send", "providerReport"),
    } <= by_role["provider"]
    assert {a for a, _ in by_role["auditor"]} == {"receive"} and ("receive", "auditChain") in by_role["auditor"]


def test_stream_names_match_the_writers() -> None:
    """events/ cannot import the actors or the projections; the names it documents must still be theirs."""
    from events.subjects import outcomes_stream, outcomes_stream_of
    from projections.chain import CHAIN_STREAM

    assert outcomes_stream("{role}", "{name}") == INTAKE_OUTCOMES_STREAM
    assert outcomes_stream_of("gf.in.submitter.alice.submit.j1") == "intake.submitter.alice"
    assert CHAIN_STREAM == AUDIT_CHAIN_STREAM
    assert event_subject(INTAKE_OUTCOMES_STREAM) == "gf.ev.intake.{role}.{name}"
