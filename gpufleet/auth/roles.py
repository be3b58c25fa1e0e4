"""What each role may do, as NATS permission templates: the one place the network's rules are written.

The server enforces these. A user JWT is signed by its role's scoped signing key and carries no
permissions of its own; the key's template binds its subjects to the user's name with ``{{name()}}``.

Two accounts hold the roles:

- the **hub** (``GPUFLEET``) holds every stream. Only trusted roles live there: ``admin`` (streams,
  buckets, consumers) and ``orchestrator`` (the only writer of the domain log and of dispatch).
- the **edge** (``EDGE``) has no JetStream at all. Strangers live there: providers, submitters and
  auditors. They reach the hub only through the services the hub exports, so a reply subject or a
  delivery that the server makes on their behalf stays in the edge and can never land in a stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from events.identity import Role, inbox_prefix
from events.subjects import (
    API_PREFIX,
    CHECKPOINT_PREFIX,
    CHECKPOINTS_STREAM,
    DISPATCH_PREFIX,
    DISPATCH_STREAM,
    EVENT_PREFIX,
    EVENTS_STREAM,
    HEARTBEAT_BUCKET,
    INTAKE_PREFIX,
    LEADER_BUCKET,
    LIVE_PREFIX,
    OBJECT_PREFIX,
    OBJECTS_STREAM,
    TLOG_OPERATION,
    dispatch_consumer,
    heartbeat_subject,
)

__all__ = [
    "EDGE_ACCOUNT",
    "HUB_ACCOUNT",
    "ROLE_RULES",
    "SYS_ACCOUNT",
    "RoleRules",
    "edge_imports",
    "hub_exports",
]

HUB_ACCOUNT = "GPUFLEET"
EDGE_ACCOUNT = "EDGE"
SYS_ACCOUNT = "SYS"

_NAME = "{{name()}}"
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class RoleRules:
    """One role: its account, what its users may publish and subscribe to, and their limits."""

    role: Role
    account: str
    pub_allow: tuple[str, ...]
    sub_allow: tuple[str, ...]
    pub_deny: tuple[str, ...] = ()
    #: Users may answer requests (the hub's services answer the edge).
    responds: bool = False
    #: Per-user limits: subscriptions and the largest message.
    subs: int = 1000
    payload: int = _MIB
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def template(self) -> dict[str, Any]:
        """The scoped signing key's user template, as the account JWT carries it."""
        pub: dict[str, list[str]] = {"allow": list(self.pub_allow)}
        if self.pub_deny:
            pub["deny"] = list(self.pub_deny)
        t: dict[str, Any] = {
            "pub": pub,
            "sub": {"allow": list(self.sub_allow)},
            "subs": self.subs,
            "data": -1,
            "payload": self.payload,
        }
        if self.responds:
            t["resp"] = {"max": 1, "ttl": 0}
        return t


def _direct_get(stream: str, subject: str = "") -> str:
    return f"$JS.API.DIRECT.GET.{stream}" + (f".{subject}" if subject else "")


def _inbox(role: str) -> str:
    return f"{inbox_prefix(role, _NAME)}.>"


_provider_consumer = dispatch_consumer(_NAME)

ROLE_RULES: dict[str, RoleRules] = {
    "admin": RoleRules(
        role="admin",
        account=HUB_ACCOUNT,
        description="the network's operator: creates and updates streams, buckets and consumers",
        # ``$JS.SNAPSHOT.>``: the flow-control acks of a snapshot and the chunks of a restore
        # (``gpufleet backup`` and ``restore``).
        pub_allow=("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$JS.SNAPSHOT.ACK.>", "$JS.SNAPSHOT.RESTORE.>"),
        pub_deny=(
            f"{EVENT_PREFIX}.>",
            f"{DISPATCH_PREFIX}.>",
            f"{INTAKE_PREFIX}.>",
            f"{OBJECT_PREFIX}.>",
            f"{CHECKPOINT_PREFIX}.>",
        ),
        sub_allow=("_INBOX.>",),
    ),
    "orchestrator": RoleRules(
        role="orchestrator",
        account=HUB_ACCOUNT,
        description="the only writer of the domain log and of dispatch; serves the network's requests",
        pub_allow=(
            f"{EVENT_PREFIX}.>",
            f"{DISPATCH_PREFIX}.>",
            f"$KV.{LEADER_BUCKET}.>",
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.>",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.MSG.GET.>",
            "$JS.API.DIRECT.GET.>",
            "$JS.API.CONSUMER.>",
            "$JS.ACK.>",
            "$JS.FC.>",
        ),
        sub_allow=("_INBOX.>", f"{API_PREFIX}.>"),
        responds=True,
        subs=100_000,
    ),
    "provider": RoleRules(
        role="provider",
        account=EDGE_ACCOUNT,
        description="runs tasks: its own intake, heartbeat, dispatch and objects only",
        pub_allow=(
            f"{INTAKE_PREFIX}.provider.{_NAME}.>",
            f"{OBJECT_PREFIX}.provider.{_NAME}.>",
            # Results, written for the job's submitter: result.<submitter>.<provider>.<sha256>.
            f"{OBJECT_PREFIX}.result.*.{_NAME}.>",
            f"{API_PREFIX}.provider.{_NAME}.>",
            heartbeat_subject(_NAME),
            # Live progress of the tasks it runs (core NATS, in the edge: never stored), ending in
            # its own name: gf.live.<submitter>.<job>.<index>.<provider>.
            f"{LIVE_PREFIX}.*.*.*.{_NAME}",
            f"$JS.API.CONSUMER.MSG.NEXT.{DISPATCH_STREAM}.{_provider_consumer}",
            f"$JS.ACK.{DISPATCH_STREAM}.{_provider_consumer}.>",
            f"$JS.ACK.*.*.{DISPATCH_STREAM}.{_provider_consumer}.>",
            # Inputs and checkpoints, by digest: a provider learns a digest only from its leases.
            _direct_get(OBJECTS_STREAM, f"{OBJECT_PREFIX}.submitter.>"),
            _direct_get(OBJECTS_STREAM, f"{OBJECT_PREFIX}.provider.>"),
            _direct_get(OBJECTS_STREAM, f"{OBJECT_PREFIX}.result.*.{_NAME}.>"),
            _direct_get(CHECKPOINTS_STREAM),  # the signed checkpoints: everyone may read them
        ),
        sub_allow=(_inbox("provider"),),
    ),
    "submitter": RoleRules(
        role="submitter",
        account=EDGE_ACCOUNT,
        description="submits and cancels its own jobs; reads its own jobs' events, inputs and results",
        pub_allow=(
            f"{INTAKE_PREFIX}.submitter.{_NAME}.>",
            f"{OBJECT_PREFIX}.submitter.{_NAME}.>",
            f"{API_PREFIX}.submitter.{_NAME}.>",
            _direct_get(OBJECTS_STREAM, f"{OBJECT_PREFIX}.submitter.{_NAME}.>"),
            # The results of its own jobs, and nobody else's.
            _direct_get(OBJECTS_STREAM, f"{OBJECT_PREFIX}.result.{_NAME}.>"),
            _direct_get(CHECKPOINTS_STREAM),  # the signed checkpoints: everyone may read them
        ),
        # The live progress of its own jobs' tasks, and nobody else's.
        sub_allow=(_inbox("submitter"), f"{LIVE_PREFIX}.{_NAME}.>"),
        subs=256,
    ),
    "auditor": RoleRules(
        role="auditor",
        account=EDGE_ACCOUNT,
        description="reads every stream and bucket, writes nothing",
        pub_allow=(
            "$JS.API.DIRECT.GET.>",
            "$JS.API.STREAM.INFO.>",
            "$JS.API.STREAM.NAMES",
            "$JS.API.INFO",
            f"{API_PREFIX}.auditor.{_NAME}.>",
        ),
        sub_allow=(_inbox("auditor"), f"{LIVE_PREFIX}.>"),
        subs=256,
    ),
    "notary": RoleRules(
        role="notary",
        account=HUB_ACCOUNT,
        description="reads the domain log, signs its checkpoints (the only writer of gf.cp.>), answers proofs",
        pub_allow=(
            f"{CHECKPOINT_PREFIX}.>",
            "$JS.API.INFO",
            f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
            f"$JS.API.STREAM.INFO.{CHECKPOINTS_STREAM}",
            _direct_get(EVENTS_STREAM),
            _direct_get(CHECKPOINTS_STREAM),
        ),
        sub_allow=(_inbox("notary"), f"{API_PREFIX}.*.*.{TLOG_OPERATION}"),
        responds=True,
    ),
}

#: Services the hub exports to the edge: (subject, many responses per request).
_EXPORTS: tuple[tuple[str, bool], ...] = (
    (f"{INTAKE_PREFIX}.>", False),
    (f"{OBJECT_PREFIX}.>", False),
    (f"{API_PREFIX}.>", False),
    (f"$KV.{HEARTBEAT_BUCKET}.>", False),
    (f"$JS.API.CONSUMER.MSG.NEXT.{DISPATCH_STREAM}.*", True),
    ("$JS.ACK.>", False),
    ("$JS.API.DIRECT.GET.>", True),
    ("$JS.API.STREAM.INFO.>", False),
    ("$JS.API.STREAM.NAMES", False),
    ("$JS.API.INFO", False),
)


def hub_exports() -> list[dict[str, Any]]:
    """The hub account's service exports."""
    out = []
    for subject, stream in _EXPORTS:
        e: dict[str, Any] = {"name": subject, "subject": subject, "type": "service"}
        if stream:
            e["response_type"] = "Stream"
        out.append(e)
    return out


def edge_imports(hub_public_key: str) -> list[dict[str, Any]]:
    """The edge account's imports of every hub service (permissions then narrow them per role)."""
    return [
        {"name": subject, "subject": subject, "account": hub_public_key, "type": "service"} for subject, _ in _EXPORTS
    ]
