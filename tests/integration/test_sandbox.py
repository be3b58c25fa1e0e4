"""Submitters' functions in a real bubblewrap sandbox (``SandboxWorker`` on NumPy, no NATS).

Every abuse attempt from inside a submitted function fails its task with a clear reason (or is
simply not possible) and leaves the worker serving the next, benign, task. The benign checks share
one warm sandbox; the tests that must replace it run on their own worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import sys
import threading
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import array_api_compat.numpy as np_compat
import numpy as np
import pytest
import pytest_asyncio

from gpu_runtime.sandbox import CodeSpec, SandboxOptions, SandboxWorker, find_bwrap
from gpu_runtime.supervisor import Completed, Failed
from gpu_runtime.usercode import FunctionContext, call_function, encode_result, load_function, save_npy
from gpu_runtime.workloads.context import load_arrays

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap (bwrap) is not installed"),
]

USER = """
import os, socket, sys, time


def saxpy(xp, a, n, ctx):
    x = xp.arange(n, dtype=xp.float32)
    ctx.progress(0.5)
    y = a * x + 1
    return {"sum": float(xp.sum(y)), "y": y, "u": ctx.uniform(4, stream=1), "first": [int(n), (a, "t")]}


def connect(xp, port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.close()
    return "connected"


def snoop(xp, paths):
    seen = {}
    for p in paths:
        try:
            if os.path.isdir(p):
                seen[p] = sorted(os.listdir(p))
            else:
                with open(p) as f:
                    seen[p] = f.read()
        except OSError as e:
            seen[p] = type(e).__name__
    return seen


def write(xp, paths):
    done = []
    for p in paths:
        try:
            with open(p, "w") as f:
                f.write("owned")
            done.append(p)
        except OSError:
            pass
    with open("/work/mine.txt", "w") as f:
        f.write("fine")
    return done


def bomb(xp):
    made, child = 0, False
    while True:
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            child, made = True, 0
            continue
        made += 1
    if child:
        time.sleep(30)
        os._exit(0)
    return made


def fork_once(xp):
    pid = os.fork()
    if pid == 0:
        return "child"
    os.waitpid(pid, 0)
    return "parent"


def linger(xp):
    import threading
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    return "lingering"


def until_cancelled(xp, ctx):
    while True:
        ctx.progress(0.1)
        time.sleep(0.01)


def hog(xp):
    return xp.ones((64 << 30) // 8)


def spin(xp):
    while True:
        pass


def needs(xp):
    import scipy_is_not_installed_here
    return 1


def nan(xp):
    return [1.0, {"x": float("nan")}]


def garbage(xp):
    print("\\x00\\xff garbage " * 100)
    sys.stdout.flush()
    return "ok"


def forge(xp, how):
    fd = int(sys.argv[sys.argv.index("--channel") + 1])
    if how == "huge":
        os.write(fd, (2**31).to_bytes(4, "big") + b"{}")
    elif how == "reason":
        head = b'{"kind":"error","seq":%d,"reason":"provider_error","message":"x","restart":false,"size":0}'
        os.write(fd, len(head % SEQ).to_bytes(4, "big") + head % SEQ)
    return "lied"


SEQ = 0


def set_seq(xp, seq):
    global SEQ
    SEQ = seq
    return seq


def stepper(xp, steps, ctx):
    start, acc = 0, xp.zeros(3)
    if ctx.resume is not None:
        start, arrays = ctx.resume
        acc = arrays["acc"]
    for step in range(start, steps):
        acc = acc + 1
        ctx.checkpoint(step + 1, acc=acc)
        ctx.progress(step + 1, steps)
    return {"start": start, "acc": acc}
"""


def archive(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


CODE = archive({"user.py": USER})


class Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[int, int, str]] = []
        self.checkpoints: list[tuple[int, bytes]] = []

    async def progress(self, done: int, total: int, unit: str) -> None:
        self.reports.append((done, total, unit))

    async def checkpoint(self, step: int, blob: bytes) -> None:
        self.checkpoints.append((step, blob))

    async def tick(self) -> None:
        return None


def spec(entry: str, args: dict[str, Any] | None = None, **kw: Any) -> CodeSpec:
    return CodeSpec(task_id="t-1", index=0, archive=CODE, entry=f"user:{entry}", args=args or {}, **kw)


def marked(marker: str) -> list[int]:
    """Live processes whose command line carries ``marker`` (every process of one sandbox), by pid."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd:
                out.append(int(entry))
    return sorted(out)


def leading_to_bound(home: Path) -> set[str]:
    """The entries of ``home`` the sandbox shows: those leading to a bound interpreter."""
    found = (Path(p).resolve() for p in (sys.base_prefix, sys.prefix))
    return {p.relative_to(home).parts[0] for p in found if home in p.parents}


def exist(paths: list[str]) -> list[str]:
    return [p for p in paths if Path(p).exists()]


async def gone(marker: str) -> bool:
    """Whether every process of a killed sandbox ends (the kernel reaps a pid namespace shortly)."""
    for _ in range(500):
        if not marked(marker):
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def secrets() -> Iterator[tuple[Path, Path]]:
    """A credentials file and a data directory inside a path the sandbox binds (the venv)."""
    base = Path(sys.prefix) / f"gf-sandbox-test-{uuid.uuid4().hex[:8]}"
    (base / "data").mkdir(parents=True)
    creds = base / "provider.creds"
    creds.write_text("SECRET-CREDENTIALS")
    (base / "data" / "store.db").write_text("SECRET-DATA")
    yield creds, base / "data"
    shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(secrets: tuple[Path, Path]) -> AsyncIterator[SandboxWorker]:
    w = SandboxWorker(0, "alice", SandboxOptions(backend="cpu", hide=secrets), grace_s=0.5)
    await w.start()
    yield w
    w.kill()


async def run(w: SandboxWorker, s: CodeSpec, timeout_s: float = 60.0) -> Completed | Failed:
    return await w.run(s, Sink(), timeout_s)


async def test_a_benign_function_gives_exactly_what_a_local_call_gives(worker: SandboxWorker, tmp_path: Path) -> None:
    out = await run(worker, spec("saxpy", {"a": 2.0, "n": 1000}, seed=7))
    assert isinstance(out, Completed), out
    from gpu_runtime.usercode import unpack_archive

    unpack_archive(CODE, tmp_path / "code")
    fn = load_function(tmp_path / "code", "user:saxpy")
    local = call_function(fn, np_compat, {"a": 2.0, "n": 1000}, {}, FunctionContext(np_compat, seed=7))
    summary, blob = encode_result(local)
    assert out.summary == summary
    assert blob is not None and out.arrays is not None
    got, want = load_arrays(out.arrays), load_arrays(blob)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert out.summary["value"]["first"] == [1000, [2.0, "t"]]


async def test_array_arguments_progress_checkpoints_and_resume_reach_the_service(worker: SandboxWorker) -> None:
    sink = Sink()
    out = await worker.run(spec("stepper", {"steps": 3}), sink, 60)
    assert isinstance(out, Completed), out
    assert [s for s, _ in sink.checkpoints] == [1, 2, 3]
    assert sink.reports and sink.reports[-1] == (3, 3, "steps")
    step, blob = sink.checkpoints[1]
    resumed = await worker.run(spec("stepper", {"steps": 3}, resume_step=step, resume_blob=blob), Sink(), 60)
    assert isinstance(resumed, Completed), resumed
    assert resumed.summary["value"]["start"] == 2
    assert resumed.arrays is not None and load_arrays(resumed.arrays)["a0"].tolist() == [3.0, 3.0, 3.0]
    arr = await run(worker, spec("saxpy", {"a": 1.0}, arrays={"n": save_npy(np.int64(5))}))
    assert isinstance(arr, Completed) and arr.summary["value"]["first"][0] == 5


async def test_no_network_not_even_the_hosts_loopback(worker: SandboxWorker) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    out = await run(worker, spec("connect", {"port": server.getsockname()[1]}))
    thread = threading.Thread(target=accept)
    thread.start()
    thread.join()
    server.close()
    assert isinstance(out, Failed) and out.reason == "function_error", out
    assert "ConnectionRefusedError" in out.message or "OSError" in out.message
    assert accepted == []


async def test_hidden_and_unbound_files_cannot_be_read(worker: SandboxWorker, secrets: tuple[Path, Path]) -> None:
    creds, data = secrets
    home = Path.home()
    paths = [str(creds), str(data), str(data / "store.db"), "/etc/shadow", "/etc/passwd", str(home)]
    out = await run(worker, spec("snoop", {"paths": paths}))
    assert isinstance(out, Completed), out
    seen = out.summary["value"]
    assert "SECRET" not in str(seen)
    assert seen[str(creds)] in ("", "PermissionError") and seen[str(data)] == []
    assert seen[str(data / "store.db")] == "FileNotFoundError"
    assert seen["/etc/shadow"] == "FileNotFoundError" and seen["/etc/passwd"] == "FileNotFoundError"
    # Only what leads to a bound path (an interpreter under the home, as pyenv puts it) shows.
    visible = seen[str(home)]
    assert visible == "FileNotFoundError" or set(visible) <= leading_to_bound(home)


async def test_nothing_outside_the_work_directory_is_writable(worker: SandboxWorker) -> None:
    site = next(p for p in sys.path if p.endswith("site-packages"))
    targets = [
        f"{site}/evil.py",
        f"{sys.prefix}/evil.txt",
        "/usr/evil",
        "/usr/lib/evil",
        "/evil",
        "/etc/evil",
        "/dev/evil",
    ]
    out = await run(worker, spec("write", {"paths": targets}))
    assert isinstance(out, Completed), out
    assert out.summary["value"] == []
    assert exist(targets[:4]) == []


async def test_a_missing_package_is_named_with_what_to_declare(worker: SandboxWorker) -> None:
    out = await run(worker, spec("needs"))
    assert isinstance(out, Failed) and out.reason == "function_error", out
    assert "does not have the package 'scipy_is_not_installed_here'" in out.message and "requires=" in out.message
    assert "site-packages" not in out.message and "gpu_runtime" not in out.message
    assert 'File "user.py"' in out.message


async def test_nan_and_64_gb_and_garbage_on_stdout(worker: SandboxWorker) -> None:
    nan = await run(worker, spec("nan"))
    assert isinstance(nan, Failed) and nan.reason == "function_error" and "value[1].x is nan" in nan.message
    hog = await run(worker, spec("hog"))
    assert isinstance(hog, Failed) and hog.reason == "out_of_memory", hog
    assert "MemoryError" in hog.message
    pid = worker.pid
    garbage = await run(worker, spec("garbage"))
    assert isinstance(garbage, Completed) and garbage.summary == {"value": "ok"}
    assert "garbage" in worker.output() and worker.pid == pid


async def test_forged_frames_fail_the_task_and_the_sandbox_is_replaced(worker: SandboxWorker) -> None:
    for how in ("huge", "reason"):
        before = worker.pid
        seq = worker._seq + 2  # the forging call's sequence number, so only the reason is wrong
        assert isinstance(await run(worker, spec("set_seq", {"seq": seq})), Completed)
        out = await run(worker, spec("forge", {"how": how}))
        assert isinstance(out, Failed) and out.reason == "function_error", out
        assert out.message.startswith("the sandbox broke the protocol"), out.message
        after = await run(worker, spec("saxpy", {"a": 1.0, "n": 4}))
        assert isinstance(after, Completed), after
        assert worker.pid != before
    assert worker.tenant == "alice"


async def test_a_forked_child_never_returns_into_the_runner(worker: SandboxWorker) -> None:
    before = worker.pid
    out = await run(worker, spec("fork_once"), timeout_s=20.0)
    assert isinstance(out, Completed) and out.summary == {"value": "parent"}, out
    after = await run(worker, spec("saxpy", {"a": 1.0, "n": 4}))
    assert isinstance(after, Completed) and worker.pid == before


async def test_a_thread_left_running_gets_the_sandbox_replaced(worker: SandboxWorker) -> None:
    before = worker.pid
    out = await run(worker, spec("linger"))
    assert isinstance(out, Completed) and out.summary == {"value": "lingering"}, out
    after = await run(worker, spec("saxpy", {"a": 1.0, "n": 4}))
    assert isinstance(after, Completed) and worker.pid != before


class CancellingSink(Sink):
    """Cancels the task at its first progress report, as a revoked lease does."""

    def __init__(self, worker: SandboxWorker) -> None:
        super().__init__()
        self.worker = worker

    async def progress(self, done: int, total: int, unit: str) -> None:
        await super().progress(done, total, unit)
        self.worker.cancel("cancelled")


async def test_a_cancel_stops_the_function_cooperatively(worker: SandboxWorker) -> None:
    before = worker.pid
    out = await worker.run(spec("until_cancelled"), CancellingSink(worker), 60)
    assert isinstance(out, Failed) and out.reason == "cancelled" and "killed" not in out.message, out
    after = await run(worker, spec("saxpy", {"a": 1.0, "n": 4}))
    assert isinstance(after, Completed) and worker.pid == before


async def test_an_infinite_loop_times_out_and_the_sandbox_is_restarted(worker: SandboxWorker) -> None:
    before, restarts = worker.pid, worker.restarts
    out = await run(worker, spec("spin"), timeout_s=1.0)
    assert isinstance(out, Failed) and out.reason == "timeout", out
    assert "killed" in out.message
    after = await run(worker, spec("saxpy", {"a": 1.0, "n": 4}))
    assert isinstance(after, Completed) and worker.pid != before and worker.restarts == restarts + 1


async def test_a_fork_bomb_is_capped_and_the_sandbox_replaced(worker: SandboxWorker) -> None:
    if worker.process_limit == "none":
        pytest.skip("running as root without a pids cgroup: nothing caps a fork bomb here")
    before = worker.pid
    out = await run(worker, spec("bomb"))
    assert isinstance(out, Completed), out
    assert 0 < out.summary["value"] < worker.sandbox.processes
    after = await run(worker, spec("saxpy", {"a": 1.0, "n": 4}))
    assert isinstance(after, Completed) and worker.pid != before


async def test_unsafe_mode_runs_the_same_runner_without_bwrap() -> None:
    w = SandboxWorker(1, "bob", SandboxOptions(backend="cpu", unsafe=True))
    try:
        out = await run(w, spec("saxpy", {"a": 2.0, "n": 10}))
        assert isinstance(out, Completed) and out.summary["value"]["sum"] == 100.0
        bad = await run(w, spec("nan"))
        assert isinstance(bad, Failed) and bad.reason == "function_error"
    finally:
        w.kill()
    assert await gone(w.marker)


async def test_kill_leaves_no_process_behind() -> None:
    w = SandboxWorker(2, "carol", SandboxOptions(backend="cpu"))
    await w.start()
    assert marked(w.marker)
    w.kill()
    assert await gone(w.marker) and w.pid is None and w.tenant == "carol"
