"""Quotas: what each submitter may hold of the network at once, and how fast it may send.

One rule for the orchestrator (which enforces them) and for every reader that shows them (the CLI,
the client): the limits, their defaults, how an operator writes them, and how a refusal names them.

- ``jobs_in_flight``: jobs submitted or accepted and not yet ended. A submission past it is refused.
- ``tasks_queued``: tasks of its jobs not yet leased, whether created already or still waiting to be
  (a job's tasks come into existence in windows). A submission that would take it past is refused.
- ``tasks_running``: tasks leased or running at once. More wait in the queue; nothing is refused.
- ``intake_per_s`` / ``intake_burst``: intake messages a second (a token bucket that holds at most
  ``intake_burst``). Each message past it is refused, and recorded, on its own.
- ``object_bytes``: bytes of its inputs in the object store. A submission while it is past is refused.

Refusals name the limit in their field, ``quota.tasks_queued``, which leads the reason as shown.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events.errors import InvalidPayload, first_error

__all__ = [
    "QUOTA_OPERATION",
    "QuotaConfig",
    "QuotaName",
    "Quotas",
    "TokenBuckets",
    "quota_field",
]

_GIB = 1024**3

#: The orchestrator's request subject for quotas and usage: ``gf.api.<role>.<name>.quota``. A
#: submitter is told its own; an auditor (or the admin) every submitter's with something in flight.
QUOTA_OPERATION = "quota"

QuotaName = Literal["jobs_in_flight", "tasks_queued", "tasks_running", "intake_per_s", "intake_burst", "object_bytes"]


class Quotas(BaseModel):
    """One submitter's limits. The defaults suit ``gpufleet up``: generous for one honest user, and
    still a bound on what a flood can make the network hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    jobs_in_flight: int = Field(default=1_000, ge=1, le=10_000_000)
    tasks_queued: int = Field(default=10_000_000, ge=1, le=1_000_000_000)
    tasks_running: int = Field(default=10_000, ge=1, le=10_000_000)
    intake_per_s: float = Field(default=500.0, gt=0, le=1_000_000)
    intake_burst: int = Field(default=1_000, ge=1, le=10_000_000)
    object_bytes: int = Field(default=4 * _GIB, ge=0, le=2**50)


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class QuotaConfig(BaseModel):
    """The network's quotas: a default for every submitter, and overrides for some, by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: Quotas = Quotas()
    submitters: dict[str, Quotas] = Field(default_factory=dict, max_length=100_000)

    def of(self, submitter: str) -> Quotas:
        """The limits that hold for ``submitter``."""
        return self.submitters.get(submitter, self.default)

    @classmethod
    def parse(cls, settings: Iterable[str] = (), file: Path | None = None) -> QuotaConfig:
        """From a TOML file (``[default]`` and ``[submitters.<name>]`` tables) and then ``KEY=VALUE``
        settings on top (``tasks_running=64``, or ``alice.tasks_running=256`` for one submitter). A
        submitter's own table starts from the default. Raises ``InvalidPayload`` naming what is wrong."""
        default: dict[str, Any] = {}
        own: dict[str, dict[str, Any]] = {}
        if file is not None:
            try:
                doc = tomllib.loads(file.read_text())
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                raise InvalidPayload(f"cannot read quotas from {file}: {e}", field="quotas") from e
            unknown = set(doc) - {"default", "submitters"}
            if unknown:
                raise InvalidPayload(f"unknown table(s) in {file}: {', '.join(sorted(unknown))}", field="quotas")
            default.update(_table(doc.get("default", {}), "default"))
            subs = doc.get("submitters", {})
            if not isinstance(subs, Mapping):
                raise InvalidPayload("[submitters] must be a table of tables", field="quotas.submitters")
            for name, table in subs.items():
                own[name] = dict(_table(table, f"submitters.{name}"))
        for setting in settings:
            key, eq, value = setting.partition("=")
            if not eq:
                raise InvalidPayload(f"a quota is KEY=VALUE, not {setting!r}", field="quota")
            who, dot, limit = key.strip().rpartition(".")
            target = own.setdefault(who, {}) if dot else default
            target[limit] = value.strip()
        for name in own:
            if not _NAME.match(name):
                raise InvalidPayload(f"invalid submitter name {name!r}", field=f"quota.{name}")
        try:
            base = Quotas.model_validate(default)
            return cls(
                default=base,
                submitters={n: Quotas.model_validate({**base.model_dump(), **t}) for n, t in own.items()},
            )
        except ValidationError as e:
            err = first_error(e)
            where = (err.field or "").rpartition(".")[2] or "quota"
            raise InvalidPayload(err.problem, field=f"quota.{where}") from e


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidPayload(f"[{where}] must be a table", field=f"quotas.{where}")
    return value


def quota_field(name: QuotaName) -> str:
    """The ``field`` of a refusal for ``name``."""
    return f"quota.{name}"


class TokenBuckets:
    """A token bucket per key (an identity): ``take`` one token, refilled at ``rate_per_s`` up to
    ``burst``. One rule for every rate the network limits (intake, quote and quota requests). At most
    ``max_keys`` buckets are kept: past that, the longest idle one is forgotten (it would be full again,
    or nearly)."""

    def __init__(self, clock: Callable[[], float], max_keys: int = 10_000) -> None:
        self._clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate_per_s: float, burst: int) -> bool:
        """True, and one token fewer, when ``key`` has a token now; else False."""
        now = self._clock()
        tokens, since = self._buckets.pop(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - since) * rate_per_s)
        if len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]  # the longest idle: re-inserted on every take
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)
