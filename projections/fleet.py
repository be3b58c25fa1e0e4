"""The fleet view: providers online, lost, draining or gone; capabilities, utilisation, reputation, earnings.

Reputation follows the one rule in ``events.reputation`` (the scheduler's own, so what a provider
sees here is what the scheduler ranks it by): a smoothed share of good outcomes, where faults, lost
leases and refused reports (twice) count against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from events.envelope import Envelope
from events.job import ProviderCredited
from events.provider import (
    ProviderCalibrated,
    ProviderDraining,
    ProviderLeft,
    ProviderLost,
    ProviderOnline,
    ProviderRegistered,
)
from events.reputation import PROVIDER_FAULTS, Record, counts_against, reputation
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLeased,
    TaskLeaseExpired,
    TaskResultJudged,
    TaskResultRejected,
    TaskResultReturned,
)
from projections.storage import Table
from projections.view import View, iso

__all__ = [
    "FLEET_LEASES",
    "PROVIDERS",
    "PROVIDER_FAULTS",
    "PROVIDER_STATUSES",
    "FleetView",
    "LeaseRow",
    "ProviderRow",
    "reputation",
]

#: registered -> online <-> lost; online -> draining -> left (left is final).
PROVIDER_STATUSES = ("registered", "online", "lost", "draining", "left")


@dataclass(slots=True)
class ProviderRow:
    """One provider: what it is, whether it is live, how busy, how reliable, how much it earned."""

    provider_id: str
    name: str = ""
    status: str = "registered"
    backend: str = ""
    gpu_model: str = ""
    vram_mb: int = 0
    compute_capability: float = 0.0
    slots: int = 1
    price_micros: int = 0
    #: JSON: the workloads it runs, its full capabilities, and its last calibration (or null).
    workloads: str = "[]"
    capabilities: str = "{}"
    calibration: str | None = None
    runtime_version: str = ""
    registered_at: str = ""
    status_at: str = ""
    times_lost: int = 0
    #: Leases held now; ``utilisation`` = running / slots.
    running: int = 0
    utilisation: float = 0.0
    leases: int = 0
    completions: int = 0
    failures: int = 0
    faults: int = 0
    lost_leases: int = 0
    refused_reports: int = 0
    #: Results verification found invalid, and valid results since the last invalid one (its trust:
    #: the spot-check probability follows from it, ``events.verification``).
    invalid_results: int = 0
    consecutive_valid: int = 0
    reputation: float = 0.5
    #: GPU time of its completed tasks, and what it was credited for them.
    busy_ms: int = 0
    earnings_micros: int = 0
    position: int = 0


@dataclass(slots=True)
class LeaseRow:
    """A lease held now: which provider runs which task."""

    task_id: str
    provider_id: str = ""
    lease_id: str = ""
    leased_at: str = ""


PROVIDERS = Table.of("providers", ProviderRow, key=("provider_id",), indexes=(("status",),))
FLEET_LEASES = Table.of("fleet_leases", LeaseRow, key=("task_id",), indexes=(("provider_id",),))


def _record(p: ProviderRow) -> Record:
    return Record(
        completed=p.completions,
        failed=p.faults,
        expired=p.lost_leases,
        refused=p.refused_reports,
        invalid=p.invalid_results,
        consecutive_valid=p.consecutive_valid,
    )


class FleetView(View):
    """Folds provider events, leases and credits into ``providers`` (and the held ``fleet_leases``)."""

    name: ClassVar[str] = "fleet"
    version: ClassVar[int] = 2
    tables: ClassVar[tuple[Table[object], ...]] = (PROVIDERS, FLEET_LEASES)  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.providers: dict[str, ProviderRow] = self.data[PROVIDERS.name]
        self.leases: dict[str, LeaseRow] = self.data[FLEET_LEASES.name]
        self._dirty_providers = self.dirty[PROVIDERS.name]
        self._dirty_leases = self.dirty[FLEET_LEASES.name]

    def _provider(self, provider_id: str | None, env: Envelope) -> ProviderRow | None:
        if provider_id is None:
            return None
        p = self.providers.get(provider_id)
        if p is not None:
            p.position = env.sequence
            self._dirty_providers.add(provider_id)
        return p

    def _status(self, provider_id: str, status: str, env: Envelope) -> ProviderRow | None:
        p = self._provider(provider_id, env)
        if p is not None and p.status != "left":
            p.status = status
            p.status_at = iso(env.time)
        return p

    @staticmethod
    def _score(p: ProviderRow) -> None:
        p.reputation = _record(p).value
        p.utilisation = p.running / p.slots if p.slots else 0.0

    def _release(self, task_id: str, env: Envelope) -> ProviderRow | None:
        """End the lease on ``task_id``, if one is held; the provider that held it."""
        lease = self.leases.pop(task_id, None)
        if lease is None:
            return None
        self._dirty_leases.add(task_id)
        p = self._provider(lease.provider_id, env)
        if p is not None:
            p.running -= 1
            self._score(p)
        return p

    # ---- provider events -----------------------------------------------------------------------

    def on_ProviderRegistered(self, e: ProviderRegistered, env: Envelope) -> None:
        caps = e.capabilities
        old = self.providers.get(e.provider_id)
        p = old or ProviderRow(provider_id=e.provider_id, registered_at=iso(e.at))
        p.name = e.name
        p.backend = caps.backend
        p.gpu_model = caps.gpu_model
        p.vram_mb = caps.vram_mb
        p.compute_capability = caps.compute_capability
        p.slots = caps.slots
        p.price_micros = caps.price_micros
        p.workloads = json.dumps(list(caps.workloads))
        p.capabilities = caps.model_dump_json()
        p.runtime_version = e.runtime_version
        if old is None or p.status == "left":
            p.status = "registered"
            p.status_at = iso(e.at)
        p.position = env.sequence
        self.providers[e.provider_id] = p
        self._score(p)
        self._dirty_providers.add(e.provider_id)

    def on_ProviderCalibrated(self, e: ProviderCalibrated, env: Envelope) -> None:
        p = self._provider(e.provider_id, env)
        if p is not None:
            p.calibration = e.calibration.model_dump_json()

    def on_ProviderOnline(self, e: ProviderOnline, env: Envelope) -> None:
        self._status(e.provider_id, "online", env)

    def on_ProviderLost(self, e: ProviderLost, env: Envelope) -> None:
        p = self._status(e.provider_id, "lost", env)
        if p is not None:
            p.times_lost += 1

    def on_ProviderDraining(self, e: ProviderDraining, env: Envelope) -> None:
        self._status(e.provider_id, "draining", env)

    def on_ProviderLeft(self, e: ProviderLeft, env: Envelope) -> None:
        self._status(e.provider_id, "left", env)

    # ---- work and money ------------------------------------------------------------------------

    def on_TaskLeased(self, e: TaskLeased, env: Envelope) -> None:
        self._release(e.task_id, env)  # a stale lease never outlives a new one
        p = self._provider(e.provider_id, env)
        if p is None:
            return
        self.leases[e.task_id] = LeaseRow(e.task_id, e.provider_id, e.lease_id, iso(e.at))
        self._dirty_leases.add(e.task_id)
        p.leases += 1
        p.running += 1
        self._score(p)

    def on_TaskCompleted(self, e: TaskCompleted, env: Envelope) -> None:
        lease = self.leases.get(e.task_id)
        if lease is None or lease.lease_id != e.lease_id:
            return  # not the lease holder: the audit reports it; it earns nothing here
        self._release(e.task_id, env)
        p = self._provider(e.provider_id, env)
        if p is not None:
            p.completions += 1
            p.busy_ms += e.gpu_ms
            self._score(p)

    def on_TaskFailed(self, e: TaskFailed, env: Envelope) -> None:
        held = self.leases.get(e.task_id)
        self._release(e.task_id, env)
        p = self._provider(e.provider_id or (held.provider_id if held else None), env)
        if p is not None:
            p.failures += 1
            if counts_against(e):
                p.faults += 1
            self._score(p)

    def on_TaskLeaseExpired(self, e: TaskLeaseExpired, env: Envelope) -> None:
        self._release(e.task_id, env)
        p = self._provider(e.provider_id, env)
        if p is not None and counts_against(e):
            p.lost_leases += 1
            self._score(p)

    def on_TaskCancelled(self, e: TaskCancelled, env: Envelope) -> None:
        self._release(e.task_id, env)

    def on_TaskResultRejected(self, e: TaskResultRejected, env: Envelope) -> None:
        p = self._provider(e.provider_id, env)
        if p is not None and counts_against(e):
            p.refused_reports += 1
            self._score(p)

    def on_TaskResultReturned(self, e: TaskResultReturned, env: Envelope) -> None:
        lease = self.leases.get(e.task_id)
        if lease is not None and lease.lease_id == e.lease_id:
            self._release(e.task_id, env)

    def on_TaskResultJudged(self, e: TaskResultJudged, env: Envelope) -> None:
        p = self._provider(e.provider_id, env)
        if p is None:
            return
        rec = _record(p)
        rec.judged(e)  # the one rule: events.reputation
        p.completions, p.invalid_results, p.consecutive_valid = rec.completed, rec.invalid, rec.consecutive_valid
        if e.verdict == "valid":
            p.busy_ms += e.gpu_ms
        self._score(p)

    def on_ProviderCredited(self, e: ProviderCredited, env: Envelope) -> None:
        p = self._provider(e.provider_id, env)
        if p is not None:
            p.earnings_micros += e.amount_micros
