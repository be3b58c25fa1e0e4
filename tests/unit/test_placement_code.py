"""Where a submitter's own code may go: the placement rule for code tasks, through the scheduler.

A code task (the ``function`` workload) goes only to a provider that listed the workload and opted in
to its submitter's code, and that has every package it requires at a version its specifier allows.
The scheduler, the audit and the replayer share this rule (``events.placement``), so a scheduler test
is a test of all three.
"""

from __future__ import annotations

import itertools

import pytest

from actors.job import validate_spec
from actors.scheduler import PendingTask, Scheduler
from events.job import JobSpec
from events.placement import accepts_code, bad_specifier, misfits, missing_packages, normalise_package, supports
from events.types import Capabilities, Estimate, Resources, utc_now

_serial = itertools.count(1)
CODE = {"bucket": "gf-objects", "name": "submitter.alice." + "a" * 64, "sha256": "a" * 64, "size": 900}
PACKAGES = {"python": "3.11.7", "numpy": "2.1.0", "scipy": "1.11.4"}


def caps(*, workloads: tuple[str, ...] = (), code_from: tuple[str, ...] = (), slots: int = 4) -> Capabilities:
    return Capabilities(
        backend="cpu",
        gpu_model="m",
        vram_mb=16_000,
        slots=slots,
        workloads=workloads,
        code_from=code_from,
        packages=PACKAGES,
    )


def code_task(submitter: str, packages: dict[str, str] | None = None) -> PendingTask:
    return PendingTask(
        f"{submitter}.j{next(_serial)}.0",
        submitter,
        5,
        "function",
        Resources(packages=packages or {}),
        Estimate(fixed_seconds=1.0),
    )


CATALOGUE = ("noop", "sleep", "matmul")


def test_a_provider_that_lists_no_workloads_runs_the_catalogue_but_never_code() -> None:
    # An empty list means "every catalogue workload" (as before code tasks existed): code needs an
    # explicit listing, so an old or careless provider is never sent a stranger's function.
    anything = caps()
    assert supports(anything, "matmul") and not supports(anything, "function")
    assert misfits(anything, Resources(), "function", None, "alice") == ["no function workload"]


def test_code_goes_only_to_providers_that_opted_in_to_its_submitter() -> None:
    s = Scheduler()
    s.upsert_provider("closed", caps(workloads=CATALOGUE), None, available=True)
    alice_only = caps(workloads=(*CATALOGUE, "function"), code_from=("alice",))
    s.upsert_provider("alice-only", alice_only, None, available=True)
    s.upsert_provider("open", caps(workloads=(*CATALOGUE, "function"), code_from=("*",)), None, available=True)
    for _ in range(6):
        s.enqueue(code_task("alice"))
        s.enqueue(code_task("bob"))
    placed = s.assign()
    by_submitter: dict[str, set[str]] = {}
    for a in placed:
        by_submitter.setdefault(a.task.task_id.split(".")[0], set()).add(a.provider_id)
    assert by_submitter["alice"] <= {"alice-only", "open"} and "closed" not in by_submitter["alice"]
    assert by_submitter["bob"] == {"open"}
    assert not any(a.provider_id == "closed" for a in placed)
    # What each would answer a quote: bob's code has one place to go, carol's as well, eve's none
    # once the open provider is gone.
    assert s.capacity(Resources(), "function", "bob") == 4
    s.upsert_provider("open", caps(workloads=(*CATALOGUE, "function"), code_from=("*",)), None, available=False)
    assert s.capacity(Resources(), "function", "eve") == 0
    assert s.capacity(Resources(), "function", "alice") == 4


def test_a_code_task_that_fits_nowhere_waits_and_blocks_nobody_else() -> None:
    s = Scheduler()
    alice_only = caps(workloads=(*CATALOGUE, "function"), code_from=("alice",))
    s.upsert_provider("alice-only", alice_only, None, available=True)
    s.enqueue(code_task("mallory"))
    s.enqueue(code_task("alice"))
    placed = s.assign()
    assert [a.task.task_id.split(".")[0] for a in placed] == ["alice"]


def test_required_packages_are_matched_by_name_and_version() -> None:
    s = Scheduler()
    s.upsert_provider("p", caps(workloads=("function",), code_from=("*",)), None, available=True)
    fits = code_task("alice", {"scipy": ">=1.11", "python": ">=3.10"})
    too_old = code_task("alice", {"scipy": ">=1.13"})
    absent = code_task("alice", {"torch": ""})
    for t in (too_old, absent, fits):
        s.enqueue(t)
    assert [a.task.task_id for a in s.assign()] == [fits.task_id]
    assert missing_packages(PACKAGES, {"scipy": ">=1.13", "torch": "", "NumPy": "==2.1.0"}) == [
        "scipy 1.11.4, needs >=1.13",
        "no torch",
    ]


@pytest.mark.parametrize(
    ("name", "normal"), [("Scikit_Learn", "scikit-learn"), ("zope.interface", "zope-interface"), ("numpy", "numpy")]
)
def test_package_names_compare_as_pep_503_says(name: str, normal: str) -> None:
    assert normalise_package(name) == normal


def test_accepting_code_is_by_name_or_anyone() -> None:
    assert accepts_code(caps(code_from=("*",)), "anyone")
    assert accepts_code(caps(code_from=("alice", "bob")), "bob")
    assert not accepts_code(caps(code_from=("alice",)), "alicex")
    assert not accepts_code(caps(code_from=("alice",)), None)
    assert not accepts_code(caps(), "alice")


def test_a_bad_version_specifier_is_refused_at_intake_naming_the_package() -> None:
    assert bad_specifier(">=1.11") is None and bad_specifier("") is None
    assert bad_specifier("newest") is not None
    spec = JobSpec.model_validate(
        {
            "workload": "function",
            "params": {"code": CODE, "entry": "m:f"},
            "resources": {"packages": {"scipy": "newest"}},
        }
    )
    problem = validate_spec(spec, utc_now())
    assert problem is not None and problem.field == "resources.packages.scipy"
    assert "not a version specifier" in str(problem)
    ok = spec.model_copy(update={"resources": Resources(packages={"scipy": ">=1.11"})})
    assert validate_spec(ok, utc_now()) is None


def test_what_a_stranger_may_claim_or_require_is_bounded() -> None:
    # A provider's registration and a submitter's job are strangers' words: their package maps and
    # code lists are bounded by the catalogue, and refused past that, naming the field.
    from pydantic import ValidationError

    from events.types import MAX_PACKAGES, MAX_REQUIRED_PACKAGES

    many = {f"pkg{i}": "1.0" for i in range(MAX_PACKAGES + 1)}
    with pytest.raises(ValidationError, match="packages"):
        Capabilities(backend="cpu", gpu_model="m", vram_mb=1, packages=many)
    with pytest.raises(ValidationError, match="code_from"):
        Capabilities(backend="cpu", gpu_model="m", vram_mb=1, code_from=tuple(f"s{i}" for i in range(257)))
    with pytest.raises(ValidationError, match="packages"):
        Resources(packages={f"pkg{i}": "" for i in range(MAX_REQUIRED_PACKAGES + 1)})
    with pytest.raises(ValidationError, match="packages"):
        Resources(packages={"Not A Name": ">=1"})  # names are PEP 503-normalised, one token
    with pytest.raises(ValidationError, match="packages"):
        Resources(packages={"scipy": "x" * 201})
    most = dict(list(many.items())[:MAX_PACKAGES])
    assert len(Capabilities(backend="cpu", gpu_model="m", vram_mb=1, packages=most).packages) == MAX_PACKAGES
