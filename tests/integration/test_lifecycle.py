"""A clean lifecycle, with real processes and real signals: SIGTERM and SIGINT stop `up`, `provider run`
and `orchestrator run` with every child; a SIGKILL of `up` leaves no orphan, and the next `up` starts
cleanly on a store that audits clean; one server per store; an explicit port that is taken is an
error; `replay --audit --data-dir` audits a stopped network's directory by itself.

Children are found in ``/proc`` (Linux) before the signal and must all be gone after it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpufleet.demo import replay_command
from gpufleet.lifecycle import DataDirLock, servers_on

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

ENV = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")} | {
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "200",
    "NO_COLOR": "1",
}
#: How long a process may take to start or to stop (a bound for waiting, not a measurement).
PATIENCE_S = 90.0
#: How long a command that must be refused may run before the test gives up on it (one that was
#: not refused runs until then).
REFUSED_S = 30.0


def _env(home: Path) -> dict[str, str]:
    return {**ENV, "GPUFLEET_HOME": str(home)}


def gpufleet(*args: str, home: Path, timeout: float = PATIENCE_S * 2) -> subprocess.CompletedProcess[str]:
    """The CLI, run to its end, on the machine whose network keeps its data in ``home``."""
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(home),
        check=False,
    )


# ---- processes, read from /proc -------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, or None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, int]:
    """Every process below ``root``: pid -> start time (to tell it from a later one with its pid)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            parents.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def _running(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z" and st[2] == start


def survivors(procs: dict[int, int]) -> list[str]:
    """The processes of ``procs`` still running once they have had time to end (their command lines)."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        alive = [pid for pid, start in procs.items() if _running(pid, start)]
        if not alive:
            return []
        time.sleep(0.05)
    return [f"{pid}: {_cmdline(pid)}" for pid, start in procs.items() if _running(pid, start)]


def _kind(pid: int) -> str:
    line = _cmdline(pid)
    if "nats-server" in line.split(" ", 1)[0]:
        return "nats-server"
    if "spawn_main" in line:
        return "worker"
    return "other"


# ---- gpufleet commands as background processes ----------------------------------------------------


@dataclass
class Running:
    """A gpufleet command running in the background, its output in a file."""

    proc: subprocess.Popen[bytes]
    out: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + PATIENCE_S
        while text not in self.output():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}: {self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in: {self.output()}"
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        """SIGINT as a terminal's Ctrl-C sends it, to the whole foreground group; others to the process."""
        if sig == signal.SIGINT:
            os.killpg(self.pid, sig)
        else:
            os.kill(self.pid, sig)

    def ended(self) -> int:
        return self.proc.wait(PATIENCE_S)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start(home: Path, *args: str, out: Path) -> Running:
    """``gpufleet ARGS`` in a session of its own (so that a Ctrl-C can be sent to its group)."""
    f = out.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpufleet", *args],
        stdout=f,
        stderr=subprocess.STDOUT,
        env=_env(home),
        start_new_session=True,
    )
    f.close()
    return Running(proc, out)


def start_up(home: Path, *args: str) -> Running:
    """`gpufleet up` on ``home``, on any free port, once it is up (``network.json`` names it)."""
    info = home / "network.json"
    run = start(home, "up", "--data-dir", str(home), "--port", "0", *args, out=home.parent / f"up-{time.time_ns()}.out")
    deadline = time.monotonic() + PATIENCE_S
    while True:
        assert run.proc.poll() is None, f"gpufleet up exited with {run.proc.returncode}: {run.output()}"
        assert time.monotonic() < deadline, f"gpufleet up did not come up: {run.output()}"
        if info.exists() and json.loads(info.read_text()).get("pid") == run.pid:
            return run
        time.sleep(0.05)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The data directory of a test's network."""
    return tmp_path / "home"


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    return done.stderr.strip()


# ---- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_up_cleanly_and_no_child_survives(home: Path, sig: signal.Signals) -> None:
    up = start_up(home, "--backend", "cpu", "--slots", "1")
    try:
        kids = descendants(up.pid)
        kinds = {_kind(pid) for pid in kids}
        assert {"nats-server", "worker"} <= kinds, {pid: _cmdline(pid) for pid in kids}
        up.signal(sig)
        assert up.ended() == 0, up.output()
    finally:
        up.kill()
    assert "stopped; `gpufleet up` resumes from the same log" in up.output()
    assert not survivors(kids)
    # In order: `up` stopped nats-server (SIGTERM, then it exits cleanly), after the parts that use it;
    # a Ctrl-C in the terminal never reaches the server directly.
    log = (home / "nats" / "nats-server.log").read_text()
    assert 'Trapped "terminated" signal' in log and "Server Exiting" in log, log[-2000:]
    assert 'Trapped "interrupt" signal' not in log
    assert not (home / "network.json").exists()


def test_kill_9_of_up_leaves_no_orphan_and_the_next_up_starts_cleanly_on_a_store_that_audits_clean(
    home: Path,
) -> None:
    up = start_up(home, "--backend", "cpu", "--slots", "1")
    try:
        job = gpufleet("submit", "--workload", "montecarlo", "-p", "samples=20000", "--watch", home=home)
        assert job.returncode == 0, job.stdout + job.stderr
        # A task that reports nothing for minutes: only the parent-death signal ends its worker at once
        # (an idle worker would also go at the broken pipe).
        sleeper = gpufleet("submit", "--workload", "sleep", "-p", "seconds=600", "-p", "steps=1", home=home)
        assert sleeper.returncode == 0, sleeper.stderr
        sleeper_id = sleeper.stdout.strip()
        deadline = time.monotonic() + PATIENCE_S
        while "running" not in gpufleet("status", sleeper_id, home=home).stdout:
            assert time.monotonic() < deadline, "the sleeper never started"
            time.sleep(0.2)
        kids = descendants(up.pid)
        assert {"nats-server", "worker"} <= {_kind(pid) for pid in kids}, {pid: _cmdline(pid) for pid in kids}
        os.kill(up.pid, signal.SIGKILL)  # an OOM kill, a crash
        assert up.ended() == -signal.SIGKILL
    finally:
        up.kill()
    left = survivors(kids)
    assert not left, f"orphans of a killed `up`: {left}"

    again = start_up(home, "--backend", "cpu", "--slots", "1")  # its network.json names it: it is up
    try:
        cancel = gpufleet("cancel", sleeper_id, home=home)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        job = gpufleet("submit", "--workload", "montecarlo", "-p", "samples=20000", "--watch", home=home)
        assert job.returncode == 0, job.stdout + job.stderr
        again.signal(signal.SIGTERM)
        assert again.ended() == 0, again.output()
    finally:
        again.kill()

    # The demo's closing hint, as printed: it audits the stopped network's store by itself.
    words = shlex.split(replay_command(home))
    assert words[:2] == ["gpufleet", "replay"]
    audit = gpufleet(*words[1:], home=home)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "PASS" in audit.stdout and "books balance: yes" in audit.stdout, audit.stdout
    assert "FAIL" not in audit.stdout and "signed checkpoints ok" in audit.stdout, audit.stdout
    assert not servers_on(home), "the private server is stopped after the audit"


def test_one_server_per_store_a_second_up_is_refused_and_the_first_is_unharmed(home: Path) -> None:
    first = start_up(home, "--no-provider")
    try:
        before = (home / "network.json").read_text()
        servers = [pid for pid in descendants(first.pid) if _kind(pid) == "nats-server"]
        assert len(servers) == 1

        second = gpufleet("up", "--data-dir", str(home), "--no-provider", home=home, timeout=REFUSED_S)
        line = _one_line_error(second)
        assert f"data directory {home} is in use by gpufleet up (pid {first.pid})" in line, line
        busy = gpufleet("replay", "--audit", "--data-dir", str(home), home=home)
        line = _one_line_error(busy)
        assert f"(pid {first.pid})" in line and "gpufleet replay --audit" in line, line

        # The first one is unharmed: the same server, the same record, and it answers an audit.
        assert first.proc.poll() is None and servers_on(home) == servers
        assert (home / "network.json").read_text() == before
        live = gpufleet("replay", "--audit", home=home)
        assert live.returncode == 0 and "PASS" in live.stdout, live.stdout + live.stderr
        first.signal(signal.SIGTERM)
        assert first.ended() == 0, first.output()
    finally:
        first.kill()


def test_a_server_left_on_the_store_is_named_and_up_refuses(home: Path, tmp_path: Path) -> None:
    """Where no parent-death signal reached it (a gpufleet from before the lock, another system), a
    nats-server may be left on the store: `up` names it instead of starting a second one."""
    from gpufleet.natsserver import find_nats_server

    # A bare server on the store, holding no lock (as one left by a gpufleet from before the lock).
    store = home / "nats"
    store.mkdir(parents=True)
    bare = subprocess.Popen(
        [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", "-1", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        line = _one_line_error(gpufleet("up", "--data-dir", str(home), "--no-provider", home=home, timeout=REFUSED_S))
        assert f"in use by a nats-server (pid {bare.pid})" in line, line
    finally:
        bare.kill()
        bare.wait()

    # A server that inherited the lock and outlived its parent (where no parent-death signal exists):
    # the lock is still held, and the refusal names the server and its gone parent.
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; from pathlib import Path; from gpufleet.lifecycle import DataDirLock\n"
            "lock = DataDirLock.acquire(Path(sys.argv[1]), 'gpufleet up')\n"
            "child = subprocess.Popen(['sleep', '60'], pass_fds=[lock.fd], start_new_session=True,\n"
            "    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "lock.note_servers([child.pid]); print(child.pid)",
            str(home),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    left = int(holder.stdout)
    try:
        line = _one_line_error(gpufleet("up", "--data-dir", str(home), "--no-provider", home=home, timeout=REFUSED_S))
        assert f"in use by a nats-server (pid {left}) that gpufleet up (pid " in line and ", gone) left" in line, line
    finally:
        os.kill(left, signal.SIGKILL)


def _taken_port() -> tuple[socket.socket, int]:
    """A socket listening on a port whose neighbours are free (for a cluster's ports)."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        free = []
        for p in (port - 1, port + 1):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", p))
                    free.append(p)
                except OSError:
                    pass
        if len(free) == 2:
            return s, port
        s.close()
    raise AssertionError("no free port with free neighbours")


def test_an_explicit_port_that_is_taken_is_an_error_never_a_silent_switch(tmp_path: Path) -> None:
    taken, port = _taken_port()
    with taken:
        for where, args, named in (
            ("single", ["--port", str(port)], port),
            ("cluster", ["--cluster", "3", "--port", str(port - 1)], port),  # nodes on port-1, port, port+1
        ):
            data = tmp_path / where
            done = gpufleet("up", "--data-dir", str(data), "--no-provider", *args, home=data, timeout=REFUSED_S)
            line = _one_line_error(done)
            assert f"port {named} is in use" in line, line
            assert not servers_on(data) and not (data / "network.json").exists()
            DataDirLock.acquire(data).release()  # and the refused `up` let the directory go


def test_replay_data_dir_refuses_a_directory_without_a_network(tmp_path: Path) -> None:
    line = _one_line_error(gpufleet("replay", "--audit", "--data-dir", str(tmp_path / "none"), home=tmp_path))
    assert "no network in" in line, line


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`gpufleet up` without a provider: what `provider run` and `orchestrator run` join."""
    home = tmp_path_factory.mktemp("lifecycle") / "home"
    up = start_up(home, "--no-provider")
    try:
        yield home
        up.signal(signal.SIGTERM)
        assert up.ended() == 0, up.output()
    finally:
        up.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["provider", "orchestrator"])
def test_a_signal_stops_provider_run_and_orchestrator_run_cleanly(
    network: Path, tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    if command == "provider":
        args, ready, done = ["provider", "run", "--backend", "cpu", "--slots", "1"], "registered on", "draining"
    else:
        args, ready, done = ["orchestrator", "run", "--data-dir", str(tmp_path)], "running on", "orchestrator stopped"
    run = start(network, *args, out=tmp_path / "out")
    try:
        run.wait_for(ready)
        kids = descendants(run.pid)
        if command == "provider":
            assert "worker" in {_kind(pid) for pid in kids}, {pid: _cmdline(pid) for pid in kids}
        run.signal(sig)
        assert run.ended() == 0, run.output()
    finally:
        run.kill()
    assert done in run.output() and "Traceback" not in run.output(), run.output()
    assert not survivors(kids)
