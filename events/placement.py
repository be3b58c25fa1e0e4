"""Which providers may take which tasks: the one placement rule for the scheduler, the audit and the replayer.

The scheduler places a task only on a provider that fits it; the audit flags a lease that does not;
the provenance replayer refuses a lease as a cause. One function, so the three cannot disagree.

A code task (the ``function`` workload: a submitter's own Python) goes only to a provider that
listed the workload and opted in to that submitter's code, and that has every package the task
requires, at a version its specifier allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from events.types import Capabilities, Resources
from events.workloads import CODE_WORKLOAD

__all__ = [
    "REQUIREMENTS",
    "accepts_code",
    "bad_specifier",
    "misfits",
    "misfits_by_requirement",
    "missing_packages",
    "normalise_package",
    "supports",
]


def supports(caps: Capabilities, workload: str) -> bool:
    """True when a device of ``caps`` runs ``workload`` (a custom kernel needs CUDA; a code task, an
    explicit listing: a provider that lists no workloads runs the catalogue, never strangers' code)."""
    if workload == "custom_kernel" and caps.backend != "cuda":
        return False
    if workload == CODE_WORKLOAD:
        return workload in caps.workloads
    return not caps.workloads or workload in caps.workloads


def accepts_code(caps: Capabilities, submitter: str | None) -> bool:
    """True when a provider of ``caps`` opted in to run ``submitter``'s code."""
    return "*" in caps.code_from or (bool(submitter) and submitter in caps.code_from)


def normalise_package(name: str) -> str:
    """A distribution name as PEP 503 compares it: ``Scikit_Learn`` is ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def bad_specifier(spec: str) -> str | None:
    """What is wrong with a version specifier (``">=1.11"``; ``""`` is any version), or None."""
    try:
        SpecifierSet(spec)
    except InvalidSpecifier:
        return f"{spec!r} is not a version specifier (PEP 440, for example '>=1.11')"
    return None


def missing_packages(have: Mapping[str, str], need: Mapping[str, str]) -> list[str]:
    """The required packages a provider with ``have`` lacks, or has at a version ``need`` excludes."""
    out: list[str] = []
    for name, spec in sorted(need.items()):
        version = have.get(normalise_package(name))
        if version is None:
            out.append(f"no {name}")
            continue
        try:
            ok = SpecifierSet(spec).contains(Version(version), prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            ok = False
        if not ok:
            out.append(f"{name} {version}, needs {spec}")
    return out


#: The requirements a placement checks, in the order ``misfits`` reports them.
REQUIREMENTS = ("backend", "vram", "compute_capability", "workload", "code", "packages", "price")


def misfits_by_requirement(
    caps: Capabilities,
    resources: Resources,
    workload: str,
    max_price_micros: int | None,
    submitter: str | None = None,
) -> dict[str, str]:
    """Why a provider of ``caps`` may not take such a task of ``submitter``'s, by requirement
    (``REQUIREMENTS``)."""
    out: dict[str, str] = {}
    if resources.backend not in ("any", caps.backend):
        out["backend"] = f"backend {caps.backend}, needs {resources.backend}"
    if caps.vram_mb < resources.min_vram_mb:
        out["vram"] = f"{caps.vram_mb} MB VRAM < {resources.min_vram_mb}"
    if caps.compute_capability < resources.min_compute_capability:
        out["compute_capability"] = f"compute capability {caps.compute_capability} < {resources.min_compute_capability}"
    if not supports(caps, workload):
        out["workload"] = f"no {workload} workload"
    elif workload == CODE_WORKLOAD and not accepts_code(caps, submitter):
        out["code"] = f"runs no code from {submitter or 'this submitter'}"
    if resources.packages:
        missing = missing_packages(caps.packages, resources.packages)
        if missing:
            out["packages"] = "; ".join(missing)
    if max_price_micros is not None and caps.price_micros > max_price_micros:
        out["price"] = f"price {caps.price_micros} over the ceiling {max_price_micros}"
    return out


def misfits(
    caps: Capabilities,
    resources: Resources,
    workload: str,
    max_price_micros: int | None,
    submitter: str | None = None,
) -> list[str]:
    """Why a provider of ``caps`` may not take a task needing ``resources`` (empty when it may)."""
    return list(misfits_by_requirement(caps, resources, workload, max_price_micros, submitter).values())
