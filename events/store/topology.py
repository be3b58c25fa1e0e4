"""Everything gpufleet keeps in NATS, created idempotently by the network's admin: streams and the heartbeat KV.

Every stream is bounded (bytes, message size, and for intake a cap per subject), and refuses new
messages when full rather than dropping old ones: a full intake tells the publisher so, and nothing
already acknowledged is ever discarded to make room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from events.dispatch import MAX_DISPATCH_BYTES
from events.errors import StoreUnavailable
from events.intake import MAX_INTAKE_BYTES
from events.store.jetstream import StreamSettings, ensure_stream
from events.subjects import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS_STREAM,
    DISPATCH_PREFIX,
    DISPATCH_STREAM,
    HEARTBEAT_BUCKET,
    INTAKE_PREFIX,
    INTAKE_STREAM,
    LEADER_BUCKET,
    OBJECT_PREFIX,
    OBJECTS_STREAM,
    dispatch_consumer,
    dispatch_subject,
)

__all__ = ["OBJECT_CHUNK_BYTES", "Topology", "check_topology", "ensure_topology"]

_GIB = 1 << 30
#: Objects are stored in chunks of this size, one message each.
OBJECT_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and settings of every NATS resource; ``replicas=3`` on a cluster."""

    events: StreamSettings = field(default_factory=StreamSettings)
    replicas: int = 1
    intake_stream: str = INTAKE_STREAM
    intake_prefix: str = INTAKE_PREFIX
    #: The intake stream holds at most this much; past it, publishers are told the intake is full.
    intake_max_bytes: int = 2 * _GIB
    #: And at most this many messages on one subject (one sender's reports on one task, say).
    intake_max_per_subject: int = 100_000
    dispatch_stream: str = DISPATCH_STREAM
    dispatch_prefix: str = DISPATCH_PREFIX
    heartbeat_bucket: str = HEARTBEAT_BUCKET
    #: A provider whose heartbeat key is older than this is lost.
    heartbeat_ttl_s: float = 6.0
    #: Where orchestrators elect the one that places work and judges liveness (a key with a TTL).
    leader_bucket: str = LEADER_BUCKET
    leader_ttl_s: float = 3.0
    objects_stream: str = OBJECTS_STREAM
    object_prefix: str = OBJECT_PREFIX
    objects_max_bytes: int = 8 * _GIB
    #: The notary's signed checkpoints (``events.tlog``): outside the log they cover.
    checkpoints_stream: str = CHECKPOINTS_STREAM
    checkpoint_prefix: str = CHECKPOINT_PREFIX
    checkpoints_max_bytes: int = _GIB

    def intake_config(self) -> api.StreamConfig:
        """Intake keeps every message sent, valid or not, for the orchestrator and the audit."""
        return api.StreamConfig(
            name=self.intake_stream,
            description="gpufleet intake: everything outsiders send, before validation",
            subjects=[f"{self.intake_prefix}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            num_replicas=self.replicas,
            duplicate_window=self.events.duplicate_window_s,
            max_msg_size=2 * MAX_INTAKE_BYTES,
            max_bytes=self.intake_max_bytes,
            max_msgs_per_subject=self.intake_max_per_subject,
            discard_new_per_subject=True,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
        )

    def dispatch_config(self) -> api.StreamConfig:
        """Dispatch is a work queue: a provider's consumer removes what it acknowledged."""
        return api.StreamConfig(
            name=self.dispatch_stream,
            description="gpufleet dispatch: leases and revocations for each provider",
            subjects=[f"{self.dispatch_prefix}.*"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.WORK_QUEUE,
            discard=api.DiscardPolicy.NEW,
            num_replicas=self.replicas,
            duplicate_window=self.events.duplicate_window_s,
            max_age=24 * 3600.0,
            max_msg_size=MAX_DISPATCH_BYTES,
            max_msgs_per_subject=100_000,
            allow_direct=True,  # an auditor reads every stream, with direct gets
        )

    def objects_config(self) -> api.StreamConfig:
        """Inputs, results and checkpoints: content-addressed chunks under their owner's name.

        ``gf.obj.<role>.<owner>.<sha256>.<chunk>`` and a manifest at ``.m``. The owner in the subject
        lets NATS permissions say who writes where; the digest is the name, so one subject holds one
        value for ever (a rewrite of the same content changes nothing).
        """
        return api.StreamConfig(
            name=self.objects_stream,
            description="gpufleet objects: inputs, results and checkpoints, by owner and sha256",
            subjects=[f"{self.object_prefix}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            num_replicas=self.replicas,
            duplicate_window=self.events.duplicate_window_s,
            max_msg_size=OBJECT_CHUNK_BYTES + 4096,
            max_msgs_per_subject=1,
            discard_new_per_subject=True,
            max_bytes=self.objects_max_bytes,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
        )

    def checkpoints_config(self) -> api.StreamConfig:
        """Signed checkpoints: only the notary writes here; when full the oldest go (each later one
        extends them, and a reader keeps the last it verified)."""
        return api.StreamConfig(
            name=self.checkpoints_stream,
            description="gpufleet checkpoints: the log's size and Merkle root, signed by the notary",
            subjects=[f"{self.checkpoint_prefix}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            num_replicas=self.replicas,
            duplicate_window=self.events.duplicate_window_s,
            max_msg_size=64 * 1024,
            max_bytes=self.checkpoints_max_bytes,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
        )

    def dispatch_consumer_config(self, provider_id: str) -> api.ConsumerConfig:
        """The pull consumer through which one provider reads its own dispatch (created by the orchestrator)."""
        return api.ConsumerConfig(
            durable_name=dispatch_consumer(provider_id),
            filter_subject=dispatch_subject(provider_id),
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=30.0,
            max_ack_pending=1000,
            max_waiting=64,
            # A provider gone for a week loses its queue (its leases expired long before).
            inactive_threshold=7 * 86400.0,
        )


async def ensure_topology(js: Any, topology: Topology | None = None) -> Topology:
    """Create (or update) every stream and bucket gpufleet uses; safe to call on each start (admin only)."""
    t = topology or Topology()
    await ensure_stream(js, t.events.config())
    await ensure_stream(js, t.intake_config())
    await ensure_stream(js, t.dispatch_config())
    await ensure_stream(js, t.objects_config())
    await ensure_stream(js, t.checkpoints_config())
    try:
        try:
            await js.key_value(t.heartbeat_bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=t.heartbeat_bucket,
                    description="provider heartbeats: not events; a key expires when its provider stops",
                    history=1,
                    ttl=t.heartbeat_ttl_s,
                    max_value_size=4096,
                    # File-backed: the bucket (and who was alive) must survive a server restart.
                    storage=api.StorageType.FILE,
                    replicas=t.replicas,
                )
            )
        try:
            await js.key_value(t.leader_bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=t.leader_bucket,
                    description="the orchestrator that places work and judges liveness; the key expires with it",
                    history=1,
                    ttl=t.leader_ttl_s,
                    max_value_size=256,
                    storage=api.StorageType.FILE,
                    replicas=t.replicas,
                )
            )
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
        raise StoreUnavailable(f"JetStream did not answer while creating buckets: {e}") from e
    return t


async def check_topology(js: Any, topology: Topology | None = None) -> Topology:
    """Verify that the streams exist (for roles that may not create them); a clear error if not."""
    t = topology or Topology()
    for name in (t.events.name, t.intake_stream, t.dispatch_stream, t.objects_stream):
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError as e:
            raise StoreUnavailable(
                f"stream {name} does not exist: the network's admin creates the streams (`gpufleet up` does)"
            ) from e
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"cannot check stream {name}: {e!s}") from e
    return t
