"""Mutation testing of the pure core: how many small bugs planted in the deciders the fast suite catches.

Issue 16. It plants mutants (one small change each: ``<`` for ``<=``, ``-`` for ``+``, a condition
forced true, an argument dropped, ...) into the pure core with mutmut 3, runs the fast tests against
each, and reports per module how many the suite kills, next to a target (85%). It also applies two
hand-written "named mutants" of the task decider and says whether, and by which tests, they are killed.

    pip install -e '.[dev,mutation]'                 # mutmut is not part of dev, nor of .ci/run
    .venv/bin/python bench/mutation.py                # task, job, provider, scheduler; every mutant
    .venv/bin/python bench/mutation.py --quick 40     # a seeded sample of 40 mutants per module
    .venv/bin/python bench/mutation.py --modules task,reactions,view_fleet --jobs 2
    .venv/bin/python bench/mutation.py --named-only   # only the two named mutants
    .venv/bin/python bench/mutation.py --source worktree              # the working tree, not HEAD
    .venv/bin/python bench/mutation.py --rev cd27544                  # a given commit, not HEAD
    .venv/bin/python bench/mutation.py --overlay 'tests/unit/test_mutation_kills_*.py'

Where it runs: never in your checkout. It copies the committed tree (``--source head``, the default;
``--rev`` names another commit than HEAD) or the working tree (``--source worktree``: tracked and
untracked files that git does not ignore) into a temporary directory, with ``--overlay`` globs copied
over it from the working tree, and runs there; mutmut writes its mutants under that copy's
``mutants/``. ``--keep`` keeps the copy.

What runs against the mutants: the fast tests only (``tests/unit``, ``tests/golden``,
``tests/property/test_orchestration_invariants.py``, ``tests/property/test_projection_replay.py``,
``-m "not slow"``; the store property tests need a nats-server and never reach the core). mutmut
first runs them once with tracing and then gives each mutant only the tests that call its function,
so every module gets its relevant subset by measurement, not by guess. Hypothesis runs under a fixed
profile (derandomized, no example database, no shrinking) so that two runs give the same verdicts, and
the stateful orchestration test runs ``--stateful-examples`` examples (``GPUFLEET_STATEFUL_EXAMPLES``).

Output: per module, mutants, killed, survived, timeout, suspicious (or crashed), no tests, the score
``(killed + timeout) / checked``, the target and pass or fail; then the surviving mutants
(file:line, the diff) with a one-line guess at whether one is worth a test and why. Mutants that only
change a message's text are listed as not worth one, and so are those reviewed by hand as equivalent
(``REVIEWED``: keyed by the code's text, so an entry lapses when the code changes). The named mutants
say which tests killed them. The same goes to ``bench/out/mutation.json``
and ``bench/out/mutation.md`` (and mutmut's own log to ``bench/out/mutation.log``). The exit status is
1 when a module misses its target or a named mutant survives.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"

#: Every package the tests import: all of them are copied into mutmut's ``mutants/``, so that nothing is
#: imported from the editable install (which points at the user's checkout).
PACKAGES = ("actors", "events", "projections", "gpu_runtime", "gpufleet")
FAST_TESTS = (
    "tests/unit",
    "tests/golden",
    "tests/property/test_orchestration_invariants.py",
    "tests/property/test_projection_replay.py",
)
PROFILE_PLUGIN = "_gpufleet_mutation_profile"
PYTEST_ARGS = ("-p", "no:cacheprovider", "-m", "not slow", "-p", PROFILE_PLUGIN)


@dataclass(frozen=True, slots=True)
class Module:
    """A module to mutate, and the share of its mutants the suite must kill."""

    name: str
    path: str
    required: bool
    target: float = 85.0


MODULES: dict[str, Module] = {
    m.name: m
    for m in (
        Module("task", "actors/task.py", True),
        Module("job", "actors/job.py", True),
        Module("provider", "actors/provider.py", True),
        Module("scheduler", "actors/scheduler.py", True),
        Module("reactions", "actors/reactions.py", False),
        Module("view_jobs", "projections/jobs.py", False),
        Module("view_fleet", "projections/fleet.py", False),
        Module("view_ledger", "projections/ledger.py", False),
    )
}
DEFAULT_MODULES = ("task", "job", "provider", "scheduler")


@dataclass(frozen=True, slots=True)
class NamedMutant:
    """A hand-written mutant: ``insert`` becomes the first statement of the block opened by ``anchor``."""

    name: str
    path: str
    function: str
    anchor: str
    insert: str
    what: str


_FORGED = '"provider does not hold this lease (forged report)"'
NAMED: tuple[NamedMutant, ...] = (
    NamedMutant(
        "refuse-genuine-completed",
        "actors/task.py",
        "decide",
        "case ReportCompleted():",
        f"return _refuse(cmd, s, {_FORGED})",
        "the task decider refuses every ReportCompleted, the lease holder's genuine one too, as if forged",
    ),
    NamedMutant(
        "refuse-every-started",
        "actors/task.py",
        "decide",
        "case ReportStarted():",
        f"return _refuse(cmd, s, {_FORGED})",
        "the task decider refuses every ReportStarted",
    ),
)

# The hypothesis profile and a guard, loaded into every pytest run as a plugin: the same examples on
# every run (derandomized, no database), no shrinking (a kill is a kill; shrinking only costs time),
# and a loud failure if the code under test was imported from anywhere but the copy.
PROFILE_SOURCE = '''\
"""gpufleet mutation bench: a reproducible hypothesis profile, and a guard on where the code comes from."""

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "gpufleet-mutation",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("gpufleet-mutation")


def pytest_collection_finish(session):
    root = Path.cwd().resolve()
    for name in PACKAGES:
        module = sys.modules.get(name)
        where = getattr(module, "__file__", None)
        if where is not None and root not in Path(where).resolve().parents:
            pytest.exit(f"{name} was imported from {where}, not from the copy under test {root}", returncode=4)
'''

# Runs inside the copy, in a process of its own: mutmut's ``run``, then its results as JSON.
BOOT_SOURCE = '''\
"""gpufleet mutation bench: run mutmut in this copy and write its verdicts as JSON."""

import json
import random
import sys
from pathlib import Path

import _gpufleet_mutation_profile  # noqa: F401  (the hypothesis profile, before any test module)
from mutmut import __version__ as mutmut_version
from mutmut.__main__ import cli
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import get_mutant_name

spec = json.loads(Path(sys.argv[1]).read_text())
names = []
if spec["quick"]:
    rng = random.Random(spec["seed"])
    for path in spec["paths"]:
        mutated = mutate_file_contents(path, Path(path).read_text())
        every = sorted(get_mutant_name(Path(path), n) for n in mutated.mutant_names)
        names += sorted(rng.sample(every, min(spec["quick"], len(every))))
    Path(spec["sample"]).write_text(json.dumps(names))

code = 0
try:
    cli.main(["run", "--max-children", str(spec["jobs"]), *names], standalone_mode=False)
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1

mutants_dir = Path("mutants").resolve()
imported = {p: getattr(sys.modules.get(p), "__file__", None) for p in spec["packages"]}
outside = {p: f for p, f in imported.items() if f and mutants_dir not in Path(f).resolve().parents}
chosen = set(names)
results = {}
for path in spec["paths"]:
    data = SourceFileMutationData(path=path)
    data.load()
    rows = {}
    for key, exit_code in data.exit_code_by_key.items():
        if chosen and key not in chosen:
            continue
        status = status_by_exit_code[exit_code]
        rows[key] = {
            "exit_code": exit_code,
            "status": status,
            "duration_s": data.durations_by_key.get(key),
            "diff": None if status in ("killed", "not checked") else get_diff_for_mutant(key, path=path),
        }
    results[path] = rows
Path(spec["results"]).write_text(
    json.dumps({"mutmut_version": mutmut_version, "exit_code": code, "outside": outside, "results": results})
)
sys.exit(code)
'''


# ---- the copy ----------------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def make_copy(source: str, rev: str, dest: Path, overlays: list[str]) -> dict[str, Any]:
    """Copy the committed tree of ``rev`` or the working tree into ``dest``, then the overlay files over it."""
    dest.mkdir(parents=True)
    commit = git("rev-parse", "--verify", f"{rev if source == 'head' else 'HEAD'}^{{commit}}").strip()
    if source == "head":
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", commit], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    else:
        listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
        for rel in filter(None, listed):
            src = REPO / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    overlaid: list[str] = []
    for pattern in overlays:
        matched = sorted(p for p in REPO.glob(pattern) if p.is_file())
        if not matched:
            raise SystemExit(f"--overlay {pattern!r} matches no file in {REPO}")
        for src in matched:
            rel = src.relative_to(REPO).as_posix()
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            overlaid.append(rel)
    dirty = git("status", "--porcelain", "--untracked-files=no").strip() != "" if source == "head" else None
    kind = source if source == "worktree" or rev == "HEAD" else f"commit {rev}"
    return {"kind": kind, "commit": commit, "overlays": overlaid, "checkout_had_uncommitted_changes": dirty}


def write_mutmut_config(copy: Path, modules: list[Module]) -> None:
    """Append mutmut's configuration to the copy's pyproject.toml (never the checkout's)."""
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] table; the bench writes its own into the copy")
    sources = [p for p in PACKAGES if (copy / p).is_dir()]
    also = sorted(
        p.name for p in copy.iterdir() if p.name not in {*sources, "tests", "mutants"} and not p.name.startswith(".")
    )
    config = {
        "source_paths": sources,
        "only_mutate": [m.path for m in modules],
        "also_copy": also,
        "pytest_add_cli_args": list(PYTEST_ARGS),
        "pytest_add_cli_args_test_selection": list(FAST_TESTS),
    }
    lines = ["", "[tool.mutmut]", *(f"{k} = {json.dumps(v)}" for k, v in config.items())]
    # A mutant in a loop can spin forever: give up after 5x its tests' clean time (mutmut's default is 15x).
    lines += ["timeout_multiplier = 5.0", "use_git_change_detection = false", ""]
    pyproject.write_text(text + "\n".join(lines))


# ---- named mutants -----------------------------------------------------------------------------------


def apply_named(copy: Path, mutant: NamedMutant) -> str:
    """Insert the mutant's statement under its anchor; fail clearly if the code moved on."""
    path = copy / mutant.path
    lines = path.read_text().splitlines(keepends=True)
    where = [i for i, line in enumerate(lines) if line.strip() == mutant.anchor]
    if len(where) != 1:
        raise SystemExit(
            f"named mutant {mutant.name}: expected the line {mutant.anchor!r} once in {mutant.path}, found it "
            f"{len(where)} times; the code changed, so update NAMED in bench/mutation.py"
        )
    i = where[0]
    indent = len(lines[i]) - len(lines[i].lstrip())
    enclosing = next(
        (
            line
            for line in reversed(lines[:i])
            if re.match(r"\s*def \w+", line) and len(line) - len(line.lstrip()) < indent
        ),
        "",
    )
    if not re.match(rf"def {mutant.function}\(", enclosing.strip()):
        raise SystemExit(
            f"named mutant {mutant.name}: {mutant.anchor!r} is no longer inside {mutant.function}() in {mutant.path}"
        )
    body = next((line for line in lines[i + 1 :] if line.strip()), "")
    body_indent = len(body) - len(body.lstrip())
    if body_indent <= indent:
        raise SystemExit(f"named mutant {mutant.name}: no indented block under {mutant.anchor!r} in {mutant.path}")
    original = list(lines)
    lines.insert(i + 1, " " * body_indent + mutant.insert + "\n")
    patched = "".join(lines)
    compile(patched, str(path), "exec")
    path.write_text(patched)
    return "".join(difflib.unified_diff(original, lines, mutant.path, mutant.path, n=2))


def run_fast_tests(copy: Path, env: dict[str, str], maxfail: int) -> tuple[int, list[str], str, float]:
    """The fast tests in ``copy``: exit code, the failed test ids, the output's tail, seconds."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", f"--maxfail={maxfail}", *PYTEST_ARGS, *FAST_TESTS]
    start = time.monotonic()
    done = subprocess.run(cmd, check=False, cwd=copy, env=env, capture_output=True, text=True)
    out = done.stdout + done.stderr
    failed = sorted({m.group(1) for m in re.finditer(r"^FAILED (\S+)", out, re.M)})
    return done.returncode, failed, out[-3000:], time.monotonic() - start


def run_named(base: Path, work: Path, env: dict[str, str], console: Console) -> list[dict[str, Any]]:
    ignore = shutil.ignore_patterns("mutants", "__pycache__", ".hypothesis")
    baseline = work / "named-baseline"
    shutil.copytree(base, baseline, ignore=ignore)
    with console.status("named mutants: the fast tests on the unmutated copy"):
        code, failed, tail, took = run_fast_tests(baseline, env, maxfail=5)
    if code != 0:
        console.print(tail)
        raise SystemExit(f"the fast tests fail on the unmutated copy (exit {code}): {failed}")
    console.print(f"named mutants: the unmutated copy passes the fast tests in {took:.0f}s")
    found: list[dict[str, Any]] = []
    for mutant in NAMED:
        copy = work / f"named-{mutant.name}"
        shutil.copytree(base, copy, ignore=ignore)
        diff = apply_named(copy, mutant)
        with console.status(f"named mutant {mutant.name}: running the fast tests"):
            code, failed, tail, took = run_fast_tests(copy, env, maxfail=25)
        status = "survived" if code == 0 else "killed" if code == 1 else f"error (pytest exit {code})"
        found.append(
            {
                "name": mutant.name,
                "what": mutant.what,
                "path": mutant.path,
                "diff": diff,
                "status": status,
                "killed_by": failed,
                "runtime_s": round(took, 1),
            }
        )
        if status.startswith("error"):
            console.print(tail)
        console.print(
            f"named mutant {mutant.name}: [bold]{status}[/] in {took:.0f}s"
            + (f" by {len(failed)} tests" if failed else "")
        )
    return found


# ---- mutmut ------------------------------------------------------------------------------------------


def meta_counts(copy: Path, modules: list[Module], sample: set[str] | None) -> dict[str, tuple[int, int]]:
    """(checked, total) per module, read from mutmut's meta files while it runs."""
    counts: dict[str, tuple[int, int]] = {}
    for m in modules:
        try:
            codes = json.loads((copy / "mutants" / (m.path + ".meta")).read_text())["exit_code_by_key"]
        except (OSError, ValueError, KeyError):
            continue
        if sample:
            codes = {k: v for k, v in codes.items() if k in sample}
        counts[m.name] = (sum(v is not None for v in codes.values()), len(codes))
    return counts


def run_mutmut(
    copy: Path, work: Path, modules: list[Module], args: argparse.Namespace, env: dict[str, str], console: Console
) -> dict[str, Any]:
    spec = {
        "paths": [m.path for m in modules],
        "packages": list(PACKAGES),
        "quick": args.quick,
        "seed": args.seed,
        "jobs": args.jobs,
        "sample": str(work / "sample.json"),
        "results": str(work / "results.json"),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    log = work / "mutmut.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(work / "_gpufleet_mutation_boot.py"), str(work / "spec.json")],
            cwd=copy,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            phase = progress.add_task("mutmut: generating mutants, then the fast tests once with tracing", total=None)
            bars: dict[str, Any] = {}
            sample: set[str] | None = None
            while proc.poll() is None:
                time.sleep(1.0)
                if args.quick and sample is None and (work / "sample.json").exists():
                    sample = set(json.loads((work / "sample.json").read_text()))
                counts = meta_counts(copy, modules, sample)
                if (copy / "mutants" / "mutmut-stats.json").exists():
                    progress.update(phase, description="mutmut: running the mutants")
                for name, (checked, total) in counts.items():
                    if name not in bars:
                        bars[name] = progress.add_task(f"  {name}", total=total)
                    progress.update(bars[name], completed=checked, total=total)
            progress.update(phase, total=1, completed=1)
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy2(log, OUT / "mutation.log")
    if not (work / "results.json").exists():
        console.print(log.read_text()[-4000:])
        raise SystemExit(f"mutmut ended (exit {proc.returncode}) without results; its log: {OUT / 'mutation.log'}")
    found: dict[str, Any] = json.loads((work / "results.json").read_text())
    if found["outside"]:
        raise SystemExit(f"the code under test was imported from outside the copy: {found['outside']}")
    if found["exit_code"] != 0:
        console.print(log.read_text()[-4000:])
        raise SystemExit(f"mutmut failed (exit {found['exit_code']}); its log: {OUT / 'mutation.log'}")
    return found


# ---- the report --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    module: str
    path: str
    required: bool
    target: float
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    suspicious: int = 0
    no_tests: int = 0
    not_checked: int = 0
    score: float = 0.0
    passed: bool = False


@dataclass(slots=True)
class Survivor:
    module: str
    mutant: str
    status: str
    where: str
    diff: str
    worth_a_test: bool
    why: str
    hunk: list[str] = field(default_factory=list)


_STRING = re.compile(r"""(?:[rbfuRBFU]{0,2})("[^"\\]*(?:\\.[^"\\]*)*"|'[^'\\]*(?:\\.[^'\\]*)*')""")
_TOKEN = re.compile(
    r"""[rbfuRBFU]{0,2}"[^"\\]*(?:\\.[^"\\]*)*"|[rbfuRBFU]{0,2}'[^'\\]*(?:\\.[^'\\]*)*'|\d+\.?\d*|\w+|==|!=|<=|>=|//|\*\*|<<|>>|\S"""
)
#: A string that names something (a status, a kind, a field), as opposed to a message for people.
_WORD = re.compile(r"""["'][a-z_][a-z0-9_.]*["']""")
_COMPARE = {"<", "<=", ">", ">=", "==", "!=", "in", "not", "is"}
_ARITH = {"+", "-", "*", "/", "//", "%", "**", "<<", ">>", "&", "|", "^"}


def _function_span(source: str, mutant: str) -> tuple[int, int] | None:
    mangled = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    if "ǁ" in mangled:
        _, cls, name = mangled.split("ǁ")
    else:
        cls, name = None, mangled[2:]
    tree = ast.parse(source)
    scope: list[ast.stmt] = tree.body
    if cls is not None:
        scope = next((n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), [])
    for node in scope:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node.lineno, node.end_lineno or node.lineno
    return None


def _hunk(diff: str) -> tuple[list[str], list[str], list[str], int]:
    """The diff's lines (no headers), the removed and added lines, and the removed line's index in the function."""
    body, removed, added, first, old_line = [], [], [], 0, 0
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("@@"):
            start = re.match(r"@@ -(\d+)", line)
            old_line = int(start.group(1)) if start else 1
            continue
        body.append(line)
        if line.startswith("-"):
            removed.append(line[1:])
            first = first or old_line
        elif line.startswith("+"):
            added.append(line[1:])
            first = first or old_line
        if not line.startswith("+"):
            old_line += 1
    return body, removed, added, first


def locate(copy: Path, path: str, mutant: str, removed: list[str], rel: int) -> str:
    """file:line of the mutated line in the original source."""
    source = (copy / path).read_text()
    span = _function_span(source, mutant)
    if span is None:
        return path
    lines = source.splitlines()
    guess = span[0] + max(rel, 1) - 1
    wanted = (removed[0] if removed else "").strip()
    hits = [i + 1 for i in range(span[0] - 1, span[1]) if wanted and lines[i].strip() == wanted]
    line = min(hits, key=lambda n: abs(n - guess)) if hits else guess
    return f"{path}:{line}"


#: Survivors reviewed by hand and found equivalent (no behaviour changes) or not worth a test:
#: (file, the mutated line as it reads, the mutant's line or None for any mutant of it, why).
#: Keyed by the code's text, so an entry stops matching when the code changes.
_SCHED = "actors/scheduler.py"
_PASS_GUARD = "if not q or abs(level.passes.get(submitter, 0.0) - pass_) > 1e-12:"
_AGAIN = "self._requeue(level, t.submitter, charge=False)"
_REQUEUE = (
    "level.passes[submitter] = level.passes.get(submitter, level.vtime) + 1.0 / self._weights.get(submitter, 1.0)"
)
_START = "start = max(level.passes.get(t.submitter, 0.0), level.vtime, waiting.tags.get(key, 0.0))"
REVIEWED: tuple[tuple[str, str, str | None, str], ...] = (
    (_SCHED, "found = self._eligible.get(shape)", None, "equivalent: a cache; recomputing finds the same classes"),
    (_SCHED, "self._eligible[shape] = found", None, "equivalent: a cache; recomputing finds the same classes"),
    (_SCHED, "if len(cls.heap) > 4 * len(cls.members) + 64:", None, "equivalent: when to compact a heap, speed only"),
    (_SCHED, "if q.available and q.free > 0:", None, "equivalent: _best_in skips entries of busy or away providers"),
    (
        _SCHED,
        "if p.available and p.free > 0 and p.key in self._classes:",
        None,
        "equivalent: _best_in skips entries of busy or away providers; handing back for no free slot hands none",
    ),
    (
        _SCHED,
        "def _offer(self, p: ProviderInfo, *, unblock: bool = True) -> None:",
        None,
        "equivalent: the next assign's _reoffer hands the waiting tasks back anyway",
    ),
    (
        _SCHED,
        "self._unblock(self._classes[p.key], p.free)",
        "self._unblock(None, p.free)",
        "equivalent: the next assign's _reoffer hands the waiting tasks back anyway",
    ),
    (
        _SCHED,
        "if p is not None and p.available and p.free > 0 and p.key == cls.key and abs(rank - self._rank(p)) < 1e-12:",
        None,
        "equivalent: a current rank implies the current load, and equal floats are equal",
    ),
    (_SCHED, "if p.key == key and key in self._classes:", None, "equivalent: adding a member to a set twice"),
    (_SCHED, "p.key = ()", None, "equivalent: _join_class sets the key again right after"),
    (
        _SCHED,
        _PASS_GUARD,
        None,
        "equivalent: a defensive guard; a submitter has one heap entry, with its pass and a non-empty queue",
    ),
    *(
        (_SCHED, _REQUEUE, _REQUEUE.replace(old, new), "equivalent: a submitter just picked has a pass")
        for old, new in (
            ("get(submitter, level.vtime)", "get(None, level.vtime)"),
            ("get(submitter, level.vtime)", "get(submitter, None)"),
            ("get(submitter, level.vtime)", "get(submitter, )"),
        )
    ),
    (
        _SCHED,
        _REQUEUE,
        _REQUEUE.replace("level.vtime) + 1.0", "level.vtime) + 2.0"),
        "equivalent: every stride doubles",
    ),
    *(
        (
            _SCHED,
            _START,
            _START.replace(old, new),
            "equivalent: a task is set aside just after its submitter was picked",
        )
        for old, new in (
            ("level.passes.get(t.submitter, 0.0), ", ""),
            ("level.vtime, ", ""),
            ("get(t.submitter, 0.0)", "get(None, 0.0)"),
            ("get(t.submitter, 0.0)", "get(t.submitter, None)"),
            ("get(t.submitter, 0.0)", "get(t.submitter, 1.0)"),
            ("get(t.submitter, 0.0)", "get(t.submitter, )"),
        )
    ),
    (
        _SCHED,
        "start = max(level.passes.get(task.submitter, 0.0), level.vtime)",
        "start = max(level.passes.get(task.submitter, 1.0), level.vtime)",
        "equivalent: every first pass moves by the same 1.0",
    ),
    (
        _SCHED,
        "return -round(p.reputation, 2) * 1000.0 + p.used / p.capabilities.slots",
        "return -round(p.reputation, 2) * 1001.0 + p.used / p.capabilities.slots",
        "equivalent: reputation counts in hundredths and load is at most 1: any factor over 100 orders alike",
    ),
    (_SCHED, "ceiling = t.max_price_micros or 1_000_000", None, "a default ceiling moved by one micro"),
    (
        _SCHED,
        "+ self.price_weight * (price / max(ceiling, 1))",
        "+ self.price_weight * (price / max(ceiling, 2))",
        "a ceiling of one micro only",
    ),
    (_SCHED, "self._offer(p, unblock=False)", "self._offer(p, unblock=None)", "equivalent: None is false"),
    (
        _SCHED,
        "if best is None or score < best[0]:",
        "if best is None or score <= best[0]:",
        "an exact tie between classes goes to the later one: an arbitrary tie-break",
    ),
    (_SCHED, "self._push(task, front=False)", "self._push(task, front=None)", "equivalent: None is false"),
    (_SCHED, _AGAIN, "self._requeue(level, t.submitter, charge=None)", "equivalent: None is false"),
    (_SCHED, "def assign(self, limit: int = 1_000_000) -> list[Assignment]:", None, "a default no caller reaches"),
    (
        _SCHED,
        "a = None if shape in full else self._place(t)",
        None,
        "equivalent: placing a full shape again finds nothing",
    ),
    (_SCHED, "full.add(shape)", None, "equivalent: placing a full shape again finds nothing, speed only"),
    (_SCHED, "if len(out) >= limit:", None, "equivalent: the inner loop stops at the limit"),
    (_SCHED, "self.decisions += 1", None, "a counter for the bench; no rule depends on it"),
    (_SCHED, "self.decisions = 0", None, "a counter for the bench; no rule depends on it"),
    (
        _SCHED,
        'probe = PendingTask("", "", 5, workload, resources, Estimate())',
        None,
        "equivalent: not part of the shape",
    ),
    (
        _SCHED,
        'probe = PendingTask("", "", 5, workload, resources, estimate)',
        None,
        "equivalent: not part of the shape",
    ),
    (_SCHED, "if not task.order:", None, "equivalent: PendingTask.order is never read"),
    (_SCHED, "task.order = next(self._seq)", None, "equivalent: PendingTask.order is never read"),
    (_SCHED, "self._pending[task.task_id] = task", None, "equivalent: only membership of _pending is read"),
    (
        _SCHED,
        "if p is not None and abs(p.reputation - reputation) > 1e-9:",
        None,
        "equivalent: setting the same reputation again changes nothing",
    ),
    (
        _SCHED,
        "p = ProviderInfo(provider_id, capabilities, calibration)",
        None,
        "equivalent: the calibration is set on the next line",
    ),
    (
        "actors/provider.py",
        'if s.status == "none" or s.capabilities != cmd.capabilities or s.name != cmd.name or out:',
        'if s.status == "XXnoneXX" or s.capabilities != cmd.capabilities or s.name != cmd.name or out:',
        "equivalent: a provider never registered has no capabilities, so the next test holds",
    ),
    (
        "actors/provider.py",
        'if s.status == "none" or s.capabilities != cmd.capabilities or s.name != cmd.name or out:',
        'if s.status == "NONE" or s.capabilities != cmd.capabilities or s.name != cmd.name or out:',
        "equivalent: a provider never registered has no capabilities, so the next test holds",
    ),
    (
        "actors/provider.py",
        'if s.status != "online" or out:',
        'if s.status != "XXonlineXX" or out:',
        "equivalent: an online provider that registers again is first lost, so `out` holds",
    ),
    (
        "actors/provider.py",
        'if s.status != "online" or out:',
        'if s.status != "ONLINE" or out:',
        "equivalent: an online provider that registers again is first lost, so `out` holds",
    ),
    (
        "actors/provider.py",
        'status="online",',
        None,
        "equivalent: ProviderRegistered is always followed by ProviderOnline, which sets the status",
    ),
    ("actors/provider.py", "was_draining=False,", "was_draining=None,", "equivalent: None is false"),
    (
        "actors/task.py",
        'failed = replace(s, status="queued", lease=None)',
        None,
        "equivalent: _failure does not read the status",
    ),
    (
        "actors/task.py",
        "resume_step=s.checkpoint_step if s.checkpoint else 0,",
        None,
        "equivalent: the checkpoint step is 0 while there is no checkpoint",
    ),
    ("actors/task.py", "case TaskResultRejected():", None, "equivalent: falls through to the same `return s`"),
    (
        "actors/task.py",
        "return replace(s, failures=s.failures + 1, lease=None)",
        None,
        "equivalent: a retryable TaskFailed is always followed by TaskRetried, which clears the lease too",
    ),
    (
        "actors/task.py",
        'return replace(s, status="waiting", not_before=e.not_before, lease=None)',
        None,
        "equivalent: TaskFailed, just before it, cleared the lease",
    ),
    (
        "actors/job.py",
        'for i in range(spec.task_count() if spec.split.kind == "params" else 1):',
        None,
        "equivalent: the tasks of other splits share their params, validating more finds the same",
    ),
    (
        "actors/job.py",
        "if d[0] > 0 or d[1] > 0:",
        "if d[1] > 0 or d[1] > 0:",
        "equivalent: an amount owed implies GPU time",
    ),
    (
        "actors/job.py",
        "if d[0] > 0 or d[1] > 0:",
        "if d[0] > 1 or d[1] > 0:",
        "equivalent: an amount owed implies GPU time",
    ),
)


#: The same, for lines too common to name alone: (file, function, line, mutant's line, why).
REVIEWED_IN: tuple[tuple[str, str, str, str | None, str], ...] = (
    (_SCHED, "_next", "continue", "break", "equivalent: the guard above it never fires (one entry per submitter)"),
    (
        "actors/provider.py",
        "evolve",
        'return replace(s, status="draining" if s.was_draining else "online", was_draining=False)',
        None,
        "equivalent: every later ProviderOnline comes after a ProviderLost, ProviderLeft or ProviderRegistered,"
        " which set was_draining again",
    ),
)


def reviewed(path: str, mutant: str, removed: list[str], added: list[str]) -> str | None:
    """Why a survivor was reviewed as not worth a test, if it was."""
    old = removed[0].strip() if removed else ""
    new = added[0].strip() if added else ""
    function = mutant.partition("__mutmut_")[0].rpartition(".")[2].rpartition("ǁ")[2].removeprefix("x_")
    for file, line, changed, why in REVIEWED:
        if file == path and line == old and changed in (None, new):
            return f"reviewed: {why}"
    for file, name, line, changed, why in REVIEWED_IN:
        if file == path and name == function and line == old and changed in (None, new):
            return f"reviewed: {why}"
    return None


def judge(removed: list[str], added: list[str]) -> tuple[bool, str]:
    """A first guess at whether a surviving mutant is worth a test, and why (a heuristic)."""
    old, new = " ".join(s.strip() for s in removed), " ".join(s.strip() for s in added)
    if old.startswith("raise ") and new.startswith("raise "):
        return False, "only what the refusal says changed, not whether it refuses"
    if _STRING.sub('""', old) == _STRING.sub('""', new):
        changed = [x for x, y in zip(_STRING.findall(old), _STRING.findall(new), strict=False) if x != y]
        words = [x for x in changed if _WORD.fullmatch(x)]
        if words:  # a status, a kind, a field name: a value the code acts on, not a message
            return True, f"the value {words[0]} is never checked where it is set here"
        return False, "only the text of a message changed"
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    ops = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if not ops:
        return False, "no change but formatting"
    _, i1, i2, j1, j2 = ops[0]
    was, now = " ".join(a[i1:i2]), " ".join(b[j1:j2])
    if ("or True" in new and "or True" not in old) or ("and False" in new and "and False" not in old):
        return True, "a condition forced one way changes nothing checked: its other branch is never observed"
    if re.fullmatch(r"\[?:?\d+", was) and re.fullmatch(r"\[?:?\d+", now) and "[:" in old:
        return True, f"a length cap ({was} -> {now}) that no test pins"
    if was in _COMPARE and now in _COMPARE:
        return True, f"comparison {was!r} -> {now!r}: the boundary is not pinned"
    if was in ("and", "or") and now in ("and", "or"):
        return True, f"{was!r} -> {now!r}: the two conditions are never told apart"
    if was in _ARITH and now in _ARITH:
        return True, f"arithmetic {was!r} -> {now!r} is not checked"
    if re.fullmatch(r"-?\d+\.?\d*", was) and re.fullmatch(r"-?\d+\.?\d*", now):
        return True, f"constant {was} -> {now} is not pinned"
    if now == "None" or (not now and was):
        what = was if len(was) < 50 else was[:47] + "..."
        if _WORD.fullmatch(was.strip()):
            return True, f"the value {was.strip()} is never checked where it is passed here"
        if _STRING.fullmatch(was.strip()):
            return False, "a message argument dropped or emptied: only text"
        return True, f"{what!r} dropped: nothing checks the value it provides"
    if was in ("True", "False") and now in ("True", "False"):
        return True, f"flag {was} -> {now} is not checked"
    if was in ("break", "continue", "return"):
        return True, f"{was!r} -> {now!r} changes nothing checked"
    return True, f"{was!r} -> {now!r} changes nothing checked"


def build_report(copy: Path, modules: list[Module], found: dict[str, Any] | None) -> tuple[list[Row], list[Survivor]]:
    rows: list[Row] = []
    survivors: list[Survivor] = []
    if found is None:
        return rows, survivors
    for m in modules:
        row = Row(m.name, m.path, m.required, m.target)
        for key, r in sorted(found["results"].get(m.path, {}).items(), key=lambda kv: _natural(kv[0])):
            status = r["status"]
            row.mutants += 1
            if status == "killed":
                row.killed += 1
            elif status == "survived":
                row.survived += 1
            elif status == "timeout":
                row.timeout += 1
            elif status == "no tests":
                row.no_tests += 1
            elif status in ("not checked", "skipped", "check was interrupted by user"):
                row.not_checked += 1
            else:
                row.suspicious += 1
            if status in ("survived", "no tests", "suspicious", "segfault"):
                body, removed, added, rel = _hunk(r["diff"] or "")
                worth, why = judge(removed, added)
                if (known := reviewed(m.path, key, removed, added)) is not None:
                    worth, why = False, known
                if status == "no tests":
                    worth, why = True, "no fast test calls this function at all"
                survivors.append(
                    Survivor(m.name, key, status, locate(copy, m.path, key, removed, rel), "\n".join(body), worth, why)
                )
        checked = row.mutants - row.not_checked
        row.score = round(100.0 * (row.killed + row.timeout) / checked, 1) if checked else 0.0
        row.passed = checked > 0 and row.score >= m.target
        rows.append(row)
    return rows, survivors


def _natural(key: str) -> tuple[str, int]:
    head, _, n = key.rpartition("__mutmut_")
    return head, int(n) if n.isdigit() else 0


def print_report(
    console: Console, rows: list[Row], survivors: list[Survivor], named: list[dict[str, Any]], quick: int
) -> None:
    if rows:
        table = Table(
            title="Mutation score per module" + (f" (a sample of up to {quick} mutants each)" if quick else "")
        )
        for col in (
            "module",
            "file",
            "mutants",
            "killed",
            "survived",
            "timeout",
            "suspicious",
            "no tests",
            "score",
            "target",
            "",
        ):
            table.add_column(col, justify="left" if col in ("module", "file") else "right")
        for r in rows:
            verdict = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
            name = r.module + ("" if r.required else " (extra)")
            counts = (r.mutants, r.killed, r.survived, r.timeout, r.suspicious, r.no_tests)
            table.add_row(name, r.path, *map(str, counts), f"{r.score:.1f}%", f"{r.target:.0f}%", verdict)
        console.print(table)
        worth = [s for s in survivors if s.worth_a_test]
        console.print(f"\n[bold]Surviving mutants worth a test[/] ({len(worth)} of {len(survivors)} survivors):")
        for s in worth:
            console.print(f"[cyan]{s.where}[/] {s.mutant} ({s.status}): {s.why}")
            console.print(textwrap.indent(s.diff, "    "), markup=False, highlight=False)
        rest = [s for s in survivors if not s.worth_a_test]
        if rest:
            console.print(f"\n[dim]Not worth a test ({len(rest)}):[/]")
            for s in rest:
                console.print(f"[dim]{s.where} {s.mutant}: {s.why}[/]")
    if named:
        table = Table(title="Named mutants")
        for col in ("mutant", "what", "verdict"):
            table.add_column(col)
        table.add_column("killed by (first failing tests)", overflow="fold")
        for n in named:
            more = len(n["killed_by"]) - 4
            shown = "\n".join(n["killed_by"][:4]) + (f"\n(+{more} more)" if more > 0 else "")
            table.add_row(n["name"], n["what"], n["status"], shown or "-")
        console.print(table)


def write_report(
    report: dict[str, Any], rows: list[Row], survivors: list[Survivor], named: list[dict[str, Any]]
) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mutation.json").write_text(json.dumps(report, indent=2) + "\n")
    md = ["# Mutation testing of the pure core", ""]
    src = report["source"]
    md += [
        f"- source: {src['kind']} at `{src['commit'][:12]}`"
        + (f", overlays: {', '.join(src['overlays'])}" if src["overlays"] else "")
    ]
    md += [
        f"- command: `{report['command']}`",
        f"- runtime: {report['runtime_s']['total']:.0f} s on {report['cpus']} CPUs",
        "",
    ]
    if rows:
        md += [
            "| module | file | mutants | killed | survived | timeout | suspicious | no tests | score | target | |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            counts = f"{r.mutants} | {r.killed} | {r.survived} | {r.timeout} | {r.suspicious} | {r.no_tests}"
            verdict = "pass" if r.passed else "FAIL"
            md.append(f"| {r.module} | `{r.path}` | {counts} | {r.score:.1f}% | {r.target:.0f}% | {verdict} |")
        md += ["", "## Surviving mutants worth a test", ""]
        for s in (s for s in survivors if s.worth_a_test):
            md += [
                f"- `{s.where}` {s.mutant} ({s.status}): {s.why}",
                "",
                "  ```diff",
                textwrap.indent(s.diff, "  "),
                "  ```",
            ]
        md += ["", "## Surviving mutants not worth a test", ""]
        md += [f"- `{s.where}` {s.mutant}: {s.why}" for s in survivors if not s.worth_a_test]
    if named:
        md += ["", "## Named mutants", "", "| mutant | what | verdict | killed by |", "|---|---|---|---|"]
        md += [f"| {n['name']} | {n['what']} | {n['status']} | {', '.join(n['killed_by']) or '-'} |" for n in named]
    (OUT / "mutation.md").write_text("\n".join(md) + "\n")


# ---- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--modules", default=",".join(DEFAULT_MODULES), help=f"comma-separated, of: {', '.join(MODULES)}; or 'all'"
    )
    p.add_argument(
        "--quick", type=int, default=0, metavar="N", help="a seeded sample of N mutants per module (0: every mutant)"
    )
    p.add_argument("--seed", type=int, default=16, help="the sample's seed (with --quick)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested at once")
    p.add_argument(
        "--source", choices=("head", "worktree"), default="head", help="copy the committed tree, or the working tree"
    )
    p.add_argument("--rev", default="HEAD", help="with --source head: the commit whose tree is copied")
    p.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="GLOB",
        help="working-tree files copied over the copy (repeatable)",
    )
    p.add_argument("--stateful-examples", type=int, default=100, help="examples of the stateful orchestration test")
    p.add_argument("--named-only", action="store_true", help="only the two named mutants")
    p.add_argument("--no-named", action="store_true", help="skip the named mutants")
    p.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = p.parse_args(argv)
    chosen = list(MODULES) if args.modules == "all" else [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODULES]
    if unknown:
        p.error(f"unknown modules {unknown}; known: {', '.join(MODULES)}")
    args.modules = chosen
    if args.named_only and args.no_named:
        p.error("--named-only and --no-named exclude each other")
    return args


@dataclass(slots=True)
class Clock:
    start: float = field(default_factory=time.monotonic)
    laps: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> None:
        self.laps[name] = round(time.monotonic() - since, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        raise SystemExit("mutmut is not installed: pip install -e '.[dev,mutation]'") from None
    modules = [MODULES[m] for m in args.modules]
    clock = Clock()
    with _workdir(args.keep) as work:
        copy = work / "gpufleet"
        source = make_copy(args.source, args.rev, copy, args.overlay)
        console.print(
            f"copied {source['kind']} ({source['commit'][:12]}) to {copy}"
            + (f" with {len(source['overlays'])} overlaid files" if source["overlays"] else "")
        )
        if source["checkout_had_uncommitted_changes"]:
            console.print(
                "[yellow]note: the checkout has uncommitted changes; they are not measured (--source worktree would)[/]"
            )
        (work / f"{PROFILE_PLUGIN}.py").write_text(PROFILE_SOURCE.replace("PACKAGES", repr(PACKAGES)))
        (work / "_gpufleet_mutation_boot.py").write_text(BOOT_SOURCE)
        env = {
            **os.environ,
            "PYTHONPATH": str(work),
            "GPUFLEET_STATEFUL_EXAMPLES": str(args.stateful_examples),
            "PYTHONHASHSEED": "0",
        }
        env.pop("HYPOTHESIS_PROFILE", None)
        named: list[dict[str, Any]] = []
        if not args.no_named:
            t = time.monotonic()
            named = run_named(copy, work, env, console)
            clock.lap("named", t)
        found = None
        if not args.named_only:
            write_mutmut_config(copy, modules)
            t = time.monotonic()
            found = run_mutmut(copy, work, modules, args, env, console)
            clock.lap("mutmut", t)
        rows, survivors = build_report(copy, modules if found else [], found)
        clock.laps["total"] = round(time.monotonic() - clock.start, 1)
        report = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python", "bench/mutation.py", *(argv if argv is not None else sys.argv[1:])]),
            "source": source,
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "quick": args.quick,
            "seed": args.seed if args.quick else None,
            "mutmut_version": found["mutmut_version"] if found else None,
            "tests": [*FAST_TESTS, "-m", "not slow"],
            "hypothesis": "derandomize=True, database=None, deadline=None, phases without shrink",
            "stateful_examples": args.stateful_examples,
            "runtime_s": clock.laps,
            "modules": [asdict(r) for r in rows],
            "survivors": [asdict(s) for s in survivors],
            "named": named,
        }
        print_report(console, rows, survivors, named, args.quick)
        write_report(report, rows, survivors, named)
        console.print(f"\nreport: {OUT / 'mutation.md'} and {OUT / 'mutation.json'}; total {clock.laps['total']:.0f}s")
        if args.keep:
            console.print(f"kept the copy: {copy}")
    failed = [r.module for r in rows if not r.passed] + [n["name"] for n in named if n["status"] != "killed"]
    return 1 if failed else 0


class _workdir:
    """A temporary directory, removed at the end unless kept."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.path = Path(tempfile.mkdtemp(prefix="gpufleet-mutation-"))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
