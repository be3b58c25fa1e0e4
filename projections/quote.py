"""A quote before you submit: what could run a job now, how long it would take, what it would cost.

``quote`` is pure: a job spec against the fleet and ETA views as they are, at ``now``. It uses the
rules the network itself uses, each from its one module: which providers may take a task
(``events.placement``), how long a task takes and when a queued job starts and ends
(``events.estimates``: the runtime model the scheduler uses, ``fair_share_ahead``, ``forecast``),
how many results verification gathers (``events.verification.expected_replicas``) and what GPU time
costs (``events.metering.metered_amount``).

``QuoteService`` answers ``gf.api.<role>.<name>.quote`` from the live views of the projector in the
same process. It never appends to the log. Its request body is a job spec, exactly as submitted on
``gf.in.submitter.<name>.submit.<job>``, validated as a submission is; its ``submitter`` is the
asking identity. The answer (``Quote.to_json``)::

    {"runnable": true, "workload": "matmul", "tasks": 4, "submitter": "alice", "online": 2,
     "position": 1234,                       # the log position the views had folded
     "best": "cpu:x86_64",                   # the fastest capable device class
     "runs": 1.0,                            # results per task verification gathers (expected)
     "per_task_s": {"seconds": 1.2, "low": 0.9, "high": 1.6, "basis": "probe", "coverage": 0.8},
     "start_s": 0.0,                         # seconds from now until its first task starts
     "finish_s": {"low": 2.1, "expected": 2.6, "high": 3.4},   # until its last task ends
     "cost_micros": {"low": 0, "expected": 0, "high": 0},      # the whole job, replicas included
     "ahead": 0, "slots": 4,                 # tasks fair share puts ahead of it; slots that could run it
     "options": [{"device_class": "cpu:x86_64", "best_provider": "p1", "slots": 4, "free": 4,
                  "providers": [{"provider_id": "p1", "slots": 4, "free": 4, "price_micros": 0}],
                  "per_task_s": {...}, "runs": 1.0,
                  "cost_per_task_micros": {...}, "cost_micros": {...},
                  "start_s": 0.0, "finish_s": {...}, "ahead": 0}],
     "why": {},                              # requirement -> why it rules providers out
     "ruled_out": {}}                        # requirement -> how many online providers it rules out

The job's start and finish (top level) are forecast on every capable online slot, with the per-task
time of the fastest class, as the orchestrator predicts ``JobAccepted.predicted_s``; each option's are
forecast as if only that class ran it. Intervals are p10 to p90 (``coverage``). Costs are in
micro-credits: ``low`` at the class's cheapest price and the fast end of the interval, ``high`` at its
dearest and the slow end. Nothing capable: ``"runnable": false``, no ``options``, and ``why`` names
each requirement that rules providers out (``backend``, ``vram``, ``compute_capability``,
``workload``, ``price``), or ``providers`` when none is online. A refused request:
``{"error": "...", "field": "..."}``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import TypeAdapter, ValidationError

from events.errors import InvalidPayload, first_error
from events.estimates import Prediction, RuntimeModel, device_class, fair_share_ahead, forecast, shape_of
from events.intake import MAX_INTAKE_BYTES
from events.job import JobSpec
from events.metering import metered_amount
from events.placement import REQUIREMENTS, misfits_by_requirement
from events.quotas import TokenBuckets
from events.subjects import API_PREFIX
from events.types import Calibration, Capabilities, Estimate
from events.verification import TRUSTED_AFTER, VerifyPolicy, expected_replicas
from events.workloads import CODE_WORKLOAD, contract, validate_params
from projections.eta import EtaView
from projections.fleet import FleetView, ProviderRow
from projections.projector import Projector

__all__ = [
    "QUOTE_OPERATION",
    "ClassOption",
    "EtaSource",
    "ProviderOption",
    "Quote",
    "QuoteService",
    "Span",
    "SpecCheck",
    "quote",
]

QUOTE_OPERATION = "quote"
#: Task parameters sampled for the per-task estimate of a job whose tasks differ (a params split).
_SAMPLED_TASKS = 256
_log = structlog.get_logger("gpufleet.quote")

#: What a submission's own validation says about a spec beyond its schema (``actors.job.validate_spec``,
#: given by whoever wires the service: projections never import the actors).
SpecCheck = Callable[[JobSpec, datetime], InvalidPayload | None]


class EtaSource(Protocol):
    """What a quote reads from the ETA view (``projections.eta.EtaView``)."""

    model: RuntimeModel

    def queue(self) -> Mapping[tuple[int, str], Sequence[float]]:
        """(priority, submitter) -> predicted seconds of each queued task, in queue order."""
        ...

    def busy(self, now: float) -> Mapping[str, Sequence[float]]:
        """provider id -> seconds until each of its leased or running tasks should end."""
        ...


@dataclass(frozen=True, slots=True)
class Span:
    """An interval around an expected value."""

    low: float
    expected: float
    high: float

    def to_json(self, *, integers: bool = False) -> dict[str, float]:
        if integers:  # money: micro-credits
            return {"low": int(self.low), "expected": int(self.expected), "high": int(self.high)}
        return {"low": self.low, "expected": self.expected, "high": self.high}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Span:
        return cls(float(d["low"]), float(d["expected"]), float(d["high"]))


@dataclass(frozen=True, slots=True)
class ProviderOption:
    """One capable online provider."""

    provider_id: str
    slots: int
    free: int
    price_micros: int


@dataclass(frozen=True, slots=True)
class ClassOption:
    """One capable device class: its providers, and the job as if it ran on this class alone."""

    device_class: str
    providers: tuple[ProviderOption, ...]
    #: The provider the per-task prediction is for: the class's fastest, then cheapest.
    best_provider: str
    slots: int
    free: int
    #: One run of one task (``runs`` of them per task, one after another).
    per_task: Prediction
    runs: float
    cost_per_task_micros: Span
    cost_micros: Span
    start_s: float
    finish_s: Span
    ahead: int


@dataclass(frozen=True, slots=True)
class Quote:
    """The answer to "what if I submitted this now?" (see the module docstring for its JSON)."""

    runnable: bool
    workload: str
    tasks: int
    submitter: str
    online: int
    options: tuple[ClassOption, ...] = ()
    best: str | None = None
    runs: float = 1.0
    per_task: Prediction | None = None
    start_s: float | None = None
    finish_s: Span | None = None
    cost_micros: Span | None = None
    ahead: int = 0
    slots: int = 0
    why: dict[str, str] = field(default_factory=dict)
    ruled_out: dict[str, int] = field(default_factory=dict)
    position: int = 0

    def to_json(self) -> dict[str, Any]:
        """The wire form (finite numbers only)."""
        return {
            "runnable": self.runnable,
            "workload": self.workload,
            "tasks": self.tasks,
            "submitter": self.submitter,
            "online": self.online,
            "position": self.position,
            "best": self.best,
            "runs": self.runs,
            "per_task_s": _prediction_json(self.per_task) if self.per_task else None,
            "start_s": self.start_s,
            "finish_s": self.finish_s.to_json() if self.finish_s else None,
            "cost_micros": self.cost_micros.to_json(integers=True) if self.cost_micros else None,
            "ahead": self.ahead,
            "slots": self.slots,
            "options": [_option_json(o) for o in self.options],
            "why": dict(self.why),
            "ruled_out": dict(self.ruled_out),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Quote:
        """Read an answer back (``InvalidPayload`` if it is not one)."""
        try:
            return cls(
                runnable=bool(d["runnable"]),
                workload=str(d["workload"]),
                tasks=int(d["tasks"]),
                submitter=str(d["submitter"]),
                online=int(d["online"]),
                options=tuple(_option_from(o) for o in d.get("options", [])),
                best=d.get("best"),
                runs=float(d.get("runs", 1.0)),
                per_task=_prediction_from(d["per_task_s"]) if d.get("per_task_s") else None,
                start_s=float(d["start_s"]) if d.get("start_s") is not None else None,
                finish_s=Span.from_json(d["finish_s"]) if d.get("finish_s") else None,
                cost_micros=Span.from_json(d["cost_micros"]) if d.get("cost_micros") else None,
                ahead=int(d.get("ahead", 0)),
                slots=int(d.get("slots", 0)),
                why={str(k): str(v) for k, v in dict(d.get("why", {})).items()},
                ruled_out={str(k): int(v) for k, v in dict(d.get("ruled_out", {})).items()},
                position=int(d.get("position", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidPayload(f"not a quote: {type(e).__name__}: {e}", field="quote") from e


def _prediction_json(p: Prediction) -> dict[str, Any]:
    return {"seconds": p.seconds, "low": p.low, "high": p.high, "basis": p.basis, "coverage": p.coverage}


def _prediction_from(d: Mapping[str, Any]) -> Prediction:
    return Prediction(float(d["seconds"]), float(d["low"]), float(d["high"]), str(d["basis"]), float(d["coverage"]))


def _option_json(o: ClassOption) -> dict[str, Any]:
    return {
        "device_class": o.device_class,
        "best_provider": o.best_provider,
        "slots": o.slots,
        "free": o.free,
        "providers": [
            {"provider_id": p.provider_id, "slots": p.slots, "free": p.free, "price_micros": p.price_micros}
            for p in o.providers
        ],
        "per_task_s": _prediction_json(o.per_task),
        "runs": o.runs,
        "cost_per_task_micros": o.cost_per_task_micros.to_json(integers=True),
        "cost_micros": o.cost_micros.to_json(integers=True),
        "start_s": o.start_s,
        "finish_s": o.finish_s.to_json(),
        "ahead": o.ahead,
    }


def _option_from(d: Mapping[str, Any]) -> ClassOption:
    return ClassOption(
        device_class=str(d["device_class"]),
        providers=tuple(
            ProviderOption(str(p["provider_id"]), int(p["slots"]), int(p["free"]), int(p["price_micros"]))
            for p in d["providers"]
        ),
        best_provider=str(d["best_provider"]),
        slots=int(d["slots"]),
        free=int(d["free"]),
        per_task=_prediction_from(d["per_task_s"]),
        runs=float(d["runs"]),
        cost_per_task_micros=Span.from_json(d["cost_per_task_micros"]),
        cost_micros=Span.from_json(d["cost_micros"]),
        start_s=float(d["start_s"]),
        finish_s=Span.from_json(d["finish_s"]),
        ahead=int(d["ahead"]),
    )


# ---- the pure quote --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _capabilities(text: str) -> Capabilities | None:
    try:
        return Capabilities.model_validate_json(text)
    except ValidationError:
        return None


@functools.lru_cache(maxsize=4096)
def _calibration(text: str | None) -> Calibration | None:
    if text is None:
        return None
    try:
        return Calibration.model_validate_json(text)
    except ValidationError:
        return None


def _estimates(spec: JobSpec) -> list[tuple[Estimate, int]]:
    """The tasks' estimates and how many tasks each stands for (a sample of a params split's tasks)."""
    c = contract(spec.workload)
    n = spec.task_count()
    if spec.split.kind != "params":
        return [(c.estimate(validate_params(spec.workload, spec.task_params(0))), n)]
    picks = sorted({i * n // _SAMPLED_TASKS for i in range(_SAMPLED_TASKS)}) if n > _SAMPLED_TASKS else range(n)
    seen: dict[object, tuple[Estimate, int]] = {}
    for i in picks:
        e = c.estimate(validate_params(spec.workload, spec.task_params(i)))
        key = shape_of(spec.workload, e)
        old = seen.get(key)
        seen[key] = (e, (old[1] if old else 0) + 1)
    return list(seen.values())


def _mean_prediction(
    model: RuntimeModel,
    workload: str,
    estimates: list[tuple[Estimate, int]],
    cal: Calibration | None,
    pid: str,
    dc: str,
) -> Prediction:
    """One task's prediction on this provider: the mean over the job's task shapes."""
    total = sum(w for _, w in estimates)
    preds = [(model.predict_interval(workload, e, cal, pid, dc), w) for e, w in estimates]
    if len(preds) == 1:
        return preds[0][0]
    return Prediction(
        sum(p.seconds * w for p, w in preds) / total,
        sum(p.low * w for p, w in preds) / total,
        sum(p.high * w for p, w in preds) / total,
        min((p for p, _ in preds), key=lambda p: _BASIS_RANK.get(p.basis, 9)).basis,
        preds[0][0].coverage,
    )


_BASIS_RANK = {"roofline": 0, "probe": 1, "fit": 2, "shape": 3}  # the loosest basis speaks for a mix


def _cost(seconds: float, price_micros: int, runs: float) -> int:
    """Micro-credits for ``runs`` runs of ``seconds`` each at ``price_micros`` per GPU-second."""
    if price_micros <= 0 or seconds <= 0.0:
        return 0
    gpu_ms = min(math.ceil(seconds * 1000.0), 2**53)
    return math.ceil(runs * metered_amount(gpu_ms, price_micros))


@dataclass(slots=True)
class _Capable:
    row: ProviderRow
    caps: Capabilities
    dclass: str
    free_at: list[float]
    free: int


def _slots_free_at(row: ProviderRow, busy: Sequence[float]) -> tuple[list[float], int]:
    """Seconds until each of the provider's slots is free (0: free now), and how many are free."""
    ends = sorted(max(0.0, b) for b in busy)[: max(1, row.slots)]
    free = max(0, row.slots - len(ends))
    return [0.0] * free + ends, free


def _why(requirement: str, spec: JobSpec, out: list[Capabilities], online: int) -> str:
    n = f"{len(out)} of the {online} online providers" if len(out) < online else f"the {online} online providers"
    if len(out) == online == 1:
        n = "the one online provider"
    r = spec.resources
    if requirement == "backend":
        have = ", ".join(sorted({c.backend for c in out}))
        verb = "is" if len(out) == 1 else "are"
        return f"needs {r.backend}; {n} {verb} {have}"
    if requirement == "vram":
        return f"needs {r.min_vram_mb} MB VRAM; {n} have less (at most {max(c.vram_mb for c in out)} MB)"
    if requirement == "compute_capability":
        best = max(c.compute_capability for c in out)
        return f"needs compute capability {r.min_compute_capability}; {n} have less (at most {best})"
    if requirement == "workload":
        extra = " (it needs CUDA)" if contract(spec.workload).requires_cuda else ""
        if spec.workload == CODE_WORKLOAD:
            extra = " (a provider runs submitters' code only when it opts in: --accept-code)"
        return f"{n} do not run {spec.workload}{extra}"
    if requirement == "code":
        return f"{n} do not run code from {spec.submitter or 'you'} (a provider opts in with --accept-code)"
    if requirement == "packages":
        need = ", ".join(f"{k}{v}" for k, v in sorted(r.packages.items()))
        return f"needs {need}; {n} do not have them"
    cheapest = min(c.price_micros for c in out)
    return f"ceiling {spec.max_price_micros} micros/GPU-s; {n} charge more (the cheapest {cheapest})"


def quote(
    spec: JobSpec,
    *,
    fleet: Iterable[ProviderRow],
    eta: EtaSource,
    now: float,
    default_verify: VerifyPolicy | None = None,
    position: int = 0,
) -> Quote:
    """What submitting ``spec`` (already validated; its ``submitter`` set) at epoch ``now`` would give.

    ``default_verify``: the network's policy for a spec that names none (the orchestrator's).
    """
    rows = [r for r in fleet if r.status == "online"]
    answer = functools.partial(
        Quote, workload=spec.workload, tasks=spec.task_count(), submitter=spec.submitter, position=position
    )
    if not rows:
        return answer(False, online=0, why={"providers": "no provider is online"})
    busy = eta.busy(now)
    capable: list[_Capable] = []
    ruled: dict[str, list[Capabilities]] = {}
    online = 0
    for row in sorted(rows, key=lambda r: r.provider_id):
        caps = _capabilities(row.capabilities)
        if caps is None:
            continue
        online += 1
        problems = misfits_by_requirement(caps, spec.resources, spec.workload, spec.max_price_micros, spec.submitter)
        for req in problems:
            ruled.setdefault(req, []).append(caps)
        if not problems:
            free_at, free = _slots_free_at(row, busy.get(row.provider_id, ()))
            capable.append(_Capable(row, caps, device_class(caps), free_at, free))
    why = {req: _why(req, spec, ruled[req], online) for req in REQUIREMENTS if req in ruled}
    ruled_out = {req: len(ruled[req]) for req in REQUIREMENTS if req in ruled}
    if not capable:
        if online == 0:
            why = {"providers": "no online provider could be read"}
        return answer(False, online=online, why=why, ruled_out=ruled_out)

    estimates = _estimates(spec)
    common = max(estimates, key=lambda ew: ew[1])[0]
    compare = contract(spec.workload).compare
    policy = spec.verify if spec.verify is not None else default_verify
    tasks = spec.task_count()
    first, last = fair_share_ahead(eta.queue(), spec.priority, spec.submitter, tasks)
    by_class: dict[str, list[_Capable]] = {}
    for c in capable:
        by_class.setdefault(c.dclass, []).append(c)
    options: list[ClassOption] = []
    for dclass, members in by_class.items():
        # The class's best provider: the fastest for the job's commonest task shape, then the cheapest.
        best = min(
            members,
            key=lambda m: (
                eta.model.predict(spec.workload, common, _calibration(m.row.calibration), m.row.provider_id, dclass),
                m.caps.price_micros,
                m.row.provider_id,
            ),
        )
        cal = _calibration(best.row.calibration)
        per = _mean_prediction(eta.model, spec.workload, estimates, cal, best.row.provider_id, dclass)
        prices = [m.caps.price_micros for m in members]
        slots = sum(len(m.free_at) for m in members)
        trusted = sum(len(m.free_at) for m in members if m.row.consecutive_valid >= TRUSTED_AFTER) / max(1, slots)
        runs = expected_replicas(policy, best.caps.price_micros > 0, compare, trusted)
        each = Span(
            _cost(per.low, min(prices), runs),
            _cost(per.seconds, best.caps.price_micros, runs),
            _cost(per.high, max(prices), runs),
        )
        # Each run holds its slot for the task and the network's handover to the next (as the
        # orchestrator forecasts a job at acceptance).
        per_run = per.plus(eta.model.handoff(dclass)).scaled(runs)
        f = forecast([t for m in members for t in m.free_at], first, last, tasks, per_run)
        options.append(
            ClassOption(
                device_class=dclass,
                providers=tuple(
                    ProviderOption(m.row.provider_id, len(m.free_at), m.free, m.caps.price_micros) for m in members
                ),
                best_provider=best.row.provider_id,
                slots=slots,
                free=sum(m.free for m in members),
                per_task=per,
                runs=runs,
                cost_per_task_micros=each,
                cost_micros=Span(each.low * tasks, each.expected * tasks, each.high * tasks),
                start_s=f.start_s,
                finish_s=Span(f.finish_low_s, f.finish_s, f.finish_high_s),
                ahead=f.ahead,
            )
        )
    options.sort(key=lambda o: (o.finish_s.expected, o.cost_micros.expected, o.device_class))
    top = min(options, key=lambda o: (o.per_task.seconds * o.runs, o.device_class))
    top_run = top.per_task.plus(eta.model.handoff(top.device_class)).scaled(top.runs)
    whole = forecast([t for c in capable for t in c.free_at], first, last, tasks, top_run)
    return answer(
        True,
        online=online,
        options=tuple(options),
        best=top.device_class,
        runs=top.runs,
        per_task=top.per_task,
        start_s=whole.start_s,
        finish_s=Span(whole.finish_low_s, whole.finish_s, whole.finish_high_s),
        cost_micros=Span(
            min(o.cost_micros.low for o in options), top.cost_micros.expected, max(o.cost_micros.high for o in options)
        ),
        ahead=whole.ahead,
        slots=whole.slots,
        why=why,
        ruled_out=ruled_out,
    )


# ---- the service -----------------------------------------------------------------------------------

_SPEC = TypeAdapter(JobSpec)


class _Refused(Exception):
    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


class QuoteService:
    """Answers ``gf.api.*.*.quote`` from ``fleet`` and ``eta``, views the projector in this process keeps
    current; ``nc`` may subscribe there and publish replies. ``check`` is a submission's validation."""

    def __init__(
        self,
        nc: NATS,
        *,
        fleet: Callable[[], Iterable[ProviderRow]],
        eta: EtaSource,
        check: SpecCheck,
        position: Callable[[], int] = lambda: 0,
        default_verify: VerifyPolicy | None = None,
        queue: str = "gf-quote",
        max_bytes: int = MAX_INTAKE_BYTES,
        max_pending: int = 256,
        rate_per_s: float = 10.0,
        burst: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nc = nc
        self.fleet = fleet
        self.eta = eta
        self.check = check
        self.position = position
        self.default_verify = default_verify
        self.queue = queue
        self.max_bytes = max_bytes
        self.clock = clock
        self.answered = 0
        self.refused = 0
        self._sub: Any = None
        self.max_pending = max_pending
        #: Per identity: at most ``rate_per_s`` quotes a second, ``burst`` at once. One stranger's flood
        #: must not take the projector's loop (and every other asker's answers) for itself.
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets = TokenBuckets(clock, max_keys=_MAX_BUCKETS)

    @classmethod
    def over(
        cls, projector: Projector, nc: NATS, check: SpecCheck, default_verify: VerifyPolicy | None, **kw: Any
    ) -> QuoteService:
        """A service answering from ``projector``'s fleet and ETA views (the projector must have both)."""
        fleet = next(v for v in projector.views if isinstance(v, FleetView))
        eta = next(v for v in projector.views if isinstance(v, EtaView))
        return cls(
            nc,
            fleet=fleet.providers.values,
            eta=eta,
            check=check,
            position=lambda: projector.position,
            default_verify=default_verify,
            **kw,
        )

    async def start(self) -> None:
        """Subscribe (in a queue group, so several network processes share the load). Requests are
        answered one at a time, in order; past ``max_pending`` waiting ones, the server's client
        library drops the excess (the asker times out) rather than let a flood grow memory."""
        self._sub = await self.nc.subscribe(
            f"{API_PREFIX}.*.*.{QUOTE_OPERATION}",
            queue=self.queue,
            cb=self._on,
            pending_msgs_limit=self.max_pending,
            pending_bytes_limit=self.max_pending * self.max_bytes,
        )

    async def stop(self) -> None:
        """Stop answering."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on(self, msg: Msg) -> None:
        if not msg.reply:
            return
        parts = msg.subject.split(".")
        log = _log.bind(role=parts[2], name=parts[3]) if len(parts) == 5 else _log.bind(subject=msg.subject)
        try:
            body = self.answer(msg.subject, msg.data)
            self.answered += 1
        except _Refused as e:
            self.refused += 1
            log.info("quote.refused", error=str(e), field=e.field)
            body = {"error": str(e), "field": e.field}
        except Exception as e:  # a bug must cost one answer, never the service
            self.refused += 1
            log.error("quote.failed", error=f"{type(e).__name__}: {e}")
            body = {"error": "the quote failed on the network's side", "field": None}
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(msg.reply, json.dumps(body, separators=(",", ":"), allow_nan=False).encode())

    def _take(self, who: str) -> None:
        """One token from ``who``'s bucket, or a refusal naming the limit."""
        if not self._buckets.take(who, self.rate_per_s, self.burst):
            raise _Refused(
                f"too many quotes: at most {self.rate_per_s:g} a second ({self.burst} at once) per identity", "rate"
            )

    def answer(self, subject: str, data: bytes) -> dict[str, Any]:
        """The answer to one request (``_Refused`` for a bad one); synchronous, so the views it reads
        do not move under it."""
        parts = subject.split(".")
        if len(parts) != 5:
            raise _Refused(f"not a quote subject: {subject!r}", "subject")
        name = parts[3]
        self._take(f"{parts[2]}.{name}")
        if len(data) > self.max_bytes:
            raise _Refused(f"the request is {len(data)} bytes; at most {self.max_bytes}", "body")
        try:
            spec = _SPEC.validate_json(data or b"{}")
        except ValidationError as e:
            err = first_error(e)
            raise _Refused(err.problem, err.field) from e
        if spec.submitter not in ("", name):
            raise _Refused(f"names {spec.submitter!r}, but these credentials are {name!r}", "submitter")
        spec = spec.model_copy(update={"submitter": name})
        now = self.clock()
        problem = self.check(spec, datetime.fromtimestamp(now, UTC))
        if problem is not None:
            raise _Refused(problem.problem, problem.field)
        q = quote(
            spec,
            fleet=self.fleet(),
            eta=self.eta,
            now=now,
            default_verify=self.default_verify,
            position=self.position(),
        )
        doc: dict[str, Any] = _finite(q.to_json())
        return doc


_MAX_BUCKETS = 10_000


def _finite(doc: Any) -> Any:
    """JSON has no infinity: an unbounded figure is sent as null."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    if isinstance(doc, dict):
        return {k: _finite(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_finite(v) for v in doc]
    return doc
