"""Children that die with their parent: Linux's ``PR_SET_PDEATHSIG``, set from inside the child.

One place for the call, used by the provider's worker processes (``gpu_runtime.worker``, from inside)
and by every program ``gpufleet`` starts (nats-server, through ``gpufleet.lifecycle.spawn``): for
those, :func:`command` runs this file as a tiny launcher that makes the call, then ``exec``s the
program in the same process (no ``preexec_fn``, which is unsafe in a process with threads). Elsewhere
than on Linux it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import cache

__all__ = ["command", "die_with_parent", "supported"]

_PR_SET_PDEATHSIG = 1


@cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, loaded once (in the parent: a child between fork and exec only calls it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


def supported() -> bool:
    """Whether this system can tie a child's life to its parent's (Linux)."""
    return _prctl() is not None


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> bool:
    """In a child: be sent ``sig`` when the parent dies; False where the system cannot do it.

    ``parent`` is the pid the child expects as its parent. A parent that died before the request
    took effect left the child with another one (init, or a subreaper) and no signal will ever come:
    the child then kills itself at once, with ``sig``. The kernel ties the signal to the *thread*
    that created the child: see ``gpufleet.lifecycle.spawn`` for how children outlive short threads.
    """
    prctl = _prctl()
    if prctl is None or prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
        os._exit(1)  # pragma: no cover - only for a catchable ``sig``
    return True


def command(args: Sequence[str], parent: int | None = None) -> list[str]:
    """``args`` run so that the program dies with process ``parent`` (default: this one), SIGKILL.

    The launcher (this file, run by the same Python, isolated and without ``site``) sets the signal
    and replaces itself with the program: the child's pid is the program's. ``args`` as they are
    where the system cannot do it.
    """
    if not supported() or not sys.executable:
        return list(args)
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(parent or os.getpid()), *args]


def _launch(argv: list[str]) -> None:
    parent, program = int(argv[0]), argv[1:]
    die_with_parent(parent)
    try:
        os.execvp(program[0], program)
    except OSError as e:
        sys.stderr.write(f"cannot run {program[0]}: {e.strerror}\n")
        os._exit(127)


if __name__ == "__main__":
    _launch(sys.argv[1:])
