"""Your own code through a real network: ``@gpufleet.function`` and ``Client.map`` against
``LocalNetwork`` (a real secured nats-server, the orchestrator, the projector) with its local NumPy
provider running submitted functions in bubblewrap sandboxes.

- the same function through the network gives exactly what a local call gives;
- escape and abuse attempts from inside a function (a socket to the NATS server, the provider's
  credentials and data directory, /etc/shadow, writing outside the work directory, a fork bomb, 64 GB
  of memory, an endless loop, a package the provider lacks) each fail their task with a clear reason,
  while another submission runs beside them on the other slot, and the network serves on;
- a provider that did not opt in (``--accept-code none``) is never leased a code task, and a
  submitter nobody accepts code from waits, with a quote that says why;
- the audit re-decides the log, code leases included, and finds nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from events.store import JetStreamEventStore
from events.task import TaskLeased
from gpu_runtime.sandbox import find_bwrap, pids_cgroup_available
from gpu_runtime.service import ProviderRuntime, RuntimeConfig
from gpufleet import Client
from gpufleet.audit import full_audit
from gpufleet.errors import JobFailedError
from gpufleet.network import LocalNetwork, NetworkConfig, local_name

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap"),
]

# The submitted functions live in a module of their own, imported as a user's module would be.
sys.path.insert(0, str(Path(__file__).parent / "usercode"))
import gf_own_code as fns  # noqa: E402


class Net:
    def __init__(self, net: LocalNetwork, alice: Client, bob: Client) -> None:
        self.net = net
        self.alice = alice
        self.bob = bob

    async def fails(self, job: Any, timeout: float = 90.0) -> str:
        with pytest.raises(JobFailedError) as info:
            await job.result(timeout=timeout)
        return str(info.value)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    config = NetworkConfig(
        data_dir=tmp_path_factory.mktemp("own-code") / "net",
        port=0,
        provider_backend="cpu",
        provider_slots=2,
        # alice, and this machine's own submitter, as `gpufleet up` accepts (for the example).
        provider_accept_code=("alice", local_name("submitter")),
        notary=False,
    )
    network = await LocalNetwork(config).start()
    a, b = network.access("submitter", "alice"), network.access("submitter", "bob")
    alice = await Client.connect(a.url, creds=a.creds)
    bob = await Client.connect(b.url, creds=b.creds)
    try:
        yield Net(network, alice, bob)
    finally:
        await alice.close()
        await bob.close()
        await network.stop()


async def test_a_function_through_the_network_gives_exactly_what_a_local_call_gives(net: Net) -> None:
    calls = [{"a": 2.0, "n": 1000}, {"a": 3.0, "n": 10**5}, {"a": -1.5, "n": 7}]
    job = await net.alice.map(fns.saxpy_sum, calls)
    assert await job.result(timeout=60) == [fns.saxpy_sum(**c) for c in calls]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (remote,) = await (await net.alice.map(fns.scaled, [{"x": x, "k": 0.5}])).result(timeout=60)
    local = fns.scaled(x=x, k=0.5)
    assert remote.keys() == local.keys() and remote["y"].dtype == np.float32
    np.testing.assert_array_equal(remote["y"], local["y"])
    assert {k: v for k, v in remote.items() if k != "y"} == {k: v for k, v in local.items() if k != "y"}
    assert await net.alice.call(fns.seeded, 4) == fns.seeded(count=4)


async def test_a_functions_exception_comes_back_as_its_own_traceback(net: Net) -> None:
    message = await net.fails(await net.alice.map(fns.divide, [{"a": 1.0, "b": 0.0}]))
    assert "function_error" in message and "ZeroDivisionError" in message
    # The user's frames, by their own file name; never the provider's.
    assert "helper_that_divides" in message and "gf_own_code.py" in message
    assert "gpu_runtime" not in message and "site-packages" not in message


async def test_escape_and_abuse_attempts_each_fail_and_harm_nothing(net: Net) -> None:
    creds = net.net.access("provider").creds
    assert creds is not None and creds.is_file()
    data_dir = net.net.config.data_dir
    port = int(net.net.url.rsplit(":", 1)[1])
    attempts: list[tuple[Any, dict[str, Any], tuple[str, ...]]] = [
        (fns.connect, {"host": "127.0.0.1", "port": port}, ("function_error",)),
        (fns.read, {"path": str(creds)}, ("function_error",)),
        (fns.read, {"path": str(data_dir)}, ("function_error",)),
        (fns.read, {"path": "/etc/shadow"}, ("function_error",)),
        (fns.write, {"where": "prefix"}, ("function_error",)),
        (fns.write, {"where": str(data_dir)}, ("function_error",)),
        (fns.hog, {"gigabytes": 64}, ("out_of_memory",)),
        (fns.spin, {}, ("timeout",)),
        (fns.needs_missing, {}, ("function_error",)),
    ]
    if os.geteuid() != 0 or pids_cgroup_available():
        # As root, only a pids cgroup bounds the sandbox's processes (the kernel exempts root from
        # RLIMIT_NPROC): without one, a fork bomb would hit the machine, not the sandbox.
        attempts.append((fns.fork_bomb, {}, ("function_error", "timeout", "worker_crashed")))
    provider = net.net.provider
    assert provider is not None
    starts = provider.sandbox_starts
    jobs = [await net.alice.map(fn, [args]) for fn, args, _ in attempts]
    # Meanwhile another submitter's catalogue work, and alice's own benign code, run beside them.
    bystander = await net.bob.submit({"workload": "sleep", "params": {"seconds": 0.2, "steps": 2}})
    said: dict[str, str] = {}
    for job, (fn, args, reasons) in zip(jobs, attempts, strict=True):
        message = said[fn.__name__] = await net.fails(job)
        assert any(f"failed: {r}:" in message for r in reasons), (fn, args, message)
        assert "connected" not in message and "read:" not in message and "listed:" not in message
    assert (await bystander.wait(60)).status == "completed"
    assert "gpufleet_no_such_package" in said["needs_missing"] and "requires=" in said["needs_missing"]
    assert "timed out" in said["spin"]
    assert not (data_dir / "gpufleet-was-here.txt").exists()
    assert not (Path(sys.prefix) / "gpufleet-was-here.txt").exists()
    # The provider is still whole: both slots serve, and code still runs. The sandboxes the attempts
    # broke (the endless loop's was killed at its timeout) were replaced, and the metrics say so.
    assert provider.slots == 2 and not provider.draining
    assert provider.sandbox_starts > starts and 1 <= provider.sandboxes <= 2
    assert await net.alice.map(fns.saxpy_sum, [{"a": 1.0, "n": 5}] * 4) is not None
    assert await net.alice.call(fns.saxpy_sum, 1.0, 5) == fns.saxpy_sum(a=1.0, n=5)


async def test_code_goes_only_to_providers_that_opted_in(net: Net) -> None:
    # A second provider that runs nobody's code (the default), with free slots the whole time.
    closed_access = net.net.access("provider", "closed-box")
    closed = ProviderRuntime(
        RuntimeConfig(nats_url=closed_access.url, creds=closed_access.creds, backend="cpu", slots=4, calibrate=False)
    )
    await closed.start()
    try:
        assert closed.capabilities is not None and "function" not in closed.capabilities.workloads
        job = await net.alice.map(fns.saxpy_sum, [{"a": float(i), "n": 100} for i in range(12)])
        assert len(await job.result(timeout=90)) == 12
        # Bob's code: no provider opted in to it. It waits, and a quote says why.
        call = fns.saxpy_sum.bind((), {"a": 1.0, "n": 3})
        quote = await net.bob.quote(fns.saxpy_sum.spec(await _code_ref(net.bob, fns.saxpy_sum), [(call, {})]))
        assert not quote.runnable and "code" in quote.why, quote
        waiting = await net.bob.map(fns.saxpy_sum, [{"a": 1.0, "n": 3}])
        await asyncio.sleep(2.0)
        assert (await waiting.status()).count("queued") == 1
        await waiting.cancel()
    finally:
        await closed.close()
    log = await JetStreamEventStore.connect(net.net.access("auditor", "own-code"), reads="direct")
    try:
        envs = [e async for e in log.read_all()]
        # The audit re-decides every event, the code leases among them, and finds nothing wrong.
        report, _ = await full_audit(log)
    finally:
        await log.close()
    function_tasks = {e.data.task_id for e in envs if getattr(e.data, "workload", None) == "function"}
    leases = [e.data for e in envs if isinstance(e.data, TaskLeased) and e.data.task_id in function_tasks]
    assert leases and {lease.provider_id for lease in leases} == {net.net.provider.provider_id}  # type: ignore[union-attr]
    assert not any(lease.task_id.startswith("bob.") for lease in leases)
    assert report.ok, report.render()


async def _code_ref(client: Client, fn: Any) -> Any:
    archive, _ = fn.archive()
    return await client.upload(archive)


async def test_the_readmes_example_runs_through_the_network(net: Net) -> None:
    # examples/own_code.py, as the README's "Your own code" runs it against `gpufleet up`: it finds the
    # network from its data directory, as this machine's own submitter, and prints each value beside
    # the local call's.
    example = Path(__file__).parents[2] / "examples" / "own_code.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(example),
        str(net.net.config.data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.count("equal") == 3 and "DIFFER" not in text, text


async def test_a_root_provider_that_cannot_cap_a_sandboxs_processes_runs_no_code(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root the kernel ignores RLIMIT_NPROC; only a pids cgroup caps a fork bomb. Where none can be
    # made (the probe answers no, as in a container without cgroup rights), the provider opts out of
    # code, saying why, rather than run it uncapped.
    from gpu_runtime import sandbox

    monkeypatch.setattr(sandbox, "pids_cgroup_available", lambda: False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    access = net.net.access("provider", "root-box")
    box = ProviderRuntime(
        RuntimeConfig(nats_url=access.url, creds=access.creds, backend="cpu", calibrate=False, accept_code=("*",))
    )
    await box.start()
    try:
        caps = box.capabilities
        assert caps is not None and "function" not in caps.workloads and not caps.code_from
        refusal = box._code_refusal("alice")
        assert refusal is not None and "no process cap" in refusal and "--unsafe-trusted-code" in refusal
    finally:
        await box.close()


async def test_without_bwrap_code_is_refused_honestly_unless_the_operator_waives_the_sandbox(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpu_runtime import sandbox

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)  # as on a machine without bubblewrap
    access = net.net.access("provider", "no-bwrap-box")
    for unsafe in (False, True):
        box = ProviderRuntime(
            RuntimeConfig(
                nats_url=access.url,
                creds=access.creds,
                backend="cpu",
                calibrate=False,
                accept_code=("alice",),
                unsafe_trusted_code=unsafe,
            )
        )
        await box.start()
        try:
            caps = box.capabilities
            assert caps is not None
            if unsafe:  # the operator's waiver: it runs code, unsandboxed, and said so at start
                assert "function" in caps.workloads and caps.code_from == ("alice",)
                assert box._code_refusal("alice") is None and not box._sandboxed
            else:
                assert "function" not in caps.workloads and not caps.code_from
                assert box._code_refusal("alice") == (
                    "unsupported: no sandbox (install bubblewrap, or pass --unsafe-trusted-code)"
                )
        finally:
            await box.close()
