"""Submitted functions for the end-to-end tests (``tests/integration/test_own_code.py``): shipped as
source to a provider's sandbox, like any user's module. The benign ones, then escape and abuse
attempts, each of which must fail its task with a clear reason and harm nothing else."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import gpufleet


@gpufleet.function(compare="rtol=1e-5")
def saxpy_sum(xp: Any, a: float, n: int, ctx: Any) -> float:
    x = xp.arange(n, dtype=xp.float32)
    ctx.progress(0.5)
    return float(xp.sum(a * x + 1))


@gpufleet.function
def scaled(xp: Any, x: Any, k: float) -> dict[str, Any]:
    """An array in, arrays and numbers out."""
    y = x * k
    return {"y": y, "total": float(xp.sum(y)), "shape": list(y.shape), "noise": ctx_free_noise(xp)}


def ctx_free_noise(xp: Any) -> list[float]:
    return [float(v) for v in xp.linspace(0.0, 1.0, 3)]


@gpufleet.function
def seeded(xp: Any, count: int, ctx: Any) -> list[float]:
    """The seeded random numbers every provider generates alike."""
    return [float(v) for v in ctx.uniform(count)]


@gpufleet.function
def divide(xp: Any, a: float, b: float) -> float:
    return helper_that_divides(a, b)


def helper_that_divides(a: float, b: float) -> float:
    return a / b


# ---- escape and abuse attempts ---------------------------------------------------------------------


@gpufleet.function(timeout_s=30.0, retry={"max_attempts": 1})
def connect(xp: Any, host: str, port: int) -> str:
    """A socket to the network's NATS server (or anything else)."""
    with socket.create_connection((host, port), timeout=3.0) as s:
        s.sendall(b"PING\r\n")
        return f"connected: {s.recv(64)!r}"


@gpufleet.function(timeout_s=30.0, retry={"max_attempts": 1})
def read(xp: Any, path: str) -> str:
    """The provider's credentials, its data directory, /etc/shadow."""
    if os.path.isdir(path):
        return f"listed: {sorted(os.listdir(path))}"
    with open(path, "rb") as f:
        return f"read: {f.read(64)!r}"


@gpufleet.function(timeout_s=30.0, retry={"max_attempts": 1})
def write(xp: Any, where: str) -> str:
    """Outside the work directory: into the interpreter's own packages, or a path given."""
    path = os.path.join(sys.prefix if where == "prefix" else where, "gpufleet-was-here.txt")
    with open(path, "w") as f:
        f.write("owned")
    return f"wrote {path}"


@gpufleet.function(timeout_s=20.0, retry={"max_attempts": 1})
def fork_bomb(xp: Any) -> str:
    while True:
        os.fork()


@gpufleet.function(timeout_s=30.0, retry={"max_attempts": 1})
def hog(xp: Any, gigabytes: int) -> float:
    """64 GB of host memory."""
    block = xp.ones((gigabytes * (1 << 30)) // 8, dtype=xp.float64)
    return float(block[-1])


@gpufleet.function(timeout_s=2.0, retry={"max_attempts": 1})
def spin(xp: Any) -> int:
    n = 0
    while True:
        n += 1


@gpufleet.function(timeout_s=30.0, retry={"max_attempts": 1})
def needs_missing(xp: Any) -> str:
    import gpufleet_no_such_package  # type: ignore[import-not-found]

    return str(gpufleet_no_such_package)
