"""The orchestrator: intake, actors, reactions, scheduler, timers and liveness on one event log.

Start-up rebuilds the world from the log (rule 3), re-issues whatever reactions still owe
(``reconcile``), re-arms every timer, re-dispatches live leases, then follows the log and the intake
stream. Everything it holds in memory is a cache of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from actors.admission import Admission
from actors.core import MIN_LEASE_START_S, Core
from actors.errors import DomainError
from actors.ids import new_id
from actors.intake import intake_command
from actors.intake_queue import FairQueue
from actors.job import SubmitJob, job_decider
from actors.leader import Leadership
from actors.provider import (
    HeartbeatLapsed,
    HeartbeatSeen,
    provider_decider,
)
from actors.reactions import Intent
from actors.scheduler import Assignment
from actors.shell import ActorShell
from actors.snapshot import SnapshotFile, restore, snapshot_file
from actors.task import (
    LeaseTask,
    ReportCompleted,
    TaskState,
    task_decider,
)
from actors.window import DEFAULT_WINDOW
from actors.world import World
from events import ANY, Envelope, GpufleetError, InvalidPayload, LogRegressed, StoreUnavailable, new_envelope
from events.aio import cancel_and_wait
from events.dispatch import Heartbeat, LeaseGranted, LeaseRevoked, dispatch_messages
from events.intake import (
    InputAccepted,
    InputRejected,
    ProviderRegistration,
    decode_intake,
)
from events.quotas import QUOTA_OPERATION, QuotaConfig
from events.store import JetStreamEventStore
from events.store.blobs import BlobStore
from events.store.connection import Access, connect_nats
from events.store.protocol import log_invalid
from events.store.topology import Topology, check_topology
from events.store.watermark import Watermark, WatermarkFile, check_watermark, watermark_file
from events.subjects import API_PREFIX, outcomes_stream_of
from events.types import utc_now
from events.verification import VerifyPolicy, objects_to_compare

__all__ = ["Orchestrator", "OrchestratorConfig"]

_log = structlog.get_logger("gpufleet.orchestrator")


#: The one durable consumer on the intake stream that orchestrators shared before intake was split by
#: role (deleted at start-up where it still exists; ``actors.metrics`` still reads it on such a network).
INTAKE_CONSUMER = "orchestrators"
#: The durable consumers on the intake stream that every orchestrator of a network shares, one per
#: sender role, so that providers' reports never wait behind submissions.
INTAKE_CONSUMERS: dict[str, str] = {
    "provider": "orchestrators-providers",
    "submitter": "orchestrators-submitters",
}
#: Intake messages fetched at once, at most.
_INTAKE_FETCH = 256
#: Seconds one pull request for intake messages waits on the server when there are none.
_INTAKE_PULL_S = 1.0
#: Intake messages waiting in the fair queue, at most (or 2 x intake_concurrency, if more): how far
#: past one sender's burst the orchestrator looks for everyone else's next message...
_INTAKE_QUEUE_ITEMS = 4096
#: ...and their bytes, at most.
_INTAKE_QUEUE_BYTES = 64 * 1024 * 1024
#: Refusals for the intake rate being recorded at once, at most (a flood waits on these).
_RATE_REFUSALS_IN_FLIGHT = 64
#: An intake message as it waits for a worker: the message, its intake sequence, its arrival time.
_Delivery = tuple[Msg, int, datetime]
#: Commands for many aggregates go to the store as atomic batches of at most this many...
_BATCH = 500
#: ...but only from this many on: an atomic batch costs the server a few milliseconds on a file-backed
#: stream, so small groups go out as concurrent single-event appends (lower latency).
_MIN_BATCH = 16


@dataclass
class OrchestratorConfig:
    """Tunables; the defaults suit a real network, tests shorten the timeouts."""

    source: str = "gpufleet/orchestrator"
    #: A lease not started within this many seconds expires (the dispatch was lost, or the provider).
    lease_start_timeout_s: float = 30.0
    #: A started lease lasts the task's timeout plus this.
    lease_grace_s: float = 30.0
    #: A provider whose last heartbeat is older than this is lost.
    heartbeat_timeout_s: float = 6.0
    #: Intake messages in flight at once.
    intake_concurrency: int = 512
    #: An intake message not acknowledged this long after delivery goes to an orchestrator again.
    intake_ack_wait_s: float = 20.0
    #: Fair-share weights by submitter (default 1).
    weights: dict[str, float] = field(default_factory=dict)
    #: Where the watermark (the last event applied) is kept; None: no watermark, no regression check.
    state_dir: Path | None = None
    #: The verification policy of jobs that name none (``events.verification``). ``auto``: spot
    #: checks on paid attempts, none on free ones.
    default_verify: VerifyPolicy | None = field(default_factory=VerifyPolicy)
    #: Each submitter's quotas (``events.quotas``).
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    #: Tasks of one submitter that exist and wait to be leased at once (``actors.window``): a job's
    #: tasks are created as this frees up, not all when it is accepted.
    task_window: int = DEFAULT_WINDOW
    #: A snapshot of the core is kept in ``state_dir`` after this many events applied since the last
    #: one, and at a clean stop (``actors.snapshot``): a restart folds only the log after it. 0: never.
    snapshot_every: int = 100_000

    def __post_init__(self) -> None:
        if self.lease_start_timeout_s < MIN_LEASE_START_S:
            raise ValueError(
                f"lease_start_timeout_s must be at least {MIN_LEASE_START_S:g} s (got {self.lease_start_timeout_s:g})"
            )


class Orchestrator:
    """One orchestrator process. ``await start()``, then it runs until ``await stop()``."""

    def __init__(self, nc: NATS, *, topology: Topology | None = None, config: OrchestratorConfig | None = None):
        self.nc = nc
        self.js = nc.jetstream()
        self.topology = topology or Topology()
        self.config = config or OrchestratorConfig()
        # Jobs that are over leave memory (``actors.world``): it is bounded by the live work.
        self.core = Core(self.config.weights, self.config.default_verify, window=self.config.task_window, retire=True)
        self.core.scheduler.running_limit = _RunningLimit(self.config.quotas)
        self.world = self.core.world
        #: Quotas: the intake rate per submitter, jobs and tasks in flight, object bytes.
        self.admission = Admission(self.config.quotas)
        #: Intake sequences this process holds (queued, being handled, or being refused): a copy that
        #: JetStream delivers again meanwhile is left alone.
        self._in_hand: set[int] = set()
        self.store = JetStreamEventStore(nc, settings=self.topology.events)
        source = self.config.source
        self.jobs = ActorShell(self.store, job_decider, source=source)
        self.tasks = ActorShell(self.store, task_decider, source=source)
        self.providers = ActorShell(self.store, provider_decider, source=source)
        self._last_seen: dict[str, datetime] = {}
        self._kick = asyncio.Event()
        self._timer_kick = asyncio.Event()
        self._running: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._live = False
        self._started_at = utc_now()
        #: Intake messages JetStream delivered to this orchestrator (with others, each gets a share).
        self.intake_delivered = 0
        #: Leases this orchestrator granted (the log has them all; this counts this process's share).
        self.leases_granted = 0
        #: Positions of stored events that did not decode and were skipped (``actors.metrics``).
        self.quarantined: set[int] = set()
        self.store.on_invalid = self._invalid
        self.leadership = Leadership(
            self.js,
            self.topology.leader_bucket,
            new_id(f"{source.rsplit('/', 1)[-1]}-"),
            ttl_s=self.topology.leader_ttl_s,
            on_change=self._leadership_changed,
        )
        self.log = _log.bind(source=source)
        #: The watermark file, one per log in ``state_dir`` (known once the log's identity is read).
        self._watermark: WatermarkFile | None = None
        #: The last event applied (kept as is: the hot path allocates nothing for the watermark).
        self._last_env: Envelope | None = None
        self._log_id = ""
        #: The heartbeat watch is established and the bucket answers (liveness is judged only then).
        self._hearing = False
        #: Set when the orchestrator stopped for good on its own (``fatal`` says why).
        self.halted = asyncio.Event()
        self.fatal: GpufleetError | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._saved: Watermark | None = None
        self._snapshot: SnapshotFile | None = None
        #: The log position the last start read on from: its snapshot's (0: the whole log).
        self.rebuilt_from = 0
        #: The last snapshot written (or loaded): its mark, and the events applied when it was taken.
        self._snapshotted: tuple[Watermark | None, int] = (None, 0)
        self._blob_store: BlobStore | None = None
        #: Spot-check draws: unpredictable to providers (``events.verification``).
        self._random = random.SystemRandom()

    @classmethod
    async def connect(
        cls, access: Access | str, *, topology: Topology | None = None, config: OrchestratorConfig | None = None
    ) -> Orchestrator:
        """Connect to NATS (with the orchestrator's credentials, on a secured network) and start."""
        holder: list[Orchestrator] = []

        async def reconnected() -> None:
            if holder:
                holder[0].reconnected()

        async def disconnected() -> None:
            if holder:
                holder[0].disconnected()

        nc = await connect_nats(
            access, name="gpufleet-orchestrator", on_reconnect=reconnected, on_disconnect=disconnected
        )
        orch = cls(nc, topology=topology, config=config)
        holder.append(orch)
        try:
            await orch.start()
        except BaseException:
            await orch.close()
            raise
        return orch

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild from the log, reconcile, then follow the log and the intake."""
        # The admin creates the streams (``gpufleet up`` does); the orchestrator may not.
        self.topology = await check_topology(self.js, self.topology)
        await self.store.ensure()
        self._log_id = await self.store.log_id()
        if self.config.state_dir is not None:
            self._watermark = watermark_file(self.config.state_dir, "orchestrator", self._log_id)
            # Never write on top of a log that lost what this orchestrator already applied.
            same = await check_watermark(
                self.store, self._watermark.load(), "orchestrator", reset_hint=f"delete {self._watermark.path}"
            )
            if not same:
                self.log.info("orchestrator.new_log", log=self._log_id, watermark=str(self._watermark.path))
        self._started_at = utc_now()
        after = self.rebuilt_from = await self._load_snapshot()
        async for env in self.store.read_all(after):
            self._apply(env)
        self.log.info(
            "orchestrator.rebuilt",
            position=self.world.position,
            from_snapshot=after,
            events=self.world.events,
            jobs=len(self.world.jobs),
            tasks=len(self.world.tasks),
            providers=len(self.world.providers),
            unfinished=self.world.unfinished(),
        )
        self._live = True
        for intent in self.core.reconcile(utc_now()):
            self._submit(intent)
        self._redispatch()
        self._kick.set()
        position = self.world.position
        self._running = [
            asyncio.create_task(self._supervise("follow", lambda: self._follow(position)), name="follow"),
            asyncio.create_task(self._supervise("intake", self._intake), name="intake"),
            asyncio.create_task(self._supervise("leader", self.leadership.run), name="leader"),
            asyncio.create_task(self._supervise("schedule", self._schedule_loop), name="schedule"),
            asyncio.create_task(self._supervise("timers", self._timer_loop), name="timers"),
            asyncio.create_task(self._supervise("liveness", self._liveness), name="liveness"),
            asyncio.create_task(self._supervise("objects", self._tally_objects), name="objects"),
            asyncio.create_task(self._supervise("quota", self._serve_quotas), name="quota"),
        ]
        if self._watermark is not None:
            self._running.append(
                asyncio.create_task(self._supervise("watermark", self._watermark_loop), name="watermark")
            )
        if self._snapshot is not None:
            self._running.append(asyncio.create_task(self._supervise("snapshot", self._snapshot_loop), name="snapshot"))

    def _snapshot_context(self) -> str:
        """What a snapshot's core was built with besides the log: one built otherwise is not used."""
        c = self.config
        return repr((sorted(c.weights.items()), c.default_verify, c.task_window))

    async def _load_snapshot(self) -> int:
        """Take the core from the snapshot in ``state_dir`` if there is one the log agrees with; the log
        position to read on from (0: none, the whole log)."""
        if self.config.state_dir is None or self.config.snapshot_every <= 0:
            return 0
        self._snapshot = snapshot_file(self.config.state_dir, "orchestrator", self._log_id)
        snap, why = await asyncio.to_thread(self._snapshot.load, self._log_id, self._snapshot_context())
        if snap is not None and await self.store.event_id_at(snap.mark.position) != snap.mark.event_id:
            why = f"the log does not hold event {snap.mark.event_id!r} at {snap.mark.position}"
            snap = None
        if snap is None:
            if why:
                self.log.warning("orchestrator.snapshot_set_aside", path=str(self._snapshot.path), reason=why)
            return 0
        self.core = restore(snap.core)
        quotas = self.config.quotas
        self.core.scheduler.running_limit = _RunningLimit(quotas)
        self.world = self.core.world
        self._snapshotted = (snap.mark, self.world.events)
        self.log.info("orchestrator.snapshot_loaded", position=snap.mark.position, jobs=len(self.world.jobs))
        return snap.mark.position

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            if self.world.events - self._snapshotted[1] >= self.config.snapshot_every:
                await self._save_snapshot()

    async def _save_snapshot(self) -> None:
        """Snapshot the core as it stands (pickled here, where nothing changes it meanwhile; written
        in a thread)."""
        mark, snapshot = self._applied, self._snapshot
        if snapshot is None or mark is None or mark == self._snapshotted[0]:
            return
        t0 = time.perf_counter()
        body = snapshot.dumps(self.core)
        pickled = time.perf_counter() - t0
        size = await asyncio.to_thread(snapshot.write, body, mark, self._snapshot_context())
        self._snapshotted = (mark, self.world.events)
        self.log.info(
            "orchestrator.snapshot_saved", position=mark.position, bytes=size, pickle_ms=round(pickled * 1000, 1)
        )

    @property
    def _applied(self) -> Watermark | None:
        env = self._last_env
        return Watermark(env.sequence, env.id, self._log_id) if env is not None else None

    async def _watermark_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self._save_watermark()

    async def _save_watermark(self) -> None:
        mark = self._applied
        if self._watermark is not None and mark is not None and mark != self._saved:
            await asyncio.to_thread(self._watermark.save, mark)
            self._saved = mark

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop forever: a bug in one must be loud, and must not silently stop the orchestrator."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except LogRegressed as e:  # history was lost under it: nothing more is written
                self._halt(e)
                return
            except Exception:
                self.log.exception("orchestrator.loop_crashed", loop=name)
                await asyncio.sleep(0.5)

    def _leadership_changed(self, leading: bool) -> None:
        """Leading now: providers not seen since get one heartbeat timeout, and the queue is looked at."""
        if leading:
            self._started_at = utc_now()
            self._kick.set()

    async def stop(self) -> None:
        """Stop every loop; in-flight commands finish or are abandoned (the log makes that safe)."""
        await self.leadership.resign()
        self._live = False
        await cancel_and_wait(self._running)  # again until done: a cancellation can be lost (events.aio)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=2.0)
        self._running = []
        with contextlib.suppress(OSError):
            await self._save_watermark()
        with contextlib.suppress(OSError):
            await self._save_snapshot()  # a restart after a clean stop reads nothing but the snapshot

    async def close(self) -> None:
        """Stop and close the connection."""
        await self.stop()
        with contextlib.suppress(Exception):
            await self.nc.close()

    # ---- the log ---------------------------------------------------------------------------------

    async def _follow(self, after: int) -> None:
        after = max(after, self.world.position)
        while True:
            try:
                async for env in self.store.subscribe(after):
                    after = max(after, env.sequence)
                    self._apply(env)
            except (StoreUnavailable, nats.errors.Error) as e:
                self.log.warning("orchestrator.follow_interrupted", error=str(e), position=after)
                await asyncio.sleep(0.5)

    def _apply(self, env: Envelope) -> None:
        if self._live and env.sequence and env.sequence <= self.world.position:
            return  # seen already (catch-up overlapped the subscription)
        fx = self.core.apply(env, live=self._live)
        if env.sequence:
            self._last_env = env
        if len(fx.intents) > 1:
            self._submit_many(fx.intents)
        else:
            for intent in fx.intents:
                self._submit(intent)
        for r in fx.revokes:
            self._revoke(r.task_id, r.lease_id, r.provider_id, r.reason)
        if fx.schedule:
            self._kick.set()
        if fx.timers:
            self._timer_kick.set()

    def _invalid(self, position: int, error: InvalidPayload) -> None:
        """A stored event that does not decode: skipped (as every reader does), logged, counted once."""
        if position not in self.quarantined:
            self.quarantined.add(position)
            log_invalid(position, error)

    # ---- commands --------------------------------------------------------------------------------

    def _shell(self, kind: str) -> ActorShell[Any, Any]:
        shells: dict[str, ActorShell[Any, Any]] = {
            "job": self.jobs,
            "task": self.tasks,
            "provider": self.providers,
        }
        return shells[kind]

    def _submit(self, intent: Intent) -> None:
        """Run an intent in the background; per-aggregate order is kept by the shell's FIFO lock."""
        self._spawn(self._run(intent))

    def _submit_many(self, intents: list[Intent]) -> None:
        """Intents for many aggregates of one kind (a job's tasks) go out as atomic batches."""
        by_kind: dict[str, list[Intent]] = {}
        for i in intents:
            by_kind.setdefault(i.kind, []).append(i)
        for group in by_kind.values():
            if len(group) < _MIN_BATCH or len({i.aggregate_id for i in group}) != len(group):
                for i in group:
                    self._submit(i)
                continue
            for start in range(0, len(group), _BATCH):
                self._spawn(self._run_many(group[start : start + _BATCH]))

    async def _run_many(self, intents: list[Intent]) -> None:
        first = intents[0]
        try:
            results = await self._shell(first.kind).handle_many(
                [(i.aggregate_id, i.command) for i in intents],
                causationid=first.causation,
                correlationid=first.correlation,
            )
        except Exception as e:
            self.log.warning("command.batch_failed", kind=first.kind, size=len(intents), error=repr(e))
            for intent in intents:
                self._submit(intent)  # one by one, each with its own retries
            return
        for intent, r in zip(intents, results, strict=True):
            if isinstance(r, DomainError):
                self.log.debug("command.refused", kind=intent.kind, id=intent.aggregate_id, reason=str(r))
            elif isinstance(r, GpufleetError):
                self._submit(intent)  # the store failed: retry on its own, with backoff

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        self._inflight.add(t)
        t.add_done_callback(self._inflight.discard)
        return t

    async def _run(self, intent: Intent) -> None:
        shell = self._shell(intent.kind)
        for attempt in range(20):
            try:
                await shell.handle(
                    intent.aggregate_id,
                    intent.command,
                    causationid=intent.causation,
                    correlationid=intent.correlation,
                )
                return
            except DomainError as e:
                self.log.debug("command.refused", kind=intent.kind, id=intent.aggregate_id, reason=str(e))
                return
            except GpufleetError as e:
                self.log.warning("command.retry", kind=intent.kind, id=intent.aggregate_id, error=str(e))
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        self.log.error("command.gave_up", kind=intent.kind, id=intent.aggregate_id)

    # ---- scheduling and dispatch -----------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not self.leadership.leading:
                continue  # another orchestrator places work; we are kicked again if we take over
            plans = self.core.plan_leases(utc_now(), self.config.lease_start_timeout_s, lambda: new_id("l"))
            if len(plans) < _MIN_BATCH:
                for plan in plans:
                    self._spawn(self._lease([plan]))
            else:
                for start in range(0, len(plans), _BATCH):
                    self._spawn(self._lease(plans[start : start + _BATCH]))
            await asyncio.sleep(0)

    async def _lease(self, plans: list[tuple[Assignment, LeaseTask]]) -> None:
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
                self._kick.set()
            else:
                self.leases_granted += 1
                if (grant := _grant(a.task.task_id, r.state)) is not None:
                    grants.append(grant)
        self._dispatch(grants)

    def _dispatch(self, grants: list[LeaseGranted]) -> None:
        """Send ``grants``: one dispatch message per provider, a ``LeaseBatch`` where it has several."""
        for provider_id, body, msg_id in dispatch_messages(grants):
            self._spawn(self._publish_dispatch(provider_id, body, msg_id))

    def _revoke(self, task_id: str, lease_id: str, provider_id: str, reason: str) -> None:
        msg = LeaseRevoked(task_id=task_id, lease_id=lease_id, provider_id=provider_id, reason=reason[:500])
        for provider, body, msg_id in dispatch_messages([msg]):
            self._spawn(self._publish_dispatch(provider, body, msg_id))

    async def _publish_dispatch(self, provider_id: str, body: bytes, msg_id: str) -> None:
        subject = f"{self.topology.dispatch_prefix}.{provider_id}"
        for attempt in range(10):
            try:
                await self.js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
                return
            except (nats.errors.Error, OSError) as e:
                self.log.warning("dispatch.retry", provider=provider_id, error=str(e) or type(e).__name__)
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        # Not fatal: the lease expires unstarted and the task is queued again.
        self.log.error("dispatch.lost", provider=provider_id, msg_id=msg_id)

    def _redispatch(self) -> None:
        """After a restart, tell providers again about leases they may not have received."""
        grants = (_grant(task_id, t) for task_id, t in self.world.tasks.items() if t.status == "leased")
        self._dispatch([g for g in grants if g is not None])

    # ---- timers ----------------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            due = self.core.timers.next_due()
            now = utc_now()
            wait = 1.0 if due is None else max(0.0, min(1.0, (due - now).total_seconds()))
            if wait > 0:
                self._timer_kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._timer_kick.wait(), wait)
            for intent in self.core.due(utc_now()):
                self._submit(intent)

    # ---- liveness --------------------------------------------------------------------------------

    async def _liveness(self) -> None:
        watcher = None
        check = asyncio.create_task(self._lapse_loop())
        try:
            while True:
                try:
                    kv = await self.js.key_value(self.topology.heartbeat_bucket)
                    watcher = await kv.watchall()
                    await kv.status()  # the bucket answers: providers can write heartbeats again
                    if not self._hearing:
                        # Providers get one timeout from the moment heartbeats can be heard again: a
                        # server that is back on the wire may still be recovering its streams.
                        self._started_at = utc_now()
                        self._hearing = True
                    async for entry in watcher:
                        if entry is None or entry.value is None or entry.operation is not None:
                            continue
                        self._heartbeat(entry.key, entry.value, entry.created)
                except (nats.errors.Error, OSError) as e:
                    self._hearing = False
                    self.log.warning("liveness.watch_interrupted", error=str(e) or type(e).__name__)
                    await asyncio.sleep(0.5)
        finally:
            check.cancel()
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    def _heartbeat(self, provider_id: str, value: bytes, created: datetime | None) -> None:
        try:
            hb = Heartbeat.model_validate_json(value)
        except ValueError:
            self.log.warning("liveness.bad_heartbeat", key=provider_id)
            return
        seen = created.astimezone(UTC) if created is not None else hb.at
        self._last_seen[provider_id] = max(seen, self._last_seen.get(provider_id, seen))
        p = self.world.providers.get(provider_id)
        now = utc_now()
        # Back from lost only on a heartbeat that is itself recent: a watch that starts over replays
        # every provider's last heartbeat, however old, and the grace after a (re)start is no proof.
        recent = (now - seen).total_seconds() <= self.config.heartbeat_timeout_s
        if p is not None and p.status == "lost" and self.leadership.leading and recent:
            cmd = HeartbeatSeen(command_id=new_id("hb-"), at=utc_now())
            self._submit(Intent("provider", provider_id, cmd))

    def disconnected(self) -> None:
        """The link to NATS is gone: nothing is appended until the log is known to be the same after it,
        and nobody is judged silent until heartbeats can be heard again (the heartbeat watch does not
        notice a dead link by itself: without this, the link back up before ``reconnected`` ran would
        let the lapse check judge every provider by its heartbeats from before the outage)."""
        self._hearing = False
        self.store.pause_writes()

    async def _recheck_log(self) -> None:
        """After a reconnect: is the log still the one this orchestrator applied? (A server can come
        back from a crash or a restore with fewer events.) Writes resume only if it is."""
        epoch = self.store.write_epoch
        while True:
            if epoch != self.store.write_epoch:
                return  # the link went down again meanwhile: the check after that reconnect decides
            try:
                if not await check_watermark(self.store, self._applied, "orchestrator"):
                    raise LogRegressed(
                        "orchestrator: the log was replaced under the running orchestrator (its stream "
                        "was created again): restore the store from a backup or a replica; nothing was written"
                    )
                break
            except LogRegressed as e:
                self._halt(e)
                return
            except Exception as e:  # not known yet (a server still recovering): writes stay held
                self.log.warning("orchestrator.log_check_failed", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
        if epoch == self.store.write_epoch and self.nc.is_connected:
            self.store.resume_writes()

    def _halt(self, error: GpufleetError) -> None:
        """Stop for good, writing nothing more: the error is one line, for a person."""
        self.log.error("orchestrator.halted", error=str(error))
        self.fatal = error
        self._live = False
        self.store.pause_writes()
        self.halted.set()
        self._stopping = asyncio.ensure_future(self.stop())  # not one of the in-flight tasks it awaits

    async def wait(self) -> None:
        """Run until the orchestrator halts on its own; then raise why (``LogRegressed``)."""
        await self.halted.wait()
        if self.fatal is not None:
            raise self.fatal

    def reconnected(self) -> None:
        """The link to NATS came back: start the clocks again, and subscribe again at once.

        While it was down nobody could heartbeat. A server that restarted lost the consumers behind
        the heartbeat watch and the log follower (they live in its memory), and the client would
        only notice after its idle-heartbeat check, many seconds later: meanwhile a provider
        heartbeating all along would look silent. So both start over now, from where they were.
        """
        self._started_at = utc_now()
        self._last_seen.clear()
        self._hearing = False
        self._spawn(self._recheck_log())
        if self._live:
            self._restart("follow", lambda: self._follow(self.world.position))
            self._restart("liveness", self._liveness)

    def _restart(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        for i, task in enumerate(self._running):
            if task.get_name() == name and not task.done():
                task.cancel()
                self._running[i] = asyncio.create_task(self._supervise(name, loop), name=name)

    def _fresh(self, provider_id: str, now: datetime) -> bool:
        seen = self._last_seen.get(provider_id)
        # A provider not seen since this process started (or reconnected) gets one timeout from then.
        last = max(seen, self._started_at) if seen is not None else self._started_at
        return (now - last).total_seconds() <= self.config.heartbeat_timeout_s

    async def _lapse_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.config.heartbeat_timeout_s / 4))
            now = utc_now()
            if not self.leadership.leading or not self.nc.is_connected or not self._hearing:
                # The leader judges liveness, and only while it can hear heartbeats: when the link
                # comes back, ``reconnected`` gives every provider one timeout from then.
                continue
            for provider_id, p in list(self.world.providers.items()):
                if p.status in ("online", "draining") and not self._fresh(provider_id, now):
                    cmd = HeartbeatLapsed(
                        command_id=new_id("hl-"),
                        at=now,
                        reason=f"no heartbeat for {self.config.heartbeat_timeout_s:g}s",
                    )
                    # Mark it seen so that one lapse is reported once, not every tick; and place
                    # nothing more on it from now on, before the loss is even in the log.
                    self._last_seen[provider_id] = now
                    self.core.scheduler.set_available(provider_id, False)
                    self._submit(Intent("provider", provider_id, cmd))

    # ---- intake ----------------------------------------------------------------------------------

    async def _intake(self) -> None:
        """Take intake messages from the consumers every orchestrator of the network shares, fairly.

        Two durable pull consumers, one per sender role (``INTAKE_CONSUMERS``), each with its own
        fetch loop: providers' reports never wait behind submissions. JetStream hands each message to
        one orchestrator at a time, and hands it again (to whichever asks) if it is not acknowledged
        in time, so with several orchestrators each message still gets exactly one outcome. A message
        is acknowledged once its outcome (its facts, or an ``InputAccepted``/``InputRejected``) is in
        the log.

        Between fetching and processing, a bounded ``FairQueue``: providers first, then submitters
        round-robin, one message each per round, so one identity's burst is not ahead of everyone
        else's next message. A full queue stops the fetching (backpressure). A submitter's message
        past its intake rate (``Admission.arrival``) is not queued: its refusal is recorded at once.
        """
        n = self.config.intake_concurrency
        self._in_hand.clear()
        queue: FairQueue[_Delivery] = FairQueue(max_items=self._intake_queue_items(), max_bytes=_INTAKE_QUEUE_BYTES)
        ready = asyncio.Semaphore(0)  # released once per queued message
        room = asyncio.Event()  # set when a worker took a message (the queue may have room again)
        refusals = asyncio.Semaphore(_RATE_REFUSALS_IN_FLIGHT)
        await self._drop_legacy_intake_consumer()
        running = [
            asyncio.create_task(self._fetch_loop(role, queue, ready, room, refusals), name=f"intake-{role}")
            for role in INTAKE_CONSUMERS
        ]
        running += [asyncio.create_task(self._intake_worker(queue, ready, room)) for _ in range(n)]
        try:
            await asyncio.gather(*running)
        finally:
            await cancel_and_wait(running)

    async def _drop_legacy_intake_consumer(self) -> None:
        """Delete the single consumer orchestrators shared before intake was split by role: left in
        place, it would hold every message it ever delivered, unacknowledged, forever."""
        for attempt in range(5):
            try:
                await self.js.delete_consumer(self.topology.intake_stream, INTAKE_CONSUMER)
                self.log.info("intake.legacy_consumer_deleted", consumer=INTAKE_CONSUMER)
                return
            except nats.js.errors.NotFoundError:
                return
            except (nats.errors.Error, OSError) as e:
                self.log.warning("intake.legacy_consumer_retry", error=str(e) or type(e).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))

    async def _fetch_loop(
        self,
        role: str,
        queue: FairQueue[_Delivery],
        ready: asyncio.Semaphore,
        room: asyncio.Event,
        refusals: asyncio.Semaphore,
    ) -> None:
        """Pull ``role``'s intake messages into the fair queue while it has room.

        A pull request (``CONSUMER.MSG.NEXT``, at most as many as fit) answered into a subscription
        whose callback only collects: a whole batch is then queued at once. (nats-py's ``fetch`` takes
        its messages one await at a time; on a busy event loop the workers then drain the queue faster
        than it fills, and the intake is served in stream order again.)"""
        loop = asyncio.get_running_loop()
        arrived: deque[Msg] = deque()  # at most one request's worth (and the rest of a lost one)
        got = asyncio.Event()

        async def collect(msg: Msg) -> None:
            arrived.append(msg)
            got.set()

        while True:
            sub = None
            try:
                name = await self._intake_consumer(role)
                inbox = self.nc.new_inbox()
                sub = await self.nc.subscribe(inbox, cb=collect)
                pull = f"$JS.API.CONSUMER.MSG.NEXT.{self.topology.intake_stream}.{name}"
                while True:
                    while self._intake_room(role, queue) <= 0:
                        room.clear()
                        await room.wait()
                    want = min(_INTAKE_FETCH, self._intake_room(role, queue))
                    request = {"batch": want, "expires": int(_INTAKE_PULL_S * 1e9)}
                    await self.nc.publish(pull, json.dumps(request).encode(), reply=inbox)
                    deadline = loop.time() + _INTAKE_PULL_S + 1.0
                    over = False
                    while want > 0 and not over:
                        if not arrived:
                            got.clear()
                            try:
                                await asyncio.wait_for(got.wait(), max(0.0, deadline - loop.time()))
                            except TimeoutError:
                                break  # the request was lost (a reconnect): ask again
                        msgs: list[Msg] = []
                        while arrived:
                            msg = arrived.popleft()
                            status = msg.headers.get(api.Header.STATUS) if msg.headers else None
                            if not status:
                                msgs.append(msg)
                            elif status != "100":  # 404, 408: nothing more for now; 409: see below
                                over = True
                                if status == "409" and "deleted" in (msg.headers or {}).get("Description", "").lower():
                                    raise StoreUnavailable(f"intake consumer {name} was deleted")
                        want -= len(msgs)
                        await self._enqueue(msgs, queue, ready, room, refusals)
            except (nats.errors.Error, OSError, GpufleetError) as e:
                self.log.warning("intake.interrupted", role=role, error=str(e) or type(e).__name__)
                await asyncio.sleep(0.5)
            finally:
                if sub is not None:
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await sub.unsubscribe()
                arrived.clear()

    async def _enqueue(
        self,
        msgs: list[Msg],
        queue: FairQueue[_Delivery],
        ready: asyncio.Semaphore,
        room: asyncio.Event,
        refusals: asyncio.Semaphore,
    ) -> None:
        """Delivered intake messages into the fair queue, or acknowledged (an outcome exists), or
        refused for their sender's rate (recorded at once, never queued)."""
        self.intake_delivered += len(msgs)
        for msg in msgs:
            meta = msg.metadata
            seq = meta.sequence.stream
            if self.world.intake_done(seq):
                self._spawn(self._ack(msg))
                continue
            if seq in self._in_hand:
                # Delivered again (past the ack wait) while this process still holds it, queued or
                # being handled: that copy gives its one outcome, and it was charged to the rate once.
                continue
            sender, name = self._sender(msg.subject)
            refusal = self.admission.arrival(sender, name)
            if refusal is not None:
                # Past its rate: one recorded refusal, and nothing queued. A flood waits here for a
                # free slot (bounded), not in memory.
                await refusals.acquire()
                self._in_hand.add(seq)
                self._spawn(self._refuse(msg, seq, meta.timestamp, refusal, refusals))
                continue
            item = (msg, seq, meta.timestamp)
            size = len(msg.data) + len(msg.subject)
            while self._intake_room(sender, queue) <= 0 or not queue.offer(
                f"{sender}.{name}", item, size, urgent=sender == "provider"
            ):
                room.clear()
                await room.wait()
            self._in_hand.add(seq)
            ready.release()

    def _sender(self, subject: str) -> tuple[str, str]:
        """The role and name an intake subject names (``<prefix>.<role>.<name>.<verb>…``)."""
        parts = subject.split(".")
        n = self.topology.intake_prefix.count(".") + 1
        return (parts[n] if len(parts) > n else "", parts[n + 1] if len(parts) > n + 1 else "")

    async def _intake_worker(self, queue: FairQueue[_Delivery], ready: asyncio.Semaphore, room: asyncio.Event) -> None:
        """Take intake messages from the fair queue, one at a time, and see each to its outcome."""
        while True:
            await ready.acquire()
            item = queue.take()
            room.set()
            if item is None:  # pragma: no cover - one release per queued message
                continue
            msg, seq, at = item
            try:
                if self.world.intake_done(seq):  # recorded meanwhile, by another orchestrator
                    await self._ack(msg)
                    continue
                # Shielded: a stopping orchestrator lets the message in hand finish (``stop`` waits for
                # what is in flight), as it cancels the workers.
                await asyncio.shield(self._spawn(self._intake_one(msg, seq, at)))
            finally:
                self._in_hand.discard(seq)

    async def _intake_consumer(self, role: str) -> str:
        """The shared durable consumer of ``role``'s intake messages (created by the first
        orchestrator, from the first message without an outcome): its name."""
        t = self.topology
        name = INTAKE_CONSUMERS[role]
        config = api.ConsumerConfig(
            durable_name=name,
            filter_subject=f"{t.intake_prefix}.{role}.>",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.config.intake_ack_wait_s,
            max_deliver=-1,
            # What one orchestrator holds at most: its queue, its workers' messages, a fetch, refusals.
            max_ack_pending=self._intake_queue_items()
            + self.config.intake_concurrency
            + _INTAKE_FETCH
            + _RATE_REFUSALS_IN_FLIGHT,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.world.intake_low,
        )
        try:
            await self.js.consumer_info(t.intake_stream, name)
        except nats.js.errors.NotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):  # another orchestrator made it first
                await self.js.add_consumer(t.intake_stream, config=config)
        return name

    @staticmethod
    def _intake_room(role: str, queue: FairQueue[_Delivery]) -> int:
        """Room in the fair queue for ``role``'s messages: submitters leave one fetch's worth for
        providers, so that a queue full of submissions never keeps a provider's report out."""
        return queue.room() - (0 if role == "provider" else _INTAKE_FETCH)

    def _intake_queue_items(self) -> int:
        return max(_INTAKE_QUEUE_ITEMS, 2 * self.config.intake_concurrency)

    async def _ack(self, msg: Msg) -> None:
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.ack()

    async def _refuse(self, msg: Msg, seq: int, at: datetime, refusal: InvalidPayload, slot: asyncio.Semaphore) -> None:
        """Record the refusal of a message past its sender's intake rate, then acknowledge it."""
        try:
            self.log.debug("intake.rate_refused", seq=seq, subject=msg.subject, reason=str(refusal))
            outcome = InputRejected(
                at=at.astimezone(UTC),
                intake_seq=seq,
                subject=msg.subject[:256],
                reason=str(refusal)[:2000],
                field=refusal.field,
                excerpt=msg.data[:300].decode("utf-8", errors="replace")[:300],
            )
            await self._record_outcome(msg, seq, outcome)
        finally:
            self._in_hand.discard(seq)
            slot.release()

    async def _intake_one(self, msg: Msg, seq: int, at: datetime) -> None:
        bugs = 0
        for attempt in range(1_000_000):
            try:
                outcome = await self._accept(msg, seq, at.astimezone(UTC))
                if outcome is None:
                    await self._ack(msg)
                    return  # its facts (ids in-<seq>.<n>) are the record that it was accepted
                break
            except GpufleetError as e:
                # Not the input's fault (the store, a conflict storm): keep it and try again; never
                # record a false outcome. Tell JetStream we are still on it.
                self.log.warning("intake.retry", seq=seq, error=str(e))
                with contextlib.suppress(nats.errors.Error, OSError):
                    await msg.in_progress()
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(attempt, 6)))
            except Exception as e:
                bugs += 1
                self.log.exception("intake.internal_error", seq=seq, subject=msg.subject)
                if bugs >= 3:
                    # Record it rather than loop forever on a message that trips a bug.
                    outcome = InputRejected(
                        at=at.astimezone(UTC),
                        intake_seq=seq,
                        subject=msg.subject[:256],
                        reason=f"internal error: {e!r}"[:2000],
                        excerpt=msg.data[:300].decode("utf-8", errors="replace")[:300],
                    )
                    break
                await asyncio.sleep(0.2)
        else:  # pragma: no cover
            return
        await self._record_outcome(msg, seq, outcome)

    async def _record_outcome(self, msg: Msg, seq: int, outcome: InputAccepted | InputRejected) -> None:
        """Append a message's outcome to its sender's outcomes stream (once: its id is ``in-<seq>``),
        then acknowledge the message."""
        stream = outcomes_stream_of(msg.subject)
        env = new_envelope(stream, outcome, id=f"in-{seq}", source=self.config.source)
        for attempt in range(100):
            try:
                if not self.world.intake_done(seq):  # another orchestrator may have recorded it
                    await self.store.append(stream, [env], ANY)
                await self._ack(msg)
                return
            except GpufleetError as e:
                self.log.warning("intake.outcome_retry", seq=seq, error=str(e))
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(attempt, 6)))

    async def _accept(self, msg: Msg, seq: int, at: datetime) -> InputAccepted | InputRejected | None:
        """Validate and apply one intake message; the outcome to record, or None when its facts are."""
        subject = msg.subject
        try:
            # The subject names the sender, and only the sender's credentials may publish on it.
            im = decode_intake(subject, msg.data)
            cmd_id = f"in-{seq}"
            body, kind, target = im.body, im.kind, im.target_id
            command = intake_command(im, cmd_id, at, self.config.lease_grace_s)
            if isinstance(command, ReportCompleted):
                command = await self._verification_inputs(target, command)
            if isinstance(body, ProviderRegistration):
                # Before the registration lands, so that no lease is dispatched to a provider with no
                # consumer; a refused registration leaves an idle consumer that expires by itself.
                await self._open_dispatch(target)
            admitted = isinstance(command, SubmitJob) and self._admit(command)
            try:
                handled = await self._shell(kind).handle(target, command, causationid=cmd_id)
            except BaseException:
                if admitted and isinstance(command, SubmitJob):
                    self.admission.release(command.submitter or command.spec.submitter, command.job_id)
                raise
            if admitted and isinstance(command, SubmitJob) and not handled.events:
                # The same submission again, of a job this process no longer holds (it was over and
                # left memory): it holds nothing new.
                self.admission.release(command.submitter or command.spec.submitter, command.job_id)
        except (InvalidPayload, DomainError) as e:
            field_name = getattr(e, "field", None)
            self.log.info("intake.rejected", seq=seq, subject=subject, reason=str(e))
            return InputRejected(
                at=at,
                intake_seq=seq,
                subject=subject[:256],
                reason=str(e)[:2000],
                field=field_name,
                excerpt=msg.data[:300].decode("utf-8", errors="replace")[:300],
            )
        if handled.events or handled.duplicate:
            # Its facts are the record (a duplicate: this very message was applied before, by us or
            # another orchestrator, and its facts are already in the log).
            return None
        note = "no change"
        return InputAccepted(at=at, intake_seq=seq, subject=subject[:256], facts=0, note=note)

    async def _tally_objects(self) -> None:
        """Keep each submitter's bytes in the object store (its ``object_bytes`` quota): the sizes of
        every message under ``gf.obj.submitter.<name>.>``, read once (headers only) and then followed.
        Objects are written once and never removed, so the tally only grows."""
        t = self.topology
        prefix = f"{t.object_prefix}.submitter."
        tally = self.admission
        sub = await self.js.subscribe(
            f"{prefix}>", stream=t.objects_stream, ordered_consumer=True, headers_only=True, idle_heartbeat=5.0
        )
        try:
            async for msg in sub.messages:
                owner = msg.subject[len(prefix) :].split(".", 1)[0]
                try:
                    size = int((msg.headers or {}).get("Nats-Msg-Size", "0"))
                except ValueError:
                    size = 0
                tally.stored(owner, size)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _serve_quotas(self) -> None:
        """Answer ``gf.api.<role>.<name>.quota``: the asker's limits and usage (``Admission.report``).
        Past a bounded backlog the client library drops requests (the asker times out)."""
        sub = await self.nc.subscribe(
            f"{API_PREFIX}.*.*.{QUOTA_OPERATION}",
            queue="orchestrators",
            pending_msgs_limit=256,
            pending_bytes_limit=256 * 4096,
        )
        windows = self.core.windows
        try:
            async for msg in sub.messages:
                parts = msg.subject.split(".")
                if not msg.reply or len(parts) != 5:
                    continue
                body: dict[str, Any]
                try:
                    if not self.admission.ask(parts[2], parts[3]):
                        body = {"error": "too many quota requests: at most 10 a second", "field": "rate"}
                    else:
                        body = self.admission.report(parts[2], parts[3], windows.usage, windows.submitters())
                except Exception as e:  # a bug costs one answer, never the service
                    self.log.error("quota.failed", error=f"{type(e).__name__}: {e}")
                    body = {"error": "the quota request failed on the network's side", "field": None}
                with contextlib.suppress(nats.errors.Error):
                    await self.nc.publish(msg.reply, json.dumps(body, separators=(",", ":")).encode())
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _admit(self, cmd: SubmitJob) -> bool:
        """Check a submission against its sender's quotas (``actors.admission``): raises the refusal
        (``QuotaExceeded``, recorded as the message's outcome), or returns True (admitted)."""
        who = cmd.submitter or cmd.spec.submitter
        refusal = self.admission.admit_job(
            who, cmd.job_id, cmd.spec.task_count(), self.core.windows.usage(who), self.world.jobs.__contains__
        )
        if refusal is not None:
            raise refusal
        return True

    async def _verification_inputs(self, task_id: str, cmd: ReportCompleted) -> ReportCompleted:
        """What the task decider needs to verify a result, which only the orchestrator can supply.

        A fresh draw for the spot check (made now, when the result is in, so a provider cannot know
        beforehand whether it will be checked); the sender's trust; and, for results stored as
        objects, their content (digest checked), so they compare element by element. The decider
        records all of it in the log.
        """
        # The world may lag the log by a moment: a result it does not know yet is not loaded, agrees
        # with nothing, and costs one more replica; a task it does not know yet keeps the draw 0,
        # which checks it.
        t = self.world.tasks.get(task_id)
        if t is None or t.spec is None or t.spec.verify is None:
            return cmd
        rec = self.world.reputation.get(cmd.provider_id)
        loaded: dict[str, Any] = {}
        # By name, never by digest alone: a reference to an object that was never stored must not read
        # another provider's object that has the same digest.
        for obj in objects_to_compare([c.result for c in t.candidates], cmd.result, cmd.provider_id):
            try:
                data = await self._blobs().get(obj)
                loaded[obj.name] = json.loads(data)
            except (GpufleetError, ValueError, RecursionError, MemoryError, nats.errors.Error, OSError) as e:
                # Not comparable: it agrees with nothing, so verification asks for another replica.
                self.log.warning("verify.unreadable_result", task_id=task_id, object=obj.name, error=str(e))
        return replace(
            cmd,
            draw=self._random.random(),
            trust=rec.consecutive_valid if rec is not None else 0,
            loaded=loaded,
        )

    def _blobs(self) -> BlobStore:
        if self._blob_store is None:
            self._blob_store = BlobStore(self.nc, "orchestrator", "orchestrator", self.topology)
        return self._blob_store

    async def _open_dispatch(self, provider_id: str) -> None:
        """Create the provider's dispatch consumer: the provider itself may only read from it."""
        config = self.topology.dispatch_consumer_config(provider_id)
        for attempt in range(5):
            try:
                await self.js.add_consumer(self.topology.dispatch_stream, config=config)
                return
            except (nats.errors.Error, OSError) as e:
                self.log.warning("dispatch.consumer_retry", provider=provider_id, error=str(e) or type(e).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise StoreUnavailable(f"could not create the dispatch consumer of provider {provider_id}")

    # ---- for tests and tools ---------------------------------------------------------------------

    async def settle(self, timeout: float = 30.0, predicate: Callable[[World], bool] | None = None) -> None:
        """Wait until ``predicate(world)`` holds (default: no unfinished task and nothing in flight)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if predicate is not None and predicate(self.world):
                return
            if predicate is None and not self._inflight and self.world.unfinished() == 0:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("the orchestrator did not settle in time")


def _grant(task_id: str, t: TaskState) -> LeaseGranted | None:
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


@dataclass(frozen=True, slots=True)
class _RunningLimit:
    """A submitter's limit on tasks running at once, from its quotas (picklable: in the snapshot)."""

    quotas: QuotaConfig

    def __call__(self, submitter: str) -> int:
        return self.quotas.of(submitter).tasks_running
