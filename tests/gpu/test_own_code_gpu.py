"""Your own code on a GPU through a real network (marked ``gpu``): the same function a local NumPy
call runs, mapped to the local CUDA provider, gives the same values within the function's tolerance,
and its seeded random numbers bit for bit."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from gpu_runtime.backend import Backend
from gpu_runtime.sandbox import find_bwrap
from gpufleet import Client
from gpufleet.network import LocalNetwork, NetworkConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap"),
]

sys.path.insert(0, str(Path(__file__).parents[1] / "integration" / "usercode"))
import gf_own_code as fns  # noqa: E402


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(cuda: Backend, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    # ``cuda`` (session-scoped, tests/gpu/conftest.py) skips before this network starts without a GPU.
    config = NetworkConfig(
        data_dir=tmp_path_factory.mktemp("own-code-gpu") / "net",
        port=0,
        provider_backend="cuda",
        provider_accept_code=("alice",),
        notary=False,
    )
    network = await LocalNetwork(config).start()
    a = network.access("submitter", "alice")
    client = await Client.connect(a.url, creds=a.creds)
    try:
        yield client
    finally:
        await client.close()
        await network.stop()


async def test_a_function_on_cupy_through_the_network_agrees_with_a_local_call(alice: Client) -> None:
    calls = [{"a": 2.0, "n": 1 << 20}, {"a": -0.5, "n": 1000}]
    got = await (await alice.map(fns.saxpy_sum, calls)).result(timeout=300)
    for value, call in zip(got, calls, strict=True):
        assert value == pytest.approx(fns.saxpy_sum(**call), rel=1e-5)
    assert await alice.call(fns.seeded, 16) == fns.seeded(count=16)  # the same bits on CuPy
    x = np.linspace(-1.0, 1.0, 4096, dtype=np.float32)
    (remote,) = await (await alice.map(fns.scaled, [{"x": x, "k": 3.0}])).result(timeout=300)
    np.testing.assert_allclose(remote["y"], fns.scaled(x=x, k=3.0)["y"], rtol=1e-6)
