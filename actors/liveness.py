"""Liveness: providers' heartbeats watched in the KV bucket, and the lapse of a silent provider.

Heartbeats are not events (rule 5): they live in a KV bucket with a TTL, and only the transitions are
commands here: ``HeartbeatLapsed`` for an online (or draining) provider silent for longer than the
timeout, ``HeartbeatSeen`` for a lost one heard again. Only the leader judges, and only while it can
hear heartbeats at all: a provider not heard since this process started (or reconnected, or took the
lead) gets one timeout from then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
import structlog
from nats.js import JetStreamContext

from actors.ids import new_id
from actors.provider import HeartbeatLapsed, HeartbeatSeen
from actors.reactions import Intent
from actors.scheduler import Scheduler
from actors.world import World
from events.dispatch import Heartbeat
from events.store.topology import Topology
from events.types import utc_now

__all__ = ["Liveness"]


class Liveness:
    """Watches the heartbeat bucket and submits the liveness transitions of providers."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        world: World,
        scheduler: Scheduler,
        *,
        submit: Callable[[Intent], None],
        timeout_s: float,
        leading: Callable[[], bool],
        connected: Callable[[], bool],
        log: Any = None,
    ) -> None:
        self.js = js
        #: The network's names (the orchestrator sets the checked one at start).
        self.topology = topology
        self.world = world
        self.scheduler = scheduler
        self.submit = submit
        self.timeout_s = timeout_s
        self.leading = leading
        self.connected = connected
        self.log = log if log is not None else structlog.get_logger("gpufleet.liveness")
        #: Each provider's last heartbeat (the server's time of it, where known).
        self.last_seen: dict[str, datetime] = {}
        #: What a provider not seen since is measured from: this process's start, reconnect or lead.
        self.started_at = utc_now()
        #: The heartbeat watch is established and the bucket answers (liveness is judged only then).
        self.hearing = False

    def restart_clock(self) -> None:
        """Every provider not seen since gets one timeout from now (taking the lead, a start)."""
        self.started_at = utc_now()

    def deaf(self) -> None:
        """Heartbeats cannot be heard (the link is down): nobody is judged until they can again."""
        self.hearing = False

    def reconnected(self) -> None:
        """The link is back: heartbeats from before the outage prove nothing; all start over now."""
        self.started_at = utc_now()
        self.last_seen.clear()
        self.hearing = False

    async def run(self) -> None:
        """Watch the heartbeat bucket (again after any interruption), and check for lapses meanwhile."""
        watcher = None
        check = asyncio.create_task(self.lapse_loop())
        try:
            while True:
                try:
                    kv = await self.js.key_value(self.topology.heartbeat_bucket)
                    watcher = await kv.watchall()
                    await kv.status()  # the bucket answers: providers can write heartbeats again
                    if not self.hearing:
                        # Providers get one timeout from the moment heartbeats can be heard again: a
                        # server that is back on the wire may still be recovering its streams.
                        self.started_at = utc_now()
                        self.hearing = True
                    async for entry in watcher:
                        if entry is None or entry.value is None or entry.operation is not None:
                            continue
                        self.heartbeat(entry.key, entry.value, entry.created)
                except (nats.errors.Error, OSError) as e:
                    self.hearing = False
                    self.log.warning("liveness.watch_interrupted", error=str(e) or type(e).__name__)
                    await asyncio.sleep(0.5)
        finally:
            check.cancel()
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    def heartbeat(self, provider_id: str, value: bytes, created: datetime | None) -> None:
        """One heartbeat: remember it; a lost provider heard recently is seen again (by the leader)."""
        try:
            hb = Heartbeat.model_validate_json(value)
        except ValueError:
            self.log.warning("liveness.bad_heartbeat", key=provider_id)
            return
        seen = created.astimezone(UTC) if created is not None else hb.at
        self.last_seen[provider_id] = max(seen, self.last_seen.get(provider_id, seen))
        p = self.world.providers.get(provider_id)
        now = utc_now()
        # Back from lost only on a heartbeat that is itself recent: a watch that starts over replays
        # every provider's last heartbeat, however old, and the grace after a (re)start is no proof.
        recent = (now - seen).total_seconds() <= self.timeout_s
        if p is not None and p.status == "lost" and self.leading() and recent:
            cmd = HeartbeatSeen(command_id=new_id("hb-"), at=utc_now())
            self.submit(Intent("provider", provider_id, cmd))

    def fresh(self, provider_id: str, now: datetime) -> bool:
        """Whether ``provider_id`` was heard within the timeout at ``now``."""
        seen = self.last_seen.get(provider_id)
        # A provider not seen since this process started (or reconnected) gets one timeout from then.
        last = max(seen, self.started_at) if seen is not None else self.started_at
        return (now - last).total_seconds() <= self.timeout_s

    async def lapse_loop(self) -> None:
        """A few times per timeout: ``check`` (as the leader, while connected and hearing)."""
        while True:
            await asyncio.sleep(min(0.25, self.timeout_s / 4))
            if not self.leading() or not self.connected() or not self.hearing:
                # The leader judges liveness, and only while it can hear heartbeats: when the link
                # comes back, ``reconnected`` gives every provider one timeout from then.
                continue
            self.check(utc_now())

    def check(self, now: datetime) -> None:
        """Report each online or draining provider silent at ``now`` as lapsed, once."""
        for provider_id, p in list(self.world.providers.items()):
            if p.status in ("online", "draining") and not self.fresh(provider_id, now):
                cmd = HeartbeatLapsed(
                    command_id=new_id("hl-"),
                    at=now,
                    reason=f"no heartbeat for {self.timeout_s:g}s",
                )
                # Mark it seen so that one lapse is reported once, not every tick; and place
                # nothing more on it from now on, before the loss is even in the log.
                self.last_seen[provider_id] = now
                self.scheduler.set_available(provider_id, False)
                self.submit(Intent("provider", provider_id, cmd))
