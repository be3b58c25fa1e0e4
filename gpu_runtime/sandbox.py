"""The service's side of submitters' code: a warm bubblewrap sandbox per tenant and slot.

A :class:`SandboxWorker` is a :class:`~gpu_runtime.supervisor.WorkerProcess` whose process is the
runner of :mod:`gpu_runtime.sandboxed` inside bubblewrap: new user, pid, network, ipc and uts
namespaces, a read-only view of the system, the interpreter and our packages, a private size-capped
tmpfs work directory, rlimits, dying with the service. It runs one tenant's functions only. The
deadline, cooperative cancel then SIGKILL, crash detection and restart are WorkerProcess's own loop.

What comes out of the sandbox is a stranger's word: frames are parsed here with every length capped
and every field checked, never unpickled; a frame that breaks the protocol kills the sandbox and
fails the task as ``function_error``. The code may still lie about its own value, but nothing it
sends may crash or block the service or change what it measures (``gpu_ms`` is timed here).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import structlog

from events.types import FailureReason
from gpu_runtime.backend import BackendChoice
from gpu_runtime.errors import WorkerStartError
from gpu_runtime.sandboxed import MAX_HEADER, MAX_PAYLOAD, encode_frame
from gpu_runtime.supervisor import Completed, Failed, TaskSink, WorkerProcess, describe_exit
from gpu_runtime.usercode import MAX_RESULT_DEPTH, array_names
from gpu_runtime.worker import WorkerOptions

__all__ = [
    "CodeSpec",
    "FrameReader",
    "ProtocolError",
    "SandboxOptions",
    "SandboxWorker",
    "bwrap_command",
    "find_bwrap",
    "pids_cgroup_available",
]

_log = structlog.get_logger("gpufleet.sandbox")

#: The packages of ours a submitted module may import (``import gpufleet`` for the decorator).
PACKAGES = ("gpu_runtime", "events", "actors", "projections", "gpufleet")
#: The sandbox's uid and gid (nobody), and the kept tail of its stdout and stderr.
SANDBOX_ID = 65534
LOG_BYTES = 64 << 10
#: Failure reasons a sandbox may report for its own task; anything else (blaming the provider,
#: claiming a timeout) is a protocol violation.
_SANDBOX_REASONS = frozenset({"function_error", "out_of_memory", "kernel_error", "cancelled"})
_MAX_MESSAGE = 64 << 10
#: An idle sandbox is looked at this often; one that used more CPU than ``IDLE_CPU_S`` in that
#: time while no task ran there is computing for nobody (a thread or process its function left,
#: hidden from the runner's own checks) and is killed.
IDLE_WATCH_S = 1.0
IDLE_CPU_S = 0.5
_BIG = 2**63
_LEN = struct.Struct(">I")


def find_bwrap() -> str | None:
    """The bubblewrap executable, or None where it is not installed."""
    return shutil.which("bwrap")


@functools.cache
def _bwrap_help(bwrap: str) -> str:
    try:
        return subprocess.run([bwrap, "--help"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@dataclass(frozen=True)
class SandboxOptions:
    """How a tenant's sandbox is confined."""

    backend: BackendChoice = "cpu"
    device_index: int = 0
    #: Device bytes one task may hold (CuPy's pool limit); None: no limit.
    memory_limit: int | None = None
    #: Host memory: RLIMIT_AS on the CPU, RLIMIT_DATA on CUDA (whose driver reserves huge address
    #: ranges that an address-space limit would refuse).
    host_memory_mb: int = 4096
    cpu_s: int = 3600
    file_mb: int = 256
    open_files: int = 256
    processes: int = 64
    tmpfs_mb: int = 1024
    #: Paths masked even inside a bound path: the provider's credentials file and data directory.
    hide: tuple[Path, ...] = ()
    #: ``--unsafe-trusted-code``: no bubblewrap, same runner, protocol and rlimits, no isolation.
    unsafe: bool = False


@dataclass(frozen=True)
class CodeSpec:
    """One call of a submitter's function, with every input the service fetched."""

    task_id: str
    index: int
    archive: bytes
    entry: str
    args: dict[str, Any]
    #: Array arguments as ``.npy`` bytes.
    arrays: dict[str, bytes] = field(default_factory=dict)
    seed: int = 0
    resume_step: int = 0
    resume_blob: bytes | None = None


class ProtocolError(Exception):
    """A frame from the sandbox broke the protocol."""


# -- the bubblewrap command ---------------------------------------------------------------------


def _package_dirs() -> list[Path]:
    out: list[Path] = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            out.extend(Path(p).resolve() for p in spec.submodule_search_locations)
    return out


def _system_binds() -> list[str]:
    args: list[str] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        p = Path(top)
        if p.is_symlink():  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/alternatives", "/etc/localtime"):
        args += ["--ro-bind-try", f, f]
    return args


def _covered(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def bwrap_command(
    options: SandboxOptions, runner: list[str], *, bwrap: str = "bwrap", work: str = "/work"
) -> list[str]:
    """The bubblewrap command line that runs ``runner`` confined as ``options`` say."""
    args = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if "--disable-userns" in _bwrap_help(bwrap):
        args.append("--disable-userns")
    args += ["--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID), "--clearenv"]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "TMPDIR": "/tmp",
        "CUPY_CACHE_DIR": f"{work}/.cupy",
        "OMP_NUM_THREADS": str(max(1, min(os.cpu_count() or 1, 8))),
    }
    if options.backend == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = str(options.device_index)
    for k, v in env.items():
        args += ["--setenv", k, v]
    # The tmpfs mounts first: binds that lie under them (a repository at /work/main, a virtual
    # environment under /tmp, as CI's clone is) are mounted over them afterwards, read-only, and no
    # later mount hides them. /tmp's size is capped too (tmpfs is host memory).
    args += ["--size", str(options.tmpfs_mb << 20), "--tmpfs", work]
    args += ["--size", str(max(options.tmpfs_mb // 4, 16) << 20), "--tmpfs", "/tmp"]
    args += _system_binds()
    bound = [Path("/usr")]
    for p in sorted({Path(x).resolve() for x in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}):
        if not _covered(p, bound):
            args += ["--ro-bind", str(p), str(p)]
            bound.append(p)
    for p in _package_dirs():
        if not _covered(p, bound):
            args += ["--ro-bind", str(p), str(p)]
            bound.append(p)
    # The root itself is made read-only below.
    args += ["--proc", "/proc", "--dev", "/dev"]
    if options.backend == "cuda":
        # Not yet run on a GPU: the device nodes CUDA opens, bound only when they exist.
        nodes = sorted(str(p) for p in Path("/dev").glob("nvidia*") if not p.is_dir())
        for node in nodes or ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0"]:
            args += ["--dev-bind-try", node, node]
        if Path("/dev/nvidia-caps").is_dir():
            args += ["--dev-bind-try", "/dev/nvidia-caps", "/dev/nvidia-caps"]
        for extra in ("/etc/nvidia", "/usr/local/cuda", "/opt/nvidia", "/sys/module/nvidia"):
            if not _covered(Path(extra), bound):
                args += ["--ro-bind-try", extra, extra]
    args += ["--remount-ro", "/dev"]  # bwrap's /dev is a tmpfs: no files to be made there
    for h in options.hide:
        p = h.resolve()
        if not p.exists() or not _covered(p, bound):
            continue  # not bound: invisible anyway
        args += ["--tmpfs", str(p)] if p.is_dir() else ["--ro-bind", "/dev/null", str(p)]
    args += ["--remount-ro", "/", "--chdir", work, "--", *runner]
    return args


# -- processes: rlimits, dying with the service, a pids cgroup for root -------------------------

_LAUNCHER = """
import ctypes, os, resource, sys
cgs, parent, limits = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for cg in filter(None, cgs.split("\\n")):
    with open(cg, "w") as f:
        f.write(str(os.getpid()))
for item in filter(None, limits.split(",")):
    name, value = item.split("=")
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(value), int(value)))
ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)
if os.getppid() != parent:
    os._exit(1)
os.execvp(sys.argv[4], sys.argv[4:])
"""


def _rlimits(options: SandboxOptions) -> str:
    memory = "DATA" if options.backend == "cuda" else "AS"
    items = {
        "CPU": options.cpu_s,
        "FSIZE": options.file_mb << 20,
        "NOFILE": options.open_files,
        memory: options.host_memory_mb << 20,
    }
    return ",".join(f"{k}={v}" for k, v in items.items())


#: Per controller: the file of its limit in cgroup v1 and in v2.
_LIMIT_FILES = {"pids": ("pids.max", "pids.max"), "memory": ("memory.limit_in_bytes", "memory.max")}


def _cgroup_roots(controller: str) -> list[tuple[Path, str]]:
    """Where this process may make a cgroup with ``controller`` (``pids`` or ``memory``), and the
    file of its limit there: cgroup v1's hierarchy of that controller, or v2's unified one."""
    out: list[tuple[Path, str]] = []
    v1, v2 = _LIMIT_FILES[controller]
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            out.append((Path("/sys/fs/cgroup") / controller / path.lstrip("/"), v1))
    for line in lines:
        if line.startswith("0::"):
            base = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            with contextlib.suppress(OSError):
                if controller in (base / "cgroup.subtree_control").read_text().split():
                    out.append((base, v2))
    return out


def _make_cgroup(limit: int, controller: str = "pids") -> Path | None:
    for root, limit_file in _cgroup_roots(controller):
        path = root / f"gpufleet-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
        except OSError:
            continue
        try:
            (path / limit_file).write_text(str(limit))
            return path
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


def _make_cgroups(options: SandboxOptions) -> tuple[Path | None, Path | None]:
    """The sandbox's (pids, memory) cgroups, either None where it cannot be made. In cgroup v2 a
    process is in one cgroup: both limits go in one, made for pids."""
    pids = _make_cgroup(options.processes, "pids")
    memory_bytes = options.host_memory_mb << 20
    if pids is not None and (pids / "memory.max").exists():
        try:
            (pids / "memory.max").write_text(str(memory_bytes))
            return pids, pids
        except OSError:
            return pids, None
    if pids is not None and not str(pids).startswith("/sys/fs/cgroup/pids"):
        return pids, None  # v2 without the memory controller: a second cgroup would move the process
    return pids, _make_cgroup(memory_bytes, "memory")


def oom_kills(cgroup: Path | None) -> int:
    """How many processes the kernel killed for going over ``cgroup``'s memory limit (0 if unknown)."""
    if cgroup is None:
        return 0
    for name in ("memory.events", "memory.oom_control"):
        with contextlib.suppress(OSError, ValueError):
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def pids_cgroup_available() -> bool:
    """True when a pids cgroup can be made here (what caps a root provider's sandbox processes)."""
    path = _make_cgroup(8)
    if path is None:
        return False
    with contextlib.suppress(OSError):
        path.rmdir()
    return True


def _drop_cgroup(path: Path) -> None:
    for _ in range(50):
        with contextlib.suppress(OSError, ValueError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            import time

            time.sleep(0.02)
    _log.warning("sandbox.cgroup_left", path=str(path))


def _children(pid: int, tid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
    except OSError:
        return []


# -- frames from the sandbox --------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int(header: dict[str, Any], key: str, lo: int = 0, hi: int = _BIG - 1) -> int:
    v = header.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"{key!r} must be an integer in [{lo}, {hi}], not {str(v)[:40]!r}")
    return v


class FrameReader:
    """Incremental, bounded parser of the sandbox's frames: bytes in, validated headers out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        """Add bytes; returns the complete frames. Raises ``ProtocolError`` on a malformed one."""
        self._buf += data
        out: list[tuple[dict[str, Any], bytes]] = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if not 0 < n <= MAX_HEADER:
                raise ProtocolError(f"a header of {n} bytes (the most is {MAX_HEADER})")
            if len(self._buf) < 4 + n:
                break
            try:
                header = json.loads(bytes(self._buf[4 : 4 + n]), parse_constant=_no_constants)
            except (ValueError, RecursionError) as e:
                raise ProtocolError(f"a header that is not JSON: {str(e)[:80]}") from None
            if not isinstance(header, dict):
                raise ProtocolError("a header that is not a JSON object")
            size = _int(header, "size", 0, MAX_PAYLOAD)
            if len(self._buf) < 4 + n + size:
                break
            payload = bytes(self._buf[4 + n : 4 + n + size])
            del self._buf[: 4 + n + size]
            out.append((header, payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes read but not yet part of a complete frame."""
        return len(self._buf)


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is None:
            continue
        if depth > limit:
            return True
        stack.extend((item, depth + 1) for item in items)
    return False


def _check_summary(summary: Any, blob: bytes) -> None:
    if not isinstance(summary, dict) or set(summary) != {"value"}:
        raise ProtocolError("a result whose summary is not {'value': ...}")
    # encode_result nests a value at most MAX_RESULT_DEPTH deep, plus the summary and an array's
    # placeholder: a deeper one is forged, and would break the service's recursive encoders.
    if _too_deep(summary, MAX_RESULT_DEPTH + 4):
        raise ProtocolError(f"a result nested deeper than {MAX_RESULT_DEPTH}")
    names = array_names(summary)
    if not blob:
        if names:
            raise ProtocolError("a result that names arrays but sends none")
        return
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            files = set(npz.files)
    except Exception as e:  # any way a stranger's bytes fail to be an .npz
        raise ProtocolError(f"a result whose arrays are not an .npz: {str(e)[:80]}") from None
    if files != names:
        raise ProtocolError("a result whose arrays do not match the arrays its value names")


class _CancelPipe:
    """WorkerProcess's cancel flag (``.value = seq``), written to the sandbox's cancel pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._value = 0

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, seq: int) -> None:
        self._value = seq
        with contextlib.suppress(OSError):
            os.write(self.fd, struct.pack(">Q", seq))


# -- the worker ---------------------------------------------------------------------------------


@dataclass
class _OomWatch:
    """A running task's sink that also watches its sandbox's memory cgroup: once the kernel killed a
    process of it there (a child, say, while the runner waits for it), the whole sandbox goes, and
    the task fails as ``out_of_memory`` at once rather than at its timeout."""

    worker: SandboxWorker
    sink: TaskSink
    ooms: int

    async def progress(self, done: int, total: int, unit: str) -> None:
        await self.sink.progress(done, total, unit)

    async def checkpoint(self, step: int, blob: bytes) -> None:
        await self.sink.checkpoint(step, blob)

    async def tick(self) -> None:
        w = self.worker
        if w._oom_before + oom_kills(w._memory_cgroup) > self.ooms:
            w._kill_now()
        await self.sink.tick()


class SandboxWorker(WorkerProcess):
    """One tenant's warm sandbox in one slot: never shared with another tenant."""

    def __init__(
        self,
        index: int,
        tenant: str,
        options: SandboxOptions,
        *,
        start_timeout_s: float = 120.0,
        grace_s: float = 2.0,
    ) -> None:
        super().__init__(
            index=index,
            options=WorkerOptions(backend=options.backend, device_index=options.device_index),
            start_timeout_s=start_timeout_s,
            grace_s=grace_s,
        )
        self.tenant = tenant
        self.sandbox = options
        self.tasks_run = 0
        #: A tag on the runner's command line: finds every process of this sandbox (tests, ops).
        self.marker = f"gfsb-{uuid.uuid4().hex[:12]}"
        self._popen: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._out_fd: int | None = None
        self._log_tail = bytearray()
        self._cgroup: Path | None = None
        #: The memory cgroup that caps the whole sandbox's host memory (root only; RLIMIT_AS or
        #: RLIMIT_DATA caps each process by itself, so children could otherwise add up).
        self._memory_cgroup: Path | None = None
        #: Processes the kernel killed over that cap, in the memory cgroups of sandboxes now gone.
        self._oom_before = 0
        self._watch: asyncio.Task[None] | None = None
        self._unsafe_dir: str | None = None
        self._archives: set[str] = set()
        self._t0 = 0.0
        self._replace = False
        self._reader = FrameReader()
        #: The sandbox's processes when it got ready (bwrap's init and the runner), seen from the host.
        self._baseline: int | None = None

    def __repr__(self) -> str:
        return f"SandboxWorker(index={self.index}, tenant={self.tenant!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The sandbox's outermost process (bwrap, or the runner in unsafe mode), while it runs."""
        p = self._popen
        return p.pid if p is not None and p.poll() is None else None

    @property
    def process_limit(self) -> str:
        """What caps the sandbox's processes: ``rlimit`` (a non-root provider), ``cgroup`` (root,
        whose processes RLIMIT_NPROC does not bind), or ``none``."""
        if self._cgroup is not None:
            return "cgroup"
        return "none" if os.geteuid() == 0 else "rlimit"

    def cpu_seconds(self) -> float | None:
        """CPU seconds the sandbox's processes have used, read from the host's /proc (None when it
        is gone): what the function cannot hide from, since it runs inside."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return None
        ticks, todo, seen = 0, [popen.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
                todo += [int(k) for t in os.listdir(f"/proc/{pid}/task") for k in _children(pid, t)]
            except (OSError, ValueError, IndexError):
                continue  # it ended meanwhile
        return ticks / os.sysconf("SC_CLK_TCK")

    async def _watch_idle(self, popen: subprocess.Popen[bytes]) -> None:
        """Kill this sandbox when it computes while no task runs in it: a forged early result, or a
        thread the function left running after its own, would otherwise use the provider's device
        for nobody and bill nobody. The next task of the tenant gets a fresh sandbox."""
        last: float | None = None
        while self._popen is popen:
            await asyncio.sleep(IDLE_WATCH_S)
            if self.busy or self._popen is not popen:
                last = None
                continue
            used = self.cpu_seconds()
            if used is None:
                return
            if last is not None and used - last > IDLE_CPU_S:
                _log.warning(
                    "sandbox.busy_while_idle", worker=self.index, tenant=self.tenant, cpu_s=round(used - last, 2)
                )
                self.restarts += 1
                self._hard_stop()
                return
            last = used

    def _processes(self) -> int | None:
        """The sandbox's live processes below its outermost one, read from the host's /proc; None
        when it is gone or cannot be read."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return None
        try:
            todo = [int(k) for t in os.listdir(f"/proc/{popen.pid}/task") for k in _children(popen.pid, t)]
        except OSError:
            return None
        count = 0
        while todo:
            pid = todo.pop()
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
                todo += [int(k) for t in os.listdir(f"/proc/{pid}/task") for k in _children(pid, t)]
            except (OSError, IndexError):
                continue  # it ended meanwhile
            count += state != "Z"
        return count

    def output(self) -> str:
        """The last ``LOG_BYTES`` of what the sandbox printed (its stdout and stderr)."""
        return self._log_tail.decode("utf-8", "replace")

    # -- starting --------------------------------------------------------------------------------

    def _runner_argv(self, channel: int, cancel: int, work: str) -> list[str]:
        backend = self.sandbox.backend
        return [
            sys.executable, "-I", "-m", "gpu_runtime.sandboxed",
            "--channel", str(channel), "--cancel", str(cancel),
            "--backend", backend, "--device", str(self.sandbox.device_index),
            "--processes", str(self.sandbox.processes), "--cpu-s", str(self.sandbox.cpu_s),
            "--work", work, "--marker", self.marker,
            *([] if self.sandbox.unsafe else ["--pid-namespace"]),
        ]  # fmt: skip

    async def start(self) -> dict[str, Any]:
        """Spawn the sandbox and wait until its runner is warm; returns what it detected."""
        loop = asyncio.get_running_loop()
        bwrap = find_bwrap()
        if not self.sandbox.unsafe and bwrap is None:
            raise WorkerStartError("bubblewrap (bwrap) is not installed: code tasks need a sandbox")
        parent, child = socket.socketpair()
        cancel_r, cancel_w = os.pipe()
        # A sandbox may stop reading its cancels while a process of it holds the pipe: a full pipe
        # must drop a cancel (the SIGKILL after the grace period still comes), never block the loop.
        os.set_blocking(cancel_w, False)
        out_r, out_w = os.pipe()
        if os.geteuid() == 0:
            self._cgroup, self._memory_cgroup = _make_cgroups(self.sandbox)
            if self._cgroup is None:
                _log.warning("sandbox.processes_unlimited", why="root, and no pids cgroup could be made")
            if self._memory_cgroup is None:
                _log.warning("sandbox.memory_per_process", why="root, and no memory cgroup could be made")
        if self.sandbox.unsafe:
            self._unsafe_dir = tempfile.mkdtemp(prefix="gpufleet-unsafe-")
            work = self._unsafe_dir
            program = self._runner_argv(child.fileno(), cancel_r, work)
        else:
            work = "/work"
            program = bwrap_command(
                self.sandbox, self._runner_argv(child.fileno(), cancel_r, work), bwrap=bwrap or "bwrap", work=work
            )
        procs = "\n".join(
            str(cg / "cgroup.procs") for cg in dict.fromkeys((self._cgroup, self._memory_cgroup)) if cg is not None
        )
        argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, procs, str(os.getpid()), _rlimits(self.sandbox), *program]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": work}
        try:
            # Spawned from the loop's thread, not an executor's: the launcher's PR_SET_PDEATHSIG is
            # tied to the thread that created it. Popen returns once the launcher is forked.
            popen = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                pass_fds=(child.fileno(), cancel_r),
                cwd=work if self.sandbox.unsafe else "/",
                env=env,
                start_new_session=True,
            )
        finally:
            child.close()
            os.close(cancel_r)
            os.close(out_w)
        self._popen, self._sock, self._out_fd = popen, parent, out_r
        self._cancel = _CancelPipe(cancel_w)
        self._conn = parent  # WorkerProcess's "a process is there" marker
        self._proc = popen
        self._archives = set()
        self._reader = FrameReader()
        self._log_tail = bytearray()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._queue = queue
        parent.setblocking(False)
        os.set_blocking(out_r, False)
        ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        loop.add_reader(parent.fileno(), self._readable_frames, parent, queue, ready)
        loop.add_reader(out_r, self._readable_output, out_r)
        try:
            async with asyncio.timeout(self.start_timeout_s):
                info = await ready
        except TimeoutError:
            state = "alive" if popen.poll() is None else describe_exit(popen.returncode)
            self._hard_stop()
            raise WorkerStartError(
                f"sandbox {self.index} did not get ready in {self.start_timeout_s:.0f}s ({state})"
            ) from None
        except WorkerStartError as e:
            code = await self._reap()
            tail = self.output().strip().splitlines()[-3:]
            self._hard_stop()
            detail = f"{e}; {describe_exit(code)}" + (f": {' | '.join(tail)}" if tail else "")
            raise WorkerStartError(f"sandbox {self.index} failed to start: {detail}") from None
        self.info = info
        self._baseline = self._processes()
        self._watch = loop.create_task(self._watch_idle(popen))
        _log.debug("sandbox.ready", worker=self.index, tenant=self.tenant, pid=popen.pid, limit=self.process_limit)
        return info

    # -- reading ---------------------------------------------------------------------------------

    def _readable_output(self, fd: int) -> None:
        for _ in range(16):
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(fd)
                return
            self._log_tail += chunk
            if len(self._log_tail) > LOG_BYTES:
                del self._log_tail[: len(self._log_tail) - LOG_BYTES]

    def _readable_frames(
        self, sock: socket.socket, queue: asyncio.Queue[tuple[Any, ...]], ready: asyncio.Future[dict[str, Any]]
    ) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(64):  # at most 64 MiB per wake-up: the loop keeps serving others
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
                if not ready.done():
                    ready.set_exception(WorkerStartError("the sandbox closed its channel"))
                queue.put_nowait(("eof",))
                return
            try:
                for header, payload in self._reader.feed(data):
                    self._dispatch(header, payload, queue, ready)
            except ProtocolError as e:
                self._broke(str(e), queue, ready)
                return

    def _dispatch(
        self,
        header: dict[str, Any],
        payload: bytes,
        queue: asyncio.Queue[tuple[Any, ...]],
        ready: asyncio.Future[dict[str, Any]],
    ) -> None:
        kind = header.get("kind")
        if not ready.done():
            if kind == "ready" and isinstance(header.get("info"), dict):
                ready.set_result(header["info"])
                return
            if kind == "failed":
                ready.set_exception(WorkerStartError(str(header.get("message"))[:500]))
                return
            raise ProtocolError(f"a {str(kind)[:40]!r} frame before 'ready'")
        seq = self._current
        if seq is None:
            raise ProtocolError(f"a {str(kind)[:40]!r} frame while no task runs")
        if _int(header, "seq", 0) != seq:
            raise ProtocolError(f"a frame for task {header.get('seq')}, not the running task {seq}")
        if kind == "progress":
            total = _int(header, "total", 1, 2**53)
            done = _int(header, "done", 0, total)
            queue.put_nowait(("progress", seq, done, total, "steps"))
        elif kind == "checkpoint":
            queue.put_nowait(("checkpoint", seq, _int(header, "step"), payload))
        elif kind == "memory":
            queue.put_nowait(("memory", seq, _int(header, "used"), _int(header, "total")))
        elif kind == "result":
            restart = header.get("restart")
            if not isinstance(restart, bool):
                raise ProtocolError("a result without a boolean 'restart'")
            _check_summary(header.get("summary"), payload)
            gpu_ms = int((asyncio.get_running_loop().time() - self._t0) * 1000)
            self._replace = self._replace or restart
            queue.put_nowait(("result", seq, header["summary"], payload or None, {}, gpu_ms))
        elif kind == "error":
            reason, message, restart = header.get("reason"), header.get("message"), header.get("restart")
            if reason not in _SANDBOX_REASONS or reason not in get_args(FailureReason):
                raise ProtocolError(f"an error of reason {str(reason)[:40]!r}")
            if not isinstance(message, str) or len(message) > _MAX_MESSAGE or not isinstance(restart, bool):
                raise ProtocolError("an error without a message (at most 64 KiB) and a boolean 'restart'")
            queue.put_nowait(("error", seq, reason, message[:4000], restart))
        else:
            raise ProtocolError(f"a frame of unknown kind {str(kind)[:40]!r}")

    def _broke(self, why: str, queue: asyncio.Queue[tuple[Any, ...]], ready: asyncio.Future[dict[str, Any]]) -> None:
        _log.warning("sandbox.protocol_broken", worker=self.index, tenant=self.tenant, why=why)
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
        self._kill_now()
        message = f"the sandbox broke the protocol: {why}"
        if not ready.done():
            ready.set_exception(WorkerStartError(message))
        elif self._current is not None:
            queue.put_nowait(("error", self._current, "function_error", message, True))
        else:
            queue.put_nowait(("eof",))

    # -- running ---------------------------------------------------------------------------------

    async def run(  # type: ignore[override]
        self, spec: CodeSpec, sink: TaskSink, timeout_s: float, *, stopped: Callable[[], bool] = lambda: False
    ) -> Completed | Failed:
        """Run one call of ``spec`` here within ``timeout_s``; never raises for the task's own failures."""
        await self.ensure_started()
        assert self._queue is not None and self._sock is not None
        loop = asyncio.get_running_loop()
        self._seq += 1
        seq = self._seq
        queue = self._queue
        died = self._popen is None or self._popen.poll() is not None
        while not queue.empty():
            died = queue.get_nowait()[0] == "eof" or died
        if died:
            # Only this tenant's earlier code ran in it (a thread it left may end it after its
            # result): a fresh sandbox runs this task, which is not to blame, nor is the provider.
            _log.info("sandbox.replaced", worker=self.index, tenant=self.tenant, why="died between tasks")
            self._restart_later()
            await self.ensure_started()
            assert self._queue is not None and self._sock is not None
            queue = self._queue
        sha = hashlib.sha256(spec.archive).hexdigest()
        parts: list[tuple[str, bytes]] = []
        if sha not in self._archives:
            parts.append(("archive", spec.archive))
        parts += [(f"array:{k}", v) for k, v in spec.arrays.items()]
        if spec.resume_blob is not None:
            parts.append(("resume", spec.resume_blob))
        header = {
            "kind": "task",
            "seq": seq,
            "task_id": spec.task_id,
            "index": spec.index,
            "entry": spec.entry,
            "args": spec.args,
            "seed": spec.seed,
            "resume_step": spec.resume_step,
            "archive": sha,
            "memory_limit": self.sandbox.memory_limit,
            "parts": [[name, len(data)] for name, data in parts],
        }
        self._current = seq
        self._replace = False
        deadline = loop.time() + timeout_s
        self._t0 = loop.time()
        try:
            frame = encode_frame(header, b"".join(data for _, data in parts))
        except ValueError as e:
            # The task's own inputs (its arrays, up to the device's memory, pass admission): the
            # same on every provider, and no fault of this one.
            self._current = None
            return Failed("invalid_params", f"the task's code and arrays do not fit the sandbox's channel: {e}")
        try:
            async with asyncio.timeout(timeout_s):
                await loop.sock_sendall(self._sock, frame)
        except (OSError, ValueError, TimeoutError) as e:
            self._current = None
            self._restart_later()
            return Failed("worker_crashed", f"could not hand the task to the sandbox: {e}")
        self._archives.add(sha)
        if stopped():
            self.cancel("cancelled")
        ooms = self._oom_before + oom_kills(self._memory_cgroup)
        try:
            outcome = await self._await_outcome(seq, queue, _OomWatch(self, sink, ooms), deadline, timeout_s)
        finally:
            self._current = None
        if isinstance(outcome, Failed) and outcome.reason == "worker_crashed":
            # The sandbox runs this submitter's code alone: its death mid-task (os._exit, a signal
            # it sent itself, a crash in native code it called, the kernel's OOM killer at its
            # memory cgroup's cap) is the function's failure. worker_crashed is a provider fault
            # (events.reputation), retried on another provider.
            if self._oom_before + oom_kills(self._memory_cgroup) > ooms:
                cap = self.sandbox.host_memory_mb
                outcome = Failed("out_of_memory", f"the function's processes went over its {cap} MiB of host memory")
            else:
                outcome = Failed("function_error", f"the function's sandbox died: {outcome.message}")
        self.tasks_run += 1
        if not self._replace and self._baseline is not None:
            # Counted from the host: the runner's own "nothing left" can be rewritten by the
            # function, which runs in its interpreter.
            now = self._processes()
            self._replace = now is None or now > self._baseline
        if self._replace and self._starting is None and self._popen is not None:
            _log.info("sandbox.replaced", worker=self.index, tenant=self.tenant, why="processes left behind")
            self._restart_later()
        return outcome

    # -- stopping --------------------------------------------------------------------------------

    async def _reap(self) -> int | None:
        popen = self._popen
        if popen is None:
            return None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await loop.run_in_executor(None, popen.wait, 5.0)
        code = popen.returncode
        if code is not None and code > 128 and not self.sandbox.unsafe:
            return -(code - 128)  # bwrap reports a signal as 128 + n
        return code

    def _kill_now(self, popen: subprocess.Popen[bytes] | None = None) -> None:
        popen = popen or self._popen
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(popen.pid, signal.SIGKILL)  # its own session: the launcher, bwrap, unsafe runner
            with contextlib.suppress(OSError):
                popen.kill()

    def _hard_stop(self) -> None:
        """Kill the sandbox (if alive) and everything in it, close its pipes."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        sock, out_fd, popen, cancel = self._sock, self._out_fd, self._popen, self._cancel
        self._sock = self._out_fd = self._popen = self._conn = self._proc = None
        watch, self._watch = self._watch, None
        if watch is not None and (loop is None or watch is not asyncio.current_task()):
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                watch.cancel()
        self._cancel = None
        if sock is not None:
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
            sock.close()
        if out_fd is not None:
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(out_fd)
            with contextlib.suppress(OSError):
                os.close(out_fd)
        if isinstance(cancel, _CancelPipe):
            with contextlib.suppress(OSError):
                os.close(cancel.fd)
        if popen is not None:
            self._kill_now(popen)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(2.0)
        self._oom_before += oom_kills(self._memory_cgroup)
        for cg in dict.fromkeys((self._cgroup, self._memory_cgroup)):
            if cg is not None:
                _drop_cgroup(cg)
        self._cgroup = self._memory_cgroup = None
        if self._unsafe_dir is not None:
            shutil.rmtree(self._unsafe_dir, ignore_errors=True)
            self._unsafe_dir = None

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the runner to exit; kill the sandbox if it does not in time."""
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
            self._starting = None
        popen, sock = self._popen, self._sock
        if popen is None:
            return
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.send(encode_frame({"kind": "stop"}))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await loop.run_in_executor(None, popen.wait, timeout_s)
        self._hard_stop()
