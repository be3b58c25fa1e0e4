"""An attacker's review of submitters' code (issue 14), against a real bubblewrap sandbox.

Each test is one thing a malicious submitter's function tries from inside the sandbox, checked
from the host (never on the runner's word, which the function can rewrite: it runs in the same
interpreter):

- the sandbox's open file descriptors are the std streams, the channel and the cancel pipe only;
  its environment is the sandbox's, not the provider's; the host's abstract unix sockets (X11,
  dbus, ...) are out of reach; another tenant's work directory and /tmp are not visible;
- a process left behind by a function that also patched the runner to say "nothing left" still
  gets the sandbox replaced before the next task (counted from the host's /proc);
- a sandbox that stops draining its cancel pipe cannot block the service's event loop;
- a function dying, or arrays too big for the channel, are the task's fault, never the provider's;
- a function cannot make its provider flood the network: 100% reported in a loop, or a checkpoint
  per loop step, costs a report or an object per throttle interval, not per call (the intake keeps
  every message it is sent, and refuses all when full);
- a forged result whose value is nested past what any function may return is a protocol break.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from events.store.connection import connect_nats
from events.store.topology import Topology
from gpu_runtime.sandbox import CodeSpec, SandboxOptions, SandboxWorker, find_bwrap
from gpu_runtime.supervisor import Completed, Failed
from gpu_runtime.supervisor import NullSink as Sink
from gpufleet import Client
from gpufleet.network import LocalNetwork, NetworkConfig
from tests.integration.test_sandbox import archive, marked

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap (bwrap) is not installed"),
]

sys.path.insert(0, str(Path(__file__).parent / "usercode"))
import gf_attack_review as fns  # type: ignore[import-not-found]  # noqa: E402

USER = r"""
import json, os, socket, sys, time


def _seq():
    f = sys._getframe()
    while f is not None:
        if f.f_code.co_name == "run" and "seq" in f.f_locals and "header" in f.f_locals:
            return f.f_locals["seq"]
        f = f.f_back
    raise RuntimeError("no runner frame")


def _forge(header, payload=b""):
    fd = int(sys.argv[sys.argv.index("--channel") + 1])
    head = json.dumps({**header, "size": len(payload)}).encode()
    s = socket.socket(fileno=os.dup(fd))
    s.sendall(len(head).to_bytes(4, "big") + head + payload)
    s.close()


def fds(xp):
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return {"fds": out, "channel": sys.argv[sys.argv.index("--channel") + 1],
            "cancel": sys.argv[sys.argv.index("--cancel") + 1]}


def env(xp):
    return dict(os.environ)


def abstract(xp, name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("\0" + name)
        return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()


def listing(xp, paths):
    out = {}
    for p in paths:
        try:
            out[p] = sorted(os.listdir(p))
        except OSError as e:
            out[p] = type(e).__name__
    return out


def plant(xp):
    for p in ("/work/planted.txt", "/tmp/planted.txt"):
        with open(p, "w") as f:
            f.write("mallory was here")
    return "planted"


def leave_behind(xp):
    import __main__
    __main__._Runner.must_go = lambda self: False  # the runner now says "nothing left" always
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(120)  # waits for the next task
        os._exit(0)
    os.waitpid(pid, 0)
    return "left"


def others(xp):
    return sorted(int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) not in (1, os.getpid()))


def deaf(xp, ctx):
    fd = int(sys.argv[sys.argv.index("--cancel") + 1])
    if os.fork() == 0:
        time.sleep(20)  # holds the cancel pipe's read end, and never reads it
        os._exit(0)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, fd)  # the runner's cancel reader reads /dev/null from its next read on, and stops
    os.close(null)
    ctx.progress(1.0)  # the service now writes its cancels (see the test)
    return "deaf"


def split_hog(xp, children, mb):
    # Each process stays under the host-memory rlimit (RLIMIT_AS is per process); together they do not.
    r, w = os.pipe()
    for _ in range(children):
        if os.fork() == 0:
            try:
                block = bytearray(mb << 20)  # zeroed: every page touched
            except MemoryError:
                os.write(w, b"e")
                os._exit(0)
            os.write(w, b"x")
            time.sleep(5)
            os._exit(len(block) & 0)
    got = b"".join(os.read(r, 1) for _ in range(children))
    if b"e" in got:
        raise MemoryError("a child could not allocate its share")
    total = 0
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) not in (1, os.getpid()):
            with open(f"/proc/{e}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) >> 10
    return total


def die(xp):
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def die_later(xp):
    import __main__, threading
    __main__._Runner.must_go = lambda self: False
    threading.Thread(target=lambda: (time.sleep(0.3), os._exit(3)), daemon=True).start()
    return "later"


def spin_after(xp):
    import __main__, threading
    __main__._Runner.must_go = lambda self: False  # hide the thread from the runner's own check
    def spin():
        n = 0
        while True:
            n += 1
    threading.Thread(target=spin, daemon=True).start()
    return "spun"  # a result now, and the provider's CPU for nobody afterwards


def deep(xp):
    value = 0
    for _ in range(900):
        value = [value]
    _forge({"kind": "result", "seq": _seq(), "summary": {"value": value}, "restart": False})
    time.sleep(0.5)
    os._exit(0)  # never sends its own result
"""


CODE = archive({"user.py": USER})


#: The entries of /root or /home that lead to a bound interpreter (pyenv's, say): all a sandbox sees there.
LEADING = {p.parts[2] for p in (Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()) if len(p.parts) > 2}


def spec(entry: str, args: dict[str, Any] | None = None) -> CodeSpec:
    return CodeSpec(task_id="t-1", index=0, archive=CODE, entry=f"user:{entry}", args=args or {})


async def run(w: SandboxWorker, entry: str, args: dict[str, Any] | None = None) -> Completed | Failed:
    return await w.run(spec(entry, args), Sink(), 60.0)


async def value(w: SandboxWorker, entry: str, args: dict[str, Any] | None = None) -> Any:
    out = await run(w, entry, args)
    assert isinstance(out, Completed), out
    return out.summary["value"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mallory() -> AsyncIterator[SandboxWorker]:
    os.environ["GF_ATTACK_PROVIDER_SECRET"] = "provider-secret"  # in the service's environment
    w = SandboxWorker(0, "mallory", SandboxOptions(backend="cpu"), grace_s=0.5)
    try:
        await w.start()
        yield w
    finally:
        w.kill()
        os.environ.pop("GF_ATTACK_PROVIDER_SECRET", None)


async def test_only_the_std_streams_the_channel_and_the_cancel_pipe_are_open(mallory: SandboxWorker) -> None:
    seen = await value(mallory, "fds")
    fds = seen["fds"]
    assert set(fds) == {"0", "1", "2", seen["channel"], seen["cancel"]}, fds
    assert fds[seen["channel"]].startswith("socket:") and fds[seen["cancel"]].startswith("pipe:"), fds
    assert fds["0"] == "/dev/null", fds


async def test_the_providers_environment_does_not_reach_the_function(mallory: SandboxWorker) -> None:
    seen = await value(mallory, "env")
    assert "GF_ATTACK_PROVIDER_SECRET" not in seen and "provider-secret" not in json.dumps(seen)
    assert seen["HOME"] == "/work"


async def test_the_hosts_abstract_unix_sockets_are_out_of_reach(mallory: SandboxWorker) -> None:
    name = f"gf-attack-{uuid.uuid4().hex[:12]}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)
    try:
        assert await value(mallory, "abstract", {"name": name}) == "ConnectionRefusedError"
    finally:
        listener.close()
    paths = ["/tmp/.X11-unix", "/run", "/var/run", "/sys", "/home", "/root"]
    seen = await value(mallory, "listing", {"paths": paths})
    # Of a home directory, only the way to a bound interpreter shows (pyenv's under /root, say).
    for path, entries in seen.items():
        assert entries == "FileNotFoundError" or set(entries) <= LEADING, (path, entries)


async def test_another_tenants_work_and_tmp_are_not_visible(mallory: SandboxWorker) -> None:
    assert await value(mallory, "plant") == "planted"
    trudy = SandboxWorker(1, "trudy", SandboxOptions(backend="cpu"))
    try:
        seen = await value(trudy, "listing", {"paths": ["/work", "/tmp"]})
    finally:
        trudy.kill()
    assert "planted.txt" not in seen["/work"] and "planted.txt" not in seen["/tmp"], seen


async def test_a_process_left_behind_is_found_from_the_host_whatever_the_runner_says(mallory: SandboxWorker) -> None:
    before = mallory.pid
    assert await value(mallory, "leave_behind") == "left"
    # The next task of the same tenant sees no process of the previous one: the sandbox was replaced.
    assert await value(mallory, "others") == []
    assert mallory.pid != before


class CancelFlood(Sink):
    """At the function's first progress report, the cancels of 20,000 revoked leases."""

    def __init__(self, worker: SandboxWorker) -> None:
        self.worker = worker
        self.holder_outlived_the_flood = False

    async def progress(self, done: int, total: int, unit: str) -> None:
        cancel = self.worker._cancel
        assert cancel is not None
        before = marked(self.worker.marker)
        for i in range(20_000):
            cancel.value = 10**12 + i  # no task's sequence number
        # Blocking writes would have waited for the holder to end (and the loop with them).
        self.holder_outlived_the_flood = marked(self.worker.marker) == before


async def test_a_sandbox_deaf_to_cancels_cannot_block_the_services_loop(mallory: SandboxWorker) -> None:
    # Each revoked or timed-out task writes 8 bytes to the cancel pipe; a sandbox whose reader is
    # gone, with a process still holding the pipe, reads none. 64 KiB of them fill the pipe, and a
    # blocking write there would freeze the provider's loop: every slot, its heartbeats.
    flood = CancelFlood(mallory)
    out = await mallory.run(spec("deaf"), flood, 60.0)
    assert isinstance(out, Completed) and out.summary == {"value": "deaf"}, out
    assert flood.holder_outlived_the_flood
    assert await value(mallory, "others") == []


async def test_a_function_that_kills_its_sandbox_fails_as_its_own_error_not_the_providers(
    mallory: SandboxWorker,
) -> None:
    # worker_crashed is a provider fault (events.reputation.PROVIDER_FAULTS): a submitter must not
    # be able to spend a provider's reputation, and get its task retried on the next provider.
    out = await run(mallory, "die")
    assert isinstance(out, Failed) and out.reason == "function_error", out
    assert await value(mallory, "others") == []


async def test_a_sandbox_that_dies_between_tasks_is_replaced_and_the_next_task_runs(mallory: SandboxWorker) -> None:
    assert await value(mallory, "die_later") == "later"
    popen = mallory._popen
    assert popen is not None
    await asyncio.get_running_loop().run_in_executor(None, popen.wait)  # the thread ends the runner
    assert await value(mallory, "others") == []


async def test_a_sandbox_that_computes_while_idle_is_killed_and_the_next_task_runs_afresh() -> None:
    # Work after the result (a thread the function left, hidden from the runner's checks) is work
    # nobody is billed for: the host sees the sandbox's CPU time grow with no task there.
    w = SandboxWorker(5, "mallory", SandboxOptions(backend="cpu"), grace_s=0.5)
    try:
        await w.start()
        assert await value(w, "spin_after") == "spun"
        spinning = w.pid
        for _ in range(100):
            if w.pid is None:
                break
            await asyncio.sleep(0.1)
        assert w.pid is None and spinning is not None and not marked(w.marker), "the idle sandbox still spins"
        assert await value(w, "others") == []  # a fresh sandbox for the tenant's next task
        assert w.pid is not None and w.pid != spinning
    finally:
        w.kill()


async def test_a_forged_result_nested_past_any_functions_is_a_protocol_break(mallory: SandboxWorker) -> None:
    out = await run(mallory, "deep")
    assert isinstance(out, Failed) and out.reason == "function_error", out
    assert out.message.startswith("the sandbox broke the protocol"), out.message


async def test_arrays_too_big_for_the_channel_are_the_tasks_fault_not_the_providers(mallory: SandboxWorker) -> None:
    # 32 array arguments of up to the device's memory each pass admission; over 256 MiB together
    # they cannot be framed. That is the task's own problem (retrying it anywhere fails the same
    # way), never worker_crashed, which counts against the provider and is retried elsewhere.
    big = CodeSpec(task_id="t-1", index=0, archive=CODE, entry="user:others", args={}, arrays={"a": bytes(257 << 20)})
    out = await mallory.run(big, Sink(), 60.0)
    del big
    assert isinstance(out, Failed) and out.reason == "invalid_params", out
    assert "\n" not in out.message
    assert await value(mallory, "others") == []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[LocalNetwork, Client]]:
    config = NetworkConfig(
        data_dir=tmp_path_factory.mktemp("attack-code") / "net",
        port=0,
        provider_backend="cpu",
        provider_slots=1,
        provider_accept_code=("mallory",),
        notary=False,
    )
    network = await LocalNetwork(config).start()
    a = network.access("submitter", "mallory")
    client = await Client.connect(a.url, creds=a.creds)
    try:
        yield network, client
    finally:
        await client.close()
        await network.stop()


async def _subjects(network: LocalNetwork, stream: str, subjects: str) -> dict[str, int]:
    nc = await connect_nats(network.access("admin"), name="attack-review-admin")
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subjects)
    finally:
        await nc.close()
    return dict(info.state.subjects or {})


async def test_a_function_cannot_make_its_provider_flood_the_intake_or_the_object_store(
    net: tuple[LocalNetwork, Client],
) -> None:
    network, mallory = net
    t = Topology()
    n = 400
    chatty = await mallory.map(fns.chatty, [{"n": n}])
    hoarder = await mallory.map(fns.hoarder, [{"n": n}])
    assert await chatty.result(timeout=90) == [n] and await hoarder.result(timeout=90) == [n]
    for job in (chatty, hoarder):
        reports = await _subjects(network, t.intake_stream, f"{t.intake_prefix}.provider.*.report.{job.id}.0")
        assert 0 < sum(reports.values()) < n // 4, reports
    objects = await _subjects(network, t.objects_stream, f"{t.object_prefix}.provider.*.*.m")
    assert len(objects) < n // 4, len(objects)


async def test_the_host_memory_cap_holds_for_the_sandbox_not_per_process() -> None:
    """RLIMIT_AS caps each process alone: three children of 1 GiB each would hold 3 GiB under a 2 GiB
    cap. As root, the sandbox's memory cgroup caps them all together: the kernel kills one, and the
    task fails as out_of_memory at once (not at its timeout)."""
    cap_mb = 2048
    w = SandboxWorker(3, "mallory", SandboxOptions(backend="cpu", host_memory_mb=cap_mb))
    try:
        await w.start()
        if w._memory_cgroup is None:
            pytest.skip("no memory cgroup for the sandbox (not root, or none could be made): the cap is per process")
        out = await run(w, "split_hog", {"children": 3, "mb": 1024})
    finally:
        w.kill()
    held = out.summary["value"] if isinstance(out, Completed) else 0
    assert held <= cap_mb, f"the sandbox held {held} MiB in all, over its {cap_mb} MiB cap"
    assert isinstance(out, Failed) and out.reason == "out_of_memory", out
    assert f"{cap_mb} MiB" in out.message


async def test_an_entry_naming_a_module_outside_the_archive_is_refused(mallory: SandboxWorker) -> None:
    for entry in ("os:system", "gpu_runtime.sandbox:bwrap_command", "subprocess:run", "__main__:main"):
        s = CodeSpec(task_id="t-1", index=0, archive=CODE, entry=entry, args={"args": ["id"]})
        out = await mallory.run(s, Sink(), 60.0)
        assert isinstance(out, Failed) and out.reason == "function_error", (entry, out)
        assert "not in the code archive" in out.message, (entry, out.message)
