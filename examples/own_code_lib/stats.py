"""Array-API helpers: written once against ``xp``, so they run on NumPy and CuPy alike."""

from typing import Any


def normalised(xp: Any, x: Any) -> Any:
    """``x`` scaled to unit Euclidean norm."""
    return x / xp.sqrt(xp.sum(x * x))
