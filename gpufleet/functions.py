"""Bring your own code: ``@gpufleet.function`` makes a Python function something any provider can run.

The function is written once against ``xp`` (the Array API: NumPy or CuPy, chosen by the provider)
and shipped as SOURCE, never as pickle: its module's file (and any ``include``d local package) in a
deterministic zip, so the same source is the same sha256 and is stored once in the object store. The
provider imports that module in its sandbox and calls the function by its entry, ``module:qualname``.

    @gpufleet.function(min_vram_mb=512, compare="rtol=1e-5", requires={"scipy": ">=1.11"})
    def saxpy_sum(xp, a: float, n: int, ctx) -> float:
        x = xp.arange(n, dtype=xp.float32)
        ctx.progress(0.5)
        return float(xp.sum(a * x + 1))

    saxpy_sum(a=2.0, n=10)                      # locally, on NumPy: what the network would return
    job = await client.map(saxpy_sum, [{"a": 2.0, "n": 10**6}, {"a": 3.0, "n": 10**6}])

Arguments are JSON, or arrays (sent as ``.npy`` objects); a local call passes them through the same
encodings as the network, and its value through the same ``encode_result``/``decode_result``, so the
two are equal.
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import math
import os
import re
import stat
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from pydantic import ValidationError

from events.errors import InvalidPayload, first_error
from events.job import JobSpec
from events.placement import bad_specifier, normalise_package
from events.types import JsonValue, ObjectRef, Resources, RetryPolicy
from events.verification import Tolerance, VerifyPolicy, result_bytes
from events.workloads import CODE_WORKLOAD, MAX_ARCHIVE_BYTES, MAX_ARCHIVE_FILES, MAX_UNPACKED_BYTES

__all__ = [
    "ArchiveTooLarge",
    "Call",
    "Function",
    "FunctionArgumentError",
    "FunctionDefinitionError",
    "build_archive",
    "compare_policy",
    "function",
]

#: Files never shipped from an ``include``d directory: byte code and compiled extensions (source
#: only), caches and anything hidden.
_SKIP_SUFFIXES = frozenset({".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib"})
_SKIP_DIRS = frozenset({"__pycache__"})
#: What every archive entry carries, whatever the machine: one date, one mode, one compression.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = (stat.S_IFREG | 0o644) << 16
_ZIP_LEVEL = 9
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Module -> what its functions ``include``, in the order they were decorated (see ``Function``).
_MODULE_INCLUDES: dict[str, list[str | Path]] = {}
_COMPARE = re.compile(r"^\s*(rtol|atol)\s*=\s*([^,\s]+)\s*(?:,\s*(rtol|atol)\s*=\s*([^,\s]+)\s*)?$")


class FunctionDefinitionError(InvalidPayload):
    """The function cannot be shipped as it is, or an option of ``@function`` is wrong; ``field``
    names which."""


class ArchiveTooLarge(FunctionDefinitionError):
    """The code archive would be over one of ``events.workloads``' limits (named in the message)."""


class FunctionArgumentError(InvalidPayload):
    """A call's arguments do not fit the function, or cannot be sent (neither JSON nor an array)."""


@dataclass(frozen=True)
class Call:
    """One call's arguments, checked: JSON ones as the network will see them, and arrays."""

    args: dict[str, JsonValue]
    arrays: dict[str, np.ndarray[Any, Any]]


def compare_policy(compare: str) -> VerifyPolicy:
    """The verification a ``compare=`` option asks for: ``tolerance`` (the network's default
    tolerance), ``exact`` (a zero tolerance), ``none`` (never verified), or ``rtol=X[,atol=Y]``."""
    text = compare.strip()
    if text == "tolerance":
        return VerifyPolicy(mode="auto")
    if text == "exact":
        return VerifyPolicy(mode="auto", tolerance=Tolerance(rtol=0.0, atol=0.0))
    if text == "none":
        return VerifyPolicy(mode="none")
    m = _COMPARE.match(text)
    if m is None or (m.group(3) is not None and m.group(3) == m.group(1)):
        raise FunctionDefinitionError(
            f"{compare!r} is not one of tolerance, exact, none, 'rtol=1e-5' or 'rtol=1e-5,atol=1e-8'",
            field="compare",
        )
    given: dict[str, float] = {}
    for key, raw in ((m.group(1), m.group(2)), (m.group(3), m.group(4))):
        if key is None:
            continue
        try:
            given[key] = float(raw)
        except ValueError:
            raise FunctionDefinitionError(f"{key}={raw!r} is not a number", field="compare") from None
    try:
        return VerifyPolicy(mode="auto", tolerance=Tolerance(**given))
    except ValidationError as e:
        raise FunctionDefinitionError(first_error(e).problem, field="compare") from e


def _packages(requires: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, spec in (requires or {}).items():
        if not isinstance(name, str) or not isinstance(spec, str):
            raise FunctionDefinitionError("each requirement is a name and a version specifier string", field="requires")
        key = normalise_package(name.strip())
        problem = bad_specifier(spec)
        if problem is not None:
            raise FunctionDefinitionError(problem, field=f"requires.{name}")
        out[key] = spec.strip()
    return out


def _retry(retry: Mapping[str, Any] | None) -> RetryPolicy:
    try:
        return RetryPolicy.model_validate_json(json.dumps(dict(retry or {})))
    except (TypeError, ValueError) as e:
        if isinstance(e, ValidationError):
            err = first_error(e)
            raise FunctionDefinitionError(err.problem, field=f"retry.{err.field}" if err.field else "retry") from e
        raise FunctionDefinitionError(f"not a mapping of numbers: {e}", field="retry") from e


def _refuse_function(fn: object) -> None:
    """Why ``fn`` cannot be shipped as source, raised; nothing when it can."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    if isinstance(fn, Function):
        raise FunctionDefinitionError(f"{name} is already a gpufleet function", field="function")
    if inspect.ismethod(fn):
        raise FunctionDefinitionError(f"{name} is a method: decorate a module-level function", field="function")
    if not inspect.isfunction(fn):
        raise FunctionDefinitionError(
            f"{name} is not a Python function (a builtin, C function or callable object): "
            "only a module-level def can be shipped as source",
            field="function",
        )
    if fn.__name__ == "<lambda>":
        raise FunctionDefinitionError("a lambda cannot be shipped: write a module-level def", field="function")
    if "<locals>" in fn.__qualname__ or fn.__closure__:
        raise FunctionDefinitionError(
            f"{fn.__qualname__} is defined inside another function (a closure): define it at module level",
            field="function",
        )
    if "." in fn.__qualname__:
        raise FunctionDefinitionError(
            f"{fn.__qualname__} is a method: decorate a module-level function", field="function"
        )
    if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise FunctionDefinitionError(
            f"{fn.__qualname__} is a coroutine or generator function: write a plain def that returns", field="function"
        )
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "xp":
        raise FunctionDefinitionError(
            f"{fn.__qualname__}'s first parameter must be named xp (the provider's array namespace)",
            field="function",
        )
    for p in params[1:]:
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise FunctionDefinitionError(
                f"{fn.__qualname__}'s parameter {p.name} is positional-only: arguments are sent by name",
                field="function",
            )
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise FunctionDefinitionError(
                f"{fn.__qualname__} takes *{p.name}: arguments are sent by name, name each one", field="function"
            )
    try:
        inspect.getsource(fn)
    except (OSError, TypeError) as e:
        raise FunctionDefinitionError(
            f"{fn.__qualname__} has no source to ship (define it in a file, not in an interactive session)",
            field="function",
        ) from e
    _module_name(fn)


def _module_name(fn: Callable[..., Any]) -> str:
    """The module the sandbox imports: a script run as ``__main__`` ships under its file's stem, so
    importing it does not run its main block."""
    if fn.__module__ != "__main__":
        return str(fn.__module__)
    file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    name = Path(file).stem
    if not _IDENT.match(name):
        raise FunctionDefinitionError(
            f"the script {Path(file).name or '(none)'} cannot be imported as a module: "
            "rename it to a Python identifier",
            field="function",
        )
    return name


def _module_file(fn: Callable[..., Any]) -> Path:
    """The source file of ``fn``'s module. Looked for only to build the archive: where the module
    is imported from an archive (the provider's sandbox), decorating it needs no file."""
    file = getattr(sys.modules.get(fn.__module__), "__file__", None)
    if not file or not str(file).endswith(".py") or not Path(file).is_file():
        raise FunctionDefinitionError(
            f"{fn.__qualname__}'s module {fn.__module__} has no .py source file to ship", field="function"
        )
    return Path(file).resolve()


def _arcname_of(module: str, path: Path) -> str:
    parts = module.split(".")
    if path.name == "__init__.py":
        return "/".join([*parts, "__init__.py"])
    return "/".join(parts) + ".py"


def _included(entry: str | Path, base: Path) -> list[tuple[str, Path]]:
    """``(arcname, file)`` for one ``include``: a file at the top of the archive, or a directory
    (a package) under its own name, without caches, byte code, compiled code or hidden files."""
    path = Path(entry).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise FunctionDefinitionError(f"{entry} does not exist (relative paths start at {base})", field="include")
    if path.is_file():
        return [(path.name, path)]
    if not path.is_dir():
        raise FunctionDefinitionError(f"{entry} is neither a file nor a directory", field="include")
    out: list[tuple[str, Path]] = []
    top = path.resolve()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or Path(f).suffix in _SKIP_SUFFIXES:
                continue
            full = Path(root) / f
            if full.is_symlink() and top not in full.resolve().parents:
                # Its target's content would go to a stranger's provider (a key under ~/.ssh, say).
                name = (Path(path.name) / full.relative_to(path)).as_posix()
                raise FunctionDefinitionError(
                    f"{name} is a symlink out of {entry} (to {full.resolve()}): copy the file in, or remove the link",
                    field="include",
                )
            if full.is_file():
                out.append(((Path(path.name) / full.relative_to(path)).as_posix(), full))
    return out


def build_archive(files: Mapping[str, bytes]) -> bytes:
    """A deterministic zip of ``files`` (arcname -> content): sorted entries, one date (1980-01-01),
    one mode, one compression level, so the same files are always the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = _ZIP_MODE
            z.writestr(info, files[name], compress_type=zipfile.ZIP_DEFLATED, compresslevel=_ZIP_LEVEL)
    data = buf.getvalue()
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ArchiveTooLarge(
            f"the code archive is {len(data)} bytes, over MAX_ARCHIVE_BYTES ({MAX_ARCHIVE_BYTES})", field="include"
        )
    return data


def _json_arg(value: Any, where: str) -> JsonValue:
    if isinstance(value, np.generic) and not isinstance(value, np.void):
        value = value.item()
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        kind = type(value).__name__
        raise FunctionArgumentError(
            f"a {kind} is neither JSON (numbers, strings, lists, dicts; no NaN) nor an array ({e})", field=where
        ) from None
    loaded: JsonValue = json.loads(text)
    return loaded


def _array_arg(value: Any, where: str) -> np.ndarray[Any, Any]:
    try:
        arr = np.asarray(value)
    except Exception as e:  # anything's __array__ may raise anything (CuPy: TypeError)
        raise FunctionArgumentError(f"cannot be read as an array: {e}", field=where) from None
    if arr.dtype.hasobject or arr.dtype.kind in "OV":
        raise FunctionArgumentError(f"an array of dtype {arr.dtype} cannot be sent without pickle", field=where)
    return arr


class Function:
    """A function that runs on any provider's GPU (``@gpufleet.function``), or here, when called."""

    __wrapped__: Callable[..., Any]
    __name__: str
    __qualname__: str

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        backend: Literal["any", "cuda"] = "any",
        min_vram_mb: int = 0,
        min_compute_capability: float = 0.0,
        requires: Mapping[str, str] | None = None,
        compare: str = "tolerance",
        include: Sequence[str | Path] = (),
        timeout_s: float = 600.0,
        expected_s: float = 0.0,
        max_price_micros: int | None = None,
        priority: int = 5,
        retry: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        _refuse_function(fn)
        functools.update_wrapper(self, fn)
        self.module = _module_name(fn)
        self.entry = f"{self.module}:{fn.__qualname__}"
        if isinstance(include, str | Path):
            include = [include]
        self.include = tuple(include)
        # The sandbox imports the whole module, so every function in it ships what any of them
        # includes (a module-level import of an included package is then found by all of them).
        _MODULE_INCLUDES.setdefault(self.module, []).extend(self.include)
        try:
            self.expected_s = float(expected_s)
        except (TypeError, ValueError):
            raise FunctionDefinitionError(f"{expected_s!r} is not a number", field="expected_s") from None
        if not (math.isfinite(self.expected_s) and 0.0 <= self.expected_s <= 86400.0):
            raise FunctionDefinitionError(f"{expected_s!r} must be 0 to 86400 seconds", field="expected_s")
        verify = compare_policy(compare)
        try:
            resources = Resources(
                backend=backend,
                min_vram_mb=min_vram_mb,
                min_compute_capability=min_compute_capability,
                packages=_packages(requires),
            )
            #: Every option but the calls, checked now: ``spec`` adds the calls to a copy.
            self.template = JobSpec(
                workload=CODE_WORKLOAD,
                resources=resources,
                verify=verify,
                timeout_s=timeout_s,
                max_price_micros=max_price_micros,
                priority=priority,
                retry=_retry(retry),
                labels=dict(labels or {}),
            )
        except ValidationError as e:
            err = first_error(e)
            field = "requires" if (err.field or "").startswith("packages") else err.field
            raise FunctionDefinitionError(err.problem, field=field) from e
        sig = inspect.signature(fn)
        self._params = [p for p in list(sig.parameters.values())[1:] if p.name != "ctx"]
        self._call_sig = sig.replace(parameters=self._params)
        self._archive: tuple[bytes, str] | None = None

    def __repr__(self) -> str:
        return f"<gpufleet.function {self.entry}>"

    # ---- the code --------------------------------------------------------------------------------

    def archive(self) -> tuple[bytes, str]:
        """The code archive (a deterministic zip: the function's module source, and the ``include``d
        files) and the entry the sandbox calls (``module:qualname``). Built once, from the files as
        they are at the first call; ``ArchiveTooLarge`` names the limit it would break."""
        if self._archive is None:
            source = _module_file(self.__wrapped__)
            found: list[tuple[str, Path]] = [(_arcname_of(self.module, source), source)]
            for entry in dict.fromkeys(_MODULE_INCLUDES.get(self.module, self.include)):
                found.extend(_included(entry, source.parent))
            if len(found) > MAX_ARCHIVE_FILES:
                raise ArchiveTooLarge(
                    f"{len(found)} files, over MAX_ARCHIVE_FILES ({MAX_ARCHIVE_FILES})", field="include"
                )
            total = sum(path.stat().st_size for _, path in found)
            if total > MAX_UNPACKED_BYTES:
                raise ArchiveTooLarge(
                    f"the files are {total} bytes, over MAX_UNPACKED_BYTES ({MAX_UNPACKED_BYTES})", field="include"
                )
            files: dict[str, bytes] = {}
            for arcname, path in found:
                data = path.read_bytes()
                if files.get(arcname, data) != data:
                    raise FunctionDefinitionError(f"two different files would ship as {arcname}", field="include")
                files[arcname] = data
            self._archive = (build_archive(files), self.entry)
        return self._archive

    # ---- the calls -------------------------------------------------------------------------------

    def bind(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *, where: str = "call") -> Call:
        """One call's arguments (positional ones after ``xp``, and by name), checked: each names a
        parameter, and is JSON (as the network will see it: a tuple arrives as a list) or an array.
        ``FunctionArgumentError`` names the argument otherwise."""
        kwargs = dict(kwargs or {})
        reserved = sorted({"xp", "ctx"} & set(kwargs))
        if reserved:
            raise FunctionArgumentError(f"{reserved[0]} is passed by the provider, not by a call", field=where)
        try:
            bound = self._call_sig.bind(*args, **kwargs)
        except TypeError as e:
            raise FunctionArgumentError(f"{self.__wrapped__.__qualname__}: {e}", field=where) from None
        named: dict[str, Any] = {}
        for key, value in bound.arguments.items():
            param = self._call_sig.parameters[key]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:
                named[key] = value
        out_args: dict[str, JsonValue] = {}
        out_arrays: dict[str, np.ndarray[Any, Any]] = {}
        for key, value in named.items():
            field = f"{where}.{key}"
            if not _IDENT.match(key):
                raise FunctionArgumentError("an argument's name must be a Python identifier", field=field)
            if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and not isinstance(value, np.generic)):
                out_arrays[key] = _array_arg(value, field)
            else:
                out_args[key] = _json_arg(value, field)
        return Call(out_args, out_arrays)

    def bind_all(self, calls: Iterable[Mapping[str, Any] | Sequence[Any]]) -> list[Call]:
        """Every call of a ``map`` checked (``calls[i]`` names the one at fault): a mapping is by
        name, a list or tuple by position after ``xp``."""
        out: list[Call] = []
        for i, c in enumerate(calls):
            where = f"calls[{i}]"
            if isinstance(c, Mapping):
                out.append(self.bind((), c, where=where))
            elif isinstance(c, Sequence) and not isinstance(c, str | bytes | bytearray):
                out.append(self.bind(c, None, where=where))
            else:
                raise FunctionArgumentError(
                    f"a {type(c).__name__}: each call is a dict of arguments by name, or a list by position",
                    field=where,
                )
        if not out:
            raise FunctionArgumentError("no calls: map needs at least one", field="calls")
        return out

    def spec(
        self,
        code: ObjectRef,
        calls: Sequence[tuple[Call, Mapping[str, ObjectRef]]],
        *,
        seed: int = 0,
    ) -> JobSpec:
        """The job running ``calls`` (each with its arrays' object references), one task each, in
        order, with the code archive ``code``."""
        _, entry = self.archive()
        params: dict[str, JsonValue] = {"code": code.model_dump(mode="json"), "entry": entry, "seed": seed}
        if self.expected_s:
            params["expected_s"] = self.expected_s
        per_task: list[dict[str, JsonValue]] = []
        for call, refs in calls:
            task: dict[str, JsonValue] = {"args": dict(call.args)}
            if refs:
                task["arrays"] = {k: refs[k].model_dump(mode="json") for k in sorted(refs)}
            per_task.append(task)
        doc = self.template.model_dump(mode="json")
        doc.update(params=params, split={"kind": "params", "params": per_task})
        try:
            return JobSpec.model_validate_json(json.dumps(doc))
        except ValidationError as e:
            err = first_error(e)
            raise FunctionArgumentError(err.problem, field=err.field) from e

    # ---- here ------------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run it here, on NumPy's Array API namespace: the value the network would return for the
        same arguments (task 0 of a job with seed 0; see :meth:`local`)."""
        return self.local(self.bind(args, kwargs))

    def local(self, call: Call, *, seed: int = 0, index: int = 0) -> Any:
        """Run ``call`` here as task ``index`` of a job seeded ``seed``: its arguments and its value
        through the same encodings as on the network (JSON, ``.npy``, ``encode_result`` and
        ``decode_result``), so the value is the network's."""
        from gpu_runtime.backend import select_backend
        from gpu_runtime.usercode import (
            FunctionContext,
            call_function,
            decode_result,
            encode_result,
            load_npy,
            save_npy,
        )
        from gpu_runtime.workloads.context import load_arrays

        xp = select_backend("cpu").array_api()
        ctx = FunctionContext(xp, seed=seed, index=index, task_id="local")
        args = json.loads(json.dumps(call.args))
        arrays = {k: load_npy(save_npy(v)) for k, v in call.arrays.items()}
        value = call_function(self.__wrapped__, xp, args, arrays, ctx)
        summary, blob = encode_result(value)
        return decode_result(json.loads(result_bytes(summary)), load_arrays(blob) if blob is not None else {})


@overload
def function(fn: Callable[..., Any], /) -> Function: ...


@overload
def function(
    fn: None = None,
    /,
    *,
    backend: Literal["any", "cuda"] = "any",
    min_vram_mb: int = 0,
    min_compute_capability: float = 0.0,
    requires: Mapping[str, str] | None = None,
    compare: str = "tolerance",
    include: Sequence[str | Path] = (),
    timeout_s: float = 600.0,
    expected_s: float = 0.0,
    max_price_micros: int | None = None,
    priority: int = 5,
    retry: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Function]: ...


def function(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    backend: Literal["any", "cuda"] = "any",
    min_vram_mb: int = 0,
    min_compute_capability: float = 0.0,
    requires: Mapping[str, str] | None = None,
    compare: str = "tolerance",
    include: Sequence[str | Path] = (),
    timeout_s: float = 600.0,
    expected_s: float = 0.0,
    max_price_micros: int | None = None,
    priority: int = 5,
    retry: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Function | Callable[[Callable[..., Any]], Function]:
    """Make ``fn`` runnable on any provider: ``@gpufleet.function`` or ``@gpufleet.function(...)``.

    ``fn`` is a module-level ``def`` whose first parameter is ``xp`` (the provider's Array API
    namespace) and which may take ``ctx`` (progress, checkpoints, seeded random numbers). Options:
    the device it needs (``backend``, ``min_vram_mb``, ``min_compute_capability``), the packages and
    Python it needs (``requires={"scipy": ">=1.11", "python": ">=3.11"}``: matched against what
    providers have, never installed), how results are verified (``compare``: ``tolerance``,
    ``exact``, ``none`` or ``"rtol=1e-5,atol=1e-8"``), local files or packages shipped with its module
    (``include``, relative to its module's directory), and the job's ``timeout_s`` (per call),
    ``expected_s`` (a guess of one call's seconds), ``max_price_micros``, ``priority``, ``retry`` and
    ``labels``. Every problem is a ``FunctionDefinitionError`` naming the option, raised here.
    """

    def wrap(f: Callable[..., Any]) -> Function:
        return Function(
            f,
            backend=backend,
            min_vram_mb=min_vram_mb,
            min_compute_capability=min_compute_capability,
            requires=requires,
            compare=compare,
            include=include,
            timeout_s=timeout_s,
            expected_s=expected_s,
            max_price_micros=max_price_micros,
            priority=priority,
            retry=retry,
            labels=labels,
        )

    return wrap if fn is None else wrap(fn)
