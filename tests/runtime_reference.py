"""Plain-Python reference of the runtime's seeded inputs (splitmix64), written from the spec alone."""

from __future__ import annotations

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def ref_hash(seed: int, stream: int, i: int) -> int:
    """Element ``i`` of stream ``stream`` under ``seed``."""
    key = mix((seed & MASK) ^ mix((stream * GOLDEN + 0x632BE59BD9B4E019) & MASK))
    return mix(((i + 1) * GOLDEN + key) & MASK)


def ref_uniform(seed: int, stream: int, n: int, start: int = 0) -> np.ndarray:
    return np.array([(ref_hash(seed, stream, start + i) >> 11) * 2.0**-53 for i in range(n)])


def ref_pm1(seed: int, stream: int, n: int, start: int = 0) -> np.ndarray:
    return ref_uniform(seed, stream, n, start) * 2.0 - 1.0


def ref_hits(seed: int, samples: int) -> int:
    """Points inside the quarter circle, with 31-bit integer coordinates."""
    hits = 0
    for i in range(samples):
        x = ref_hash(seed, 1, i) >> 33
        y = ref_hash(seed, 2, i) >> 33
        hits += x * x + y * y < (1 << 62)
    return hits


def ref_stencil(n: int, steps: int, alpha: float) -> np.ndarray:
    """Jacobi heat diffusion from the runtime's fixed initial grid, fixed edges."""
    u = np.zeros((n, n))
    u[0, :] = 1.0
    u[n // 4 : n // 2, n // 4 : n // 2] = 0.5
    for _ in range(steps):
        v = u.copy()
        v[1:-1, 1:-1] = u[1:-1, 1:-1] + alpha * (
            u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4 * u[1:-1, 1:-1]
        )
        u = v
    return u
