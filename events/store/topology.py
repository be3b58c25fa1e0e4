"""Everything gpufleet keeps in NATS, created idempotently: streams, the heartbeat KV, the object store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from events.errors import StoreUnavailable
from events.intake import MAX_INTAKE_BYTES
from events.store.jetstream import StreamSettings, ensure_stream
from events.subjects import (
    DISPATCH_PREFIX,
    DISPATCH_STREAM,
    HEARTBEAT_BUCKET,
    INTAKE_PREFIX,
    INTAKE_STREAM,
    OBJECT_BUCKET,
)

__all__ = ["Topology", "ensure_topology"]


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and settings of every NATS resource; ``replicas=3`` on a cluster."""

    events: StreamSettings = field(default_factory=StreamSettings)
    replicas: int = 1
    intake_stream: str = INTAKE_STREAM
    intake_prefix: str = INTAKE_PREFIX
    dispatch_stream: str = DISPATCH_STREAM
    dispatch_prefix: str = DISPATCH_PREFIX
    heartbeat_bucket: str = HEARTBEAT_BUCKET
    #: A provider whose heartbeat key is older than this is lost.
    heartbeat_ttl_s: float = 6.0
    object_bucket: str = OBJECT_BUCKET

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
            num_replicas=self.replicas,
            duplicate_window=self.events.duplicate_window_s,
            max_age=24 * 3600.0,
            max_msg_size=MAX_INTAKE_BYTES,
        )


async def ensure_topology(js: Any, topology: Topology | None = None) -> Topology:
    """Create (or update) every stream and bucket gpufleet uses; safe to call on each start."""
    t = topology or Topology()
    await ensure_stream(js, t.events.config())
    await ensure_stream(js, t.intake_config())
    await ensure_stream(js, t.dispatch_config())
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
                    # File-backed: the bucket (and who was alive) must survive a server restart.
                    storage=api.StorageType.FILE,
                    replicas=t.replicas,
                )
            )
        try:
            await js.object_store(t.object_bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_object_store(
                t.object_bucket,
                api.ObjectStoreConfig(
                    description="inputs, results and checkpoints; events carry references and sha256",
                    storage=api.StorageType.FILE,
                    replicas=t.replicas,
                ),
            )
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
        raise StoreUnavailable(f"JetStream did not answer while creating buckets: {e}") from e
    return t
