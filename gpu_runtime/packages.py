"""What a provider offers submitters' code: the packages it has, and whose code it runs.

A code task (``events.workloads.CODE_WORKLOAD``) may require packages (``Resources.packages``); a
provider advertises the distributions installed beside its interpreter, which are exactly what a
sandboxed function can import (the sandbox sees the same ``site-packages``, read-only). Nothing is
ever installed at run time.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re

from events.placement import normalise_package
from events.types import MAX_PACKAGES

__all__ = ["ACCEPT_CODE_HELP", "AcceptCodeError", "installed_packages", "parse_accept_code"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,98}[a-z0-9])?$")
_SUBMITTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")

ACCEPT_CODE_HELP = (
    "Whose code this provider runs, sandboxed: none (the default), any, or submitter names separated by commas."
)


class AcceptCodeError(ValueError):
    """An ``--accept-code`` value that is not ``none``, ``any`` or a list of submitter names."""


def installed_packages() -> dict[str, str]:
    """Normalised distribution name -> version of what this interpreter has, and ``python`` itself
    (at most ``MAX_PACKAGES`` entries, the first by name; odd names and versions are left out)."""
    found: dict[str, str] = {"python": platform.python_version()}
    for dist in importlib.metadata.distributions():
        try:
            name = normalise_package(dist.metadata["Name"] or "")
            version = str(dist.version or "")
        except Exception:  # a broken distribution's metadata is not worth a provider's start
            continue
        if _NAME.match(name) and 0 < len(version) <= 64 and name not in found:
            found[name] = version
    return {k: found[k] for k in sorted(found)[:MAX_PACKAGES]}


def parse_accept_code(value: str) -> tuple[str, ...]:
    """``none`` -> ``()``, ``any`` -> ``("*",)``, ``alice,bob`` -> ``("alice", "bob")``."""
    text = value.strip()
    if text.lower() in ("", "none"):
        return ()
    if text.lower() in ("any", "*"):
        return ("*",)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if not _SUBMITTER.match(n)]
    if bad or not names:
        what = repr(bad[0] if bad else value)
        raise AcceptCodeError(f"--accept-code: {what} is not a submitter name (none, any, or NAME,...)")
    return names
