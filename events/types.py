"""Value types shared by the event catalogue: ids, times, resources, references, capabilities."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
)

__all__ = [
    "ID_PATTERN",
    "MAX_BYTES",
    "MAX_COUNT",
    "MAX_GPU_MS",
    "MAX_MEASURE",
    "MAX_MICROS",
    "MAX_PACKAGES",
    "MAX_PRICE_MICROS",
    "MAX_PROBED_WORKLOADS",
    "MAX_PROBES_PER_WORKLOAD",
    "MAX_REQUIRED_PACKAGES",
    "MAX_SECONDS",
    "MAX_TIMEOUT_S",
    "MAX_TOTAL_GPU_MS",
    "Backend",
    "BackendRequirement",
    "Bytes",
    "Calibration",
    "CanonicalJson",
    "Capabilities",
    "Count",
    "Estimate",
    "EventModel",
    "FailureReason",
    "FloatMap",
    "GpuMs",
    "Id",
    "JobId",
    "JsonObject",
    "JsonValue",
    "Measure",
    "Micros",
    "ObjectRef",
    "PackageName",
    "PriceMicros",
    "ProbeRun",
    "Resources",
    "ResultRef",
    "RetryPolicy",
    "Seconds",
    "Sha256",
    "StrMap",
    "TaskId",
    "TotalGpuMs",
    "UtcDateTime",
    "canonical_json",
    "recorded_seconds",
    "strict_model_config",
]

#: Ids appear in NATS subjects, so they are restricted to one safe subject token.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
#: A job is ``<submitter>.<name>``: its owner is part of its id, so a NATS wildcard (``*.alice.>``)
#: selects one submitter's jobs. Logs written before identities have one-token job ids.
JOB_ID_PATTERN = rf"^{_TOKEN}(\.{_TOKEN})?$"
#: A task is ``<job id>.<index>`` (a one-token ``<job>-<index>`` in logs written before identities).
TASK_ID_PATTERN = rf"^{_TOKEN}(\.{_TOKEN}\.(0|[1-9][0-9]{{0,8}}))?$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# ---- bounds: every number in the catalogue has a range, refused at intake with the field named ------
#
# They are sized so that no valid history can overflow a 64-bit integer anywhere (SQLite stores the
# read models' integers in 64 bits): the largest job of up to UNBOUNDED_TASKS tasks (each billed at most
# MAX_GPU_MS at MAX_PRICE_MICROS) costs at most 6.0e17 micros, under MAX_MICROS; a bigger job (up to
# 10,000,000 tasks) must bound its worst-case GPU time by 1e11 s, 1e18 micros at the highest price.

#: The longest a task may run per attempt: a week.
MAX_TIMEOUT_S = 7 * 86_400.0
#: One attempt's GPU time, in ms: at most its timeout (billing never exceeds what was observed).
MAX_GPU_MS = int(MAX_TIMEOUT_S * 1000)
#: A job's total GPU time, in ms.
MAX_TOTAL_GPU_MS = 10**14
#: A price, in micro-credits per GPU-second (10 credits per GPU-second).
MAX_PRICE_MICROS = 10**7
#: Any amount of money, in micro-credits (a trillion credits), under 2**63.
MAX_MICROS = 10**18
#: Sizes of objects and memory, bytes (1 PiB).
MAX_BYTES = 2**50
#: Counters and positions (steps, sequences, events).
MAX_COUNT = 2**62
#: Seconds anywhere (predictions, fixed durations, overheads): a year.
MAX_SECONDS = 365 * 86_400.0
#: A free-form measurement (metrics, rates, calibrated throughputs), either sign.
MAX_MEASURE = 1e18

#: Money is integer micro-credits (1 credit = 1,000,000 micros); never a float.
Micros = Annotated[int, Field(ge=0, le=MAX_MICROS)]
#: A price per GPU-second, in micro-credits.
PriceMicros = Annotated[int, Field(ge=0, le=MAX_PRICE_MICROS)]
#: An attempt's GPU time, in ms.
GpuMs = Annotated[int, Field(ge=0, le=MAX_GPU_MS)]
#: A sum of GPU times, in ms.
TotalGpuMs = Annotated[int, Field(ge=0, le=MAX_TOTAL_GPU_MS)]
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Seconds = Annotated[float, Field(ge=0.0, le=MAX_SECONDS)]
Measure = Annotated[float, Field(ge=-MAX_MEASURE, le=MAX_MEASURE)]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A timezone-aware instant, normalised to UTC so that encodings are byte-for-byte stable.
UtcDateTime = Annotated[AwareDatetime, AfterValidator(_to_utc)]

Backend = Literal["cuda", "cpu"]
BackendRequirement = Literal["cuda", "any"]
FailureReason = Literal[
    "out_of_memory",
    "invalid_params",
    "kernel_error",
    "timeout",
    "cancelled",
    "worker_crashed",
    "unsupported",
    "provider_error",
    "unverifiable",
    "function_error",
]

#: inf and NaN are refused: JSON has no spelling for them (pydantic would write null, unreadable).
strict_model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


def canonical_json(value: Any) -> Any:
    """``value`` with the keys of every object in it sorted (recursively): one byte form per value."""
    if isinstance(value, dict):
        return {k: canonical_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical_json(v) for v in value]
    return value


#: Free-form JSON (parameters, results, metrics): kept with sorted keys, so that an event has one
#: encoding whoever built it, and a JSON-lines copy of the log hashes like the log itself.
CanonicalJson = Annotated[JsonValue, AfterValidator(canonical_json)]
JsonObject = Annotated[dict[str, JsonValue], AfterValidator(canonical_json)]
FloatMap = Annotated[dict[str, Measure], Field(max_length=64), AfterValidator(canonical_json)]
StrMap = Annotated[dict[str, str], AfterValidator(canonical_json)]


class EventModel(BaseModel):
    """Base of every frozen, strict, extra-forbidding model in the catalogue."""

    model_config = strict_model_config

    @field_validator("v", mode="before", check_fields=False)
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        # Literal[1] would otherwise match JSON true and 1.0.
        if type(value) is not int:
            raise ValueError("the schema version must be an integer")
        return value


def is_valid_id(value: str) -> bool:
    """True when ``value`` can serve as an aggregate id (one NATS subject token)."""
    return bool(_ID_RE.match(value))


#: A Python distribution's normalised name (PEP 503) or ``python``, as providers advertise them.
PackageName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._-]{0,98}[a-z0-9])?$")]
#: Most packages a provider advertises, and a task may require.
MAX_PACKAGES = 1024
MAX_REQUIRED_PACKAGES = 32


class Resources(EventModel):
    """What a task needs from a provider."""

    min_vram_mb: int = Field(default=0, ge=0, le=2**24)
    min_compute_capability: float = Field(default=0.0, ge=0.0, le=20.0)
    backend: BackendRequirement = "any"
    #: Python packages (and ``python`` itself) a code task needs, each with a version specifier
    #: (PEP 440, ``">=1.11"``; ``""`` for any version): matched against what providers advertise, never
    #: installed. Stored only when given, so a spec written before it existed encodes as it did.
    packages: Annotated[
        dict[PackageName, Annotated[str, Field(max_length=200)]],
        Field(max_length=MAX_REQUIRED_PACKAGES),
        AfterValidator(canonical_json),
    ] = Field(default_factory=dict, exclude_if=lambda v: not v)


class RetryPolicy(EventModel):
    """How a failed task is retried: up to ``max_attempts`` attempts, with exponential backoff."""

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    backoff_factor: float = Field(default=2.0, ge=1.0, le=10.0)
    max_backoff_s: float = Field(default=60.0, ge=0.0, le=86400.0)
    #: Leases lost to dead or lost providers do not count as failures, up to this many.
    max_lost_leases: int = Field(default=20, ge=0, le=1000)

    def delay_after(self, attempt: int) -> float:
        """Backoff in seconds before attempt ``attempt + 1``."""
        return float(min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** max(0, attempt - 1)))


class ObjectRef(EventModel):
    """A blob in the JetStream Object Store, named and pinned by its sha256."""

    bucket: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    name: str = Field(min_length=1, max_length=255)
    sha256: Sha256
    size: Bytes


class ResultRef(EventModel):
    """A task result: a small JSON value inline, or a reference to the object store; always a digest."""

    sha256: Sha256
    size: Bytes
    inline: CanonicalJson = None
    object: ObjectRef | None = None


class Estimate(EventModel):
    """A workload's own estimate of the work in one task."""

    flops: float = Field(default=0.0, ge=0.0, le=1e24)
    bytes_moved: float = Field(default=0.0, ge=0.0, le=1e21)
    memory_bytes: Bytes = 0
    #: For workloads whose duration is known up front (sleep), the seconds it takes.
    fixed_seconds: Seconds = 0.0
    #: Which calibrated matmul rate bounds the flops: fp64, fp32, tf32, fp16 or bf16.
    precision: str = Field(default="fp32", max_length=8)


#: A measured throughput: never negative; 0 means "not measured" to every reader (events.estimates).
Rate = Annotated[float, Field(ge=0.0, le=1e6)]


class ProbeRun(EventModel):
    """One timed run of a catalogue workload at a small size during calibration: what it was (its
    contract's estimate) and how long it took on this device. The runtime model starts each workload's
    size law on the device from these, so a first prediction rests on this device's measured
    efficiency for the workload, not on peak rates alone (``events.estimates``)."""

    estimate: Estimate
    actual_s: float = Field(gt=0.0, le=3600.0)


#: Probe runs per workload a calibration may carry, and workloads it may cover.
MAX_PROBES_PER_WORKLOAD = 4
MAX_PROBED_WORKLOADS = 32


class Calibration(EventModel):
    """Throughput measured on the device by the provider runtime."""

    matmul_tflops: Annotated[dict[str, Rate], Field(max_length=16), AfterValidator(canonical_json)] = Field(
        default_factory=dict
    )
    memory_gbps: float = Field(default=0.0, ge=0.0, le=1e6)
    #: Fixed cost of one task on a warm worker, seconds.
    task_overhead_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    #: Workload name -> probe runs at small sizes (absent in calibrations before probes existed).
    probes: Annotated[
        dict[
            Annotated[str, Field(max_length=64)],
            Annotated[tuple[ProbeRun, ...], Field(max_length=MAX_PROBES_PER_WORKLOAD)],
        ],
        Field(max_length=MAX_PROBED_WORKLOADS),
        AfterValidator(canonical_json),
    ] = Field(default_factory=dict, exclude_if=lambda v: not v)


class Capabilities(EventModel):
    """What a provider's device is and can do, as detected (never disguised)."""

    backend: Backend
    gpu_model: str = Field(max_length=200)
    vram_mb: int = Field(ge=0, le=2**24)
    compute_capability: float = Field(default=0.0, ge=0.0, le=20.0)
    sm_count: int = Field(default=0, ge=0, le=10**6)
    cuda_version: str = Field(default="", max_length=40)
    driver_version: str = Field(default="", max_length=40)
    slots: int = Field(default=1, ge=1, le=1024)
    price_micros: PriceMicros = 0
    workloads: tuple[str, ...] = ()
    extra: StrMap = Field(default_factory=dict)
    #: Whose code (the ``function`` workload) it runs, sandboxed: submitter names, or ``"*"`` for
    #: anyone. Empty: nobody's (absent from registrations before code tasks existed).
    code_from: tuple[Annotated[str, Field(max_length=128)], ...] = Field(
        default=(), max_length=256, exclude_if=lambda v: not v
    )
    #: Installed Python packages (normalised name -> version), and ``python`` itself: what code tasks
    #: may require (``Resources.packages``).
    packages: Annotated[
        dict[PackageName, Annotated[str, Field(max_length=64)]],
        Field(max_length=MAX_PACKAGES),
        AfterValidator(canonical_json),
    ] = Field(default_factory=dict, exclude_if=lambda v: not v)


def recorded_seconds(value: float | None) -> float | None:
    """A duration as an event records it: within [0, ``MAX_SECONDS``]; None (or NaN) stays absent."""
    if value is None or math.isnan(value):
        return None
    return min(MAX_SECONDS, max(0.0, value))


def utc_now() -> datetime:
    """The current instant in UTC. Only shells call this; deciders receive time in commands."""
    return datetime.now(UTC)
