"""Value types shared by the event catalogue: ids, times, resources, references, capabilities."""

from __future__ import annotations

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
    "Backend",
    "BackendRequirement",
    "Calibration",
    "CanonicalJson",
    "Capabilities",
    "Estimate",
    "EventModel",
    "FailureReason",
    "FloatMap",
    "Id",
    "JobId",
    "JsonObject",
    "JsonValue",
    "Micros",
    "ObjectRef",
    "Resources",
    "ResultRef",
    "RetryPolicy",
    "Sha256",
    "StrMap",
    "TaskId",
    "UtcDateTime",
    "canonical_json",
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
#: Money is integer micro-credits (1 credit = 1,000,000 micros); never a float.
Micros = Annotated[int, Field(ge=0)]


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
FloatMap = Annotated[dict[str, float], AfterValidator(canonical_json)]
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


class Resources(EventModel):
    """What a task needs from a provider."""

    min_vram_mb: int = Field(default=0, ge=0)
    min_compute_capability: float = Field(default=0.0, ge=0.0, le=20.0)
    backend: BackendRequirement = "any"


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
    size: int = Field(ge=0)


class ResultRef(EventModel):
    """A task result: a small JSON value inline, or a reference to the object store; always a digest."""

    sha256: Sha256
    size: int = Field(ge=0)
    inline: CanonicalJson = None
    object: ObjectRef | None = None


class Estimate(EventModel):
    """A workload's own estimate of the work in one task."""

    flops: float = Field(default=0.0, ge=0.0)
    bytes_moved: float = Field(default=0.0, ge=0.0)
    memory_bytes: int = Field(default=0, ge=0)
    #: For workloads whose duration is known up front (sleep), the seconds it takes.
    fixed_seconds: float = Field(default=0.0, ge=0.0)
    #: Which calibrated matmul rate bounds the flops: fp64, fp32, tf32, fp16 or bf16.
    precision: str = Field(default="fp32", max_length=8)


class Calibration(EventModel):
    """Throughput measured on the device by the provider runtime."""

    matmul_tflops: FloatMap = Field(default_factory=dict)
    memory_gbps: float = Field(default=0.0, ge=0.0)
    #: Fixed cost of one task on a warm worker, seconds.
    task_overhead_s: float = Field(default=0.0, ge=0.0)


class Capabilities(EventModel):
    """What a provider's device is and can do, as detected (never disguised)."""

    backend: Backend
    gpu_model: str = Field(max_length=200)
    vram_mb: int = Field(ge=0)
    compute_capability: float = Field(default=0.0, ge=0.0, le=20.0)
    sm_count: int = Field(default=0, ge=0)
    cuda_version: str = Field(default="", max_length=40)
    driver_version: str = Field(default="", max_length=40)
    slots: int = Field(default=1, ge=1, le=1024)
    price_micros: Micros = 0
    workloads: tuple[str, ...] = ()
    extra: StrMap = Field(default_factory=dict)


def utc_now() -> datetime:
    """The current instant in UTC. Only shells call this; deciders receive time in commands."""
    return datetime.now(UTC)
