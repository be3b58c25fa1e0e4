"""``gpufleet.lifecycle`` in one process: waiting for a stop, the data directory's lock, and children
started from short-lived threads (the real processes and signals are in tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpufleet.lifecycle import DataDirInUse, DataDirLock, graceful_shutdown, spawn


async def test_until_ends_on_a_signal_cancels_its_own_coroutines_and_leaves_tasks_alone() -> None:
    async with graceful_shutdown() as shutdown:
        mine = asyncio.Event()
        theirs = asyncio.ensure_future(asyncio.sleep(3600))

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                mine.set()

        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
        assert await shutdown.until(forever(), theirs) is True
        assert shutdown.signal == "SIGTERM" and shutdown.count == 1
        await asyncio.wait_for(mine.wait(), 10)  # the coroutine it ran was cancelled
        assert not theirs.done()  # the task it only watched is not
        theirs.cancel()


async def test_until_ends_when_the_work_ends_and_raises_its_failure() -> None:
    async with graceful_shutdown() as shutdown:
        assert await shutdown.until(asyncio.sleep(0)) is False

        async def fails() -> None:
            raise ValueError("the log was lost")

        with pytest.raises(ValueError, match="the log was lost"):
            await shutdown.until(fails())


async def test_a_second_signal_calls_on_repeat() -> None:
    seen: list[str] = []
    again = asyncio.Event()

    def repeat(name: str) -> None:
        seen.append(f"again {name}")
        again.set()

    async with graceful_shutdown(on_signal=seen.append, on_repeat=repeat) as shutdown:
        os.kill(os.getpid(), signal.SIGINT)
        await shutdown.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(again.wait(), 10)
    assert seen == ["SIGINT", "again SIGTERM"] and shutdown.count == 2


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path, "gpufleet up")
    with pytest.raises(DataDirInUse) as refused:
        DataDirLock.acquire(tmp_path)
    pid = os.getpid()
    assert str(refused.value) == f"data directory {tmp_path} is in use by gpufleet up (pid {pid}); stop it first"
    assert refused.value.pid == os.getpid()
    lock.release()
    DataDirLock.acquire(tmp_path).release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_started_from_a_short_lived_thread_outlives_the_thread() -> None:
    """The kernel sends the parent-death signal when the *thread* that made the child ends: a server
    started from ``asyncio.to_thread`` must not die with that thread, only with the process."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        started.append(child := spawn(["sleep", "60"]))
        # The thread lives until the child runs ``sleep`` (its parent-death signal set by then).
        while not Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(b"sleep"):
            time.sleep(0.01)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    native = thread.native_id
    while Path(f"/proc/self/task/{native}").exists():  # until the kernel has ended the thread itself
        time.sleep(0.01)
    child = started[0]
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(1.0)  # a child tied to the thread would be dead of SIGKILL by now
    finally:
        child.kill()
        child.wait()
