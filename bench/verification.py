"""Verification benchmark: detection rate and cost of ``none``, ``spot`` and ``replicate``, side by side.

Run: ``python bench/verification.py`` (``--help`` for sizes). For each policy it starts a fresh secured
nats-server, the orchestrator, three honest simulated providers and one dishonest provider
(``tests/dishonest.py``) that returns a wrong result on a fraction ``--cheat`` of its leases, all
speaking the real protocol with credentials of their own. Every provider runs ``montecarlo`` for
real (the summary ``gpu_runtime`` computes, bit for bit), at the same price. Then it submits one job
of ``--tasks`` seeded tasks under the policy and reads the log:

- **wrong delivered**: tasks whose delivered result differs from the honest one;
- **detection**: the dishonest provider's wrong results that verification caught (judged invalid);
- **results/task**: results gathered per task (the GPU-time multiplier: ``none`` is the floor, 1.0);
- **GPU ms billed / paid**: time billed for every result returned, and the part paid (valid only);
- **predicted detection**: the rate the spot policy predicts for a provider cheating at this rate,
  from ``events.verification.spot_probability`` alone (an independent model, not the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events.job import UsageMetered
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.subjects import intake_subject
from events.task import TaskCompleted, TaskCreated, TaskResultJudged, TaskResultReturned
from events.verification import spot_probability
from gpufleet.network import EmbeddedServer
from gpufleet.sim import SimulatedProvider, montecarlo_summary
from tests.dishonest import DishonestProvider

console = Console(width=160)
MODES = ("none", "spot", "replicate")


@dataclass
class Outcome:
    mode: str
    tasks: int
    completed: int
    wrong_delivered: int
    lies: int
    caught: int
    results: int
    billed_ms: int
    paid_ms: int
    seconds: float


def predicted_detection(cheat: float, steps: int = 200_000, seed: int = 1) -> float:
    """The share of lies a spot-checked provider is caught in, by the policy alone.

    A provider that lies on a fraction ``cheat`` of its results: each result is checked with
    ``spot_probability(trust)``; a checked honest result raises trust by one, a checked lie is caught
    and resets it, an unchecked result changes nothing.
    """
    rng = random.Random(seed)
    trust = lies = caught = 0
    for _ in range(steps):
        lie = rng.random() < cheat
        checked = rng.random() < spot_probability(trust)
        lies += lie
        if checked and lie:
            caught += 1
            trust = 0
        elif checked:
            trust += 1
    return caught / lies if lies else 1.0


async def one_mode(mode: str, tasks: int, cheat: float, samples: int, seed: int) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp) / "net") as server:
        await server.ensure_streams()
        config = OrchestratorConfig(heartbeat_timeout_s=5.0)
        orch = await Orchestrator.connect(server.access("orchestrator"), config=config)
        store = await JetStreamEventStore.connect(server.access("orchestrator"))
        providers: list[SimulatedProvider] = []
        kw: dict[str, Any] = {"slots": 2, "price_micros": 1000, "workloads": ("montecarlo",), "heartbeat_s": 0.5}
        for i in range(3):
            providers.append(await SimulatedProvider.connect(server.access("provider", f"honest-{i}"), **kw))
        liar = await DishonestProvider.connect(
            server.access("provider", "cheat"), lie="wrong", cheat_fraction=cheat, seed=seed, **kw
        )
        providers.append(liar)
        for p in providers:
            await p.start()
        nc = await connect_nats(server.access("submitter", "bench"), name="bench-verify")
        split = {"kind": "params", "params": [{"seed": seed * 100_000 + i} for i in range(tasks)]}
        spec = {
            "workload": "montecarlo",
            "params": {"samples": samples, "chunk": samples},
            "split": split,
            "verify": {"mode": mode, "max_replicas": 6},
        }
        t0 = time.perf_counter()
        await nc.jetstream().publish(intake_subject("submitter", "bench", "submit", mode), json.dumps(spec).encode())
        job_id = f"bench.{mode}"
        await orch.settle(
            timeout=600,
            predicate=lambda w: job_id in w.jobs and w.jobs[job_id].status in ("completed", "failed", "cancelled"),
        )
        seconds = time.perf_counter() - t0
        log = [env async for env in store.read_all()]
        for p in providers:
            await p.kill()
        await nc.close()
        await orch.close()
        await store.close()

    honest: dict[str, Any] = {}
    completed = wrong = lies = caught = results = billed = paid = 0
    returned: dict[str, Any] = {}
    for env in log:
        e = env.data
        if isinstance(e, TaskCreated):
            honest[e.task_id] = montecarlo_summary(e.params)
        elif isinstance(e, TaskCompleted):
            completed += 1
            wrong += e.result.inline != honest[e.task_id]
            if not e.verified_by:  # an unverified result: the only one the task gathered
                results += 1
                billed += e.gpu_ms
                lies += e.provider_id == "cheat" and e.result.inline != honest[e.task_id]
        elif isinstance(e, TaskResultReturned):
            results += 1
            billed += e.gpu_ms
            returned[e.lease_id] = e
            lies += e.provider_id == "cheat" and e.result.inline != honest[e.task_id]
        elif isinstance(e, TaskResultJudged):
            r = returned[e.lease_id]
            caught += e.verdict == "invalid" and r.provider_id == "cheat" and r.result.inline != honest[e.task_id]
        elif isinstance(e, UsageMetered):
            paid += e.gpu_ms
    return Outcome(mode, tasks, completed, wrong, lies, caught, results, billed, paid, seconds)


async def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=120, help="tasks per policy")
    ap.add_argument("--cheat", type=float, default=0.3, help="share of its leases the dishonest provider lies on")
    ap.add_argument("--samples", type=int, default=20_000, help="montecarlo samples per task")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="runs per policy (fresh network and seeds each), summed")
    args = ap.parse_args(argv)
    out = []
    for mode in MODES:
        runs = []
        for r in range(args.repeat):
            console.print(f"{mode} #{r + 1}: {args.tasks} tasks, 3 honest providers, 1 lying on {args.cheat:.0%}")
            runs.append(await one_mode(mode, args.tasks, args.cheat, args.samples, args.seed + r))
        out.append(
            Outcome(
                mode,
                *(sum(getattr(o, f) for o in runs) for f in ("tasks", "completed", "wrong_delivered", "lies")),
                *(sum(getattr(o, f) for o in runs) for f in ("caught", "results", "billed_ms", "paid_ms", "seconds")),
            )
        )
    floor = next(o for o in out if o.mode == "none")
    predicted = {"none": 0.0, "spot": predicted_detection(args.cheat), "replicate": 1.0}
    t = Table(
        title=f"verification: {args.tasks} montecarlo tasks per policy, one provider of four lies on {args.cheat:.0%}"
    )
    cols = (
        "policy",
        "completed",
        "wrong delivered",
        "lies",
        "caught",
        "detection",
        "predicted",
        "results/task",
        "GPU ms billed",
        "GPU ms paid",
        "paid vs none",
        "wall s",
    )
    for c in cols:
        t.add_column(c, justify="right" if c != "policy" else "left")
    for o in out:
        t.add_row(
            o.mode,
            f"{o.completed}/{o.tasks}",
            str(o.wrong_delivered),
            str(o.lies),
            str(o.caught),
            f"{o.caught / o.lies:.0%}" if o.lies else "-",
            f"{predicted[o.mode]:.0%}",
            f"{o.results / max(1, o.tasks):.2f}",
            str(o.billed_ms),
            str(o.paid_ms),
            f"{o.paid_ms / max(1, floor.paid_ms):.2f}x",
            f"{o.seconds:.1f}",
        )
    console.print(t)


if __name__ == "__main__":
    asyncio.run(main())
