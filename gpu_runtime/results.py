"""Task results: a small JSON summary, canonical bytes, a sha256, and the inline-or-object decision."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from events.types import JsonValue
from events.verification import result_bytes

__all__ = ["INLINE_LIMIT", "canonical_json", "json_safe", "sha256_hex"]

#: Results whose canonical JSON is at most this many bytes travel inline in the completion report.
INLINE_LIMIT = 16 * 1024


def json_safe(value: Any) -> JsonValue:
    """``value`` with NumPy scalars and arrays made plain, and non-finite floats spelled as strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, complex):
        return [json_safe(value.real), json_safe(value.imag)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def canonical_json(value: JsonValue) -> bytes:
    """The canonical encoding the digest is taken over (``events.verification.result_bytes``)."""
    return result_bytes(value)


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
