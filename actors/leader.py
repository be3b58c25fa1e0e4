"""Which orchestrator places work and judges liveness, when several share a network.

Every orchestrator takes intake messages (they share one consumer) and runs the commands they cause;
those are safe to run anywhere, because appends are guarded by the expected position of each
aggregate. Two decisions are not: leasing a task to a provider, and declaring a provider lost, each
read one aggregate's state to decide about another's. Made by two processes with two views of the
log, they race (one leases to a provider the other has just declared lost). So one orchestrator at
a time, the leader, makes them.

The leader holds a key in a KV bucket with a short TTL, created with "only if absent" and renewed
with "only if still mine" (the KV's own compare-and-set): if it dies, the key expires and another
takes over within the TTL. A leader that cannot renew steps down at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
import structlog

__all__ = ["LEADER_KEY", "Leadership"]

LEADER_KEY = "scheduler"
_log = structlog.get_logger("gpufleet.leader")


class Leadership:
    """Campaign for, hold and renew the leader key; ``leading`` says whether this process leads now."""

    def __init__(
        self,
        js: Any,
        bucket: str,
        me: str,
        *,
        ttl_s: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.js = js
        self.bucket = bucket
        self.me = me.encode()
        self.ttl_s = ttl_s
        self.leading = False
        self._revision: int | None = None
        self._on_change = on_change
        self.log = _log.bind(candidate=me)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            self.log.info("leader.elected" if leading else "leader.stepped_down")
            if self._on_change is not None:
                self._on_change(leading)

    async def run(self) -> None:
        """Campaign and renew forever (a third of the TTL apart)."""
        kv = None
        while True:
            try:
                if kv is None:
                    kv = await self.js.key_value(self.bucket)
                await self._round(kv)
            except (nats.errors.Error, OSError) as e:
                self.log.warning("leader.unreachable", error=str(e) or type(e).__name__)
                self._set(False)
                kv = None
            await asyncio.sleep(self.ttl_s / 3)

    async def _round(self, kv: Any) -> None:
        if self.leading and self._revision is not None:
            try:
                self._revision = await kv.update(LEADER_KEY, self.me, last=self._revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                self._set(False)  # someone else holds it now
                self._revision = None
        try:
            self._revision = await kv.create(LEADER_KEY, self.me)
            self._set(True)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyValueError):
            entry = None
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                entry = await kv.get(LEADER_KEY)
            if entry is not None and entry.value == self.me:
                # Our own key, from before a reconnect: keep it.
                self._revision = entry.revision
                self._set(True)
            else:
                self._set(False)

    async def resign(self) -> None:
        """Give the key up (on a clean stop), so that another takes over at once."""
        if not self.leading or self._revision is None:
            return
        with contextlib.suppress(Exception):
            kv = await self.js.key_value(self.bucket)
            await kv.delete(LEADER_KEY, last=self._revision)
        self._set(False)
