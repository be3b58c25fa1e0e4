"""Tables people read: the fleet (shared by ``gpufleet providers`` and the demo)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from events.verification import spot_probability

__all__ = ["fleet_table"]


def fleet_table(rows: list[Any]) -> Table:
    """The fleet: each provider's verified id, state, device, load, record, trust and earnings.

    Narrow enough for an 80-column terminal: the slots go with the load (``50%/2``); the results
    judged invalid follow the completed ones, in brackets, when there are any; trust is the count of
    valid results in a row, with the chance that its next paid result is spot-checked; earnings are
    in credits.
    """
    t = Table(title=f"{len(rows)} provider(s)", box=box.SIMPLE_HEAVY, pad_edge=False)
    for col in ("provider", "state", "device", "busy", "done", "trust", "rep.", "earned"):
        t.add_column(col, no_wrap=col != "device", min_width=10 if col == "device" else None)
    for r in rows:
        device = f"{r.backend} {r.gpu_model}" + (f" {r.vram_mb // 1024} GiB" if r.vram_mb else "")
        done = f"{r.completions} ({r.invalid_results})" if r.invalid_results else str(r.completions)
        t.add_row(
            r.provider_id,
            r.status,
            device,
            f"{r.utilisation:.0%}/{r.slots}",
            done,
            f"{r.consecutive_valid} ({spot_probability(r.consecutive_valid):.0%})",
            f"{r.reputation:.2f}",
            f"{r.earnings_micros / 1e6:.4f}",
        )
    return t
