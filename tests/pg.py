"""A real PostgreSQL server for tests: Debian's binaries, a fresh cluster in a temporary directory.

``PgServer.start()`` runs ``initdb`` and ``pg_ctl -w start`` on a free port, listening on 127.0.0.1
and on a unix socket inside the cluster's directory, with trust authentication for local
connections only. PostgreSQL refuses to run as root: as root, every server command runs as the
``postgres`` system user, and the directory is theirs. ``stop()`` stops it at once and removes the
directory. Where no server binaries are installed, :func:`pg_bin` is None and the tests skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["MISSING", "PgServer", "pg_bin"]

#: The skip reason where no server is installed.
MISSING = "PostgreSQL server binaries not found (apt-get install postgresql)"


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory (Debian's layout, then ``$PATH``), or None."""
    found = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file() and d.parent.name.isdigit():
            found.append((int(d.parent.name), d))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster in its own temporary directory; ``url`` reaches its ``postgres`` database."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = _free_port()
        # Under /tmp itself: the postgres user must be able to reach it (pytest's temp dirs are root's).
        self.dir = Path(tempfile.mkdtemp(prefix="gpufleet-pg-"))
        self.data = self.dir / "data"
        self._user = None
        if os.geteuid() == 0:  # PostgreSQL refuses root: its commands run as the `postgres` user
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, and there is no `postgres` user to run PostgreSQL as") from None
        # Only this machine: TCP on the loopback, and a socket in our own directory (not /var/run).
        # Durability off: the data is thrown away.
        self._opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )

    @property
    def url(self) -> str:
        """The server's ``postgres`` database as its superuser, over TCP."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> PgServer:
        """initdb, then start and wait until it accepts connections."""
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", self._opts, "-w", "-t", "60", "start"
        )
        return self

    def restart(self) -> None:
        """Stop (every connection drops; committed data is kept) and start again on the same port."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", self._opts, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        """Stop at once (no checkpoint: the data is thrown away) and remove the directory."""
        with contextlib.suppress(RuntimeError):  # never started, or already gone
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
