"""Dispatch: leases placed by the scheduler, granted in the log, then sent to their providers.

The schedule loop asks the core for lease plans (as the leader only), grants them through the task
shell as atomic batches, and publishes the grants on each provider's dispatch subject: one message per
provider, a ``LeaseBatch`` where it has several (``events.dispatch.dispatch_messages``). Revocations
go the same way. A dispatch message that cannot be published is not fatal: the lease expires
unstarted and the task is queued again. (Named so as not to be confused with ``events.dispatch``,
which holds the messages themselves.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats.errors
import structlog
from nats.js import JetStreamContext

from actors.core import Core
from actors.ids import new_id
from actors.runner import Runner, batches
from actors.scheduler import Assignment
from actors.shell import ActorShell
from actors.task import LeaseTask, TaskState
from events import StoreUnavailable
from events.dispatch import LeaseGranted, LeaseRevoked, dispatch_messages
from events.store.topology import Topology
from events.types import utc_now

__all__ = ["Dispatcher", "grant"]

#: Tries of one dispatch message before it is given up (the lease then expires unstarted).
_PUBLISH_TRIES = 10
#: Tries to create a provider's dispatch consumer.
_CONSUMER_TRIES = 5


def grant(task_id: str, t: TaskState) -> LeaseGranted | None:
    """The dispatch message granting ``t``'s current lease (None without one)."""
    spec, lease = t.spec, t.lease
    if spec is None or lease is None:
        return None
    return LeaseGranted(
        task_id=task_id,
        job_id=spec.job_id,
        lease_id=lease.lease_id,
        provider_id=lease.provider_id,
        attempt=t.attempt,
        workload=spec.workload,
        params=spec.params,
        timeout_s=spec.timeout_s,
        expires_at=lease.expires_at,
        predicted_s=lease.predicted_s,
        input=spec.input,
        shard=spec.shard,
        resume_from=t.checkpoint,
        resume_step=t.checkpoint_step if t.checkpoint else 0,
    )


class Dispatcher:
    """Places work (as the leader), grants leases, and tells providers about grants and revocations."""

    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        core: Core,
        tasks: ActorShell[Any, Any],
        runner: Runner,
        *,
        leading: Callable[[], bool],
        lease_start_timeout_s: float,
        log: Any = None,
    ) -> None:
        self.js = js
        #: The network's names (the orchestrator sets the checked one at start).
        self.topology = topology
        self.core = core
        self.tasks = tasks
        self.runner = runner
        self.leading = leading
        self.lease_start_timeout_s = lease_start_timeout_s
        self.log = log if log is not None else structlog.get_logger("gpufleet.dispatcher")
        #: Set when the queue or the fleet changed: the schedule loop looks at the queue again.
        self.kick = asyncio.Event()
        #: Leases this orchestrator granted (the log has them all; this counts this process's share).
        self.leases_granted = 0

    async def schedule_loop(self) -> None:
        """Each time it is kicked: plan leases (as the leader only) and grant them in batches."""
        while True:
            await self.kick.wait()
            self.kick.clear()
            if not self.leading():
                continue  # another orchestrator places work; we are kicked again if we take over
            plans = self.core.plan_leases(utc_now(), self.lease_start_timeout_s, lambda: new_id("l"))
            for start, end in batches(len(plans)):
                self.runner.spawn(self.lease(plans[start:end]))
            await asyncio.sleep(0)

    async def lease(self, plans: list[tuple[Assignment, LeaseTask]]) -> None:
        """Grant ``plans`` in one batch, then dispatch what was granted; a refused plan frees its slot."""
        try:
            results: list[Any] = await self.tasks.handle_many([(a.task.task_id, cmd) for a, cmd in plans])
        except Exception as e:
            self.log.warning("lease.batch_failed", size=len(plans), error=repr(e))
            results = [e] * len(plans)
        grants: list[LeaseGranted] = []
        for (a, cmd), r in zip(plans, results, strict=True):
            if isinstance(r, Exception) or not r.events:
                self.log.debug("lease.refused", task=a.task.task_id, reason=str(r))
                self.core.lease_refused(cmd.lease_id)
                self.kick.set()
            else:
                self.leases_granted += 1
                if (g := grant(a.task.task_id, r.state)) is not None:
                    grants.append(g)
        self.dispatch(grants)

    def dispatch(self, grants: list[LeaseGranted]) -> None:
        """Send ``grants``: one dispatch message per provider, a ``LeaseBatch`` where it has several."""
        for provider_id, body, msg_id in dispatch_messages(grants):
            self.runner.spawn(self.publish(provider_id, body, msg_id))

    def revoke(self, task_id: str, lease_id: str, provider_id: str, reason: str) -> None:
        """Tell the provider that its lease on ``task_id`` is over (it stops the run)."""
        msg = LeaseRevoked(task_id=task_id, lease_id=lease_id, provider_id=provider_id, reason=reason[:500])
        for provider, body, msg_id in dispatch_messages([msg]):
            self.runner.spawn(self.publish(provider, body, msg_id))

    async def publish(self, provider_id: str, body: bytes, msg_id: str) -> None:
        """Publish one dispatch message, de-duplicated by ``msg_id``, retried with backoff."""
        subject = f"{self.topology.dispatch_prefix}.{provider_id}"
        for attempt in range(_PUBLISH_TRIES):
            try:
                await self.js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
                return
            except (nats.errors.Error, OSError) as e:
                self.log.warning("dispatch.retry", provider=provider_id, error=str(e) or type(e).__name__)
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        # Not fatal: the lease expires unstarted and the task is queued again.
        self.log.error("dispatch.lost", provider=provider_id, msg_id=msg_id)

    def redispatch(self) -> None:
        """After a restart, tell providers again about leases they may not have received."""
        grants = (grant(task_id, t) for task_id, t in self.core.world.tasks.items() if t.status == "leased")
        self.dispatch([g for g in grants if g is not None])

    async def open_dispatch(self, provider_id: str) -> None:
        """Create the provider's dispatch consumer: the provider itself may only read from it."""
        config = self.topology.dispatch_consumer_config(provider_id)
        for attempt in range(_CONSUMER_TRIES):
            try:
                await self.js.add_consumer(self.topology.dispatch_stream, config=config)
                return
            except (nats.errors.Error, OSError) as e:
                self.log.warning("dispatch.consumer_retry", provider=provider_id, error=str(e) or type(e).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise StoreUnavailable(f"could not create the dispatch consumer of provider {provider_id}")
