"""Predictability: how well the network predicts task durations, and how honest its intervals are.

Run: ``python bench/eta.py`` (``--help`` for sizes; a default run takes under two minutes on two cores).
It runs the network the way ``gpufleet up`` does (``python -m gpufleet up --no-provider``: nats-server,
orchestrator, projections and their quote service, notary), starts real provider runtimes beside it
(``python -m gpu_runtime --backend cpu``: NumPy, one slot each, calibrated at start with probe runs of
every workload; one by default, as a new user's ``gpufleet up`` has, ``--providers 2`` for two that
share this machine's cores), and submits a seeded job mix: six compute workloads (matmul, fft, reduction,
elementwise, montecarlo, stencil; sleep is a seventh, set apart) at many sizes each across a wide
range (matmul n 384-1536, fft 2^16-2^22 points, montecarlo 2-30 M samples, ...). In each round, one
job per workload: three sizes that recur in every round (shapes seen again) and new sizes that
appear once (shapes never seen); the rounds' order of workloads, the one-off sizes and the seeds all
come from ``--seed``. While the mix runs it asks the quote service for quotes of the same jobs,
alternating with a bare NATS request/reply round trip as the floor. After the mix, one provider
(the only one, or the first when the others leave) runs one fixed shape of each workload many times in
a row: the noise floor of this machine. Then it reads the log back and reports, for the mix's completed tasks:

- error ``|predicted - actual| / actual`` (median, p90) overall and per workload, at first sight (the
  task's shape, ``events.estimates.shape_of``, had completed nowhere on the network before the lease)
  and with history (it had); predicted: the ``predicted_s`` of the lease that completed the task;
  actual: ``TaskStarted.at`` to ``TaskCompleted.at`` of that lease;
- the coverage of the 80% interval: the share of tasks whose actual fell inside the lease's
  [``predicted_low_s``, ``predicted_high_s``];
- the noise floor beside them: per workload, the median ``|x - median| / median`` of the repeated runs;
- the quote latency (p50, p99) beside the raw round trip; the job forecasts recorded at acceptance
  (``JobAccepted``) against each job's acceptance-to-completion time; and a verdict per target.

Last, it rebuilds the projections over the same log (``python -m projections rebuild``) and checks
that the ETA view's recorded error agrees with the figures computed here.

``--replay DIR`` re-evaluates the *current* ``events.estimates.RuntimeModel`` offline on the log an
earlier run kept (``--dir DIR``): it folds the log as the orchestrator does (calibrations, a
prediction at every lease, an observation at every completion) and prints the same tables, so the
model can be tuned without running the network again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.world import World
from events.envelope import Envelope
from events.estimates import BASES, RuntimeModel, Shape, device_class, shape_of
from events.job import JobAccepted, JobCompleted
from events.provider import ProviderCalibrated, ProviderRegistered
from events.store import JetStreamEventStore
from events.store.connection import Access, connect_nats
from events.subjects import api_subject
from events.task import TaskCompleted, TaskCreated, TaskLeased, TaskStarted
from events.types import Calibration
from events.workloads import WORKLOADS, validate_params
from gpufleet.auth.authority import Authority
from gpufleet.client import Client
from gpufleet.natsserver import NatsServer
from projections.eta import ETA_TASKS, eta_error
from projections.query import ReadModels

console = Console(width=150)
ROOT = Path(__file__).resolve().parents[1]
TERMINAL_JOBS = frozenset({"completed", "failed", "cancelled", "rejected"})
SUBMITTER = "bench"
#: Jobs of the noise phase are named so: they are the noise floor, not the model's figures.
NOISE_PREFIX = "noise-"
COMPUTE = ("matmul", "fft", "reduction", "elementwise", "montecarlo", "stencil")

#: The issue's targets.
TARGET_MEDIAN = 0.15
TARGET_P90 = 0.40
TARGET_FIRST_MEDIAN = 0.30
TARGET_COVERAGE = (0.75, 0.85)


# ---- the job mix -----------------------------------------------------------------------------------

Params = dict[str, Any]


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _round(x: float, step: int) -> int:
    return max(step, round(x / step) * step)


@dataclass(frozen=True)
class Space:
    """A workload's sizes: the three that recur (small, middle, large) and a drawer of one-off sizes."""

    recurring: tuple[Params, Params, Params]
    draw: Callable[[random.Random], Params]


def _matmul(rng: random.Random) -> Params:
    return {"n": _round(_log_uniform(rng, 384, 1536), 32), "dtype": rng.choice(["fp32", "fp64"])}


def _fft(rng: random.Random) -> Params:
    k = rng.randint(16, 22)
    return {
        "n": 1 << k,
        "batch": rng.randint(1, max(1, min(4, 1 << (23 - k)))),
        "dtype": rng.choice(["complex64", "complex128"]),
    }


def _reduction(rng: random.Random) -> Params:
    n = _round(_log_uniform(rng, 1 << 21, 1 << 25), 1 << 16)
    return {"n": n, "op": rng.choice(["sum", "mean", "max", "min", "norm"]), "dtype": rng.choice(["fp32", "fp64"])}


def _elementwise(rng: random.Random) -> Params:
    n = _round(_log_uniform(rng, 1 << 20, 1 << 24), 1 << 16)
    return {"n": n, "op": rng.choice(["saxpy", "exp", "sigmoid", "sqrt"]), "dtype": rng.choice(["fp32", "fp64"])}


def _montecarlo(rng: random.Random) -> Params:
    return {"samples": _round(_log_uniform(rng, 2e6, 30e6), 100_000), "chunk": 1 << 20}


def _stencil(rng: random.Random) -> Params:
    steps = rng.choice([50, 100])
    return {"n": _round(_log_uniform(rng, 256, 1024), 16), "steps": steps, "checkpoint_every": steps // 2}


def _sleep(rng: random.Random) -> Params:
    return {"seconds": round(rng.uniform(0.2, 0.8), 2), "steps": 5}


SPACES: dict[str, Space] = {
    "matmul": Space(({"n": 384, "dtype": "fp32"}, {"n": 768, "dtype": "fp64"}, {"n": 1536, "dtype": "fp32"}), _matmul),
    "fft": Space(
        (
            {"n": 1 << 16, "batch": 4, "dtype": "complex64"},
            {"n": 1 << 19, "batch": 2, "dtype": "complex128"},
            {"n": 1 << 22, "batch": 1, "dtype": "complex64"},
        ),
        _fft,
    ),
    "reduction": Space(
        (
            {"n": 1 << 21, "op": "sum", "dtype": "fp64"},
            {"n": 1 << 23, "op": "norm", "dtype": "fp32"},
            {"n": 1 << 25, "op": "max", "dtype": "fp64"},
        ),
        _reduction,
    ),
    "elementwise": Space(
        (
            {"n": 1 << 20, "op": "saxpy", "dtype": "fp64"},
            {"n": 1 << 22, "op": "exp", "dtype": "fp32"},
            {"n": 1 << 24, "op": "sigmoid", "dtype": "fp32"},
        ),
        _elementwise,
    ),
    "montecarlo": Space(
        (
            {"samples": 2_000_000, "chunk": 1 << 20},
            {"samples": 8_000_000, "chunk": 1 << 20},
            {"samples": 30_000_000, "chunk": 1 << 20},
        ),
        _montecarlo,
    ),
    "stencil": Space(
        (
            {"n": 256, "steps": 100, "checkpoint_every": 50},
            {"n": 512, "steps": 100, "checkpoint_every": 50},
            {"n": 1024, "steps": 50, "checkpoint_every": 25},
        ),
        _stencil,
    ),
    "sleep": Space(({"seconds": 0.25, "steps": 5}, {"seconds": 0.5, "steps": 5}, {"seconds": 0.1, "steps": 2}), _sleep),
}


def _shape(workload: str, params: Params) -> Shape:
    """The shape the network will see: the workload and its contract's estimate for ``params``."""
    return shape_of(workload, WORKLOADS[workload].estimate(validate_params(workload, params)))


def job_mix(rng: random.Random, rounds: int, repeat: int, once: int) -> list[tuple[str, Params]]:
    """``rounds`` rounds; in each, one job per workload (in a seeded order) of its three recurring sizes
    ``repeat`` times each and ``once`` one-off sizes never drawn before (sleep: one of each)."""
    jobs: list[tuple[str, Params]] = []
    used = {_shape(w, p) for w, s in SPACES.items() for p in s.recurring}
    for r in range(rounds):
        order = list(SPACES)
        rng.shuffle(order)
        for workload in order:
            space = SPACES[workload]
            if workload == "sleep":  # set apart: a few, to show a known duration is predicted as such
                params, m = [dict(p) for p in space.recurring[:2]], 1
            else:
                params, m = [dict(p) for p in space.recurring for _ in range(repeat)], once
            for _ in range(m):
                for _attempt in range(100):
                    drawn = space.draw(rng)
                    if _shape(workload, drawn) not in used:
                        break
                used.add(_shape(workload, drawn))
                params.append(drawn)
            rng.shuffle(params)
            if workload not in ("sleep", "stencil"):
                params = [{**p, "seed": rng.randrange(1 << 16)} for p in params]
            spec = {"workload": workload, "split": {"kind": "params", "params": params}}
            jobs.append((f"r{r}-{workload}", spec))
    return jobs


def noise_jobs(rng: random.Random, runs: int) -> list[tuple[str, Params]]:
    """One job per compute workload: its middle recurring shape ``runs`` times (fresh seeds)."""
    jobs: list[tuple[str, Params]] = []
    for workload in COMPUTE:
        base = SPACES[workload].recurring[1]
        params = [
            dict(base) if workload == "stencil" else {**base, "seed": rng.randrange(1 << 16)} for _ in range(runs)
        ]
        jobs.append(
            (f"{NOISE_PREFIX}{workload}", {"workload": workload, "split": {"kind": "params", "params": params}})
        )
    return jobs


# ---- the network -----------------------------------------------------------------------------------


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a provider drains, the network stops), then the whole group is killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


async def network_up(net: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``gpufleet up --no-provider`` on ``net``: the process and its URL, once it wrote network.json."""
    info = net / "network.json"
    with contextlib.suppress(FileNotFoundError):
        info.unlink()
    cmd = ["-m", "gpufleet", "up", "--data-dir", str(net), "--no-provider", "--port", "0"]
    proc = spawn(cmd, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            raise RuntimeError(f"gpufleet up exited {proc.returncode}: {text[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(await asyncio.to_thread(info.read_text))
            if data.get("pid") == proc.pid:
                return proc, str(data["url"])
        await asyncio.sleep(0.2)
    stop(proc)
    raise TimeoutError("gpufleet up: not up in 90s")


class Follower:
    """The world folded from the log as it grows."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.store = store
        self.world = World()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async for env in self.store.subscribe(0):
            self.world.apply(env)
            self.changed.set()

    async def until(self, predicate: Callable[[World], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.world):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: not done in {timeout:.0f}s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))


def online(pid: str) -> Callable[[World], bool]:
    return lambda w: pid in w.providers and w.providers[pid].status == "online"


def jobs_ended(names: set[str]) -> Callable[[World], bool]:
    return lambda w: all(j in w.jobs and w.jobs[j].status in TERMINAL_JOBS for j in names)


async def submit_all(client: Client, jobs: Sequence[tuple[str, Params]]) -> set[str]:
    for name, spec in jobs:
        await client.submit(spec, job_id=name)
    return {f"{SUBMITTER}.{name}" for name, _ in jobs}


# ---- quotes ----------------------------------------------------------------------------------------


@dataclass
class QuoteRun:
    """Latencies of quotes and of bare request/reply round trips, taken alternately in one run."""

    quotes: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    unavailable: str = ""
    #: Who asked the bare round trips: the submitter (the quotes' own path) or the operator's tool user.
    raw_path: str = "submitter"
    #: How the quotes were asked: ``Client.quote`` (it validates the spec first) or a bare request.
    quote_path: str = "Client.quote" if hasattr(Client, "quote") else "a request on the quote subject"


#: Errors that mean no quote service answers (a refusal of the spec is an answer).
NO_SERVICE = frozenset({"StoreUnavailable", "NoRespondersError", "TimeoutError"})


async def _quote(client: Client, spec: Params, timeout: float) -> Any:
    quote = getattr(client, "quote", None)
    if quote is not None:
        return await asyncio.wait_for(quote(spec), timeout)
    msg = await client.nc.request(
        api_subject("submitter", SUBMITTER, "quote"), json.dumps(spec).encode(), timeout=timeout
    )
    return json.loads(msg.data)


async def measure_quotes(client: Client, echo_access: Access, specs: Sequence[Params], count: int) -> QuoteRun:
    """``count`` quotes of the mix's jobs against the live network, each after a bare round trip on the
    same path (the submitter's request, answered at once by a responder on the server)."""
    out = QuoteRun()
    echo = await connect_nats(echo_access, name="bench-eta-echo")
    subject = api_subject("submitter", SUBMITTER, "benchecho")

    async def answer(msg: Any) -> None:
        await msg.respond(b"{}")

    sub = await echo.subscribe(subject, cb=answer)
    await echo.flush()
    requester = client.nc
    try:
        try:
            await requester.request(subject, b"{}", timeout=2.0)
        except Exception:  # the submitter may not reach the responder's subject: both ends as the operator
            requester, out.raw_path = echo, "operator"
            await requester.request(subject, b"{}", timeout=2.0)
        for i in range(count):
            t0 = time.perf_counter()
            await requester.request(subject, b"{}", timeout=5.0)
            out.raw.append(time.perf_counter() - t0)
            if not out.unavailable:
                t0 = time.perf_counter()
                try:
                    doc = await _quote(client, specs[i % len(specs)], 5.0)
                    if isinstance(doc, dict) and "error" in doc:
                        out.errors[str(doc["error"])[:40]] += 1
                except Exception as e:
                    if type(e).__name__ in NO_SERVICE and not out.quotes:
                        out.unavailable = f"{type(e).__name__}: {e}"[:100]
                        continue
                    out.errors[f"{type(e).__name__}: {e}"[:60]] += 1  # answered, with a refusal
                out.quotes.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()
        await echo.close()
    return out


# ---- the measurement -------------------------------------------------------------------------------


@dataclass
class Sample:
    task_id: str
    job_id: str
    workload: str
    provider_id: str
    predicted: float
    #: The interval (None: a lease from before intervals were recorded).
    low: float | None
    high: float | None
    actual: float
    #: The shape had completed nowhere on the network before the lease.
    first_sight: bool
    shape: Shape
    basis: str = ""

    @property
    def error(self) -> float:
        return abs(self.predicted - self.actual) / self.actual

    @property
    def inside(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= self.actual <= self.high

    @property
    def noise(self) -> bool:
        return self.job_id.partition(".")[2].startswith(NOISE_PREFIX)


@dataclass
class JobSample:
    """A job's forecast at acceptance (``JobAccepted``: the queue ahead, then its tasks) and its
    actual time from acceptance to completion."""

    job_id: str
    predicted: float
    low: float | None
    high: float | None
    actual: float


@dataclass
class Folded:
    samples: list[Sample]
    calibrations: dict[str, Calibration]
    #: Completed tasks that had no TaskStarted for their lease (no actual duration).
    unstarted: int = 0
    jobs: list[JobSample] = field(default_factory=list)


async def fold(envs: AsyncIterator[Envelope], model: RuntimeModel | None = None) -> Folded:
    """One sample per completed task. The prediction is the lease's own, or with ``model`` what that
    model says at the lease, learning as the orchestrator does (``actors.core``)."""
    created: dict[str, TaskCreated] = {}
    leases: dict[str, tuple[float, float | None, float | None, str, bool]] = {}
    started: dict[str, TaskStarted] = {}
    calibrations: dict[str, Calibration] = {}
    classes: dict[str, str] = {}
    done: set[Shape] = set()
    out: list[Sample] = []
    unstarted = 0
    accepted: dict[str, JobAccepted] = {}
    jobs: list[JobSample] = []
    async for env in envs:
        e = env.data
        if isinstance(e, JobAccepted):
            accepted[e.job_id] = e
        elif isinstance(e, JobCompleted) and e.job_id in accepted:
            a = accepted[e.job_id]
            jobs.append(
                JobSample(e.job_id, a.predicted_s, a.predicted_low_s, a.predicted_high_s, (e.at - a.at).total_seconds())
            )
        elif isinstance(e, ProviderRegistered):
            classes[e.provider_id] = device_class(e.capabilities)
        elif isinstance(e, ProviderCalibrated):
            calibrations[e.provider_id] = e.calibration
            if model is not None:
                model.calibrated(e.provider_id, classes.get(e.provider_id, ""), e.calibration)
        elif isinstance(e, TaskCreated):
            created[e.task_id] = e
        elif isinstance(e, TaskLeased):
            c = created[e.task_id]
            seen = shape_of(c.workload, c.estimate) in done
            if model is None:
                leases[e.lease_id] = (e.predicted_s, e.predicted_low_s, e.predicted_high_s, "", not seen)
            else:
                p = e.provider_id
                pr = model.predict_interval(c.workload, c.estimate, calibrations.get(p), p, classes.get(p, ""))
                leases[e.lease_id] = (pr.seconds, pr.low, pr.high, pr.basis, not seen)
        elif isinstance(e, TaskStarted):
            started[e.lease_id] = e
        elif isinstance(e, TaskCompleted):
            c = created[e.task_id]
            shape = shape_of(c.workload, c.estimate)
            s = started.get(e.lease_id)
            lease = leases.get(e.lease_id)
            done.add(shape)
            if s is None or lease is None:
                unstarted += 1
                continue
            actual = (e.at - s.at).total_seconds()
            if model is not None:
                p = e.provider_id
                model.observe(c.workload, c.estimate, calibrations.get(p), p, actual, classes.get(p, ""))
            predicted, low, high, basis, first = lease
            out.append(
                Sample(
                    e.task_id, c.job_id, c.workload, e.provider_id, predicted, low, high, actual, first, shape, basis
                )
            )
    return Folded(out, calibrations, unstarted, jobs)


def quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def dispersion(group: Sequence[float]) -> list[float]:
    """|x - median| / median of each run of one shape on one provider."""
    m = statistics.median(group)
    return [abs(x - m) / m for x in group]


def noise_floor(samples: Sequence[Sample], min_runs: int) -> dict[str, tuple[float, int]]:
    """Per workload: the median |x - median| / median over the runs of each shape on each provider that
    ran it at least ``min_runs`` times; and the number of runs."""
    groups: dict[tuple[Shape, str], list[float]] = {}
    for s in samples:
        groups.setdefault((s.shape, s.provider_id), []).append(s.actual)
    by_workload: dict[str, list[float]] = {}
    for (shape, _), actuals in groups.items():
        if len(actuals) >= min_runs:
            by_workload.setdefault(shape[0], []).extend(dispersion(actuals))
    out = {w: (statistics.median(d), len(d)) for w, d in by_workload.items()}
    every = [x for d in by_workload.values() for x in d]
    if every:
        out["all"] = (statistics.median(every), len(every))
    return out


def pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1%}"


def coverage(group: Sequence[Sample]) -> float | None:
    marks = [s.inside for s in group if s.inside is not None]
    return sum(marks) / len(marks) if marks else None


def row(name: str, group: Sequence[Sample], floor: tuple[float, int] | None) -> list[str]:
    first = [s for s in group if s.first_sight]
    hist = [s for s in group if not s.first_sight]

    def med(g: Sequence[Sample]) -> str:
        return pct(statistics.median(s.error for s in g)) if g else "-"

    def p90(g: Sequence[Sample]) -> str:
        return pct(quantile([s.error for s in g], 0.9)) if g else "-"

    return [
        name,
        str(len(group)),
        med(group),
        p90(group),
        f"{len(first)}/{len(hist)}",
        med(first),
        p90(first),
        med(hist),
        p90(hist),
        pct(coverage(group)),
        pct(coverage(first)),
        pct(coverage(hist)),
        f"{statistics.median(s.predicted / s.actual for s in group):.2f}" if group else "-",
        f"{statistics.median(s.actual for s in group):.3f}" if group else "-",
        pct(floor[0]) if floor else "-",
    ]


def report(mix: Sequence[Sample], floors: dict[str, tuple[float, int]], title: str) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    cols = (
        "workload", "n", "med", "p90", "1st/hist", "1st med", "1st p90", "hist med", "hist p90",
        "cov80", "cov 1st", "cov hist", "bias", "actual s", "noise",
    )  # fmt: skip
    for col in cols:
        t.add_column(col, justify="left" if col == "workload" else "right", no_wrap=True)
    compute = [s for s in mix if s.workload in COMPUTE]
    t.add_row(*row("all compute", compute, floors.get("all")), end_section=True)
    for workload in [*COMPUTE, *sorted({s.workload for s in mix} - set(COMPUTE))]:
        t.add_row(*row(workload, [s for s in mix if s.workload == workload], floors.get(workload)))
    return t


def verdicts(mix: Sequence[Sample], floors: dict[str, tuple[float, int]]) -> list[str]:
    compute = [s for s in mix if s.workload in COMPUTE]
    if not compute:
        return ["no completed compute tasks"]
    errors = [s.error for s in compute]
    first = [s.error for s in compute if s.first_sight]
    cov = coverage(compute)
    floor = floors.get("all", (math.nan, 0))[0]

    def line(what: str, value: float | None, ok: bool) -> str:
        return f"  {what:<40} {pct(value):>6}  {'met' if ok else 'MISSED'}"

    med = statistics.median(errors)
    p90 = quantile(errors, 0.9)
    fmed = statistics.median(first) if first else math.nan
    return [
        line(f"median error < {TARGET_MEDIAN:.0%} (noise floor {pct(floor)})", med, med < TARGET_MEDIAN),
        line(f"p90 error < {TARGET_P90:.0%}", p90, p90 < TARGET_P90),
        line(f"first-sight median < {TARGET_FIRST_MEDIAN:.0%} ({len(first)} tasks)", fmed, fmed < TARGET_FIRST_MEDIAN),
        line(
            f"80% interval coverage in [{TARGET_COVERAGE[0]:.0%}, {TARGET_COVERAGE[1]:.0%}]",
            cov,
            cov is not None and TARGET_COVERAGE[0] <= cov <= TARGET_COVERAGE[1],
        ),
    ]


def job_line(jobs: Sequence[JobSample]) -> str:
    """How the job forecasts recorded at acceptance fared, in the mix and in the noise phase."""
    parts = []
    for name, group in (
        ("the mix", [j for j in jobs if not j.job_id.partition(".")[2].startswith(NOISE_PREFIX)]),
        ("the noise phase", [j for j in jobs if j.job_id.partition(".")[2].startswith(NOISE_PREFIX)]),
    ):
        done = [j for j in group if j.predicted > 0 and j.actual > 0]
        if not done:
            continue
        errors = [abs(j.predicted - j.actual) / j.actual for j in done]
        marks = [j.low <= j.actual <= j.high for j in done if j.low is not None and j.high is not None]
        cov = sum(marks) / len(marks) if marks else None
        bias = statistics.median(j.predicted / j.actual for j in done)
        parts.append(
            f"{name} {len(done)} jobs: median {pct(statistics.median(errors))}, p90 {pct(quantile(errors, 0.9))}, "
            f"in the interval {pct(cov)}, bias {bias:.2f}"
        )
    return "job forecasts at acceptance (finish, queue included): " + ("; ".join(parts) or "none")


def calibration_line(pid: str, cal: Calibration) -> str:
    rates = ", ".join(f"{k} {v:g}" for k, v in sorted(cal.matmul_tflops.items()))
    runs = sum(len(r) for r in cal.probes.values())
    return (
        f"  {pid}: TFLOP/s {rates}; {cal.memory_gbps:g} GB/s; overhead {cal.task_overhead_s * 1e3:.2f} ms; "
        f"probes: {runs} runs of {len(cal.probes)} workloads"
    )


def print_figures(folded: Folded, title: str, min_runs: int) -> tuple[list[Sample], dict[str, tuple[float, int]]]:
    mix = [s for s in folded.samples if not s.noise]
    noise = [s for s in folded.samples if s.noise]
    floors = noise_floor(noise, min_runs)
    for pid, cal in sorted(folded.calibrations.items()):
        console.print(calibration_line(pid, cal), highlight=False)
    console.print(report(mix, floors, title))
    runs = ", ".join(f"{w} {n}" for w, (_, n) in floors.items() if w != "all")
    inmix = noise_floor(mix, min_runs).get("all")
    console.print(
        f"first/hist: tasks at first sight (shape completed nowhere before the lease) / with history. cov80: actual "
        f"inside the lease's p10-p90.\nbias: median predicted/actual. noise: median |x - median| / median of one "
        f"shape run again and again on one provider after the mix ({runs or 'none'} runs); the same over the mix's "
        f"own repeats on each provider: {pct(inmix[0]) if inmix else '-'}.",
        highlight=False,
    )
    for basis in BASES:  # only a replay knows what each prediction rested on
        group = [s for s in mix if s.basis == basis and s.workload in COMPUTE]
        if group:
            errors = [s.error for s in group]
            console.print(
                f"  basis {basis:<8} {len(group):4} tasks: median {pct(statistics.median(errors))}, "
                f"p90 {pct(quantile(errors, 0.9))}, cov80 {pct(coverage(group))}, "
                f"bias {statistics.median(s.predicted / s.actual for s in group):.2f}",
                highlight=False,
            )
    console.print(job_line(folded.jobs), highlight=False)
    console.print("targets (six compute workloads):")
    for v in verdicts(mix, floors):
        console.print(v, highlight=False)
    return mix, floors


# ---- the read side ---------------------------------------------------------------------------------


async def projections_view(access: Access, db: Path, log: Path) -> tuple[Any, float, int]:
    """Rebuild the read models from the log; the ETA view's error, and how its replayed model agrees."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "projections",
        "rebuild",
        "--url",
        access.url,
        "--creds",
        str(access.creds),
        "--db",
        str(db),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    await asyncio.to_thread(log.write_bytes, out)
    if proc.returncode != 0:
        raise RuntimeError(f"projections rebuild failed: {out.decode(errors='replace')[-2000:]}")
    models = ReadModels.open(db)
    try:
        error = await models.eta_error()
        rows = [ETA_TASKS.make(v) for v in models.db.select(ETA_TASKS, None)]
    finally:
        models.close()
    done = [r for r in rows if r.actual_s is not None and r.lease_predicted_s > 0]
    worst = max((abs(r.model_predicted_s - r.lease_predicted_s) / r.lease_predicted_s for r in done), default=0.0)
    return error, worst, len(done)


def quote_line(q: QuoteRun) -> str:
    def ms(v: Sequence[float], p: float) -> str:
        return f"{quantile(v, p) * 1e3:.1f} ms" if v else "-"

    raw = (
        f"bare NATS request/reply as the {q.raw_path} (the floor, {len(q.raw)}): "
        f"p50 {ms(q.raw, 0.5)}, p99 {ms(q.raw, 0.99)}"
    )
    if q.unavailable:
        return f"quote latency: quote service not available ({q.unavailable}); {raw}"
    errs = f"; answers with an error: {dict(q.errors)}" if q.errors else ""
    quotes = f"p50 {ms(q.quotes, 0.5)}, p99 {ms(q.quotes, 0.99)}"
    return f"quote latency ({len(q.quotes)} quotes by {q.quote_path}, during the mix): {quotes}; {raw}{errs}"


# ---- main ------------------------------------------------------------------------------------------


async def replay(work: Path, min_runs: int) -> None:
    """The current model, re-evaluated offline on the log a run kept in ``work``."""
    # The kept network's own server over its store, without the rest of the network: nothing appends.
    auth = Authority.open(work / "net" / "auth", create=False)
    store_dir = work / "net" / "nats"
    server = NatsServer(store_dir, config=auth.server_config(store_dir / "accounts"))
    await asyncio.to_thread(server.start)
    try:
        access = Access(server.url, auth.own_creds("orchestrator", "orchestrator"))
        store = await JetStreamEventStore.connect(access, name="bench-eta-replay")
        try:
            folded = await fold(store.read_all(), RuntimeModel())
            recorded = await fold(store.read_all())
        finally:
            await store.close()
    finally:
        server.stop()
    console.print(f"replayed {len(folded.samples)} completed tasks of {work} through the current RuntimeModel")
    print_figures(folded, "the CURRENT model on the kept log (offline replay)", min_runs)
    mix = [s for s in recorded.samples if not s.noise and s.workload in COMPUTE]
    if mix:
        console.print(
            f"as the leases recorded it (compute, the mix): {eta_error((s.predicted, s.actual) for s in mix)}"
        )
    # With the model unchanged since the run, every replayed prediction is the lease's own.
    pairs = list(zip(folded.samples, recorded.samples, strict=True))
    diff = [abs(a.predicted - b.predicted) / b.predicted for a, b in pairs if b.predicted > 0]
    same = sum(d < 1e-6 for d in diff)
    console.print(
        f"replayed predictions equal to the leases' on {same} of {len(diff)} tasks; largest relative difference "
        f"{max(diff, default=0.0):.1e} (0 when the model is the one that ran)",
        highlight=False,
    )


async def main() -> None:
    from gpufleet.logging import configure_logging

    configure_logging("console", "warning")  # a table for people; warnings only
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--providers", type=int, default=1, help="provider runtimes (subprocesses), 1 slot each")
    p.add_argument("--rounds", type=int, default=4, help="rounds of the mix (one job per workload each)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each recurring size per round")
    p.add_argument("--once", type=int, default=3, help="one-off sizes per workload per round")
    p.add_argument("--noise-runs", type=int, default=10, help="runs of each fixed shape in the noise phase")
    p.add_argument("--quotes", type=int, default=50, help="quotes to time during the mix")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole mix")
    p.add_argument("--dir", type=Path, default=None, help="keep the network's data, logs and read models here")
    p.add_argument("--replay", type=Path, default=None, metavar="DIR", help="re-evaluate the current model on DIR")
    args = p.parse_args()
    min_runs = max(2, args.noise_runs // 2)
    if args.replay is not None:
        await replay(args.replay, min_runs)
        return

    work = args.dir or Path(tempfile.mkdtemp(prefix="gpufleet-bench-eta-"))
    if args.dir is not None and (work / "net").exists():
        shutil.rmtree(work / "net")  # a fresh log: the figures are this run's
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    jobs = job_mix(rng, args.rounds, args.repeat, args.once)
    noise = noise_jobs(rng, args.noise_runs)
    procs: list[subprocess.Popen[bytes]] = []
    providers: dict[str, subprocess.Popen[bytes]] = {}
    store: JetStreamEventStore | None = None
    client: Client | None = None
    follow: asyncio.Task[None] | None = None
    t_start = time.monotonic()
    try:
        up, url = await network_up(work / "net", work / "up.log")
        procs.append(up)
        auth = Authority.open(work / "net" / "auth", create=False)

        def access(role: str, name: str) -> Access:
            return Access(url, auth.own_creds(role, name))

        store = await JetStreamEventStore.connect(access("orchestrator", "orchestrator"), name="bench-eta")
        follower = Follower(store)
        follow = asyncio.create_task(follower.run())
        ids = [f"bench-p{i}" for i in range(args.providers)]
        t0 = time.monotonic()
        for pid in ids:
            # One after another: each calibrates its device alone, as it would on a machine of its own.
            creds = str(access("provider", pid).creds)
            cmd = ["-m", "gpu_runtime", "--nats", url, "--creds", creds, "--backend", "cpu"]
            providers[pid] = spawn(cmd, work / f"{pid}.log")
            procs.append(providers[pid])
            await follower.until(online(pid), 120, pid)
        console.print(f"network up; {len(ids)} providers online in {time.monotonic() - t0:.1f}s (started, calibrated)")

        client = await Client.connect(url, creds=access("submitter", SUBMITTER).creds)
        tasks = sum(len(spec["split"]["params"]) for _, spec in jobs)
        t0 = time.monotonic()
        names = await submit_all(client, jobs)

        async def mix_ended() -> float:
            await follower.until(jobs_ended(names), args.timeout, "the mix")
            return time.monotonic() - t0

        quotes, elapsed = await asyncio.gather(
            measure_quotes(client, Access(url, auth.unrestricted_creds()), [s for _, s in jobs], args.quotes),
            mix_ended(),
        )
        statuses = Counter(follower.world.jobs[j].status for j in names)
        console.print(f"the mix: {len(jobs)} jobs, {tasks} tasks ended in {elapsed:.1f}s: {dict(statuses)}")

        # The noise floor: one provider alone runs each fixed shape again and again.
        for pid in ids[1:]:
            stop(providers[pid])
        await follower.until(lambda w: all(w.providers[p].status != "online" for p in ids[1:]), 60, "providers leave")
        t0 = time.monotonic()
        noise_names = await submit_all(client, noise)
        await follower.until(jobs_ended(noise_names), args.timeout, "the noise phase")
        console.print(
            f"noise phase on {ids[0]} alone: {len(noise)} jobs of {args.noise_runs} tasks "
            f"in {time.monotonic() - t0:.1f}s"
        )
        follow.cancel()

        folded = await fold(store.read_all())
        if folded.unstarted:
            console.print(f"({folded.unstarted} completed tasks had no TaskStarted: left out)")
        print_figures(
            folded, "prediction error |predicted - actual| / actual and 80% interval coverage, the mix", min_runs
        )
        console.print(quote_line(quotes), highlight=False)

        overall = eta_error((s.predicted, s.actual) for s in folded.samples)
        view, worst, total = await projections_view(
            access("auditor", SUBMITTER), work / "views.sqlite", work / "projections.log"
        )
        # The view keeps times as float epoch seconds (a resolution of ~0.2 us today), hence the tolerance.
        agree = view.n == overall.n and all(
            math.isclose(a, b, rel_tol=1e-4) for a, b in ((view.median, overall.median), (view.p90, overall.p90))
        )
        console.print(
            f"ETA view (projections rebuild), every completed task: {view}; this script: {overall}: "
            f"{'agrees' if agree else 'DISAGREES'}; its replayed model against the leases' predictions, "
            f"{total} tasks: largest relative difference {worst:.1e}",
            highlight=False,
        )
    finally:
        if follow is not None:
            follow.cancel()
        if client is not None:
            await client.close()
        if store is not None:
            await store.close()
        for proc in reversed(procs):
            stop(proc)
    console.print(f"whole run {time.monotonic() - t_start:.0f}s")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        console.print(f"the network's data (the log), logs and read models kept in {work}")


if __name__ == "__main__":
    asyncio.run(main())
