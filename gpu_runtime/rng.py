"""A counter-based RNG (splitmix64) in ``xp`` uint64 operations: the same bits on NumPy and CuPy.

Element ``i`` of stream ``s`` under seed ``k`` is a pure function of ``(k, s, i)``, so any slice of
a sequence can be generated independently (chunks, shards, resumed runs) and every backend produces
identical integers. Floats derived from them are exact conversions, hence identical too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["hash_u64", "mix64", "uniform", "uniform_pm1"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_U64 = np.uint64


def mix64(z: int) -> int:
    """The splitmix64 finaliser on one Python integer (host side; used to derive stream keys)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _key(seed: int, stream: int) -> int:
    return mix64((seed & _MASK) ^ mix64((stream * _GOLDEN + 0x632BE59BD9B4E019) & _MASK))


def hash_u64(xp: Any, seed: int, stream: int, start: int, count: int) -> Any:
    """``count`` uint64 values: element ``start + j`` of stream ``stream`` under ``seed``."""
    key = _U64(_key(seed, stream))
    z = xp.arange(start + 1, start + count + 1, dtype=xp.uint64)
    # All arithmetic wraps modulo 2**64, identically on every backend.
    xp.multiply(z, _U64(_GOLDEN), out=z)
    xp.add(z, key, out=z)
    z ^= z >> _U64(30)
    xp.multiply(z, _U64(_M1), out=z)
    z ^= z >> _U64(27)
    xp.multiply(z, _U64(_M2), out=z)
    z ^= z >> _U64(31)
    return z


def uniform(xp: Any, seed: int, stream: int, start: int, count: int, *, dtype: Any = np.float64) -> Any:
    """Uniform floats in [0, 1): the top 53 bits of each hash, scaled exactly, then cast to ``dtype``."""
    z = hash_u64(xp, seed, stream, start, count)
    u = (z >> _U64(11)).astype(xp.float64)
    u *= 2.0**-53
    return u if np.dtype(dtype) == np.float64 else u.astype(dtype)


def uniform_pm1(xp: Any, seed: int, stream: int, start: int, count: int, *, dtype: Any = np.float64) -> Any:
    """Uniform floats in [-1, 1), computed exactly in float64, then cast to ``dtype``."""
    u = uniform(xp, seed, stream, start, count)
    u *= 2.0
    u -= 1.0
    return u if np.dtype(dtype) == np.float64 else u.astype(dtype)
