"""Which providers may take which tasks: the one placement rule for the scheduler, the audit and the replayer.

The scheduler places a task only on a provider that fits it; the audit flags a lease that does not;
the provenance replayer refuses a lease as a cause. One function, so the three cannot disagree.
"""

from __future__ import annotations

from events.types import Capabilities, Resources

__all__ = ["REQUIREMENTS", "misfits", "misfits_by_requirement", "supports"]


def supports(caps: Capabilities, workload: str) -> bool:
    """True when a device of ``caps`` runs ``workload`` (a custom kernel needs CUDA)."""
    if workload == "custom_kernel" and caps.backend != "cuda":
        return False
    return not caps.workloads or workload in caps.workloads


#: The requirements a placement checks, in the order ``misfits`` reports them.
REQUIREMENTS = ("backend", "vram", "compute_capability", "workload", "price")


def misfits_by_requirement(
    caps: Capabilities, resources: Resources, workload: str, max_price_micros: int | None
) -> dict[str, str]:
    """Why a provider of ``caps`` may not take such a task, by requirement (``REQUIREMENTS``)."""
    out: dict[str, str] = {}
    if resources.backend not in ("any", caps.backend):
        out["backend"] = f"backend {caps.backend}, needs {resources.backend}"
    if caps.vram_mb < resources.min_vram_mb:
        out["vram"] = f"{caps.vram_mb} MB VRAM < {resources.min_vram_mb}"
    if caps.compute_capability < resources.min_compute_capability:
        out["compute_capability"] = f"compute capability {caps.compute_capability} < {resources.min_compute_capability}"
    if not supports(caps, workload):
        out["workload"] = f"no {workload} workload"
    if max_price_micros is not None and caps.price_micros > max_price_micros:
        out["price"] = f"price {caps.price_micros} over the ceiling {max_price_micros}"
    return out


def misfits(caps: Capabilities, resources: Resources, workload: str, max_price_micros: int | None) -> list[str]:
    """Why a provider of ``caps`` may not take a task needing ``resources`` (empty when it may)."""
    return list(misfits_by_requirement(caps, resources, workload, max_price_micros).values())
