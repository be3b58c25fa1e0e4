"""A log made the way the orchestrator makes one, fast and in process: every fact is decided by the real
deciders from an intake message, a reaction, a timer or a lease of the real scheduler (``actors.core``).

Unlike ``loggen`` (a synthetic story written as raw storage), this log has a legitimate cause for each
event, so the provenance replayer must pass it: the benchmark of ``replay --audit`` runs on it at a
million events, and the property tests mutate it. Providers register and heartbeat, submitters send
jobs (some refused, some cancelled), providers start, report progress, complete and sometimes fail
them, leases expire, and time passes on a simulated clock.
"""

from __future__ import annotations

import json
import random
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.core import Core
from actors.decider import Decider
from actors.errors import DomainError
from actors.intake import intake_command
from actors.job import job_decider
from actors.provenance import IntakeRecord
from actors.provider import HeartbeatLapsed, HeartbeatSeen, provider_decider
from actors.reactions import Intent
from actors.task import task_decider
from events import Envelope, InvalidPayload, new_envelope
from events.intake import InputAccepted, InputRejected, decode_intake
from events.subjects import outcomes_stream_of
from events.types import EventModel

__all__ = ["DecidedLog", "decided_log"]

DECIDERS: dict[str, Decider[Any, Any]] = {"job": job_decider, "task": task_decider, "provider": provider_decider}
GRACE_S = 5.0
SOURCE = "gpufleet/orchestrator"


class DecidedLog:
    """The orchestrator's loop without I/O: intake in, decisions out, on a simulated clock."""

    def __init__(self, seed: int = 1, start: datetime | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = start or datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        self.core = Core()
        self.log: list[Envelope] = []
        self.intake: list[IntakeRecord] = []
        self._owed: deque[Intent] = deque()
        self._leases = 0
        self.restarts = 0

    # ---- the orchestrator's part -------------------------------------------------------------------

    def _append(self, stream: str, command_id: str, events: list[EventModel], causation: str | None) -> None:
        for i, e in enumerate(events):
            env = new_envelope(stream, e, id=f"{command_id}.{i}", source=SOURCE, causationid=causation)
            env = env.at_position(len(self.log) + 1)
            self.log.append(env)
            fx = self.core.apply(env, live=True)
            self._owed.extend(fx.intents)

    def _run(self, kind: str, aggregate_id: str, cmd: Any, causation: str | None = None) -> bool:
        stream = f"{kind}.{aggregate_id}"
        state = _state(self.core.world, kind, aggregate_id) or DECIDERS[kind].initial_state()
        try:
            events = DECIDERS[kind].decide(cmd, state)
        except DomainError:
            return False
        if events:
            self._append(stream, cmd.command_id, events, causation)
        return bool(events)

    def settle(self) -> None:
        """Run what reactions and due timers owe, and place what the scheduler can."""
        while True:
            for intent in self.core.due(self.now):
                self._owed.append(intent)
            if self._owed:
                intent = self._owed.popleft()
                self._run(intent.kind, intent.aggregate_id, intent.command, intent.causation)
                continue
            plans = self.core.plan_leases(self.now, 30.0, self._lease_id)
            if not plans:
                return
            for a, cmd in plans:
                if not self._run("task", a.task.task_id, cmd):
                    self.core.lease_refused(cmd.lease_id)

    def _lease_id(self) -> str:
        self._leases += 1
        return f"l{self._leases:08x}"

    def send(self, subject: str, body: dict[str, Any] | str, *, settle: bool = True) -> None:
        """One intake message, applied as the orchestrator applies it; then whatever it owes."""
        raw = (body if isinstance(body, str) else json.dumps(body)).encode()
        seq = len(self.intake) + 1
        self.intake.append(IntakeRecord(seq, subject, raw))
        outcome: EventModel | None
        try:
            im = decode_intake(subject, raw)
            cmd = intake_command(im, f"in-{seq}", self.now, GRACE_S)
            state = _state(self.core.world, im.kind, im.target_id) or DECIDERS[im.kind].initial_state()
            events = DECIDERS[im.kind].decide(cmd, state)
            if events:
                self._append(f"{im.kind}.{im.target_id}", f"in-{seq}", events, f"in-{seq}")
                outcome = None
            else:
                outcome = InputAccepted(at=self.now, intake_seq=seq, subject=subject, facts=0, note="no change")
        except (InvalidPayload, DomainError) as e:
            outcome = InputRejected(
                at=self.now,
                intake_seq=seq,
                subject=subject[:256],
                reason=str(e)[:2000],
                field=getattr(e, "field", None),
                excerpt=raw[:300].decode("utf-8", errors="replace"),
            )
        if outcome is not None:
            env = new_envelope(outcomes_stream_of(subject), outcome, id=f"in-{seq}", source=SOURCE)
            env = env.at_position(len(self.log) + 1)
            self.log.append(env)
            self.core.apply(env, live=True)
        if settle:
            self.settle()

    def crash_and_restart(self, run: int) -> None:
        """The orchestrator runs ``run`` of the reactions it owes, then dies; a new one folds the log,
        reconciles what is still owed (at its own time, later) and arms its timers again."""
        for _ in range(run):
            if not self._owed:
                break
            intent = self._owed.popleft()
            self._run(intent.kind, intent.aggregate_id, intent.command, intent.causation)
        self._owed.clear()
        self.now += timedelta(seconds=2.0)
        # The new orchestrator's world is the fold of the log, which this core already holds (and its
        # timers are the ones the log arms); what it adds is reconciling, at its own time.
        self._owed.extend(self.core.reconcile(self.now))
        self.settle()
        self.restarts += 1

    def advance(self, seconds: float) -> None:
        """Time passes: timers fall due."""
        self.now += timedelta(seconds=seconds)
        self.settle()

    def liveness(self, provider_id: str, alive: bool) -> None:
        """The leader judges a provider by its heartbeats (which the log does not hold)."""
        cmd: HeartbeatSeen | HeartbeatLapsed = HeartbeatSeen(command_id=f"hb-{len(self.log)}", at=self.now)
        if not alive:
            cmd = HeartbeatLapsed(command_id=f"hl-{len(self.log)}", at=self.now, reason="no heartbeat for 6s")
        self._run("provider", provider_id, cmd)
        self.settle()

    # ---- the fleet's part --------------------------------------------------------------------------

    def register(self, name: str, slots: int, price: int = 1000) -> None:
        caps = {"backend": "cpu", "gpu_model": "sim", "vram_mb": 16000, "slots": slots, "price_micros": price}
        self.send(f"gf.in.provider.{name}.register", {"name": name, "capabilities": caps})

    def submit(self, who: str, job: str, tasks: int, *, bad: bool = False, settle: bool = True) -> None:
        spec: dict[str, Any] = {"workload": "sleep", "params": {"seconds": 0.5}, "verify": {"mode": "none"}}
        if tasks > 1:
            spec["split"] = {"kind": "count", "count": tasks}
        body: dict[str, Any] | str = spec if not bad else '{"workload": "sleep", "params": {"seconds": -1}}'
        self.send(f"gf.in.submitter.{who}.submit.{job}", body, settle=settle)

    def work(self) -> None:
        """Every provider reports on every lease it holds: started, progress, then done or failed."""
        world = self.core.world
        live = sorted(task_id for held in world.active.values() for task_id in held)  # not every task ever
        for task_id in live:
            t = world.tasks[task_id]
            lease = t.lease
            if lease is None or t.status not in ("leased", "running"):
                continue
            subject = f"gf.in.provider.{lease.provider_id}.report.{task_id}"
            base = {"lease_id": lease.lease_id, "provider_id": lease.provider_id}
            if t.status == "leased":
                self.send(subject, {**base, "report": "started"})
                continue
            roll = self.rng.random()
            if roll < 0.55:
                fraction = min(0.95, t.progress + 0.3)
                self.send(subject, {**base, "report": "progress", "fraction": fraction, "rate": 2.0, "unit": "s"})
            elif roll < 0.97:
                result = {"sha256": "0" * 64, "size": 2, "inline": {}}
                self.send(subject, {**base, "report": "completed", "result": result, "gpu_ms": 500})
            else:
                self.send(subject, {**base, "report": "failed", "reason": "kernel_error", "message": "boom"})


def _state(world: Any, kind: str, aggregate_id: str) -> Any:
    return {"job": world.jobs, "task": world.tasks, "provider": world.providers}[kind].get(aggregate_id)


def decided_log(events: int, *, providers: int = 16, seed: int = 1) -> DecidedLog:
    """A decided log of at least ``events`` events: a fleet working through a stream of jobs."""
    d = DecidedLog(seed)
    for p in range(providers):
        d.register(f"p{p}", slots=4)
    n = 0
    while len(d.log) < events:
        n += 1
        who = f"s{n % 7}"
        d.submit(who, f"j{n}", d.rng.choice((1, 1, 2, 4, 8)), bad=n % 50 == 0)
        if n % 40 == 0:
            d.send(f"gf.in.submitter.s{(n - 3) % 7}.cancel.j{n - 3}", {"reason": "changed my mind"})
        d.work()
        d.advance(0.5)
        if n % 29 == 0:  # a provider goes quiet, then comes back
            lost = f"p{(n // 29) % providers}"
            d.liveness(lost, alive=False)
            d.advance(1.0)
            d.liveness(lost, alive=True)
        if n % 61 == 0:
            d.advance(31.0)  # leases of providers that stopped reporting expire
        if (
            n % 43 == 0 and d.restarts < 25
        ):  # the orchestrator dies mid-reaction: a job accepted, its tasks not yet created
            d.submit(f"s{n % 7}", f"r{n}", 3, settle=False)
            d.crash_and_restart(run=2)  # accepted, one task created: two creations owed
    return d
