"""A submitter's function on CuPy inside the bubblewrap sandbox agrees with NumPy (marked ``gpu``).

The sandbox's CUDA binds (``/dev/nvidia*``, the driver's libraries) are exercised only here.
"""

from __future__ import annotations

import io
import zipfile

import array_api_compat.numpy as np_compat
import numpy as np
import pytest

from gpu_runtime.sandbox import CodeSpec, SandboxOptions, SandboxWorker, find_bwrap
from gpu_runtime.supervisor import Completed, NullSink
from gpu_runtime.usercode import FunctionContext, call_function, encode_result
from gpu_runtime.workloads.context import load_arrays

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap (bwrap) is not installed"),
]

SRC = """
def f(xp, a, n, ctx):
    x = xp.arange(n, dtype=xp.float32)
    u = ctx.uniform(n, stream=3)
    ctx.progress(0.5)
    y = a * x + u
    return {"total": float(xp.sum(y)), "y": y, "u": u}
"""


def _f(xp, a, n, ctx):  # type: ignore[no-untyped-def]
    x = xp.arange(n, dtype=xp.float32)
    u = ctx.uniform(n, stream=3)
    y = a * x + u
    return {"total": float(xp.sum(y)), "y": y, "u": u}


async def test_a_function_on_cupy_in_the_sandbox_matches_numpy() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("gpu_user.py", SRC)
    w = SandboxWorker(0, "alice", SandboxOptions(backend="cuda", memory_limit=1 << 30, host_memory_mb=16384))
    try:
        info = await w.start()
        assert info["backend"] == "cuda" and info["array_api"] == "array_api_compat.cupy"
        out = await w.run(
            CodeSpec("t", 0, buf.getvalue(), "gpu_user:f", {"a": 2.0, "n": 1 << 20}, seed=5), NullSink(), 120
        )
    finally:
        w.kill()
    assert isinstance(out, Completed), out
    local = call_function(_f, np_compat, {"a": 2.0, "n": 1 << 20}, {}, FunctionContext(np_compat, seed=5))
    summary, blob = encode_result(local)
    assert blob is not None and out.arrays is not None
    got, want = load_arrays(out.arrays), load_arrays(blob)
    assert np.array_equal(got["a1"], want["a1"])  # the seeded RNG: the same bits on both
    np.testing.assert_allclose(got["a0"], want["a0"], rtol=1e-6)
    assert out.summary["value"]["total"] == pytest.approx(summary["value"]["total"], rel=1e-5)
