"""A dishonest provider: the real provider protocol, with lies in what it reports.

:class:`DishonestProvider` is a :class:`~gpufleet.sim.SimulatedProvider` (its own credentials, intake
registration, heartbeats, dispatch consumer, started and completed reports) whose
:meth:`~gpufleet.sim.SimulatedProvider.outcome` lies, in one of five ways (``lie``):

* ``"wrong"``: does the work, then reports a wrong result: for ``montecarlo`` one hit more, and the
  pi that goes with it (a plausible, silently corrupted result); for anything else a forged token;
* ``"overclaim"``: reports the honest result, but claims :data:`~events.types.MAX_GPU_MS` of GPU time;
* ``"instant"``: skips the work and at once reports a fabricated result: for ``montecarlo`` the
  expected number of hits (``samples * pi / 4``, rounded), which is what a cheater who knows the
  answer would send; it claims the lease's predicted time;
* ``"copy"``: reports another provider's result as its own: a reference to the result object that
  ``victim`` stored for this job's submitter (``result.<submitter>.<victim>.<sha256>``, with the honest
  digest and size), as if it had seen it. It is never stored under this provider's name, so the
  task decider refuses it as foreign;
* ``"unstored"``: the lazy uploader: does the work and reports the honest digest as a result object
  under its *own* name (as a runtime does for a large result), but never uploads it: the submitter
  would get a reference to nothing.

It lies on a fraction ``cheat_fraction`` of the leases it takes (1.0: every one), drawn from a
``random.Random(seed)``, one draw per lease in the order the leases arrive. ``lied`` and ``honest``
record which leases went which way, so a test can match verdicts to lies.

:class:`StoringProvider` is the honest counterpart of ``unstored``: it stores every result in the
object store, for the job's submitter, and reports the reference, as ``gpu_runtime`` does with a
result too large to travel inline.

A copy of the *inline value* another replica reported for the same task would be the right value,
and would be judged valid: verification cannot tell it from honest work. A provider reads only its
own stream and outcomes (``events.subjects.readable``), not another's reports, so it is not modelled.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from events.dispatch import LeaseGranted
from events.store.blobs import BlobStore
from events.subjects import OBJECTS_STREAM, job_owner, object_name
from events.types import MAX_GPU_MS, JsonValue, ObjectRef, ResultRef
from events.verification import result_bytes
from gpufleet.sim import SimulatedProvider, inline_result

__all__ = ["LIES", "DishonestProvider", "Lie", "StoringProvider", "fabricated", "object_result", "tampered"]

Lie = Literal["wrong", "overclaim", "instant", "copy", "unstored"]
LIES: tuple[Lie, ...] = ("wrong", "overclaim", "instant", "copy", "unstored")


def tampered(value: JsonValue) -> JsonValue:
    """A wrong result that looks right: a ``montecarlo`` summary with one hit more (and its pi)."""
    if isinstance(value, dict):
        hits, samples = value.get("hits"), value.get("samples")
        if isinstance(hits, int) and isinstance(samples, int) and samples > 0:
            return {**value, "hits": hits + 1, "pi": 4.0 * (hits + 1) / samples}
    return {"forged": True, "was": value}


def fabricated(workload: str, params: Mapping[str, Any], task_id: str = "") -> JsonValue:
    """A result made up without doing the work: for ``montecarlo`` the expected hits, for the rest a token."""
    if workload == "montecarlo":
        samples = int(params.get("samples", 1 << 22))
        seed = int(params.get("seed", 0))
        hits = round(samples * math.pi / 4)
        return {"workload": "montecarlo", "samples": samples, "seed": seed, "hits": hits, "pi": 4.0 * hits / samples}
    return {"task": task_id, "by": "nobody"}


def object_result(ref: ObjectRef) -> ResultRef:
    """A result held in the object store at ``ref`` (its digest and size are the object's)."""
    return ResultRef(sha256=ref.sha256, size=ref.size, object=ref)


def result_object(provider_id: str, lease: LeaseGranted, value: JsonValue) -> tuple[bytes, ObjectRef]:
    """The bytes of ``value`` (canonical JSON) and the name a provider stores them under for the job."""
    data = result_bytes(value)
    sha = hashlib.sha256(data).hexdigest()
    name = object_name("provider", provider_id, sha, for_submitter=job_owner(lease.job_id))
    return data, ObjectRef(bucket=OBJECTS_STREAM, name=name, sha256=sha, size=len(data))


@dataclass
class StoringProvider(SimulatedProvider):
    """An honest simulated provider that keeps its results in the object store (see the module docstring)."""

    async def outcome(self, lease: LeaseGranted, t0: float) -> tuple[ResultRef, int]:
        value = await self.execute(lease)
        data, _ = result_object(self.provider_id, lease, value)
        ref = await BlobStore(self.nc, "provider", self.provider_id, self.topology).put(
            data, for_submitter=job_owner(lease.job_id)
        )
        return object_result(ref), int((time.perf_counter() - t0) * 1000)


@dataclass
class DishonestProvider(SimulatedProvider):
    """A simulated provider that lies (see the module docstring)."""

    lie: Lie = "wrong"
    #: The share of leases it lies on, drawn from ``random.Random(seed)``.
    cheat_fraction: float = 1.0
    seed: int = 0
    #: ``copy``: the provider whose result it claims.
    victim: str = "p1"
    #: Leases it lied on, and leases it answered honestly.
    lied: set[str] = field(default_factory=set)
    honest: set[str] = field(default_factory=set)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.lie not in LIES:
            raise ValueError(f"unknown lie {self.lie!r}: one of {LIES}")
        if not 0.0 <= self.cheat_fraction <= 1.0:
            raise ValueError("cheat_fraction is a fraction")
        self._rng = random.Random(self.seed)

    async def outcome(self, lease: LeaseGranted, t0: float) -> tuple[ResultRef, int]:
        if self._rng.random() >= self.cheat_fraction:
            self.honest.add(lease.lease_id)
            return await super().outcome(lease, t0)
        self.lied.add(lease.lease_id)
        match self.lie:
            case "wrong":
                value = await self.execute(lease)
                return inline_result(tampered(value)), int((time.perf_counter() - t0) * 1000)
            case "overclaim":
                result, _ = await super().outcome(lease, t0)
                return result, MAX_GPU_MS
            case "instant":
                return inline_result(fabricated(lease.workload, lease.params, lease.task_id)), int(
                    lease.predicted_s * 1000
                )
            case "copy":
                seen = inline_result(await self.execute(lease))
                return self.stolen(lease, seen), int((time.perf_counter() - t0) * 1000)
            case "unstored":
                value = await self.execute(lease)
                _, ref = result_object(self.provider_id, lease, value)  # named, never uploaded
                return object_result(ref), int((time.perf_counter() - t0) * 1000)
        raise AssertionError(self.lie)

    def stolen(self, lease: LeaseGranted, seen: ResultRef) -> ResultRef:
        """``seen`` (an honest result) as a reference to the object ``victim`` stored for this job."""
        name = object_name("provider", self.victim, seen.sha256, for_submitter=job_owner(lease.job_id))
        ref = ObjectRef(bucket=OBJECTS_STREAM, name=name, sha256=seen.sha256, size=seen.size)
        return ResultRef(sha256=seen.sha256, size=seen.size, object=ref)

    def describe(self) -> dict[str, Any]:
        """What it did, for an assertion's message."""
        return {"lie": self.lie, "fraction": self.cheat_fraction, "lied": len(self.lied), "honest": len(self.honest)}
