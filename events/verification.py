"""Result verification: the policy a job chooses, how two results compare, and when to spot-check.

One module, imported by the task decider (which decides), the read models (which show it), the
audit (which checks it) and the benchmark (which predicts detection rates), so that none of them can
drift from the others. BOINC's validator is the model:

* **replicate**: every task runs on ``replicas`` providers, each of a different owner, one after
  another; a result is canonical once ``quorum`` results agree with it. Results that disagree with it
  are invalid: they never reach the submitter and earn nothing. With no quorum after
  ``max_replicas`` results, the task fails as ``unverifiable``.
* **spot** (adaptive replication): a provider earns trust through consecutive valid results on
  checked tasks. Until it has :data:`TRUSTED_AFTER` of them every result it returns is checked
  against a second provider's; after that, with probability ``1 / consecutive_valid``, never below
  :data:`SPOT_FLOOR`. One invalid result resets its count to zero.
* **none**: the first result is the result.
* **auto** (the default): ``spot`` when the attempt is paid (its lease has a price), ``none`` when it
  is free, since a free provider is, in practice, the submitter's own machine.

The draw that decides a spot check is made by the orchestrator *when the result arrives*, never when
the lease is granted, so a provider cannot know whether the result it is about to send will be
checked. The draw, the probability and the trust it was computed from are recorded in the log.

Workloads declare how their results compare (``events.workloads``): ``exact`` (seeded deterministic
work, such as Monte Carlo hit counts, agrees bit for bit), ``tolerance`` (floating-point results,
compared element by element within ``rtol``/``atol``), or ``none`` (``sleep``, ``noop``: nothing to
compare, so they are never replicated).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from events.subjects import object_owner
from events.types import MAX_COUNT, EventModel, ObjectRef, ResultRef

__all__ = [
    "DEFAULT_WAIT_S",
    "MAX_COMPARED_BYTES",
    "MAX_REPLICAS",
    "MAX_WAIT_S",
    "SPOT_FLOOR",
    "TRUSTED_AFTER",
    "Compare",
    "SpotDraw",
    "Tolerance",
    "VerifyMode",
    "VerifyPolicy",
    "agree",
    "effective_mode",
    "expected_replicas",
    "inline_sha256",
    "objects_to_compare",
    "result_bytes",
    "results_agree",
    "spot_probability",
]

#: The most results one task may gather before it is declared unverifiable.
MAX_REPLICAS = 8
#: Consecutive valid results before a provider is trusted enough to be checked only sometimes.
TRUSTED_AFTER = 10
#: The lowest spot-check probability, however long a provider's clean record.
SPOT_FLOOR = 0.05
#: How long a task holding results waits for a provider to take its next replica, by default (an
#: hour), and at most (a week).
DEFAULT_WAIT_S = 3600.0
MAX_WAIT_S = 7 * 86_400.0

VerifyMode = Literal["auto", "none", "replicate", "spot"]
Compare = Literal["exact", "tolerance", "none"]


class Tolerance(EventModel):
    """Two numbers agree when ``|a - b| <= atol + rtol * max(|a|, |b|)``."""

    rtol: float = Field(default=1e-4, ge=0.0, le=1.0)
    atol: float = Field(default=1e-6, ge=0.0, le=1e6)


class VerifyPolicy(EventModel):
    """How a job's results are verified (see the module docstring)."""

    mode: VerifyMode = "auto"
    replicas: int = Field(default=2, ge=1, le=MAX_REPLICAS)
    quorum: int = Field(default=2, ge=1, le=MAX_REPLICAS)
    max_replicas: int = Field(default=4, ge=1, le=MAX_REPLICAS)
    tolerance: Tolerance = Field(default_factory=Tolerance)
    #: How long a task holding results may wait for another provider to take its next replica
    #: before it fails as unverifiable (a network with no second provider able to run it). Stored
    #: only when not the default, so a policy written before it existed encodes as it did.
    wait_s: float = Field(default=DEFAULT_WAIT_S, ge=1.0, le=MAX_WAIT_S, exclude_if=lambda v: v == DEFAULT_WAIT_S)

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.mode == "replicate" and self.quorum < 2:
            # One result agreeing with itself verifies nothing, and would build its provider's trust.
            raise ValueError("quorum must be at least 2 to replicate")
        if self.quorum > self.replicas:
            raise ValueError(f"quorum {self.quorum} is more than replicas {self.replicas}")
        if self.replicas > self.max_replicas:
            raise ValueError(f"replicas {self.replicas} is more than max_replicas {self.max_replicas}")
        return self


class SpotDraw(EventModel):
    """A spot-check decision as recorded: checked when ``draw < p``."""

    p: float = Field(ge=0.0, le=1.0)
    draw: float = Field(ge=0.0, le=1.0)
    consecutive_valid: int = Field(ge=0, le=MAX_COUNT)
    checked: bool


def spot_probability(consecutive_valid: int) -> float:
    """The chance that a result from a provider with this record is checked."""
    if consecutive_valid < TRUSTED_AFTER:
        return 1.0
    return max(SPOT_FLOOR, 1.0 / consecutive_valid)


def effective_mode(
    policy: VerifyPolicy | None, price_micros: int, compare: Compare
) -> Literal["none", "replicate", "spot"]:
    """The mode that applies to one attempt: ``auto`` resolved by its price; never for incomparable work."""
    if policy is None or compare == "none":
        return "none"
    if policy.mode == "auto":
        return "spot" if price_micros > 0 else "none"
    return policy.mode


def quorum_of(policy: VerifyPolicy | None, mode: Literal["none", "replicate", "spot"]) -> tuple[int, int]:
    """(results needed before deciding, agreeing results needed) for a task under ``mode``."""
    if mode == "replicate" and policy is not None:
        return policy.replicas, policy.quorum
    if mode == "spot":
        return 2, 2
    return 1, 1


def expected_replicas(policy: VerifyPolicy | None, paid: bool, compare: Compare, trusted_share: float = 0.0) -> float:
    """The results a task is expected to gather when every provider is honest (for prices and ETAs).

    ``trusted_share`` is the share of attempts expected to land on trusted providers (checked with
    probability about :data:`SPOT_FLOOR` to ``1 / TRUSTED_AFTER``); the rest are always checked.
    """
    mode = effective_mode(policy, 1 if paid else 0, compare)
    if mode == "replicate" and policy is not None:
        return float(policy.replicas)
    if mode == "spot":
        checked = (1.0 - trusted_share) + trusted_share * (1.0 / TRUSTED_AFTER)
        return 1.0 + checked
    return 1.0


def result_bytes(value: Any) -> bytes:
    """A result's canonical encoding, the bytes its digest is taken over (and a result stored as an
    object holds): JSON with sorted keys, no spaces, UTF-8, no NaN. One definition for the runtime
    that reports results, the network that compares them and the client that checks them."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def inline_sha256(value: Any) -> str:
    """The sha256 of an inline result: over :func:`result_bytes`."""
    return hashlib.sha256(result_bytes(value)).hexdigest()


_UNKNOWN = object()


def _value(ref: ResultRef, loaded: Mapping[str, Any]) -> object:
    """A result's JSON value: inline, or loaded from the object store (by object name); unknown if
    neither, or if an inline value is not the one its digest names (a submitter would refuse it)."""
    if ref.object is None:
        return ref.inline if inline_sha256(ref.inline) == ref.sha256 else _UNKNOWN
    return loaded.get(ref.object.name, _UNKNOWN)


def results_agree(
    a: ResultRef,
    b: ResultRef,
    how: Compare,
    tolerance: Tolerance | None = None,
    ignore: frozenset[str] = frozenset(),
    loaded: Mapping[str, Any] | None = None,
) -> bool:
    """Whether two reported results agree: both values known (``loaded`` holds the content of those
    stored as objects), and equal under ``how``. The task decider decides with it; the audit checks
    the log's record of it for the results that travel inline."""
    va, vb = _value(a, loaded or {}), _value(b, loaded or {})
    return va is not _UNKNOWN and vb is not _UNKNOWN and agree(va, vb, how, tolerance, ignore)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def agree(
    a: Any, b: Any, how: Compare, tolerance: Tolerance | None = None, ignore: frozenset[str] = frozenset()
) -> bool:
    """Whether two JSON results agree, element by element.

    Objects must have the same keys (except ``ignore``, at any depth: bookkeeping such as how many
    steps ran after a resume) and lists the same length. Under ``exact`` every leaf is equal; under
    ``tolerance`` numbers agree within it, and every other leaf is equal. ``none`` never agrees:
    such results cannot be compared.
    """
    if how == "none":
        return False
    tol = tolerance or Tolerance()
    return _agree(a, b, how == "exact", tol, ignore, 0)


def _agree(a: Any, b: Any, exact: bool, tol: Tolerance, ignore: frozenset[str], depth: int) -> bool:
    if depth > 64:
        return False
    if isinstance(a, dict) and isinstance(b, dict):
        ka = {k for k in a if k not in ignore}
        kb = {k for k in b if k not in ignore}
        return ka == kb and all(_agree(a[k], b[k], exact, tol, ignore, depth + 1) for k in ka)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_agree(x, y, exact, tol, ignore, depth + 1) for x, y in zip(a, b, strict=True))
    if _number(a) and _number(b):
        if exact:
            return bool(a == b)  # 7 and 7.0 are one number, whatever the runtime's JSON wrote
        try:
            fa, fb = float(a), float(b)
        except OverflowError:  # an integer beyond any float agrees only with itself
            return type(a) is type(b) and a == b
        if not (math.isfinite(fa) and math.isfinite(fb)):
            return fa == fb
        return abs(fa - fb) <= tol.atol + tol.rtol * max(abs(fa), abs(fb))
    return type(a) is type(b) and a == b


#: Result objects larger than this are never loaded to be compared (they agree with nothing).
MAX_COMPARED_BYTES = 1 << 20


def objects_to_compare(held: list[ResultRef], result: ResultRef, provider_id: str) -> list[ObjectRef]:
    """The result objects a completion is compared through: those of the results already held, and
    the new one if its sender stored it (another identity's object is refused by the decider, never
    fetched). Each at most once, and none larger than ``MAX_COMPARED_BYTES`` by either size (the one
    in the report is the provider's word, the object's is what would be fetched)."""
    refs = list(held)
    if result.object is not None and object_owner(result.object.name) == ("provider", provider_id):
        refs.append(result)
    out: list[ObjectRef] = []
    seen: set[str] = set()
    for ref in refs:
        obj = ref.object
        if obj is None or obj.name in seen or max(ref.size, obj.size) > MAX_COMPARED_BYTES:
            continue
        seen.add(obj.name)
        out.append(obj)
    return out
