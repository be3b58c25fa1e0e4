"""``@gpufleet.function``: refusals, the deterministic code archive, the local call, the job ``map`` builds."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import gpufleet
from actors.job import validate_spec
from events.errors import InvalidPayload
from events.job import JobSubmitted
from events.store.blobs import ObjectNotFound
from events.subjects import OBJECTS_STREAM, object_name
from events.types import ObjectRef
from events.verification import Tolerance, VerifyPolicy
from events.workloads import FunctionParams, validate_params
from gpufleet.functions import (
    ArchiveTooLarge,
    Call,
    Function,
    FunctionArgumentError,
    FunctionDefinitionError,
    compare_policy,
)

ROOT = Path(__file__).resolve().parents[2]

SAXPY = '''
import gpufleet


@gpufleet.function(min_vram_mb=512, compare="rtol=1e-5", requires={"SciPy": ">=1.0", "python": ">=3.11"})
def saxpy_sum(xp, a: float, n: int, ctx) -> float:
    x = xp.arange(n, dtype=xp.float32)
    ctx.progress(0.5)
    return float(xp.sum(a * x + 1))


@gpufleet.function
def shapes(xp, m, scale=2.0, meta=None):
    """Arrays in, arrays out, nested."""
    y = m * scale
    return {"y": y, "stats": [float(xp.sum(y)), {"n": int(m.shape[0])}], "meta": meta}
'''


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Callable[[str, str], ModuleType]]:
    """Write a module under ``tmp_path`` (``pkg/mod.py`` for ``pkg.mod``) and import it for real."""
    sys.path.insert(0, str(tmp_path))

    def make(name: str, source: str) -> ModuleType:
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield make
    sys.path.remove(str(tmp_path))
    for name, loaded in list(sys.modules.items()):
        if str(getattr(loaded, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def _names(archive: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(archive)).namelist()


def _ref(data: bytes, owner: str = "alice") -> ObjectRef:
    digest = hashlib.sha256(data).hexdigest()
    return ObjectRef(bucket=OBJECTS_STREAM, name=object_name("submitter", owner, digest), sha256=digest, size=len(data))


# ---- the archive ---------------------------------------------------------------------------------


def test_the_archive_is_the_same_bytes_in_two_processes(
    modules: Callable[[str, str], ModuleType], tmp_path: Path
) -> None:
    mod = modules("detpkg.kernels", SAXPY)
    fn = mod.saxpy_sum
    data, entry = fn.archive()
    assert entry == "detpkg.kernels:saxpy_sum"
    assert _names(data) == ["detpkg/kernels.py"]
    z = zipfile.ZipFile(io.BytesIO(data))
    info = z.infolist()[0]
    assert info.date_time == (1980, 1, 1, 0, 0, 0)
    assert (info.external_attr >> 16) & 0o777 == 0o644
    assert z.read("detpkg/kernels.py") == (tmp_path / "detpkg" / "kernels.py").read_bytes()
    # Another process, another import, the same file: the same bytes (content addressing).
    code = (
        "import sys, hashlib; sys.path.insert(0, sys.argv[1]); import detpkg.kernels as m;"
        "print(hashlib.sha256(m.saxpy_sum.archive()[0]).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == hashlib.sha256(data).hexdigest()
    # Both functions of one module ship the same archive; only the entry differs.
    assert mod.shapes.archive() == (data, "detpkg.kernels:shapes")


def test_a_script_run_as_main_ships_under_its_stem_and_importing_it_runs_no_main_block(tmp_path: Path) -> None:
    script = tmp_path / "own_script.py"
    script.write_text(
        SAXPY
        + textwrap.dedent(
            """
            if __name__ == "__main__":
                import sys
                data, entry = saxpy_sum.archive()
                open(sys.argv[1], "wb").write(data)
                print(entry)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "code.zip")], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "own_script:saxpy_sum"
    assert _names((tmp_path / "code.zip").read_bytes()) == ["own_script.py"]
    # What the sandbox does: import the module from the archive, unwrap the decorated object.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import own_script as m;"
        "print(m.saxpy_sum.__wrapped__.__qualname__, m.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "code.zip")], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["saxpy_sum", "own_script"]  # and nothing printed by the main block


def test_include_ships_a_local_package_without_caches_byte_code_or_hidden_files(
    modules: Callable[[str, str], ModuleType], tmp_path: Path
) -> None:
    lib = tmp_path / "mylib"
    (lib / "data").mkdir(parents=True)
    (lib / "__pycache__").mkdir()
    (lib / "__init__.py").write_text("from mylib.helper import twice\n")
    (lib / "helper.py").write_text("def twice(x):\n    return 2 * x\n")
    (lib / "data" / "table.json").write_text('{"k": 1}\n')
    (lib / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"\0" * 16)
    (lib / "__pycache__" / "stale.json").write_text("{}")
    (lib / ".secret").write_text("token")
    (lib / "fast.so").write_bytes(b"\x7fELF")
    (tmp_path / "notes.txt").write_text("shipped at the top\n")
    mod = modules(
        "usesinc",
        """
        import gpufleet
        from mylib import twice


        @gpufleet.function(include=["mylib", "notes.txt"])
        def doubled(xp, v):
            return twice(v)
        """,
    )
    data, entry = mod.doubled.archive()
    assert entry == "usesinc:doubled"
    assert _names(data) == [
        "mylib/__init__.py",
        "mylib/data/table.json",
        "mylib/helper.py",
        "notes.txt",
        "usesinc.py",
    ]
    # The archive alone is enough to import and call it (what the sandbox does), in a fresh process.
    (tmp_path / "code.zip").write_bytes(data)
    code = "import sys; sys.path[:0] = [sys.argv[1]]; import usesinc;print(usesinc.doubled.__wrapped__(None, 21))"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "code.zip")], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "42"


def test_an_archive_over_a_limit_is_refused_naming_it(
    modules: Callable[[str, str], ModuleType], tmp_path: Path
) -> None:
    many = tmp_path / "many"
    many.mkdir()
    for i in range(1001):
        (many / f"m{i}.py").write_text("")
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    with open(sparse / "big.bin", "wb") as f:
        f.truncate(65 << 20)  # 65 MiB on paper, nothing on disk: refused before it is read
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    (noisy / "random.bin").write_bytes(os.urandom(9 << 20))  # does not compress: over 8 MiB zipped
    # One module each: a module's functions all ship what any of them includes.
    def one(name: str, include: str) -> Any:
        source = f"""
        import gpufleet


        @gpufleet.function(include=["{include}"])
        def {name}(xp):
            return 0
        """
        return getattr(modules(f"limited_{name}", source), name)

    for fn, limit in (
        (one("files", "many"), "MAX_ARCHIVE_FILES"),
        (one("unpacked", "sparse"), "MAX_UNPACKED_BYTES"),
        (one("zipped", "noisy"), "MAX_ARCHIVE_BYTES"),
    ):
        with pytest.raises(ArchiveTooLarge, match=limit) as info:
            fn.archive()
        assert info.value.field == "include" and "\n" not in str(info.value)
    with pytest.raises(FunctionDefinitionError, match="does not exist") as missing:
        one("missing", "absent").archive()
    assert missing.value.field == "include"


def test_every_function_of_a_module_ships_what_any_of_them_includes(
    modules: Callable[[str, str], ModuleType], tmp_path: Path
) -> None:
    lib = tmp_path / "shared_lib"
    lib.mkdir()
    (lib / "__init__.py").write_text("TWO = 2\n")
    mod = modules(
        "uses_lib",
        """
        import gpufleet
        from shared_lib import TWO


        @gpufleet.function
        def plain(xp):
            return TWO


        @gpufleet.function(include=["shared_lib"])
        def fancy(xp):
            return TWO * 2
        """,
    )
    # plain declared nothing, but the module imports shared_lib at its top: the sandbox, importing
    # the module for plain, must find it. Both functions ship one and the same archive.
    assert mod.plain.archive()[0] == mod.fancy.archive()[0]
    with zipfile.ZipFile(io.BytesIO(mod.plain.archive()[0])) as z:
        assert "shared_lib/__init__.py" in z.namelist()


# ---- refusals at decoration time ------------------------------------------------------------------


def _closure() -> Callable[..., Any]:
    k = 2

    def inner(xp: Any, a: float) -> float:
        return a * k

    return inner


class _Holder:
    def method(self, xp: Any) -> int:
        return 0


def _no_xp(a: float) -> float:
    return a


def _xp_second(a: float, xp: Any) -> float:
    return a


def _fine(xp: Any, a: float) -> float:
    return a


async def _coroutine(xp: Any) -> int:
    return 0


def _positional_only(xp: Any, a: float, /) -> float:
    return a


def _star_args(xp: Any, *a: float) -> float:
    return 0.0


_no_source: dict[str, Any] = {}
exec(compile("def typed_in(xp):\n    return 1\n", "<typed in>", "exec"), _no_source)


@pytest.mark.parametrize(
    ("fn", "options", "field", "says"),
    [
        (lambda xp: 0, {}, "function", "lambda"),
        (_closure(), {}, "function", "inside another function"),
        (_Holder().method, {}, "function", "method"),
        (_Holder.method, {}, "function", "method"),
        (len, {}, "function", "not a Python function"),
        (np.sum, {}, "function", "not a Python function"),
        (_no_xp, {}, "function", "first parameter must be named xp"),
        (_xp_second, {}, "function", "first parameter must be named xp"),
        (_coroutine, {}, "function", "coroutine"),
        (_positional_only, {}, "function", "positional-only"),
        (_star_args, {}, "function", r"\*a"),
        (_no_source["typed_in"], {}, "function", "source"),
        (_fine, {"requires": {"scipy": ">=1.x"}}, "requires.scipy", "not a version specifier"),
        (_fine, {"requires": {"bad name!": ""}}, "requires", ""),
        (_fine, {"compare": "loose"}, "compare", "not one of tolerance"),
        (_fine, {"compare": "rtol=abc"}, "compare", "not a number"),
        (_fine, {"compare": "rtol=2"}, "compare", ""),
        (_fine, {"backend": "tpu"}, "backend", ""),
        (_fine, {"min_vram_mb": -1}, "min_vram_mb", ""),
        (_fine, {"timeout_s": 0}, "timeout_s", ""),
        (_fine, {"priority": 11}, "priority", ""),
        (_fine, {"retry": {"max_attempts": 0}}, "retry.max_attempts", ""),
        (_fine, {"expected_s": -1.0}, "expected_s", ""),
    ],
)
def test_what_cannot_be_shipped_is_refused_when_decorated(
    fn: Any, options: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(FunctionDefinitionError, match=says or None) as info:
        gpufleet.function(**options)(fn)
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_a_function_is_decorated_bare_or_with_options_and_keeps_its_identity() -> None:
    bare = gpufleet.function(_fine)
    assert isinstance(bare, Function) and bare.__wrapped__ is _fine
    assert bare.__name__ == "_fine" and bare.__module__ == __name__
    assert bare.entry == f"{__name__}:_fine"
    with pytest.raises(FunctionDefinitionError, match="already"):
        gpufleet.function(bare)


@pytest.mark.parametrize(
    ("compare", "policy"),
    [
        ("tolerance", VerifyPolicy(mode="auto")),
        ("exact", VerifyPolicy(mode="auto", tolerance=Tolerance(rtol=0.0, atol=0.0))),
        ("none", VerifyPolicy(mode="none")),
        ("rtol=1e-5", VerifyPolicy(mode="auto", tolerance=Tolerance(rtol=1e-5))),
        (" rtol=1e-5, atol=1e-8 ", VerifyPolicy(mode="auto", tolerance=Tolerance(rtol=1e-5, atol=1e-8))),
        ("atol=0.5", VerifyPolicy(mode="auto", tolerance=Tolerance(atol=0.5))),
    ],
)
def test_compare_is_the_jobs_verification_policy(compare: str, policy: VerifyPolicy) -> None:
    assert compare_policy(compare) == policy
    assert gpufleet.function(compare=compare)(_fine).template.verify == policy


def test_compare_refuses_one_tolerance_twice() -> None:
    with pytest.raises(FunctionDefinitionError, match="not one of"):
        compare_policy("rtol=1e-5,rtol=1e-6")


# ---- the job map builds -----------------------------------------------------------------------------


def _spec_of(fn: Function, calls: list[Any], seed: int = 0) -> Any:
    """What ``Client.map`` submits for ``calls``, with the references it computes before uploading."""
    bound = fn.bind_all(calls)
    from gpu_runtime.usercode import save_npy

    code = _ref(fn.archive()[0])
    return fn.spec(code, [(c, {k: _ref(save_npy(a)) for k, a in c.arrays.items()}) for c in bound], seed=seed)


def test_map_builds_one_valid_job_of_one_task_per_call(modules: Callable[[str, str], ModuleType]) -> None:
    mod = modules("mapped", SAXPY)
    m = np.arange(6, dtype=np.float64).reshape(3, 2)
    spec = _spec_of(mod.shapes, [{"m": m}, [m, 3.0], {"m": m.copy(), "meta": ("a", 1)}], seed=7)
    assert validate_spec(spec, datetime.now(UTC)) is None
    assert spec.workload == "function" and spec.task_count() == 3
    data, entry = mod.shapes.archive()
    tasks: list[FunctionParams] = []
    for i in range(3):
        t = validate_params("function", spec.task_params(i))
        assert isinstance(t, FunctionParams)
        tasks.append(t)
        assert t.code.sha256 == hashlib.sha256(data).hexdigest() and t.entry == entry == "mapped:shapes"
        assert t.seed == 7 and set(t.arrays) == {"m"}
    assert tasks[0].arrays["m"] == tasks[1].arrays["m"] == tasks[2].arrays["m"]  # one object for equal arrays
    assert [t.args for t in tasks] == [{}, {"scale": 3.0}, {"meta": ["a", 1]}]

    spec = _spec_of(mod.saxpy_sum, [{"a": 2.0, "n": 10}])
    assert validate_spec(spec, datetime.now(UTC)) is None
    assert spec.resources.min_vram_mb == 512
    assert spec.resources.packages == {"scipy": ">=1.0", "python": ">=3.11"}
    assert spec.verify == VerifyPolicy(mode="auto", tolerance=Tolerance(rtol=1e-5))
    assert spec.split.kind == "params" and spec.task_params(0)["args"] == {"a": 2.0, "n": 10}


@pytest.mark.parametrize(
    ("calls", "field", "says"),
    [
        ([{"a": 1.0, "n": 1, "b": 2}], "calls[0]", "unexpected keyword argument 'b'"),
        ([{"a": 1.0}], "calls[0]", "missing a required argument: 'n'"),
        ([[1.0, 2, 3]], "calls[0]", "too many positional arguments"),
        ([{"a": {1, 2}, "n": 1}], "calls[0].a", "neither JSON"),
        ([{"a": float("nan"), "n": 1}], "calls[0].a", "neither JSON"),
        ([{"a": np.array([object()]), "n": 1}], "calls[0].a", "without pickle"),
        ([{"a": 1.0, "n": 1, "ctx": 0}], "calls[0]", "passed by the provider"),
        ([{"a": 1.0, "n": 1}, "a=1"], "calls[1]", "each call is a dict"),
        ([], "calls", "no calls"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_uploaded(
    modules: Callable[[str, str], ModuleType], calls: list[Any], field: str, says: str
) -> None:
    mod = modules("badargs", SAXPY)
    with pytest.raises(FunctionArgumentError, match=says) as info:
        mod.saxpy_sum.bind_all(calls)
    assert info.value.field == field and "\n" not in str(info.value)


def test_a_spec_the_network_would_refuse_is_refused_here(modules: Callable[[str, str], ModuleType]) -> None:
    mod = modules("badspec", SAXPY)
    with pytest.raises(InvalidPayload) as info:
        spec = _spec_of(mod.saxpy_sum, [{"a": 1.0, "n": 1}], seed=-1)
        raise validate_spec(spec, datetime.now(UTC)) or AssertionError("accepted")
    assert info.value.field == "params.seed"


def test_numpy_scalars_are_json_and_tuples_arrive_as_lists(modules: Callable[[str, str], ModuleType]) -> None:
    mod = modules("scalars", SAXPY)
    call = mod.shapes.bind((np.ones(2),), {"scale": np.float32(1.5), "meta": (1, (2, 3))})
    assert call == Call(args={"scale": 1.5, "meta": [1, [2, 3]]}, arrays=call.arrays)
    assert json.dumps(call.args)


# ---- the local call ---------------------------------------------------------------------------------

LOCAL = """
import gpufleet


@gpufleet.function
def saxpy_sum(xp, a: float, n: int, ctx) -> float:
    x = xp.arange(n, dtype=xp.float32)
    ctx.progress(0.5)
    return float(xp.sum(a * x + 1))


@gpufleet.function(compare="exact")
def shapes(xp, m, scale=2.0, meta=None):
    y = m * scale
    return {"y": y, "stats": (xp.sum(y), {"n": m.shape[0], "ns": xp.__name__}), "meta": meta}


@gpufleet.function
def seeded(xp, n: int, ctx):
    return {"u": ctx.uniform(n), "seed": ctx.seed, "index": ctx.index}


@gpufleet.function
def mutates(xp, items: list):
    items.append("mine")
    return items
"""


def test_a_local_call_runs_on_numpys_array_api_and_gives_the_networks_value(
    modules: Callable[[str, str], ModuleType],
) -> None:
    mod = modules("localcalls", LOCAL)
    assert mod.saxpy_sum(a=2.0, n=10) == 2.0 * 45 + 10
    assert mod.saxpy_sum(2.0, 10) == 100.0  # positionally, after xp
    m = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = mod.shapes(m, meta=("tag", 1))
    # The value as the network's summary decodes: a tuple arrives as a list, NumPy scalars as numbers,
    # arrays as NumPy arrays of the same dtype, and xp is array-api-compat's NumPy namespace.
    assert out["stats"] == [30.0, {"n": 3, "ns": "array_api_compat.numpy"}]
    assert out["meta"] == ["tag", 1]
    assert out["y"].dtype == np.float32 and np.array_equal(out["y"], m * 2)
    assert type(out["stats"][0]) is float
    first = mod.seeded(4)
    assert first["seed"] == 0 and first["index"] == 0 and first["u"].shape == (4,)
    again = mod.seeded.local(mod.seeded.bind((4,)), seed=0)
    assert np.array_equal(first["u"], again["u"])  # the same seed, the same bits
    assert not np.array_equal(first["u"], mod.seeded.local(mod.seeded.bind((4,)), seed=1)["u"])
    items = ["a"]
    assert mod.mutates(items) == ["a", "mine"] and items == ["a"]  # the call sees a copy, as a provider does
    call = mod.mutates.bind((items,))
    assert mod.mutates.local(call) == mod.mutates.local(call) == ["a", "mine"]


def test_a_local_call_refuses_what_the_network_would(modules: Callable[[str, str], ModuleType]) -> None:
    mod = modules("localrefusals", LOCAL)
    with pytest.raises(FunctionArgumentError, match="missing a required argument"):
        mod.saxpy_sum(a=1.0)
    with pytest.raises(FunctionArgumentError, match="passed by the provider"):
        mod.saxpy_sum(a=1.0, n=1, xp=np)


# ---- through a real network -----------------------------------------------------------------------

#: What a provider's worker does with a code task (``gpu_runtime.usercode``), in a process of its own
#: (so the submitter's modules in this one are not the ones it imports): unpack, load, call, encode.
_WORKER = """
import json, sys, tempfile
from pathlib import Path
from gpu_runtime.backend import select_backend
from gpu_runtime.usercode import (FunctionContext, as_failure, call_function, encode_result, load_function,
                                  load_npy, unpack_archive)
job = json.load(sys.stdin)
root = Path(tempfile.mkdtemp())
unpack_archive(Path(job["code"]).read_bytes(), root)
xp = select_backend("cpu").array_api()
arrays = {k: load_npy(Path(p).read_bytes()) for k, p in job["arrays"].items()}
try:
    fn = load_function(root, job["entry"])
    ctx = FunctionContext(xp, seed=job["seed"], index=job["index"], task_id=job["task"])
    summary, blob = encode_result(call_function(fn, xp, job["args"], arrays, ctx))
except Exception as e:
    failure = as_failure(e, root)
    print(json.dumps({"failed": failure.reason, "message": failure.message}))
    raise SystemExit(0)
if blob is not None:
    Path(job["out"]).write_bytes(blob)
print(json.dumps({"summary": summary, "blob": blob is not None}))
"""


def _code_provider(nc: Any, provider_id: str, workdir: Path) -> Any:
    """A simulated provider (``gpufleet.sim``: the real provider protocol) that runs code tasks as a
    runtime does, without its sandbox: the lead's end-to-end test runs the real one."""
    from events.intake import FailedReport
    from events.store.blobs import BlobStore
    from events.subjects import job_owner, report_subject
    from events.types import Capabilities
    from gpufleet.sim import SimulatedProvider, inline_result

    class CodeProvider(SimulatedProvider):
        @property
        def capabilities(self) -> Capabilities:
            return super().capabilities.model_copy(update={"workloads": ("function",), "code_from": ("*",)})

        async def _run(self, lease: Any) -> None:
            blobs = BlobStore(self.nc, "provider", self.provider_id, self.topology)
            p = FunctionParams.model_validate_json(json.dumps(lease.params))
            here = workdir / lease.lease_id
            here.mkdir()
            (here / "code.zip").write_bytes(await blobs.get(p.code))
            arrays = {}
            for k, ref in p.arrays.items():
                (here / f"{k}.npy").write_bytes(await blobs.get(ref))
                arrays[k] = str(here / f"{k}.npy")
            job = {
                "code": str(here / "code.zip"),
                "entry": p.entry,
                "args": p.args,
                "arrays": arrays,
                "seed": p.seed,
                "index": int(lease.task_id.rsplit(".", 1)[1]),
                "task": lease.task_id,
                "out": str(here / "arrays.npz"),
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WORKER, stdin=PIPE, stdout=PIPE, cwd=ROOT
            )
            out, _ = await proc.communicate(json.dumps(job).encode())
            done = json.loads(out)
            subject = report_subject(self.provider_id, lease.task_id)
            if "failed" in done:
                body = FailedReport(lease_id=lease.lease_id, reason=done["failed"], message=done["message"])
                await self.nc.jetstream().publish(subject, body.model_dump_json().encode())
                return
            summary = done["summary"]
            if done["blob"]:
                ref = await blobs.put((here / "arrays.npz").read_bytes(), for_submitter=job_owner(lease.job_id))
                summary["arrays"] = ref.model_dump(mode="json")
            from events.intake import CompletedReport

            report = CompletedReport(lease_id=lease.lease_id, result=inline_result(summary), gpu_ms=1)
            await self.nc.jetstream().publish(subject, report.model_dump_json().encode())

    return CodeProvider(nc, provider_id, heartbeat_s=0.2, slots=2)


NETWORKED = """
import gpufleet


@gpufleet.function(compare="none")
def saxpy_sum(xp, a: float, n: int, ctx) -> float:
    x = xp.arange(n, dtype=xp.float32)
    ctx.progress(0.5)
    return float(xp.sum(a * x + 1))


@gpufleet.function(compare="none")
def scaled(xp, m, by: float, ctx):
    return {"m": m * by, "u": ctx.uniform(3), "index": ctx.index}


@gpufleet.function(compare="none", retry={"max_attempts": 1})
def broken(xp, n: int):
    return helper(n)


def helper(n):
    raise ValueError(f"n={n} is not welcome here" + "." * 1750 + "the end")
"""


async def test_map_uploads_once_submits_one_job_and_decodes_what_a_provider_returns(
    modules: Callable[[str, str], ModuleType], tmp_path: Path, nats_server: Any
) -> None:
    from events.store.connection import connect_nats
    from gpufleet.client import FunctionJob
    from gpufleet.errors import JobFailedError
    from tests.conftest import unique
    from tests.integration.orchestra import orchestrated

    mod = modules(unique("netmod"), NETWORKED)
    who = unique("fnalice")
    creds = nats_server.creds("submitter", who, tmp_path / "alice.creds")
    pid = unique("fnp")
    async with orchestrated(nats_server) as log:
        nc = await connect_nats(nats_server.access("provider", pid), name="code-provider")
        provider = await _code_provider(nc, pid, tmp_path).start()
        try:
            async with await gpufleet.Client.connect(nats_server.url, creds=creds) as client:
                m = np.arange(4, dtype=np.float32).reshape(2, 2)
                job = await client.map(mod.saxpy_sum, [{"a": 2.0, "n": 1000}, [3.0, 1000]])
                assert isinstance(job, FunctionJob)
                assert await job.result(timeout=60) == [mod.saxpy_sum(a=2.0, n=1000), mod.saxpy_sum(3.0, 1000)]
                assert [r.index for r in await job.task_results()] == [0, 1]
                assert await client.function_job(job.name).result() == [2.0 * 499500 + 1000, 3.0 * 499500 + 1000]
                # Arrays in and out; two calls with equal arrays share one object.
                arrays = await client.map(mod.scaled, [{"m": m, "by": 2.0}, {"m": m.copy(), "by": 3.0}], seed=5)
                got = await arrays.result(timeout=60)
                for i, by in enumerate((2.0, 3.0)):
                    here = mod.scaled.local(mod.scaled.bind((m, by)), seed=5, index=i)
                    assert got[i]["index"] == i and np.array_equal(got[i]["m"], here["m"])
                    assert got[i]["m"].dtype == np.float32 and np.array_equal(got[i]["u"], here["u"])
                # One code object for the module's two functions, one array object for equal arrays.
                specs = {}
                for j in (job, arrays):
                    submitted = (await log.read_stream(f"job.{j.id}"))[0].data
                    assert isinstance(submitted, JobSubmitted)
                    specs[j.id] = submitted.spec
                assert specs[job.id].params["code"] == specs[arrays.id].params["code"]
                code = FunctionParams.model_validate_json(json.dumps(specs[job.id].task_params(0))).code
                assert code.sha256 == hashlib.sha256(mod.scaled.archive()[0]).hexdigest()
                first, second = (specs[arrays.id].task_params(i)["arrays"] for i in (0, 1))
                assert first == second
                # A job the network would refuse is refused before anything is uploaded.
                refused = modules(unique("refused"), NETWORKED + f"# {unique('unique content')}\n")
                with pytest.raises(InvalidPayload) as bad:
                    await client.map(refused.saxpy_sum, [{"a": 1.0, "n": 1}], seed=-1)
                assert bad.value.field == "params.seed"
                with pytest.raises(ObjectNotFound):
                    await client.download(_ref(refused.saxpy_sum.archive()[0], who))
                # The function's own exception comes back with its own traceback.
                with pytest.raises(JobFailedError) as failed:
                    await client.call(mod.broken, 7)
                # All of it: the job's own reason quotes it cut to 2000 characters, losing its end.
                text = str(failed.value)
                assert "function_error" in text and "ValueError: n=7 is not welcome here" in text
                assert "in helper" in text and "raise ValueError" in text and text.endswith("the end")
        finally:
            await provider.kill()
            await nc.close()
