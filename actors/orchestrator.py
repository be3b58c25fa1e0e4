"""The orchestrator: the wiring of intake, actors, reactions, scheduler, timers and liveness on one log.

Start-up rebuilds the world from the log (rule 3), re-issues whatever reactions still owe
(``reconcile``), re-arms every timer, re-dispatches live leases, then follows the log and the intake
stream. Everything it holds in memory is a cache of the log. The parts are their own modules:
``actors.runner`` (commands, retries, batching), ``actors.dispatcher`` (leases to providers),
``actors.liveness`` (heartbeats) and ``actors.intake_service`` (intake, translated by the table in
``actors.intake``); this class starts, supervises and stops them, and applies the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from actors.admission import Admission
from actors.core import MIN_LEASE_START_S, Core
from actors.dispatcher import Dispatcher
from actors.ids import new_id
from actors.intake_service import INTAKE_CONSUMER, INTAKE_CONSUMERS, IntakeService
from actors.job import job_decider
from actors.leader import Leadership
from actors.liveness import Liveness
from actors.provider import provider_decider
from actors.runner import Runner
from actors.shell import ActorShell
from actors.snapshot import SnapshotFile, adopt, snapshot_file
from actors.task import task_decider
from actors.window import DEFAULT_WINDOW
from actors.world import World
from events import Envelope, GpufleetError, InvalidPayload, LogRegressed, StoreUnavailable
from events.aio import cancel_and_wait
from events.quotas import QUOTA_OPERATION, QuotaConfig
from events.store import JetStreamEventStore
from events.store.connection import Access, connect_nats
from events.store.protocol import log_invalid
from events.store.topology import Topology, check_topology
from events.store.watermark import Watermark, WatermarkFile, check_watermark, watermark_file
from events.subjects import API_PREFIX
from events.types import utc_now
from events.verification import VerifyPolicy

__all__ = ["INTAKE_CONSUMER", "INTAKE_CONSUMERS", "Orchestrator", "OrchestratorConfig"]

_log = structlog.get_logger("gpufleet.orchestrator")


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
        self.store = JetStreamEventStore(nc, settings=self.topology.events)
        source = self.config.source
        self.jobs = ActorShell(self.store, job_decider, source=source)
        self.tasks = ActorShell(self.store, task_decider, source=source)
        self.providers = ActorShell(self.store, provider_decider, source=source)
        self._timer_kick = asyncio.Event()
        self._running: list[asyncio.Task[None]] = []
        self._live = False
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
        config = self.config
        #: Commands in the background: retries, batches, everything in flight.
        self.runner = Runner(self.jobs, self.tasks, self.providers, log=self.log)
        #: Leases placed, granted and sent to providers.
        self.dispatcher = Dispatcher(
            self.js,
            self.topology,
            self.core,
            self.tasks,
            self.runner,
            leading=lambda: self.leadership.leading,
            lease_start_timeout_s=config.lease_start_timeout_s,
            log=self.log,
        )
        #: Providers' heartbeats and lapses.
        self.liveness = Liveness(
            self.js,
            self.topology,
            self.world,
            self.core.scheduler,
            submit=self.runner.submit,
            timeout_s=config.heartbeat_timeout_s,
            leading=lambda: self.leadership.leading,
            connected=lambda: self.nc.is_connected,
            log=self.log,
        )
        #: What outsiders send, each message to one outcome.
        self.intake = IntakeService(
            nc,
            self.js,
            self.topology,
            self.store,
            self.core,
            self.admission,
            self.runner,
            open_dispatch=self.dispatcher.open_dispatch,
            source=source,
            lease_grace_s=config.lease_grace_s,
            concurrency=config.intake_concurrency,
            ack_wait_s=config.intake_ack_wait_s,
            log=self.log,
        )
        #: The watermark file, one per log in ``state_dir`` (known once the log's identity is read).
        self._watermark: WatermarkFile | None = None
        #: The last event applied (kept as is: the hot path allocates nothing for the watermark).
        self._last_env: Envelope | None = None
        self._log_id = ""
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

    @property
    def leases_granted(self) -> int:
        """Leases this orchestrator granted (the log has them all; this counts this process's share)."""
        return self.dispatcher.leases_granted

    @leases_granted.setter
    def leases_granted(self, n: int) -> None:
        self.dispatcher.leases_granted = n

    @property
    def intake_delivered(self) -> int:
        """Intake messages JetStream delivered to this orchestrator (with others, each gets a share)."""
        return self.intake.delivered

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
        self.dispatcher.topology = self.liveness.topology = self.intake.topology = self.topology
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
        self.liveness.restart_clock()
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
            self.runner.submit(intent)
        self.dispatcher.redispatch()
        self.dispatcher.kick.set()
        position = self.world.position
        self._running = [
            asyncio.create_task(self._supervise("follow", lambda: self._follow(position)), name="follow"),
            asyncio.create_task(self._supervise("intake", self.intake.run), name="intake"),
            asyncio.create_task(self._supervise("leader", self.leadership.run), name="leader"),
            asyncio.create_task(self._supervise("schedule", self.dispatcher.schedule_loop), name="schedule"),
            asyncio.create_task(self._supervise("timers", self._timer_loop), name="timers"),
            asyncio.create_task(self._supervise("liveness", self.liveness.run), name="liveness"),
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
        # Into the core (its world and scheduler) that the parts were given, which stay its own.
        adopt(self.core, snap.core)
        self.core.scheduler.running_limit = _RunningLimit(self.config.quotas)
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
            self.liveness.restart_clock()
            self.dispatcher.kick.set()

    async def stop(self) -> None:
        """Stop every loop; in-flight commands finish or are abandoned (the log makes that safe)."""
        await self.leadership.resign()
        self._live = False
        await cancel_and_wait(self._running)  # again until done: a cancellation can be lost (events.aio)
        if self.runner.inflight:
            await asyncio.wait(list(self.runner.inflight), timeout=2.0)
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
            self.runner.submit_many(fx.intents)
        else:
            for intent in fx.intents:
                self.runner.submit(intent)
        for r in fx.revokes:
            self.dispatcher.revoke(r.task_id, r.lease_id, r.provider_id, r.reason)
        if fx.schedule:
            self.dispatcher.kick.set()
        if fx.timers:
            self._timer_kick.set()

    def _invalid(self, position: int, error: InvalidPayload) -> None:
        """A stored event that does not decode: skipped (as every reader does), logged, counted once."""
        if position not in self.quarantined:
            self.quarantined.add(position)
            log_invalid(position, error)

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
                self.runner.submit(intent)

    # ---- the link --------------------------------------------------------------------------------

    def disconnected(self) -> None:
        """The link to NATS is gone: nothing is appended until the log is known to be the same after it,
        and nobody is judged silent until heartbeats can be heard again (the heartbeat watch does not
        notice a dead link by itself: without this, the link back up before ``reconnected`` ran would
        let the lapse check judge every provider by its heartbeats from before the outage)."""
        self.liveness.deaf()
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
        self.liveness.reconnected()
        self.runner.spawn(self._recheck_log())
        if self._live:
            self._restart("follow", lambda: self._follow(self.world.position))
            self._restart("liveness", self.liveness.run)

    def _restart(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        for i, task in enumerate(self._running):
            if task.get_name() == name and not task.done():
                task.cancel()
                self._running[i] = asyncio.create_task(self._supervise(name, loop), name=name)

    # ---- quotas ----------------------------------------------------------------------------------

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

    # ---- for tests and tools ---------------------------------------------------------------------

    async def settle(self, timeout: float = 30.0, predicate: Callable[[World], bool] | None = None) -> None:
        """Wait until ``predicate(world)`` holds (default: no unfinished task and nothing in flight)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if predicate is not None and predicate(self.world):
                return
            if predicate is None and not self.runner.inflight and self.world.unfinished() == 0:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("the orchestrator did not settle in time")


@dataclass(frozen=True, slots=True)
class _RunningLimit:
    """A submitter's limit on tasks running at once, from its quotas (picklable: in the snapshot)."""

    quotas: QuotaConfig

    def __call__(self, submitter: str) -> int:
        return self.quotas.of(submitter).tasks_running
