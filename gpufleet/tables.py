"""Tables people read: the fleet (shared by ``gpufleet providers`` and the demo)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from events.verification import spot_probability

__all__ = ["fleet_table"]


def fleet_table(rows: list[Any]) -> Table:
    """The fleet: each provider's verified id, state, device, slots, utilisation, record and earnings."""
    t = Table(title=f"{len(rows)} provider(s)")
    cols = (
        "provider",
        "state",
        "device",
        "slots",
        "busy",
        "completed",
        "invalid",
        "trust",
        "reputation",
        "earned (credits)",
    )
    for col in cols:
        t.add_column(col)
    for r in rows:
        device = f"{r.backend} {r.gpu_model}" + (f" {r.vram_mb // 1024} GiB" if r.vram_mb else "")
        t.add_row(
            r.provider_id,
            r.status,
            device,
            str(r.slots),
            f"{r.utilisation:.0%}",
            str(r.completions),
            str(r.invalid_results),
            # Trust: valid results in a row, and the chance its next paid result is spot-checked.
            f"{r.consecutive_valid} ({spot_probability(r.consecutive_valid):.0%})",
            f"{r.reputation:.2f}",
            f"{r.earnings_micros / 1e6:.6f}",
        )
    return t
