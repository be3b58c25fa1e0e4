"""The AsyncAPI 3 document of gpufleet's NATS interface, generated from the code.

It names every subject an outsider publishes to or reads from, and ties each message to its committed
JSON Schema (``schemas/intake/*.json``, ``schemas/events/*.json``, ``schemas/dispatch/*.json``), so a
client in any language can be written, or generated, from ``schemas/asyncapi.yaml`` alone. It is pure
data: the channels come from :data:`events.intake.INTAKE_VERBS`, the catalogue and the subject names,
so a new event or intake verb appears here as soon as it is in the code, and the schema staleness test
fails until the committed document is regenerated (``python -m events.schema schemas``).

Operations are described from the point of view of the three outside roles, each a tag: the
``submitter``, the ``provider`` (its runtime service) and the ``auditor``. ``send`` means the role
publishes; ``receive`` means it reads, live or by replay from the stream.
"""

from __future__ import annotations

from typing import Any

import yaml

from events.audit import AuditCheckpointed
from events.intake import INTAKE_VERBS, InputAccepted, InputRejected
from events.live import MAX_LIVE_BYTES
from events.registry import CATALOGUE
from events.schema import event_schema_path, intake_schema_path
from events.subjects import (
    API_PREFIX,
    DISPATCH_PREFIX,
    DISPATCH_STREAM,
    EVENT_PREFIX,
    EVENTS_STREAM,
    HEARTBEAT_BUCKET,
    INTAKE_STREAM,
    LIVE_PREFIX,
    OBJECT_PREFIX,
    OBJECTS_STREAM,
)
from events.types import ID_PATTERN, EventModel

__all__ = [
    "ASYNCAPI_VERSION",
    "AUDIT_CHAIN_STREAM",
    "INTAKE_OUTCOMES_STREAM",
    "WIRE_VERSION",
    "domain_channels",
    "generate_asyncapi",
    "render_asyncapi",
]

ASYNCAPI_VERSION = "3.0.0"
#: The version of the wire contract this document describes; each event also has its own ``v``.
WIRE_VERSION = "1.0.0"
#: Aggregate streams outside job/task/provider: each identity's intake outcomes
#: (``events.subjects.outcomes_stream``), and ``projections.chain.CHAIN_STREAM`` (a test checks it).
INTAKE_OUTCOMES_STREAM = "intake.{role}.{name}"
AUDIT_CHAIN_STREAM = "audit.chain"

_ROLES = {
    "submitter": "Describes a job once, submits it and follows it to its result, from any language.",
    "provider": "Runs the provider runtime: registers, heartbeats, takes leases and reports on tasks.",
    "auditor": "Replays the event log to rebuild any state and check the billing and the rules.",
}

_PARAMS = {
    "name": (
        "The sender's name: the name in its credentials (a NATS user JWT), one NATS token matching "
        + ID_PATTERN
        + ". The server lets only that identity publish under it."
    ),
    "job": "The job's name, chosen by its submitter: one NATS token. Its full id is `<submitter>.<job>`.",
    "submitter": "The submitter that owns a job: the name in its credentials.",
    "jobId": "A job's full id: `<submitter>.<job>`.",
    "taskId": "A task's id: `<submitter>.<job>.<index>`.",
    "providerId": "A provider's id: the name in its credentials, one NATS token matching " + ID_PATTERN,
    "role": "An identity's role: submitter or provider.",
    "index": "A task's index in its job, from 0.",
    "sha256": "The object's SHA-256, 64 lowercase hex digits: its name is its content.",
    "part": "`0`, `1`, ... for the object's 256 KiB chunks in order, then `m` for its manifest.",
}


def _ref(*path: str) -> dict[str, str]:
    """An internal reference, ``#/a/b/c``, escaping ``~`` and ``/`` in each part (JSON pointer)."""
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _file(path: str) -> dict[str, str]:
    """A reference to a committed schema, relative to the document (which sits in ``schemas/``)."""
    return {"$ref": path}


#: The payloads are JSON Schema files, not AsyncAPI schemas (whose ``discriminator`` is a plain string,
#: where pydantic writes OpenAPI's object): a multi-format schema says so. AsyncAPI 3.0 names draft-07
#: as its JSON Schema format; the files' own ``$schema`` says 2020-12. A draft-07 reader follows their
#: ``$defs`` as plain JSON pointers and only skips ``prefixItems`` (the items of a fixed-size pair).
JSON_SCHEMA_FORMAT = "application/schema+json;version=draft-07"


def _payload(path: str) -> dict[str, Any]:
    return {"schemaFormat": JSON_SCHEMA_FORMAT, "schema": _file(path)}


def _event_name(model: type[EventModel]) -> str:
    name = model.model_fields["type"].default
    assert isinstance(name, str)
    return name


def domain_channels() -> dict[str, tuple[str, str, list[type[EventModel]]]]:
    """Channel id -> (aggregate stream pattern, description, events), covering the whole catalogue.

    Each event's aggregate follows from its module: ``events.job`` (with the ledger), ``events.task``,
    ``events.provider``; the intake outcomes and the audit chain each have one stream.
    """
    by_module: dict[str, list[type[EventModel]]] = {}
    for model in CATALOGUE:
        by_module.setdefault(model.__module__, []).append(model)
    return {
        "jobEvents": (
            "job.{submitter}.{job}",
            "Everything that happens to one job, in order: submitted, accepted or rejected, metered, "
            "charged and credited, and how it ended.",
            by_module["events.job"],
        ),
        "taskEvents": (
            "task.{submitter}.{job}.{index}",
            "One task's life: created, queued, leased, started, progress (with ETA inputs), completed "
            "with a result reference and sha256, failed, retried, expired or cancelled.",
            by_module["events.task"],
        ),
        "providerEvents": (
            "provider.{providerId}",
            "One provider's transitions: registered, calibrated, online, lost, draining, left. "
            "Heartbeats are not events (see the heartbeat channel).",
            by_module["events.provider"],
        ),
        "intakeOutcomes": (
            INTAKE_OUTCOMES_STREAM,
            "The recorded outcome of each intake message that produced no fact of its own: refused "
            "(`InputRejected`, with the reason and the field) or accepted without change "
            "(`InputAccepted`). An input that changed something is recorded by its facts, whose event "
            "ids are `in-<intake seq>.<n>`. Match `intake_seq` with the sequence of your publish's "
            "acknowledgement from the intake stream.",
            [InputAccepted, InputRejected],
        ),
        "auditChain": (
            AUDIT_CHAIN_STREAM,
            "Checkpoints of the sha256 hash chain over the whole log, for tamper evidence: a replay "
            "recomputes the chain and compares it with every checkpoint.",
            [AuditCheckpointed],
        ),
    }


def _parameters(address: str) -> dict[str, Any]:
    return {name: _ref("components", "parameters", name) for name in _PARAMS if "{" + name + "}" in address}


def _cloudevent_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "CloudEvents 1.0 NATS binding, binary mode: the context attributes travel as `ce-*` headers "
            "and the body is the event's JSON. `Nats-Msg-Id` equals `ce-id`, so a retried append is stored once."
        ),
        "required": [
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-subject",
            "ce-time",
            "content-type",
            "Nats-Msg-Id",
        ],
        "properties": {
            "ce-specversion": {"type": "string", "const": "1.0"},
            "ce-id": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                "description": "The event id; `in-<intake seq>.<n>` for the facts of an intake message.",
            },
            "ce-source": {"type": "string", "description": "Who appended it, for example `gpufleet/orchestrator`."},
            "ce-type": {"type": "string", "description": "The event type, equal to the body's `type`."},
            "ce-subject": {"type": "string", "description": "The aggregate stream, `<kind>.<id>`."},
            "ce-time": {"type": "string", "format": "date-time"},
            "content-type": {"type": "string", "const": "application/json"},
            "ce-correlationid": {"type": "string", "description": "The job (or input) this event belongs to."},
            "ce-causationid": {"type": "string", "description": "The id of the event or input that caused it."},
            "Nats-Msg-Id": {"type": "string", "description": "Equal to `ce-id`: JetStream de-duplication."},
        },
    }


def _message_for_event(model: type[EventModel], channel_id: str) -> dict[str, Any]:
    name = _event_name(model)
    first_paragraph = (model.__doc__ or name).strip().split("\n\n", 1)[0]
    doc = " ".join(first_paragraph.split()).replace("``", "`")
    return {
        "name": name,
        "title": name,
        "summary": doc,
        "contentType": "application/json",
        "headers": {
            "allOf": [
                _ref("components", "schemas", "CloudEventHeaders"),
                {"properties": {"ce-type": {"const": name}}},
            ]
        },
        "payload": _payload(event_schema_path(model)),
        "correlationId": _ref("components", "correlationIds", "cloudEventCorrelation"),
        "tags": [{"name": channel_id}],
    }


def _quote_reply_schema() -> dict[str, Any]:
    """The quote service's answer (``projections.quote.Quote.to_json``), or its refusal."""
    number = {"type": "number", "minimum": 0}
    span = {
        "type": "object",
        "description": "An interval: p10 (low), expected, p90 (high).",
        "required": ["low", "expected", "high"],
        "properties": {"low": number, "expected": number, "high": number},
    }
    money = {**span, "description": "Micro-credits (integers): low, expected, high."}
    prediction = {
        "type": "object",
        "description": "Seconds for one run of one task, with its interval and what it rests on.",
        "required": ["seconds", "low", "high", "basis", "coverage"],
        "properties": {
            "seconds": number,
            "low": number,
            "high": number,
            "basis": {"enum": ["shape", "fit", "probe", "roofline"]},
            "coverage": number,
        },
    }
    option = {
        "type": "object",
        "description": "One capable device class (backend:gpu_model), as if the job ran on it alone.",
        "properties": {
            "device_class": {"type": "string"},
            "best_provider": {"type": "string"},
            "slots": {"type": "integer"},
            "free": {"type": "integer"},
            "providers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "provider_id": {"type": "string"},
                        "slots": {"type": "integer"},
                        "free": {"type": "integer"},
                        "price_micros": {"type": "integer"},
                    },
                },
            },
            "per_task_s": prediction,
            "runs": {**number, "description": "Results per task verification is expected to gather."},
            "cost_per_task_micros": money,
            "cost_micros": money,
            "start_s": number,
            "finish_s": span,
            "ahead": {"type": "integer"},
        },
    }
    quote = {
        "type": "object",
        "required": ["runnable", "workload", "tasks", "submitter", "online", "options", "why", "ruled_out"],
        "properties": {
            "runnable": {"type": "boolean", "description": "False: no online provider can run it; see `why`."},
            "workload": {"type": "string"},
            "tasks": {"type": "integer"},
            "submitter": {"type": "string"},
            "online": {"type": "integer", "description": "Online providers."},
            "position": {"type": "integer", "description": "The log position the quote was made at."},
            "best": {"type": ["string", "null"], "description": "The fastest capable device class."},
            "runs": number,
            "per_task_s": {"oneOf": [prediction, {"type": "null"}]},
            "start_s": {"type": ["number", "null"], "description": "Seconds until its first task starts."},
            "finish_s": {"oneOf": [span, {"type": "null"}], "description": "Seconds until its last task ends."},
            "cost_micros": {"oneOf": [money, {"type": "null"}], "description": "The whole job, replicas included."},
            "ahead": {"type": "integer", "description": "Queued tasks fair share puts before its first."},
            "slots": {"type": "integer", "description": "Slots that could run it."},
            "options": {"type": "array", "items": option},
            "why": {
                "type": "object",
                "description": (
                    "Requirement (backend, vram, compute_capability, workload, price; or providers when none "
                    "is online) -> why it rules online providers out."
                ),
                "additionalProperties": {"type": "string"},
            },
            "ruled_out": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    }
    refusal = {
        "type": "object",
        "required": ["error", "field"],
        "properties": {"error": {"type": "string"}, "field": {"type": ["string", "null"]}},
    }
    return {"oneOf": [quote, refusal]}


def _intake_id(kind: str, verb: str) -> str:
    return kind + verb[:1].upper() + verb[1:]


def generate_asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document as plain data, in a stable order."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    def operation(op_id: str, role: str, action: str, channel_id: str, summary: str, **extra: Any) -> None:
        operations[op_id] = {
            "action": action,
            "channel": _ref("channels", channel_id),
            "summary": summary,
            "tags": [_ref("components", "tags", role)],
            "messages": [_ref("channels", channel_id, "messages", m) for m in channels[channel_id]["messages"]],
            **extra,
        }

    # Intake: what outsiders publish, plain JSON, no header needed.
    for (role, verb), spec in INTAKE_VERBS.items():
        cid = _intake_id(role, verb)
        address = spec.subject_pattern()
        messages[cid] = {
            "name": cid,
            "title": f"{role} {verb}",
            "summary": spec.summary,
            "contentType": "application/json",
            "headers": _ref("components", "schemas", "DedupHeaders"),
            "payload": _payload(intake_schema_path(role, verb)),
        }
        channels[cid] = {
            "address": address,
            "title": f"intake: {role} {verb}",
            "description": (
                f"{spec.summary} Only a {role} whose credentials carry this `name` may publish here. "
                "Publish plain JSON (a JetStream publish "
                f"returns the `{INTAKE_STREAM}` sequence, which the outcome's `intake_seq` names; a core "
                "publish is stored all the same). Every message is kept; the orchestrator validates it and "
                "records exactly one outcome: facts on the aggregate's event channel, or an entry on "
                "the intake outcomes channel."
            ),
            "parameters": _parameters(address),
            "messages": {cid: _ref("components", "messages", cid)},
            "x-jetstream-stream": INTAKE_STREAM,
        }

    # Domain events: one subject per aggregate, CloudEvents binary mode.
    for cid, (stream, description, models) in domain_channels().items():
        address = f"{EVENT_PREFIX}.{stream}"
        for model in models:
            messages[_event_name(model)] = _message_for_event(model, cid)
        channels[cid] = {
            "address": address,
            "title": f"events: {stream}",
            "description": (
                f"{description} Stored in the `{EVENTS_STREAM}` stream (one subject per aggregate, "
                "never purged): read it from the start with an ordered consumer filtered on this "
                "subject, or subscribe for the live tail. The type is the `ce-type` header and the body's "
                "`type`; its schema version is the body's `v`."
            ),
            "parameters": _parameters(address),
            "messages": {_event_name(m): _ref("components", "messages", _event_name(m)) for m in models},
            "x-jetstream-stream": EVENTS_STREAM,
        }

    # What the orchestrator tells one provider, and what a provider's heartbeat says.
    messages["Dispatch"] = {
        "name": "Dispatch",
        "title": "LeaseGranted, LeaseRevoked or LeaseBatch",
        "summary": (
            "Run this task under this lease, or stop it; or several of those for one provider, in order "
            "(`LeaseBatch`); `type` tells which."
        ),
        "contentType": "application/json",
        "headers": _ref("components", "schemas", "DedupHeaders"),
        "payload": _payload("dispatch/dispatch.json"),
    }
    channels["dispatch"] = {
        "address": f"{DISPATCH_PREFIX}.{{providerId}}",
        "title": "dispatch to one provider",
        "description": (
            f"Leases and revocations for one provider, on the `{DISPATCH_STREAM}` work-queue stream: the "
            "provider's durable consumer acknowledges what it took. These are notifications derived from "
            "the log (the fact is `TaskLeased`); a lost one costs a lease expiry and a re-queue."
        ),
        "parameters": _parameters("{providerId}"),
        "messages": {"Dispatch": _ref("components", "messages", "Dispatch")},
        "x-jetstream-stream": DISPATCH_STREAM,
    }
    messages["Heartbeat"] = {
        "name": "Heartbeat",
        "title": "provider heartbeat",
        "summary": "A provider's liveness and load; the key expires when the provider stops.",
        "contentType": "application/json",
        "payload": _payload("dispatch/heartbeat.json"),
    }
    channels["heartbeat"] = {
        "address": f"$KV.{HEARTBEAT_BUCKET}.{{providerId}}",
        "title": "heartbeat key-value bucket",
        "description": (
            f"Heartbeats are not events: each provider puts its `Heartbeat` in the `{HEARTBEAT_BUCKET}` "
            "key-value bucket under its id every interval (a KV put is a publish to this subject). The "
            "bucket keeps one value per key with a TTL; a provider whose key is older than the TTL is lost, "
            "and only that transition (`ProviderLost`) becomes an event."
        ),
        "parameters": _parameters("{providerId}"),
        "messages": {"Heartbeat": _ref("components", "messages", "Heartbeat")},
        "x-jetstream-stream": f"KV_{HEARTBEAT_BUCKET}",
    }

    messages["LiveProgress"] = {
        "name": "LiveProgress",
        "title": "live progress of a running task",
        "summary": "How far a lease's run has got: fraction, rate, unit; worth only until the next one.",
        "contentType": "application/json",
        "payload": _payload("live/progress.json"),
    }
    channels["liveProgress"] = {
        "address": f"{LIVE_PREFIX}.{{submitter}}.{{job}}.{{index}}.{{providerId}}",
        "title": "live progress (core NATS)",
        "description": (
            "Fractions and rates are not events: the provider running a task publishes them here on core "
            "NATS, not in a stream, at most a few a second. Only that provider may publish on a subject that "
            "ends in its id, and only the job's submitter (and auditors) may subscribe. Nothing keeps them: "
            "a watcher sees them from when it subscribes, and a lost one costs nothing. A progress report "
            "that carries a checkpoint still goes through intake and becomes `TaskProgressed`. Readers show "
            "a message only if its provider and `lease_id` are the task's current lease in the log, and "
            f"drop any over {MAX_LIVE_BYTES} bytes or that does not validate."
        ),
        "parameters": _parameters("{submitter}.{job}.{index}.{providerId}"),
        "messages": {"LiveProgress": _ref("components", "messages", "LiveProgress")},
    }

    # Objects a submitter stores before submitting: a sharded job's input, a kernel argument, a code
    # job's archive and array arguments (``events.store.blobs`` is the reference implementation).
    messages["ObjectPart"] = {
        "name": "ObjectPart",
        "title": "object chunk or manifest",
        "summary": 'Raw bytes (a chunk), or the manifest `{"chunks": N, "sha256": ..., "size": ...}`.',
        "contentType": "application/octet-stream",
        "payload": {"schemaFormat": JSON_SCHEMA_FORMAT, "schema": {"type": "string", "format": "binary"}},
    }
    channels["submitterObjects"] = {
        "address": f"{OBJECT_PREFIX}.submitter.{{submitter}}.{{sha256}}.{{part}}",
        "title": "a submitter's objects",
        "description": (
            f"Content-addressed objects in the `{OBJECTS_STREAM}` stream, written by their owner only: "
            "split the bytes into 256 KiB chunks, publish chunk i to part `i` (JetStream publish), then the "
            "manifest (sorted-key JSON of `chunks`, `sha256`, `size`) to part `m`. Each subject holds one "
            "message for ever: publishing it again is refused, and means it is stored already. A job then "
            'names the object as `{"bucket": "GF_OBJECTS", "name": "submitter.<submitter>.<sha256>", '
            '"sha256": ..., "size": ...}`. A code job (workload `function`, `workloads/function.json`) pins '
            "its code this way: a zip of Python source files (at most 8 MiB, 1,000 files, 64 MiB unpacked) "
            "whose `entry` `module:function` is imported by the provider, in a sandbox, and called as "
            "`function(xp, **args, ctx=ctx)`; `arrays` name `.npy` objects passed as arrays. Its result is "
            '`{"value": ...}`, arrays in the value standing as `{"$array": name, ...}` entries of the '
            "`.npz` object the result's `arrays` names."
        ),
        "parameters": _parameters(f"{OBJECT_PREFIX}.submitter.{{submitter}}.{{sha256}}.{{part}}"),
        "messages": {"ObjectPart": _ref("components", "messages", "ObjectPart")},
        "x-jetstream-stream": OBJECTS_STREAM,
    }

    # A quote before submitting: a request, answered by the network's quote service (``projections.quote``).
    messages["QuoteRequest"] = {
        "name": "QuoteRequest",
        "title": "quote request",
        "summary": "A job spec, exactly as submitted; its submitter is the asking identity.",
        "contentType": "application/json",
        "payload": _payload(intake_schema_path("submitter", "submit")),
    }
    messages["QuoteReply"] = {
        "name": "QuoteReply",
        "title": "quote",
        "summary": "What could run the job now, how long it should take and cost, or why nothing can run it.",
        "contentType": "application/json",
        "payload": {"schemaFormat": JSON_SCHEMA_FORMAT, "schema": _quote_reply_schema()},
    }
    channels["quote"] = {
        "address": f"{API_PREFIX}.{{role}}.{{name}}.quote",
        "title": "a quote before submitting",
        "description": (
            "Request/reply (a core NATS request; nothing is stored): send a job spec, get a quote. Only the "
            "identity `{role}.{name}` may publish here, so the quote is for it (its queue position and fair "
            "share). The spec is validated as a submission is; a refused one is answered "
            '`{"error": ..., "field": ...}`. Nothing is appended to the log. Figures are seconds from '
            "now and micro-credits; intervals are p10 to p90 of the network's own runtime model."
        ),
        "parameters": _parameters(f"{API_PREFIX}.{{role}}.{{name}}.quote"),
        "messages": {m: _ref("components", "messages", m) for m in ("QuoteRequest", "QuoteReply")},
    }

    # The submitter.
    operation("submitJob", "submitter", "send", "submitterSubmit", "Submit a job spec.")
    operation("cancelJob", "submitter", "send", "submitterCancel", "Cancel one of your jobs.")
    operation(
        "storeObject",
        "submitter",
        "send",
        "submitterObjects",
        "Store an input, a code archive or an array argument under your name, before the job that names it.",
    )
    operations["quoteJob"] = {
        "action": "send",
        "channel": _ref("channels", "quote"),
        "summary": "Ask what a job would take (time, cost, where) before submitting it; submits nothing.",
        "tags": [_ref("components", "tags", "submitter")],
        "messages": [_ref("channels", "quote", "messages", "QuoteRequest")],
        "reply": {
            "channel": _ref("channels", "quote"),
            "messages": [_ref("channels", "quote", "messages", "QuoteReply")],
        },
    }
    operation(
        "followJob",
        "submitter",
        "receive",
        "jobEvents",
        "Follow a job to its end: JobCompleted, JobRejected, JobFailed or JobCancelled.",
    )
    operation("followTasks", "submitter", "receive", "taskEvents", "Follow the progress and results of its tasks.")
    operation("followLiveProgress", "submitter", "receive", "liveProgress", "See its running tasks' live progress.")
    operation(
        "checkSubmission", "submitter", "receive", "intakeOutcomes", "Learn whether a submission was refused, and why."
    )
    # The provider.
    operation("registerProvider", "provider", "send", "providerRegister", "Register with measured capabilities.")
    operation("putHeartbeat", "provider", "send", "heartbeat", "Heartbeat every interval.")
    operation("receiveDispatch", "provider", "receive", "dispatch", "Take leases and revocations.")
    operation("publishLiveProgress", "provider", "send", "liveProgress", "Say how far a running task has got.")
    operation("reportTask", "provider", "send", "providerReport", "Report started, progress, completed or failed.")
    operation("drainProvider", "provider", "send", "providerDrain", "Finish the running work, take nothing new.")
    operation("leaveProvider", "provider", "send", "providerLeave", "Leave the network.")
    operation("followProvider", "provider", "receive", "providerEvents", "See its own transitions, such as lost.")
    # The auditor: replays everything.
    for cid in domain_channels():
        operation(
            f"replay{cid[:1].upper()}{cid[1:]}",
            "auditor",
            "receive",
            cid,
            f"Replay {channels[cid]['address']} from the start of {EVENTS_STREAM}.",
        )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:gpufleet:nats",
        "info": {
            "title": "gpufleet",
            "version": WIRE_VERSION,
            "description": (
                "Rent GPU compute across independent providers: an event-sourced actor system on NATS "
                "JetStream. Every connection is an identity: a NATS user JWT the network issued "
                "(`gpufleet creds issue ROLE NAME`), whose name the server writes into every subject it may "
                "publish. Outsiders publish plain JSON to their own intake subjects "
                "(`gf.in.<role>.<name>.<verb>[.<target>]`); the orchestrator validates each input and "
                "appends only accepted facts to the event log (`gf.ev.<kind>.<id>`, CloudEvents binary "
                "mode), which a submitter reads through the event feed (`gf.api.<role>.<name>.events`). No "
                "gpufleet library is needed: any NATS client with credentials, or a raw socket with a "
                "bearer JWT, will do. Payload schemas are the JSON Schemas beside this file."
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [_ref("components", "tags", role) for role in _ROLES],
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "{host}:{port}",
                "protocol": "nats",
                "title": "NATS with JetStream",
                "description": (
                    "`gpufleet up` runs an embedded nats-server with JetStream and decentralized JWT auth "
                    "(`tls://` with `--tls`); at scale, any NATS JetStream cluster that trusts the network's "
                    "operator. The network's admin creates every stream and bucket."
                ),
                "variables": {
                    "host": {"default": "localhost"},
                    "port": {"default": "4222"},
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {
                "CloudEventHeaders": _cloudevent_headers(),
                "DedupHeaders": {
                    "type": "object",
                    "description": (
                        "JetStream stores a message whose `Nats-Msg-Id` it has seen within the stream's "
                        "duplicate window only once. Optional on intake: set it to make a retried publish safe. "
                        "The orchestrator sets it on every dispatch."
                    ),
                    "properties": {"Nats-Msg-Id": {"type": "string"}},
                },
            },
            "parameters": {name: {"description": doc} for name, doc in _PARAMS.items()},
            "correlationIds": {
                "cloudEventCorrelation": {
                    "description": "The job (or input) that led to this event.",
                    "location": "$message.header#/ce-correlationid",
                }
            },
            "tags": {role: {"name": role, "description": doc} for role, doc in _ROLES.items()},
            "messages": messages,
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style, no aliases: the same document always renders to the same bytes."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_asyncapi() -> str:
    """The document as YAML, as committed in ``schemas/asyncapi.yaml``."""
    header = "# Generated by `python -m events.schema schemas` from events/asyncapi.py: do not edit.\n"
    body = yaml.dump(
        generate_asyncapi(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False
    )
    return header + body
