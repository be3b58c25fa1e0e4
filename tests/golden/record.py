"""Re-record the golden history from a real run, on purpose:

    .venv/bin/python -m tests.golden.record

A secured nats-server, the real orchestrator (short timeouts), a live projector that checkpoints the
audit chain, two real ``gpu_runtime`` providers on NumPy and simulated providers speaking the real
protocol run one scripted story (``SCENARIO``), in about 20 seconds. The domain log and the intake
stream are then exported, and what they mean today is computed and stored beside them: the World,
the read models and the audit (``tests/golden/history.py`` names the files). ``test_golden_real.py``
replays the files; it never runs the system.

Re-record only when a change of what old logs mean is intended (and shipped with its upcaster),
and review the diff of the JSON. Ids and times differ from run to run: the files are a recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from actors.job import unsettled
from actors.orchestrator import OrchestratorConfig
from actors.provenance import intake_from, replay
from actors.world import World
from events import Envelope, to_json_line
from events.dispatch import LeaseGranted
from events.intake import CompletedReport, FailedReport, ProviderDeparture, StartedReport
from events.store import JetStreamEventStore
from events.subjects import INTAKE_STREAM, intake_subject, report_subject
from events.types import utc_now
from gpufleet.sim import SimulatedProvider, inline_result
from projections import Projector, SqliteStore
from tests.dishonest import DishonestProvider
from tests.golden import history
from tests.integration.orchestra import Tenants, orchestrated, read_world
from tests.integration.runtime_support import provider
from tests.secure import SecureServer

CONFIG = OrchestratorConfig(heartbeat_timeout_s=1.5, lease_start_timeout_s=2.0, lease_grace_s=2.0)
#: The live projector appends an ``AuditCheckpointed`` every this many events.
CHECKPOINT_EVERY = 40

SCENARIO = [
    "rt-a and rt-b: real gpu_runtime providers on NumPy (price 5000, 1 slot each): alice's stencil job "
    "reports progress and checkpoints (in the object store); the runtime running it is killed after "
    "its checkpoint at step 40: lost, its lease expires (provider_lost), and the task resumes from "
    "the checkpoint on the other runtime; alice's matmul job (2 tasks, split by params) completes; "
    "alice submits the matmul job again (accepted, no change) and a body that is not JSON (refused)",
    "sim-a (sleep, noop; price 800, 2 slots) and flaky (sleep, noop, montecarlo; price 600, 1 slot): "
    "bob's 3-task sleep batch; bob's montecarlo job whose first attempt fails (worker_crashed), "
    "retried, completed; carol's 2-task montecarlo job whose seed-13 task fails with invalid_params "
    "(terminal): the job fails and its other task is cancelled; carol's job with an invalid param "
    "(rejected); carol cancels a job that does not exist (refused)",
    "alice's 30 s sleep is cancelled while running (its lease revoked); mallory forges a completion "
    "of it (refused and recorded); carol's 30 s sleep misses its 4 s deadline (job failed)",
    "deaf (CUDA, heartbeats but never reads its leases): carol's CUDA job is leased to it, the lease "
    "expires unstarted; leased to it again, deaf leaves holding it (provider_left): the second lost "
    "lease exceeds max_lost_leases=1 (task dead, job failed)",
    "drainer (CUDA) drains while running bob's CUDA sleep: it finishes it, then leaves",
    "liar (montecarlo, price 400) returns a wrong result for dave's replicated job and is then killed; "
    "honest-1 and honest-2 (montecarlo, price 500) return the right one: quorum, the liar's result "
    "judged invalid and never paid; dave's job with the default policy (auto: spot on paid work) has "
    "its first result checked on the other honest provider",
    "the surviving runtime drains and leaves; sim-a, flaky, honest-1 and honest-2 are still online when "
    "the recording stops",
]
#: A task still running past its timeout (on by default; ``--no-running-timeout`` leaves it out). The
#: lease expiry names the lease and counts against the provider once; the timeout failure that follows
#: names no lease (logs recorded before that change named it there too, and the audit accepts both).
RUNNING_TIMEOUT = (
    "bob's 30 s sleep with a 1 s timeout is silent past it while running: lease expired, task failed "
    "(timeout, no retry left), job failed"
)

_log = structlog.get_logger("gpufleet.golden.record")


def cpu_sleep(seconds: float, count: int = 1, **extra: Any) -> dict[str, Any]:
    """A sleep job for the simulated CPU providers only (not the real runtime: it costs too much)."""
    return {
        "workload": "sleep",
        "params": {"seconds": seconds},
        "split": {"kind": "count", "count": count},
        "max_price_micros": 2000,  # not the real runtime (5000); the CUDA sims come later
        **extra,
    }


def cuda_sleep(seconds: float, **extra: Any) -> dict[str, Any]:
    """A sleep job only the simulated CUDA providers can take."""
    return {"workload": "sleep", "params": {"seconds": seconds}, "resources": {"backend": "cuda"}, **extra}


@dataclass
class FlakyProvider(SimulatedProvider):
    """A simulated provider that also takes ``montecarlo`` and fails it as the seed says.

    Seed 13 fails every attempt with ``invalid_params`` (not retryable); seed 7 fails the first
    attempt with ``worker_crashed``; any other seed completes with an inline result.
    """

    async def _run(self, lease: LeaseGranted) -> None:
        if lease.workload != "montecarlo":
            await super()._run(lease)
            return
        t0 = time.perf_counter()
        try:
            await self._send(lease.task_id, StartedReport(lease_id=lease.lease_id))
            await asyncio.sleep(0.2)
            seed = lease.params.get("seed")
            if seed == 13 or (seed == 7 and lease.attempt == 1):
                reason = "invalid_params" if seed == 13 else "worker_crashed"
                await self._send(
                    lease.task_id,
                    FailedReport(lease_id=lease.lease_id, reason=reason, message=f"seed {seed}: injected {reason}"),
                )
                return
            gpu_ms = int((time.perf_counter() - t0) * 1000)
            result = inline_result({"task": lease.task_id, "pi": 3.14, "seed": seed})
            await self._send(lease.task_id, CompletedReport(lease_id=lease.lease_id, result=result, gpu_ms=gpu_ms))
            self.completed += 1
        finally:
            self.running.pop(lease.lease_id, None)

    async def _send(self, task_id: str, body: StartedReport | CompletedReport | FailedReport) -> None:
        await self.nc.jetstream().publish(report_subject(self.provider_id, task_id), body.model_dump_json().encode())


class Story:
    """The scenario's players on one server: the log's reader, submitters and providers."""

    def __init__(self, server: SecureServer, store: JetStreamEventStore, *, running_timeout: bool = False) -> None:
        self.server = server
        self.store = store
        self.running_timeout = running_timeout
        self.tenants = Tenants(server)
        self.sims: list[SimulatedProvider] = []

    async def sim(self, pid: str, cls: type[SimulatedProvider] = SimulatedProvider, **kw: Any) -> SimulatedProvider:
        """A simulated provider with credentials of its own, started."""
        p = await cls.connect(self.server.access("provider", pid), heartbeat_s=0.2, **kw)
        await p.start()
        self.sims.append(p)
        return p

    async def until(self, what: str, predicate: Callable[[World], bool], timeout: float = 60.0) -> World:
        """Poll the log until ``predicate`` holds on the World it folds to."""
        return await self.until_log(what, lambda w, _log: predicate(w), timeout)

    async def until_log(
        self, what: str, predicate: Callable[[World, list[Envelope]], bool], timeout: float = 60.0
    ) -> World:
        """Poll the log until ``predicate`` holds on the World it folds to and the log itself."""
        deadline = time.monotonic() + timeout
        while True:
            w, log = await read_world(self.store)
            if predicate(w, log):
                _log.info("record.reached", what=what, position=w.position)
                return w
            if time.monotonic() > deadline:
                jobs = {j: s.status for j, s in w.jobs.items()}
                tasks = {t: s.status for t, s in w.tasks.items()}
                raise TimeoutError(f"waiting for {what}: jobs {jobs}, tasks {tasks}")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        for p in self.sims:
            await p.kill()
        await self.tenants.close()


def ended(*job_ids: str) -> Callable[[World], bool]:
    """Every one of ``job_ids`` reached a final state."""
    return lambda w: all(
        j in w.jobs and w.jobs[j].status in ("completed", "failed", "cancelled", "rejected") for j in job_ids
    )


def task_is(task_id: str, status: str, provider_id: str | None = None) -> Callable[[World], bool]:
    def check(w: World) -> bool:
        t = w.tasks.get(task_id)
        if t is None or t.status != status:
            return False
        return provider_id is None or (t.lease is not None and t.lease.provider_id == provider_id)

    return check


def _online(w: World, provider_id: str) -> bool:
    return provider_id in w.providers and w.providers[provider_id].status == "online"


def _checkpointed(w: World, task_id: str, step: int) -> bool:
    t = w.tasks.get(task_id)
    return t is not None and t.status == "running" and t.checkpoint_step >= step


def at_rest(intake_messages: int) -> Callable[[World], bool]:
    """Every job ended and settled, every task terminal, every intake message has its outcome."""

    def check(w: World) -> bool:
        jobs = w.jobs.values()
        return (
            all(j.status in ("completed", "failed", "cancelled", "rejected") for j in jobs)
            and not any(unsettled(j) for j in jobs)
            and w.unfinished() == 0
            and w.intake_low > intake_messages
        )

    return check


async def play(story: Story) -> None:
    """The scenario (``SCENARIO``), step by step; each step waits for the log to show it happened."""
    t = story.tenants
    # 1. Two real runtimes: real work, progress and checkpoints; one is killed mid-task, its task resumes
    #    from its last checkpoint on the other.
    async with (
        provider(story.server, provider_id="rt-a", price_micros=5000, slots=1, backend="cpu", heartbeat_s=0.2) as a,
        provider(story.server, provider_id="rt-b", price_micros=5000, slots=1, backend="cpu", heartbeat_s=0.2) as b,
    ):
        runtimes = {"rt-a": a, "rt-b": b}
        await story.until("runtimes online", lambda w: all(_online(w, p) for p in runtimes))
        # Unverified: one of the two runtimes is killed, so there is no second owner to check with.
        stencil = {
            "workload": "stencil",
            "params": {"n": 32, "steps": 200, "alpha": 0.2, "checkpoint_every": 40, "step_delay_s": 0.015},
            "verify": {"mode": "none"},
        }
        matmul = {
            "workload": "matmul",
            "params": {"dtype": "fp64", "repeat": 3},
            "split": {"kind": "params", "params": [{"n": 160, "seed": 1}, {"n": 224, "seed": 2}]},
            "verify": {"mode": "none"},
        }
        await t.submit("alice", "st", stencil)
        w = await story.until("alice.st checkpointed", lambda w: _checkpointed(w, "alice.st.0", 40))
        lease = w.tasks["alice.st.0"].lease
        assert lease is not None
        await t.submit("alice", "mm", matmul)
        await story.until("alice.mm accepted", lambda w: "alice.mm" in w.jobs and w.jobs["alice.mm"].task_count > 0)
        await runtimes.pop(lease.provider_id).close()  # killed: workers and connection gone, not a word
        (survivor,) = runtimes.values()
        await t.submit("alice", "mm", matmul)  # the same job again: accepted, changes nothing
        await t.publish("submitter", "alice", intake_subject("submitter", "alice", "submit", "oops"), b"{not json")
        await story.until("the runtimes' jobs", ended("alice.mm", "alice.st"), timeout=120)
        # 2. Simulated CPU providers: a batch, a retry after a failure, a terminal failure, a rejection.
        await story.sim("sim-a", slots=2, price_micros=800, workloads=("noop", "sleep"))
        await story.sim("flaky", FlakyProvider, slots=1, price_micros=600, workloads=("noop", "sleep", "montecarlo"))
        await story.until(
            "sims online",
            lambda w: all(_online(w, p) for p in ("sim-a", "flaky")),
        )
        montecarlo: dict[str, Any] = {
            "workload": "montecarlo",
            "max_price_micros": 2000,
            "retry": {"max_attempts": 3, "backoff_s": 0.3},
            "verify": {"mode": "none"},  # flaky is the only provider of montecarlo here
        }
        await t.submit("bob", "batch", cpu_sleep(0.3, count=3))
        await t.submit("bob", "retry", {**montecarlo, "params": {"samples": 4096, "seed": 7}})
        split = {"kind": "params", "params": [{"seed": 13}, {"seed": 14}]}
        await t.submit("carol", "broken", {**montecarlo, "params": {"samples": 4096}, "split": split})
        await t.submit("carol", "typo", cpu_sleep(-1.0))
        await t.cancel("carol", "ghost", "no such job")
        await story.until("failures and retries", ended("bob.batch", "bob.retry", "carol.broken", "carol.typo"))
        # 3. A cancellation while running, a forged report, a missed deadline.
        deadline = (utc_now() + timedelta(seconds=4)).isoformat().replace("+00:00", "Z")
        await t.submit("alice", "long", cpu_sleep(30.0))
        await t.submit("carol", "late", cpu_sleep(30.0, deadline=deadline, on_deadline="fail"))
        if story.running_timeout:
            # Silent past its timeout (1 s + the lease grace) while running: failed, no retry left.
            await t.submit("bob", "slow", cpu_sleep(30.0, timeout_s=1.0, retry={"max_attempts": 1}))
        w = await story.until(
            "long and late running",
            lambda w: task_is("alice.long.0", "running")(w) and task_is("carol.late.0", "running")(w),
        )
        lease = w.tasks["alice.long.0"].lease
        assert lease is not None
        forged = {
            "report": "completed",
            "lease_id": lease.lease_id,
            "result": inline_result(42).model_dump(mode="json"),
            "gpu_ms": 1,
        }
        await t.publish("provider", "mallory", report_subject("mallory", "alice.long.0"), json.dumps(forged).encode())
        await story.until_log(
            "the forgery is recorded",
            lambda _w, log: any(e.type == "TaskResultRejected" and e.subject == "task.alice.long.0" for e in log),
        )
        await t.cancel("alice", "long", "changed my mind")
        ending = ("alice.long", "carol.late", *(("bob.slow",) if story.running_timeout else ()))
        await story.until("cancelled, timed out, past the deadline", ended(*ending))
        # 4. A provider that never starts its leases, and leaves holding one.
        deaf = await story.sim("deaf", slots=1, price_micros=300, backend="cuda", workloads=("noop", "sleep"))
        deaf.deafen()
        await story.until("deaf online", lambda w: _online(w, "deaf"))
        await t.submit("carol", "stuck", cuda_sleep(0.5, retry={"max_attempts": 3, "max_lost_leases": 1}))
        w = await story.until(
            "stuck leased again",
            lambda w: task_is("carol.stuck.0", "leased", "deaf")(w) and w.tasks["carol.stuck.0"].attempt == 2,
        )
        leave = ProviderDeparture(reason="going away").model_dump_json().encode()
        await deaf.nc.jetstream().publish(intake_subject("provider", "deaf", "leave"), leave)
        await story.until("stuck failed", ended("carol.stuck"), timeout=30)
        await deaf.kill()
        story.sims.remove(deaf)
        # 5. A provider drains while running a task: it finishes it, then leaves.
        drainer = await story.sim("drainer", slots=1, price_micros=250, backend="cuda", workloads=("noop", "sleep"))
        await t.submit("bob", "last", cuda_sleep(1.5))
        await story.until("drainer runs bob.last", task_is("bob.last.0", "running", "drainer"))
        await drainer.drain()
        story.sims.remove(drainer)
        await story.until("bob.last done", ended("bob.last"))
        # 6. Verification: a liar returns a wrong montecarlo result first; under replicate, two honest
        #    providers of other owners outvote it (its result judged invalid, never paid); dave's
        #    spot-checked job (the default on paid work) has its new provider's result checked.
        liar = await story.sim(
            "liar", DishonestProvider, slots=1, price_micros=400, workloads=("montecarlo",), lie="wrong"
        )
        await story.until("liar online", lambda w: _online(w, "liar"))
        # Under flaky's price (600): only the liar and the honest providers can take it.
        checked = {"workload": "montecarlo", "params": {"samples": 4096, "chunk": 4096}, "max_price_micros": 550}
        await t.submit(
            "dave", "verified", {**checked, "params": {**checked["params"], "seed": 5}, "verify": {"mode": "replicate"}}
        )
        await story.until_log(
            "the liar's result is held",
            lambda _w, log: any(e.type == "TaskResultReturned" and e.subject == "task.dave.verified.0" for e in log),
        )
        await liar.kill()
        story.sims.remove(liar)
        for pid in ("honest-1", "honest-2"):
            await story.sim(pid, slots=1, price_micros=500, workloads=("montecarlo",))
        await t.submit("dave", "spot", {**checked, "params": {**checked["params"], "seed": 6}})
        await story.until("verified and spot-checked", ended("dave.verified", "dave.spot"), timeout=60)
        # 7. The surviving runtime drains and leaves; sim-a and flaky stay online to the end.
        await survivor.drain("the recording is over")
        await story.until("runtime left", lambda w: w.providers[survivor.provider_id].status == "left")
        intake_messages = await _intake_head(story.store)
        await story.until("at rest", at_rest(intake_messages), timeout=30)


async def _intake_head(store: JetStreamEventStore) -> int:
    info = await store.js.stream_info(INTAKE_STREAM)
    return int(info.state.last_seq)


async def _quiet(store: JetStreamEventStore, seconds: float = 2.0) -> int:
    """Wait until the log has not grown for ``seconds``; its head."""
    head = await store.head()
    while True:
        await asyncio.sleep(seconds)
        now = await store.head()
        if now == head:
            return head
        head = now


async def record(
    root: Path, *, running_timeout: bool = False
) -> tuple[list[Envelope], list[history.IntakeRecord], dict[str, Any]]:
    """Run the scenario on a fresh server under ``root``; the log, the intake, and the live read models.

    The orchestrator stops before the simulated providers still online do, so that their end is not
    recorded as a loss: the recording ends at rest.
    """
    server = SecureServer(root / "net").start()
    story: Story | None = None
    try:
        await server.ensure_topology()
        async with orchestrated(server, CONFIG) as store:
            db = SqliteStore(root / "live.db")
            projections = await JetStreamEventStore.connect(server.access("orchestrator"), name="golden-projections")
            projector = Projector(projections, db, checkpoint_every=CHECKPOINT_EVERY)
            projector.open()
            running = asyncio.create_task(projector.run(), name="projections")
            story = Story(server, store, running_timeout=running_timeout)
            try:
                await play(story)
                head = await _quiet(store)  # the last audit checkpoint, if one was due, is in
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            live = json.loads(json.dumps({k: [list(r) for r in v] for k, v in projector.dump().items()}))
            db.close()
            await projections.close()
            log = [env async for env in store.read_all()]
            if not log or log[-1].sequence != head:
                raise RuntimeError("the log grew after the story ended")
            end = await _intake_head(store)
            intake = [
                history.IntakeRecord(m.sequence, m.subject, m.data)
                async for m in store.read_raw(INTAKE_STREAM, end=end)
            ]
    finally:
        if story is not None:
            await story.close()
        server.stop()
    return log, intake, live


def write(log: list[Envelope], intake: list[history.IntakeRecord], scenario: list[str]) -> None:
    history.LOG.write_text("".join(to_json_line(env) + "\n" for env in log))
    lines = []
    for r in intake:
        body = r.body.decode()  # every body of the scenario is text; a binary one would need base64 here
        lines.append(json.dumps({"seq": r.seq, "subject": r.subject, "body": body}, sort_keys=True) + "\n")
    history.INTAKE.write_text("".join(lines))
    meta = {
        "recorded_by": "python -m tests.golden.record",
        "orchestrator": {
            "heartbeat_timeout_s": CONFIG.heartbeat_timeout_s,
            "lease_start_timeout_s": CONFIG.lease_start_timeout_s,
            "lease_grace_s": CONFIG.lease_grace_s,
        },
        "audit_checkpoint_every": CHECKPOINT_EVERY,
        "scenario": scenario,
        "events": len(log),
        "intake_messages": len(intake),
        "event_types": dict(sorted(Counter(env.type for env in log).items())),
    }
    history.META.write_text(history.dump_json(meta))


async def expected(live: dict[str, Any]) -> bool:
    """Compute what the written recording means today and store it; False if a self-check failed."""
    log, intake = history.read_log(), history.read_intake()
    meta = json.loads(history.META.read_text())
    history.WORLD.write_text(history.dump_json(history.world_summary(log)))
    tables = await history.read_models(log)
    history.READ_MODELS.write_text(history.dump_tables(tables))
    report = await history.audit(log, intake)
    history.AUDIT.write_text(history.dump_json(report.to_json()))
    ok = True
    if not report.ok:
        print(report.render(), file=sys.stderr)
        ok = False
    for table in sorted(set(live) | set(tables)):
        if live.get(table) != tables.get(table):
            print(f"the live projection of {table} differs from its rebuild", file=sys.stderr)
            ok = False
    grace = meta["orchestrator"]["lease_grace_s"]
    redecided = await replay(log, intake_from(intake), grace_s=grace, idempotence=True)
    problems = [str(p) for p in redecided.problems]
    for p in problems:
        print(f"re-decide: {p}", file=sys.stderr)
    ok = ok and not problems
    print(f"{len(log)} events, {len(intake)} intake messages; audit ok={report.ok}; types: {meta['event_types']}")
    return ok


async def main(argv: list[str] | None = None) -> int:
    import argparse

    from gpufleet.logging import configure_logging

    parser = argparse.ArgumentParser(prog="python -m tests.golden.record", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--no-running-timeout", dest="running_timeout", action="store_false", help="leave out: " + RUNNING_TIMEOUT
    )
    args = parser.parse_args(argv)
    configure_logging("console", "info")
    with tempfile.TemporaryDirectory(prefix="gpufleet-golden-") as tmp:
        log, intake, live = await record(Path(tmp), running_timeout=args.running_timeout)
    write(log, intake, SCENARIO + ([RUNNING_TIMEOUT] if args.running_timeout else []))
    return 0 if await expected(live) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
