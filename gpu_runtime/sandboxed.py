"""Inside the sandbox: the runner of submitters' functions, and the wire format it shares with the service.

The runner is started by :mod:`gpu_runtime.sandbox` (inside bubblewrap, or as a plain process in
unsafe mode). It talks on a dedicated socket (never stdout: the user's ``print`` goes to a log the
service keeps) in frames: a 4-byte big-endian header length, a JSON header, then ``header["size"]``
raw bytes. Nothing on this channel is ever pickled: the code on this side is a stranger's, and the
service validates every frame it reads (see ``sandbox.FrameReader``). Cancellation arrives on a
second pipe as 8-byte task sequence numbers, read by a thread while the function runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["MAX_HEADER", "MAX_PAYLOAD", "encode_frame", "main", "read_frame"]

#: The largest JSON header and raw payload of one frame (results and checkpoints are payloads).
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 256 << 20
_LEN = struct.Struct(">I")


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame: length, JSON header (with ``size``), payload."""
    head = json.dumps({**header, "size": len(payload)}, allow_nan=False, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame too large: header {len(head)} bytes, payload {len(payload)} bytes")
    return _LEN.pack(len(head)) + head + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the channel closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """Read one frame (blocking); the service's frames, trusted by the runner."""
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    if not 0 < n <= MAX_HEADER:
        raise ValueError(f"bad header length {n}")
    header = json.loads(_recv_exact(sock, n))
    size = int(header.get("size", 0))
    if not 0 <= size <= MAX_PAYLOAD:
        raise ValueError(f"bad payload size {size}")
    return header, _recv_exact(sock, size) if size else b""


class _Runner:
    """One sandbox process: the backend, the code roots unpacked so far, the channel."""

    def __init__(
        self, sock: socket.socket, cancel_fd: int, backend: Any, work: Path, pid_namespace: bool, cpu_s: int = 0
    ) -> None:
        from gpu_runtime.usercode import FunctionContext  # noqa: F401  (imported now: warm)

        self.sock = sock
        self.backend = backend
        self.xp = backend.array_api()
        self.work = work
        self.pid_namespace = pid_namespace
        self.pid = os.getpid()
        self.roots: dict[str, Path] = {}
        self.cancel_seq = 0
        self.cpu_s = cpu_s
        self._lock = threading.Lock()
        threading.Thread(target=self._read_cancels, args=(cancel_fd,), daemon=True).start()
        self._threads = {t.ident for t in threading.enumerate()}

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if os.getpid() != self.pid:
            return  # a forked child never speaks on the channel
        frame = encode_frame(header, payload)
        with self._lock:
            self.sock.sendall(frame)

    def _read_cancels(self, fd: int) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 8 - len(buf))
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            if len(buf) == 8:
                (self.cancel_seq,) = struct.unpack(">Q", buf)
                buf = b""

    def code_root(self, sha: str, archive: bytes | None) -> Path:
        from gpu_runtime.usercode import CodeArchiveError, unpack_archive

        root = self.roots.get(sha)
        if root is not None:
            return root
        if archive is None:
            raise CodeArchiveError("the code archive was not sent")
        if hashlib.sha256(archive).hexdigest() != sha:
            raise CodeArchiveError("the code archive does not match its sha256")
        root = self.work / ".code" / sha[:32]
        unpack_archive(archive, root)
        self.roots[sha] = root
        return root

    def run(self, header: dict[str, Any], payload: bytes) -> None:
        from gpu_runtime.errors import WorkloadError
        from gpu_runtime.usercode import (
            FunctionContext,
            as_failure,
            call_function,
            encode_result,
            load_function,
            load_npy,
            resume_from_blob,
        )

        seq = int(header["seq"])
        parts: dict[str, bytes] = {}
        offset = 0
        for name, size in header["parts"]:
            parts[name] = payload[offset : offset + size]
            offset += size

        def forward(msg: tuple[Any, ...]) -> None:
            if msg[0] == "progress":
                self.send({"kind": "progress", "seq": seq, "done": msg[1], "total": msg[2]})
            elif msg[0] == "checkpoint":
                self.send({"kind": "checkpoint", "seq": seq, "step": msg[1]}, msg[2])

        root = self.work
        try:
            root = self.code_root(str(header["archive"]), parts.get("archive"))
            fn = load_function(root, str(header["entry"]))
            arrays = {k[len("array:") :]: load_npy(v) for k, v in parts.items() if k.startswith("array:")}
            resume = resume_from_blob(parts["resume"]) if "resume" in parts else None
            ctx = FunctionContext(
                self.xp,
                seed=int(header["seed"]),
                index=int(header["index"]),
                task_id=str(header["task_id"]),
                send=forward,
                cancelled=lambda: self.cancel_seq == seq,
                resume=resume,
                to_host=self.backend.to_host,
                from_host=self.backend.from_host,
            )
            self.backend.set_memory_limit(header.get("memory_limit"))
            try:
                value = call_function(fn, self.xp, dict(header["args"]), arrays, ctx)
                self.backend.synchronize()
            finally:
                if os.getpid() != self.pid:
                    os._exit(0)  # a forked child of the function: never back into the runner
            summary, blob = encode_result(value, to_host=self.backend.to_host)
        except BaseException as e:  # the function's own failure, whatever it raised
            if os.getpid() != self.pid:
                os._exit(0)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                e = RuntimeError(f"the function raised {type(e).__name__}")
            failure = e if isinstance(e, WorkloadError) else as_failure(e, root)
            if failure.reason == "out_of_memory":
                self.backend.free_memory()
            restart = self.backend.is_sticky(e) or self.must_go()
            self.send(
                {"kind": "error", "seq": seq, "reason": failure.reason, "message": failure.message, "restart": restart}
            )
            return
        memory = self.backend.memory_in_use()
        if memory is not None:
            self.send({"kind": "memory", "seq": seq, "used": memory[0], "total": memory[1]})
        self.send({"kind": "result", "seq": seq, "summary": summary, "restart": self.must_go()}, blob or b"")

    def must_go(self) -> bool:
        """True when this sandbox should be replaced after the task: processes or threads the
        function started are still running, or half its CPU-time limit (RLIMIT_CPU counts the
        process's whole life) is spent, so no later task is killed by it mid-way."""
        used = sum(os.times()[:2])
        if self.cpu_s and used > self.cpu_s / 2:
            return True
        if any(t.ident not in self._threads for t in threading.enumerate()):
            return True
        return self.strays()

    def strays(self) -> bool:
        """True when processes the function started are still around (the sandbox must go)."""
        while True:  # reap what already ended
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        me = os.getpid()
        if not self.pid_namespace:
            # Unsafe mode: the runner is its descendants' subreaper, so even a daemonised
            # grandchild is its child now.
            for task in os.listdir(f"/proc/{me}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{me}/task/{task}/children", "rb") as f:
                    if f.read().split():
                        return True
            return False
        # Everything in this pid namespace but its init and the runner is the function's.
        return any(e.isdigit() and int(e) not in (1, me) for e in os.listdir("/proc"))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the sandbox runner."""
    p = argparse.ArgumentParser(prog="gpu_runtime.sandboxed")
    p.add_argument("--channel", type=int, required=True)
    p.add_argument("--cancel", type=int, required=True)
    p.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--processes", type=int, default=64)
    p.add_argument("--work", default=os.getcwd())
    p.add_argument("--pid-namespace", action="store_true")
    p.add_argument("--marker", default="")
    p.add_argument("--cpu-s", type=int, default=0)
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not a.pid_namespace:
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back here
    # Set here, inside the user namespace, so it counts this sandbox's processes only (set before
    # bwrap, it would count every process of the provider's user on the host).
    resource.setrlimit(resource.RLIMIT_NPROC, (a.processes, a.processes))
    sock = socket.socket(fileno=a.channel)
    sock.setblocking(True)
    try:
        from gpu_runtime.backend import select_backend

        backend = select_backend(a.backend, a.device)
        runner = _Runner(sock, a.cancel, backend, Path(a.work), a.pid_namespace, a.cpu_s)
        info = {"backend": backend.name, "array_api": runner.xp.__name__, "pid": os.getpid()}
    except Exception as e:
        sock.sendall(encode_frame({"kind": "failed", "message": f"{type(e).__name__}: {e}"}))
        return
    runner.send({"kind": "ready", "info": info})
    while True:
        try:
            header, payload = read_frame(sock)
        except (EOFError, OSError, ValueError):
            return
        if header.get("kind") != "task":
            return
        runner.run(header, payload)
        for stream in (sys.stdout, sys.stderr):  # the user's prints reach the service's log now
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    main()
