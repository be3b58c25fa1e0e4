"""How long a task will take on a provider, with an honest interval, and when a job would start and end.

One model, shared by the scheduler (which records its predictions in ``TaskLeased`` and
``JobAccepted``), the ETA view and the quote service. It is pure and deterministic: the same
observations in the same order give the same predictions, so replay reproduces every ETA.

A prediction is built in three layers, from the loosest to the closest:

1. **Physics** (``base_seconds``): the workload contract's FLOPs and bytes against the provider's
   calibrated peak rates, roofline-style: max(compute, memory) + fixed costs + per-task overhead.
2. **The workload's size law** (``_Fit``, per workload and device class): a log-log line of actual
   time against roofline time (a known fixed duration is added outside it), its slope shrunk towards
   1 (time proportional to work) while the evidence is thin, so a new size is read off the line, not
   guessed. It starts from calibration probes (each provider runs every catalogue workload at two
   small sizes at start): a provider's own for its own device, else the median across the class's
   providers of each one's line (one vote each); shifted by how much slower completed tasks on the
   class ran than their probes said. Completed tasks then carry it alone (after ``_PROBES_UNTIL``),
   and the provider's own offset from it is learned as it completes work.
3. **The shape's own runs**: once this exact task shape (workload and estimate) has run on the
   provider, or on its class, the median of its last few runs.

Every prediction carries an interval, p10 to p90 by default: split-conformal, from the distribution of
log(actual / predicted) residuals of earlier predictions made on the same basis and device class
(and the same workload once it has enough of them), each residual taken before its observation was
learned. Until a basis has residuals, a wide prior interval stands in for it. The point always lies
inside.

``forecast`` turns per-task predictions into a job's start and finish given the queue: the slots that
could run it, when each frees up, and the work fair share puts ahead of it (``fair_share_ahead``);
each run also holds its slot for the network's handover to the next task (``handoff``).

Tables keyed by names strangers choose (device models, shapes) are bounded; probes of workloads
outside the catalogue are ignored.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from events.types import Calibration, Capabilities, Estimate
from events.workloads import WORKLOADS

__all__ = [
    "BASES",
    "DEFAULT_COVERAGE",
    "Forecast",
    "Prediction",
    "RuntimeModel",
    "Shape",
    "base_seconds",
    "device_class",
    "fair_share_ahead",
    "forecast",
    "handoff_sample",
    "run_start",
    "shape_of",
    "work_seconds",
]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

#: Assumed when a provider has not calibrated: a modest CPU.
_DEFAULT_TFLOPS = 0.05
_DEFAULT_GBPS = 10.0
_DEFAULT_OVERHEAD_S = 0.002

#: What a prediction rests on, from the closest to the loosest.
BASES = ("shape", "fit", "probe", "roofline")
#: The default interval: p10 to p90.
DEFAULT_COVERAGE = 0.8
#: Residuals needed before a basis's (or a workload's) own interval replaces the prior.
_MIN_RESIDUALS = 10
_MIN_WORKLOAD_RESIDUALS = 10
#: Half-widths of the prior intervals, in log space (exp(0.9) is about 2.5x).
_PRIOR_HALF_WIDTH = {"shape": 0.25, "fit": 0.45, "probe": 0.6, "roofline": 0.9}
#: Probe runs count for less than completed tasks in a size law, and only the latest of so many
#: providers of a class count.
_PROBE_WEIGHT = 0.5
_PROBING_PROVIDERS = 16
#: Device classes the per-class tables keep (the most recently seen): providers choose their model
#: strings, so the classes are theirs to multiply.
_MAX_CLASSES = 1024
#: Completed tasks after which a law no longer counts probes.
_PROBES_UNTIL = 3
#: A shape's own runs: the median of so many of its latest.
_SHAPE_RUNS = 3
#: Shrinkage of a size law's slope towards 1, in squared log units of spread.
_SLOPE_PRIOR = 0.5
_SLOPE_RANGE = (0.4, 1.6)


def _rates(calibration: Calibration | None, precision: str) -> tuple[float, float, float]:
    """(TFLOP/s for ``precision``, memory GB/s, per-task overhead s) of a calibration, defaulted."""
    cal = calibration or Calibration()
    # Only positive, finite rates count: a rate of 0 is "not measured", never an infinitely slow (or,
    # divided by, an infinitely fast) device.
    rates = {k: v for k, v in cal.matmul_tflops.items() if v > 0 and math.isfinite(v)}
    tflops = rates.get(precision) or rates.get("fp32") or max(rates.values(), default=_DEFAULT_TFLOPS)
    gbps = cal.memory_gbps if cal.memory_gbps > 0 and math.isfinite(cal.memory_gbps) else _DEFAULT_GBPS
    return tflops, gbps, cal.task_overhead_s or _DEFAULT_OVERHEAD_S


def work_seconds(estimate: Estimate, calibration: Calibration | None) -> float:
    """The roofline: the slower of compute and memory traffic at the calibrated peaks, plus the
    workload's own fixed seconds (no per-task overhead)."""
    tflops, gbps, _ = _rates(calibration, estimate.precision)
    return max(estimate.flops / (tflops * 1e12), estimate.bytes_moved / (gbps * 1e9)) + estimate.fixed_seconds


def base_seconds(estimate: Estimate, calibration: Calibration | None) -> float:
    """A first-principles duration: the roofline plus the provider's per-task overhead."""
    return work_seconds(estimate, calibration) + _rates(calibration, estimate.precision)[2]


def _axis(estimate: Estimate, calibration: Calibration | None) -> float:
    """The size laws' axis: log of the roofline seconds of the work that scales with the size (a known
    fixed duration, such as a sleep or a stencil's step delay, is added outside the law), floored."""
    return math.log(max(work_seconds(estimate, calibration) - estimate.fixed_seconds, 0.0) + 1e-9)


def _scaling(actual_s: float, estimate: Estimate) -> float:
    """log of the part of a measured time that the size law models: all but the known fixed duration."""
    return math.log(max(actual_s - estimate.fixed_seconds, 1e-6))


@dataclass(slots=True)
class _Reference:
    """A device class's reference rates: the median of its providers' recent calibrations.

    A class's size laws are laid out against these, not against each provider's own figures: the
    providers of a class are one kind of device, and one calibration taken while the machine was busy
    (a tenth of the fp64 rate, measured here) would otherwise move that provider's tasks along the
    axis and bend the law for every provider of the class.
    """

    #: provider -> its latest calibration, for the most recent providers of the class (one each, so
    #: none can outvote the others by calibrating again and again).
    latest: dict[str, Calibration] = field(default_factory=dict)
    version: int = 0
    _median: Calibration | None = field(default=None, compare=False, repr=False)

    def add(self, provider: str, calibration: Calibration) -> None:
        self.latest.pop(provider, None)
        if len(self.latest) >= _PROBING_PROVIDERS:
            del self.latest[next(iter(self.latest))]
        self.latest[provider] = calibration
        self.version += 1
        self._median = None

    def median(self) -> Calibration:
        if self._median is None:
            cals = list(self.latest.values())
            keys = sorted({k for c in cals for k in c.matmul_tflops})
            rates = {k: _median([c.matmul_tflops.get(k, 0.0) for c in cals]) for k in keys}
            gbps = _median([c.memory_gbps for c in cals])
            self._median = Calibration.model_construct(
                matmul_tflops={k: v for k, v in rates.items() if v > 0},
                memory_gbps=gbps,
                task_overhead_s=0.0,
                probes={},
            )
        return self._median


def _median_of(values: list[float]) -> float:
    """The median of a non-empty list."""
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _median(values: list[float]) -> float:
    """The median of the measured (positive) values; 0 (not measured) when there are none."""
    measured = [x for x in values if x > 0 and math.isfinite(x)]
    return _median_of(measured) if measured else 0.0


def device_class(capabilities: Capabilities | None) -> str:
    """The class a provider's history is pooled in: its backend and device model."""
    if capabilities is None:
        return ""
    return f"{capabilities.backend}:{capabilities.gpu_model}"


#: One task shape: its workload and its estimate (tasks of one split usually share it exactly).
Shape = tuple[str, float, float, int, float, str]


def shape_of(workload: str, estimate: Estimate) -> Shape:
    """The shape of a task: its workload and its estimate (the tasks of one split usually share it)."""
    e = estimate
    return (workload, e.flops, e.bytes_moved, e.memory_bytes, e.fixed_seconds, e.precision)


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted seconds with an interval (``low`` to ``high``, ``coverage`` of outcomes expected
    inside), and what it rests on: ``shape``, ``fit``, ``probe`` or ``roofline`` (see the module)."""

    seconds: float
    low: float
    high: float
    basis: str = "roofline"
    coverage: float = DEFAULT_COVERAGE

    def scaled(self, factor: float) -> Prediction:
        """The same prediction for ``factor`` times the work (runs one after another)."""
        return Prediction(self.seconds * factor, self.low * factor, self.high * factor, self.basis, self.coverage)

    def plus(self, seconds: float) -> Prediction:
        """The same prediction with ``seconds`` more, certain (the network's own handling of a task)."""
        return Prediction(self.seconds + seconds, self.low + seconds, self.high + seconds, self.basis, self.coverage)

    def contains(self, actual: float) -> bool:
        """Whether ``actual`` fell inside the interval."""
        return self.low <= actual <= self.high


@dataclass(slots=True)
class _Mean:
    """A mean of log values: plain over the first observations, then exponential (follows drift)."""

    value: float = 0.0
    n: int = 0

    def observe(self, x: float, alpha: float) -> None:
        self.n += 1
        self.value += max(alpha, 1.0 / self.n) * (x - self.value)


@dataclass(slots=True)
class _Recent:
    """The median of the last few log values: a shape's own runs, robust to the odd slow one."""

    values: deque[float] = field(default_factory=lambda: deque(maxlen=_SHAPE_RUNS))

    @property
    def value(self) -> float:
        return _median_of(list(self.values))

    def observe(self, x: float, alpha: float) -> None:
        self.values.append(x)


@dataclass(slots=True)
class _Fit:
    """A workload's size law on a device class: log actual = a + b * (x - centre), weighted, over its
    most recent points, where x is the log roofline time at the class's reference rates; the slope is
    shrunk towards 1. Points keep their estimates, so a new reference lays them out again."""

    #: Completed tasks (estimate, log seconds), the most recent.
    points: deque[tuple[Estimate, float]] = field(default_factory=lambda: deque(maxlen=64))
    #: provider -> the probe runs of its latest calibration (the most recent providers only): a
    #: provider that calibrates again replaces its own, so none can crowd the law by recalibrating.
    probes: dict[str, tuple[tuple[Estimate, float], ...]] = field(default_factory=dict)
    history: int = 0
    _coef: dict[tuple[bool, int, float, str], tuple[float, float, float]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def add(self, estimate: Estimate, y: float) -> None:
        self.points.append((estimate, y))
        self.history += 1
        self._coef.clear()

    def probed(self, provider: str, runs: tuple[tuple[Estimate, float], ...]) -> None:
        """The provider's latest probe runs (none: it no longer probes this workload)."""
        self.probes.pop(provider, None)
        if runs:
            if len(self.probes) >= _PROBING_PROVIDERS:
                del self.probes[next(iter(self.probes))]
            self.probes[provider] = runs
        self._coef.clear()

    def _probe_law(self, ref: Calibration | None, provider: str) -> tuple[float, float, float] | None:
        """(centre, log seconds there, slope) of the probes' law for ``provider``: its own, from its
        own runs, when it probed (a measurement of this very device); else each provider's own law,
        then the median across providers of its level at a common centre and of its slope. One vote
        each, at whatever sizes it claims to have run: a liar moves its own predictions, and a minority
        of liars cannot drag the class's."""
        own = self.probes.get(provider)
        if own:
            return _line([(_axis(e, ref), y, 1.0) for e, y in own])
        laws = [_line([(_axis(e, ref), y, 1.0) for e, y in runs]) for runs in self.probes.values() if runs]
        if not laws:
            return None
        centre = _median_of([xm for xm, _, _ in laws])
        levels = [ym + b * (centre - xm) for xm, ym, b in laws]
        return centre, _median_of(levels), _median_of([b for _, _, b in laws])

    def at(
        self,
        estimate: Estimate,
        ref: Calibration | None,
        version: int,
        bias: float = 0.0,
        *,
        provider: str = "",
        probes_only: bool = False,
    ) -> float:
        """The law at ``estimate``: from completed work, and probes (shifted by the class's ``bias``,
        how much slower real tasks run than probes) until there is enough of it; or from the probes
        alone (unshifted: what the bias is measured against)."""
        use_probes = probes_only or len(self.points) < _PROBES_UNTIL
        key = (probes_only, version, bias, provider if use_probes and provider in self.probes else "")
        coef = self._coef.get(key)
        if coef is None:
            probe = self._probe_law(ref, key[3]) if use_probes else None
            xs = [] if probes_only else [(_axis(e, ref), y, 1.0) for e, y in self.points]
            if probe is not None and not xs:
                centre, level, slope = probe
                coef = (centre, level + (0.0 if probes_only else bias), slope)
            else:
                if probe is not None:
                    # Probes start a law; completed work, measured by the network, then carries it
                    # alone (a provider that lies in its probes moves no law that has history).
                    centre, level, slope = probe
                    xs += [(centre - 1.0, level + bias - slope, _PROBE_WEIGHT)]
                    xs += [(centre + 1.0, level + bias + slope, _PROBE_WEIGHT)]
                coef = _line(xs) if xs else (0.0, 0.0, 1.0)
            if len(self._coef) > 64:
                self._coef.clear()
            self._coef[key] = coef
        xm, ym, b = coef
        return ym + b * (_axis(estimate, ref) - xm)


def _line(xs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """A weighted line through (x, y, weight) points: (centre, level there, slope shrunk towards 1)."""
    total = sum(w for _, _, w in xs)
    xm = sum(w * px for px, _, w in xs) / total
    ym = sum(w * py for _, py, w in xs) / total
    sxx = sum(w * (px - xm) ** 2 for px, _, w in xs)
    sxy = sum(w * (px - xm) * (py - ym) for px, py, w in xs)
    b = (sxy + _SLOPE_PRIOR) / (sxx + _SLOPE_PRIOR)
    return xm, ym, min(max(b, _SLOPE_RANGE[0]), _SLOPE_RANGE[1])


@dataclass(slots=True)
class _Residuals:
    """Recent log(actual / predicted) residuals, kept sorted for quantiles."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    def add(self, r: float) -> None:
        self.recent.append(r)

    def bounds(self, coverage: float) -> tuple[float, float]:
        """The central ``coverage`` of the residuals, at the split-conformal level (each residual was
        taken out of sample, before its run was learned), interpolated between ranks: the whole ranks,
        which guarantee at least ``coverage``, covered 86% in ``bench/eta.py``, the plain p10 and p90
        74%, this 83%."""
        values = sorted(self.recent)
        n = len(values)
        # The split-conformal level, (n + 1) / n of the nominal one, interpolated between ranks.
        upper = min(1.0, (1.0 - (1.0 - coverage) / 2.0) * (n + 1) / n)
        return _quantile(values, 1.0 - upper), _quantile(values, upper)


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks of sorted ``values`` (numpy's default)."""
    pos = (len(values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _clamp(x: float) -> float:
    return min(max(x, -30.0), 30.0)


@dataclass
class RuntimeModel:
    """Predicts task durations from physics, size laws and history; see the module docstring.

    Tables keyed by shape keep the ``max_shapes`` most recently observed shapes, so a stream of unique
    shapes cannot grow them without bound; eviction follows the observations, so replay evicts alike.
    """

    alpha: float = 0.2
    max_shapes: int = 50_000
    coverage: float = DEFAULT_COVERAGE
    _fits: dict[tuple[str, str], _Fit] = field(default_factory=dict)
    _refs: dict[str, _Reference] = field(default_factory=dict)
    #: device class -> how much slower (log) completed tasks ran than their workload's probes said,
    #: over every probed workload: a task carries costs a probe does not (its results hashed and
    #: stored, progress reported, colder caches), and a workload's first tasks inherit what the
    #: others' showed.
    _probe_bias: dict[str, _Mean] = field(default_factory=dict)
    #: (workload, provider) -> the provider's mean log offset from its class's size law.
    _offsets: dict[tuple[str, str], _Mean] = field(default_factory=dict)
    _by_shape_provider: dict[tuple[Shape, str], _Recent] = field(default_factory=dict)
    _by_shape_class: dict[tuple[Shape, str], _Recent] = field(default_factory=dict)
    #: device class -> the mean log(actual / roofline) over every workload: a new workload's prior.
    _by_class: dict[str, _Mean] = field(default_factory=dict)
    _residuals: dict[tuple[str, str, str], _Residuals] = field(default_factory=dict)
    #: device class -> seconds a slot spends between tasks when work waits: from a lease ending to the
    #: next lease there, plus from that lease to the start the provider reports. A job's forecast pays
    #: it once per task; for tasks of milliseconds it is most of the job.
    handoffs: dict[str, _Mean] = field(default_factory=dict)

    # ---- predicting --------------------------------------------------------------------------------

    def _point(
        self, workload: str, estimate: Estimate, calibration: Calibration | None, provider: str, dclass: str
    ) -> tuple[float, str]:
        """log(predicted seconds) and its basis."""
        base = base_seconds(estimate, calibration)
        x = math.log(base)
        shape = shape_of(workload, estimate)
        own = self._by_shape_provider.get((shape, provider))
        if own is not None:
            return x + own.value, "shape"
        offset = self._offsets.get((workload, provider))
        shift = offset.value * offset.n / (offset.n + 2.0) if offset is not None else 0.0
        peers = self._by_shape_class.get((shape, dclass))
        if peers is not None:
            return x + peers.value + shift, "shape"
        fit = self._fits.get((workload, dclass))
        if fit is not None:
            scaled = math.exp(_clamp(self._law(fit, dclass, estimate, provider) + shift))
            return math.log(scaled + estimate.fixed_seconds), "fit" if fit.history else "probe"
        generic = self._by_class.get(dclass)
        if generic is None or estimate.fixed_seconds > 0.0:
            return x, "roofline"
        # The class's typical efficiency scales the roofline's work, never a known fixed duration.
        work = work_seconds(estimate, calibration)
        return math.log(work * math.exp(generic.value) + (base - work)), "roofline"

    def _law(self, fit: _Fit, dclass: str, estimate: Estimate, provider: str, *, probes_only: bool = False) -> float:
        ref = self._refs.get(dclass)
        bias = self._probe_bias.get(dclass)
        return fit.at(
            estimate,
            ref.median() if ref is not None else None,
            ref.version if ref is not None else 0,
            bias.value if bias is not None else 0.0,
            provider=provider,
            probes_only=probes_only,
        )

    def predict(
        self,
        workload: str,
        estimate: Estimate,
        calibration: Calibration | None,
        provider_id: str | None = None,
        device_class: str = "",
    ) -> float:
        """Predicted seconds for one task of ``workload`` on this provider (the scheduler's hot path)."""
        y, _ = self._point(workload, estimate, calibration, provider_id or "", device_class)
        return math.exp(_clamp(y))

    def predict_interval(
        self,
        workload: str,
        estimate: Estimate,
        calibration: Calibration | None,
        provider_id: str | None = None,
        device_class: str = "",
    ) -> Prediction:
        """The prediction with its interval (``coverage``, p10 to p90 by default)."""
        y, basis = self._point(workload, estimate, calibration, provider_id or "", device_class)
        lo, hi = self._bounds(basis, workload, device_class)
        total = math.exp(_clamp(y))
        # The uncertainty is the varying part's: a known fixed duration (a sleep, a stencil's step
        # delay) is certain, so it widens nothing. The point always lies within its interval (runs
        # that all came in slower than predicted would otherwise put both ends above it).
        fixed = min(estimate.fixed_seconds, total)
        varying = total - fixed
        low = min(fixed + varying * math.exp(lo), total)
        high = max(fixed + varying * math.exp(hi), total)
        return Prediction(total, low, high, basis, self.coverage)

    def _bounds(self, basis: str, workload: str, dclass: str) -> tuple[float, float]:
        # Residuals are kept per device class: one class's erratic runs (a provider that delays its
        # reports at will) widen no other class's intervals.
        mine = self._residuals.get((basis, workload, dclass))
        if mine is not None and len(mine.recent) >= _MIN_WORKLOAD_RESIDUALS:
            return mine.bounds(self.coverage)
        pooled = self._residuals.get((basis, "", dclass))
        if pooled is not None and len(pooled.recent) >= _MIN_RESIDUALS:
            return pooled.bounds(self.coverage)
        w = _PRIOR_HALF_WIDTH[basis]
        return -w, w

    def handoff(self, device_class: str) -> float:
        """Seconds a slot of this class spends handing over from one task to the next (0: unknown)."""
        h = self.handoffs.get(device_class)
        return h.value if h is not None else 0.0

    # ---- learning ----------------------------------------------------------------------------------

    def restore_handoff(self, device_class: str, seconds: float, n: int) -> None:
        """Set a class's handover as a reader that stored it had learned it (a restart)."""
        self.handoffs[device_class] = _Mean(seconds, n)

    def observe_handoff(self, device_class: str, seconds: float) -> None:
        """A slot handed over to its next task in ``seconds`` (see ``handoffs``)."""
        if math.isfinite(seconds):
            classes = min(_MAX_CLASSES, self.max_shapes)
            _recent(self.handoffs, device_class, classes, _Mean).observe(min(max(seconds, 0.0), 60.0), self.alpha)

    def calibrated(self, provider_id: str, device_class: str, calibration: Calibration | None) -> None:
        """A provider calibrated: its probe runs (of catalogue workloads only) replace its earlier ones
        in its class's size laws."""
        if calibration is None:
            return
        _recent(self._refs, device_class, min(_MAX_CLASSES, self.max_shapes), _Reference).add(provider_id, calibration)
        for (workload, dclass), fit in self._fits.items():
            if dclass == device_class and workload not in calibration.probes and provider_id in fit.probes:
                fit.probed(provider_id, ())
        for workload in sorted(calibration.probes):
            if workload not in WORKLOADS:
                continue
            runs = tuple((run.estimate, _scaling(run.actual_s, run.estimate)) for run in calibration.probes[workload])
            if runs:
                _recent(self._fits, (workload, device_class), self.max_shapes, _Fit).probed(provider_id, runs)

    def observe(
        self,
        workload: str,
        estimate: Estimate,
        calibration: Calibration | None,
        provider_id: str,
        actual_s: float,
        device_class: str = "",
    ) -> None:
        """Learn from one finished task: first its residual against what the model said, then the run."""
        base = base_seconds(estimate, calibration)
        if base <= 0.0 or actual_s <= 0.0 or not math.isfinite(actual_s):
            return
        x = math.log(base)
        y = math.log(min(max(actual_s, base * 1e-3), base * 1e4))
        predicted, basis = self._point(workload, estimate, calibration, provider_id, device_class)
        # The residual of the varying part (see ``predict_interval``); one of a task that is mostly a
        # known fixed duration says little about other workloads, so it stays with its own.
        total = math.exp(_clamp(predicted))
        varying = total - min(estimate.fixed_seconds, total)
        residual = min(max(_scaling(actual_s, estimate) - math.log(max(varying, 1e-6)), -5.0), 5.0)
        keys = [(basis, workload, device_class)]
        if varying >= 0.5 * total:
            keys.append((basis, "", device_class))
        for key in keys:
            _recent(self._residuals, key, self.max_shapes, _Residuals).add(residual)
        fit = self._fits.get((workload, device_class))
        if fit is not None and fit.probes:
            probed = self._law(fit, device_class, estimate, provider_id, probes_only=True)
            _recent(self._probe_bias, device_class, min(_MAX_CLASSES, self.max_shapes), _Mean).observe(
                _clamp(_scaling(actual_s, estimate) - probed), self.alpha
            )
        if fit is not None:
            _recent(self._offsets, (workload, provider_id), self.max_shapes, _Mean).observe(
                _clamp(_scaling(actual_s, estimate) - self._law(fit, device_class, estimate, provider_id)), self.alpha
            )
        _recent(self._fits, (workload, device_class), self.max_shapes, _Fit).add(estimate, _scaling(actual_s, estimate))
        if estimate.fixed_seconds == 0.0:
            _recent(self._by_class, device_class, min(_MAX_CLASSES, self.max_shapes), _Mean).observe(
                _clamp(y - x), self.alpha
            )
        shape = shape_of(workload, estimate)
        _recent(self._by_shape_provider, (shape, provider_id), self.max_shapes, _Recent).observe(y - x, self.alpha)
        _recent(self._by_shape_class, (shape, device_class), self.max_shapes, _Recent).observe(y - x, self.alpha)


#: A slot idle longer than this before its next lease was waiting for work, not handing over.
_HANDOFF_GAP_MAX_S = 1.0


def run_start(leased: T, started: T | None) -> T:
    """When a run began, as the log shows it: its reported start (``TaskStarted``), or, for a short
    task whose completion implied its start (no ``TaskStarted``: ``events.dispatch.START_REPORT_S``),
    its lease, which then counts the handover too (milliseconds). Every reader that measures a run
    (the orchestrator's runtime model, the ETA view, job status) takes it this way."""
    return started if started is not None else leased


def handoff_sample(freed_ts: float | None, leased_ts: float, started_ts: float) -> float:
    """One handover, in seconds: from the slot's last lease ending (``freed_ts``, epoch seconds, if
    any) to this lease, when that is short enough to have been handing over (work was waiting), plus
    from this lease to its reported start. The orchestrator and the ETA view both take it this way."""
    gap = leased_ts - freed_ts if freed_ts is not None else 0.0
    if not 0.0 <= gap <= _HANDOFF_GAP_MAX_S:
        gap = 0.0
    return gap + max(started_ts - leased_ts, 0.0)


def _recent(table: dict[K, V], key: K, limit: int, make: type[V]) -> V:
    """``table[key]``, moved to the newest end; the oldest entry goes when the table is full."""
    r = table.pop(key, None)
    if r is None:
        r = make()
        if len(table) >= limit:
            del table[next(iter(table))]
    table[key] = r
    return r


# ---- a job in the queue --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forecast:
    """When a job's first task should start and its last should finish, in seconds from now, as
    intervals (``*_low`` to ``*_high``)."""

    start_s: float
    finish_s: float
    finish_low_s: float
    finish_high_s: float
    #: Tasks fair share puts ahead of the job's first, and the slots that could run it.
    ahead: int
    slots: int


#: Beyond this many tasks, a queue is forecast as a fluid (work / slots) rather than task by task.
_SIMULATED = 20_000


def _makespan(free_at: Sequence[float], ahead: Iterable[float], mine: int, each: float) -> tuple[float, float]:
    """List scheduling on ``free_at`` slots: the work ``ahead`` first, then ``mine`` tasks of ``each``
    seconds; returns (start of my first, end of my last)."""
    slots = list(free_at)
    heapq.heapify(slots)
    work = list(ahead)
    if len(work) + mine > _SIMULATED:
        # A fluid: the work ahead spreads over every slot, then mine do.
        level = (sum(slots) + sum(work)) / len(slots)
        start = max(level, min(slots))
        return start, start + each * math.ceil(mine / len(slots))
    for d in work:
        t = heapq.heappop(slots)
        heapq.heappush(slots, t + d)
    start = slots[0]
    end = start
    for _ in range(mine):
        t = heapq.heappop(slots)
        end = max(end, t + each)
        heapq.heappush(slots, t + each)
    return start, end


def fair_share_ahead(
    queue: Mapping[tuple[int, str], Sequence[float]], priority: int, submitter: str, tasks: int
) -> tuple[list[float], list[float]]:
    """The queued work the scheduler places before a new job's first task, and before its last.

    ``queue``: (priority, submitter) -> the predicted seconds of its queued tasks, in their order.
    Higher priorities go first, whole; the submitter's own queued tasks go before its new ones; within
    the job's priority, stride scheduling alternates submitters, so each other submitter places about
    one task before the job's first (of equal weight) and as many as the job has before its last.
    """
    first: list[float] = []
    last: list[float] = []
    for (prio, who), durations in sorted(queue.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        if prio > priority or (prio == priority and who == submitter):
            first += durations
            last += durations
        elif prio == priority:
            first += durations[:1]
            last += durations[:tasks]
    return first, last


def forecast(
    free_at: Sequence[float],
    ahead_first: Sequence[float],
    ahead_last: Sequence[float],
    tasks: int,
    per_task: Prediction,
) -> Forecast:
    """A job of ``tasks`` tasks, each ``per_task`` (replicas included), on slots that free up at
    ``free_at`` seconds from now (0: free now), behind the work fair share places before its first and
    its last task (``fair_share_ahead``). No slot: an infinite forecast."""
    if not free_at:
        inf = math.inf
        return Forecast(inf, inf, inf, inf, len(ahead_first), 0)
    start, _ = _makespan(free_at, ahead_first, min(tasks, 1), per_task.seconds)
    _, finish = _makespan(free_at, ahead_last, tasks, per_task.seconds)
    # The work ahead is as uncertain as the job's own: its ends scale alike.
    lo = per_task.low / per_task.seconds if per_task.seconds > 0 else 1.0
    hi = per_task.high / per_task.seconds if per_task.seconds > 0 else 1.0
    _, low = _makespan(free_at, [d * lo for d in ahead_last], tasks, per_task.low)
    _, high = _makespan(free_at, [d * hi for d in ahead_last], tasks, per_task.high)
    return Forecast(start, finish, low, high, len(ahead_first), len(free_at))
