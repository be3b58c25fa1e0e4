"""Which providers may take which tasks: the one placement rule for the scheduler, the audit and the replayer.

The scheduler places a task only on a provider that fits it; the audit flags a lease that does not;
the provenance replayer refuses a lease as a cause. One function, so the three cannot disagree.
"""

from __future__ import annotations

from events.types import Capabilities, Resources

__all__ = ["misfits", "supports"]


def supports(caps: Capabilities, workload: str) -> bool:
    """True when a device of ``caps`` runs ``workload`` (a custom kernel needs CUDA)."""
    if workload == "custom_kernel" and caps.backend != "cuda":
        return False
    return not caps.workloads or workload in caps.workloads


def misfits(caps: Capabilities, resources: Resources, workload: str, max_price_micros: int | None) -> list[str]:
    """Why a provider of ``caps`` may not take a task needing ``resources`` (empty when it may)."""
    out: list[str] = []
    if resources.backend not in ("any", caps.backend):
        out.append(f"backend {caps.backend}, needs {resources.backend}")
    if caps.vram_mb < resources.min_vram_mb:
        out.append(f"{caps.vram_mb} MB VRAM < {resources.min_vram_mb}")
    if caps.compute_capability < resources.min_compute_capability:
        out.append(f"compute capability {caps.compute_capability} < {resources.min_compute_capability}")
    if not supports(caps, workload):
        out.append(f"no {workload} workload")
    if max_price_micros is not None and caps.price_micros > max_price_micros:
        out.append(f"price {caps.price_micros} over the ceiling {max_price_micros}")
    return out
