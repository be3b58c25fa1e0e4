"""Submitted functions for ``tests/integration/test_attack_review_code.py``: a function that
reports 100% over and over, and one that checkpoints in a tight loop (each would otherwise make its
provider publish a report, or store an object, per call)."""

from __future__ import annotations

from typing import Any

import gpufleet


@gpufleet.function
def chatty(xp: Any, n: int, ctx: Any) -> int:
    for _ in range(n):
        ctx.progress(1.0)
    return n


@gpufleet.function
def hoarder(xp: Any, n: int, ctx: Any) -> int:
    for i in range(n):
        ctx.checkpoint(i, a=xp.full(16, float(i)))
    return n
