"""Your own code on any provider's GPU: write a function once, run it through the network.

Start a network in another terminal, then run this script::

    gpufleet up
    .venv/bin/python examples/own_code.py

It finds the network as the CLI does: ``$GPUFLEET_NATS_URL`` and ``$GPUFLEET_CREDS`` (and
``$GPUFLEET_TLS_CA``) when set, else the network ``gpufleet up`` runs on this machine
(``~/.gpufleet``, or the directory given as the first argument), as its local submitter. The
function's module (this file, shipped as ``own_code.py``: its main block below does not run on the
provider) and the ``own_code_lib`` package go to the provider as source, in a zip stored once by
its sha256; the provider runs them in its sandbox on NumPy or CuPy. Each value printed beside the
one a local call gives for the same arguments: they are equal.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np
from own_code_lib import normalised  # a local package: shipped with this module (include= below)

import gpufleet
from gpufleet.network import discover_access


@gpufleet.function(backend="any", min_vram_mb=512, compare="rtol=1e-5")
def saxpy_sum(xp: Any, a: float, n: int, ctx: Any) -> float:
    """sum(a * x + 1) over x = 0 .. n-1, in float32: xp is NumPy or CuPy, chosen by the provider."""
    x = xp.arange(n, dtype=xp.float32)
    ctx.progress(0.5)
    return float(xp.sum(a * x + 1))


@gpufleet.function(include=["own_code_lib"], compare="rtol=1e-6,atol=1e-9")
def unit_rows(xp: Any, m: Any, ctx: Any) -> dict[str, Any]:
    """Each row of ``m`` scaled to unit norm (an array in, an array out), with a seeded jitter."""
    rows = xp.stack([normalised(xp, m[i, :]) for i in range(m.shape[0])])
    jitter = ctx.uniform(m.shape[0])
    return {"rows": rows, "jitter_sum": float(xp.sum(jitter))}


async def main(data_dir: Path | None) -> None:
    access = discover_access("submitter", data_dir=data_dir)
    calls = [{"a": 2.0, "n": 10**6}, {"a": 3.0, "n": 10**6}]
    m = np.arange(12, dtype=np.float64).reshape(3, 4) + 1.0
    async with await gpufleet.Client.connect(access.url, creds=access.creds, tls_ca=access.tls_ca) as client:
        job = await client.map(saxpy_sum, calls)
        print(f"submitted {job.id}: {len(calls)} calls of saxpy_sum")
        values = await job.result(timeout=300)
        for call, value in zip(calls, values, strict=True):
            local = saxpy_sum(**call)
            print(f"  saxpy_sum({call}): network {value!r}, local {local!r}, {'equal' if value == local else 'DIFFER'}")
        arrays = await client.map(unit_rows, [{"m": m}], seed=7)
        (remote,) = await arrays.result(timeout=300)
        local = unit_rows.local(unit_rows.bind((m,)), seed=7)
        same = np.array_equal(remote["rows"], local["rows"]) and remote["jitter_sum"] == local["jitter_sum"]
        rows = remote["rows"]
        print(f"  unit_rows(m): network rows {rows.shape} {rows.dtype}, local: {'equal' if same else 'DIFFER'}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
