"""GPU tests: skipped, with the reason, unless CuPy is installed and sees a CUDA device.

With ``GPUFLEET_REQUIRE_GPU=1`` (as ``bench/gpu_check`` sets it) a missing GPU fails them instead.
"""

from __future__ import annotations

import os

import pytest

from gpu_runtime.backend import Backend, has_cupy, has_cupy_gpu, select_backend


def _why_not() -> str | None:
    if not has_cupy():
        return "CuPy is not installed"
    if not has_cupy_gpu():
        return "CuPy sees no CUDA device"
    return None


def _skip_or_fail(why: str) -> None:
    if os.environ.get("GPUFLEET_REQUIRE_GPU") == "1":
        pytest.fail(f"GPUFLEET_REQUIRE_GPU=1 but {why}")
    pytest.skip(f"no GPU: {why}")


@pytest.fixture(autouse=True)
def _needs_gpu(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("gpu") is not None:
        why = _why_not()
        if why is not None:
            _skip_or_fail(why)


@pytest.fixture(scope="session")
def cuda() -> Backend:
    """The CuPy backend on device 0 (tests that use it are skipped without a GPU first)."""
    why = _why_not()
    if why is not None:
        _skip_or_fail(why)
    return select_backend("cuda", 0)


@pytest.fixture(scope="session")
def cpu() -> Backend:
    """The NumPy backend, as the reference."""
    return select_backend("cpu")
