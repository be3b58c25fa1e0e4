"""A submitter's own function: unpack its source archive, load it, call it, encode what it returns.

Pure and importable anywhere (no subprocesses, no CuPy): the provider's sandbox runs a function
through exactly these steps, and the client's local call does too, so a local call gives what the
network gives. Code arrives as source in a zip, never as pickle; arrays as ``.npy``/``.npz`` read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import math
import stat
import sys
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from events.workloads import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_FILES, MAX_UNPACKED_BYTES
from gpu_runtime.errors import TaskCancelled, WorkloadError
from gpu_runtime.rng import uniform as _uniform
from gpu_runtime.throttle import ProgressThrottle
from gpu_runtime.workloads.context import load_arrays, save_arrays

__all__ = [
    "MAX_RESULT_DEPTH",
    "MAX_RESULT_JSON",
    "MAX_TRACEBACK",
    "PROGRESS_SCALE",
    "CodeArchiveError",
    "FunctionContext",
    "FunctionError",
    "array_names",
    "as_failure",
    "call_function",
    "decode_result",
    "encode_result",
    "load_function",
    "load_npy",
    "resume_from_blob",
    "save_npy",
    "trim_traceback",
    "unpack_archive",
]

#: Deepest nesting of a function's value, and the largest JSON it may take (arrays go as arrays).
MAX_RESULT_DEPTH = 32
MAX_RESULT_JSON = 1 << 20
#: The longest traceback sent back to a submitter (its tail is kept).
MAX_TRACEBACK = 2000
#: Fractional progress (``ctx.progress(0.5)``) is reported as integers: millionths of the whole.
PROGRESS_SCALE = 1_000_000
_ARRAY_KEY = "$array"


class FunctionError(WorkloadError):
    """The submitter's function (or its archive, arguments or result) failed: ``function_error``."""

    def __init__(self, message: str) -> None:
        super().__init__("function_error", message)

    def __reduce__(self) -> tuple[type[WorkloadError], tuple[str]]:  # type: ignore[override]
        return (type(self), (self.message,))


class CodeArchiveError(FunctionError):
    """The code archive is not a safe zip of source files within the limits."""


def _no_send(msg: tuple[Any, ...]) -> None:
    return None


def _never() -> bool:
    return False


class FunctionContext:
    """What a submitted function's ``ctx`` parameter is: progress, checkpoints, resume, seeded RNG."""

    def __init__(
        self,
        xp: Any,
        *,
        seed: int = 0,
        index: int = 0,
        task_id: str = "local",
        send: Callable[[tuple[Any, ...]], None] = _no_send,
        cancelled: Callable[[], bool] = _never,
        resume: tuple[int, dict[str, np.ndarray[Any, Any]]] | None = None,
        to_host: Callable[[Any], np.ndarray[Any, Any]] = np.asarray,
        from_host: Callable[[np.ndarray[Any, Any]], Any] | None = None,
    ) -> None:
        self.xp = xp
        self.seed = int(seed)
        self.index = int(index)
        self.task_id = task_id
        self._send = send
        self._cancelled = cancelled
        self._resume = resume
        self._to_host = to_host
        self._from_host: Callable[[np.ndarray[Any, Any]], Any] = from_host or xp.asarray
        self._throttle = ProgressThrottle(20.0)

    def from_host(self, a: np.ndarray[Any, Any]) -> Any:
        """A host array on this context's device."""
        return self._from_host(a)

    def to_host(self, a: Any) -> np.ndarray[Any, Any]:
        """A NumPy copy of a device array."""
        return np.asarray(self._to_host(a))

    def cancelled(self) -> bool:
        """True once the provider asked this call to stop (a revoked lease or the timeout)."""
        return bool(self._cancelled())

    def progress(self, done: float, total: float = 1.0) -> None:
        """Report ``done`` of ``total`` (``0.5`` alone is half); raises ``TaskCancelled`` when asked
        to stop. Whole numbers go as they are, fractions as millionths of ``total``."""
        if self.cancelled():
            raise TaskCancelled("the task was asked to stop")
        try:
            d, t = float(done), float(total)
        except (TypeError, ValueError) as e:
            raise FunctionError(f"ctx.progress takes numbers, not {type(done).__name__}") from e
        if not (math.isfinite(d) and math.isfinite(t)) or t <= 0 or d < 0:
            raise FunctionError(f"ctx.progress({done!r}, {total!r}): needs 0 <= done and 0 < total")
        if d.is_integer() and t.is_integer() and t <= 2**53:
            done_i, total_i = int(d), int(t)
        else:
            done_i, total_i = round(min(d / t, 1.0) * PROGRESS_SCALE), PROGRESS_SCALE
        done_i = min(done_i, total_i)
        if self._throttle.allow(time.monotonic(), final=done_i >= total_i):
            self._send(("progress", done_i, total_i, "steps"))

    def checkpoint(self, step: int, **arrays: Any) -> None:
        """Save arrays to resume from at ``step``; a resumed call finds them in ``ctx.resume``."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
            raise FunctionError(f"ctx.checkpoint's step must be an int >= 0, not {step!r}")
        if "_step" in arrays:
            raise FunctionError("ctx.checkpoint: the array name '_step' is reserved")
        host = {k: self.to_host(v) for k, v in arrays.items()}
        host["_step"] = np.asarray(step, dtype=np.int64)
        self._send(("checkpoint", step, save_arrays(host)))

    @property
    def resume(self) -> tuple[int, dict[str, Any]] | None:
        """(step, arrays on this device) of the checkpoint this call resumes from, or None."""
        if self._resume is None:
            return None
        step, arrays = self._resume
        return step, {k: self._from_host(v) for k, v in arrays.items() if k != "_step"}

    def uniform(self, count: int, *, stream: int = 0, start: int = 0, dtype: Any = np.float64) -> Any:
        """``count`` uniform floats in [0, 1) from ``ctx.seed``: the same bits on NumPy and CuPy."""
        return _uniform(self.xp, self.seed, stream, start, count, dtype=dtype)


def resume_from_blob(blob: bytes | None) -> tuple[int, dict[str, np.ndarray[Any, Any]]] | None:
    """A checkpoint blob (as ``ctx.checkpoint`` made it) as ``FunctionContext``'s ``resume``."""
    if blob is None:
        return None
    arrays = load_arrays(blob)
    step = arrays.pop("_step", None)
    return (int(step) if step is not None else 0), arrays


# -- archives -----------------------------------------------------------------------------------


def unpack_archive(blob: bytes, dest: Path) -> None:
    """Extract a code archive into ``dest``, refusing anything that is not plain files and folders
    inside it, within ``MAX_ARCHIVE_FILES`` files and ``MAX_UNPACKED_BYTES`` bytes."""
    if len(blob) > MAX_ARCHIVE_BYTES:
        raise CodeArchiveError(f"the code archive is {len(blob)} bytes, over {MAX_ARCHIVE_BYTES}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise CodeArchiveError(f"the code archive is not a zip file: {e}") from e
    files = [i for i in infos if not i.is_dir()]
    if len(files) > MAX_ARCHIVE_FILES:
        raise CodeArchiveError(f"the code archive has {len(files)} files, over {MAX_ARCHIVE_FILES}")
    declared = 0
    for info in infos:
        _check_entry(info)
        declared += info.file_size
    if declared > MAX_UNPACKED_BYTES:
        raise CodeArchiveError(f"the code archive unpacks to {declared} bytes, over {MAX_UNPACKED_BYTES}")
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    with zf:
        for info in infos:
            target = dest.joinpath(*PurePosixPath(info.filename).parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 16):
                        total += len(chunk)  # counted as inflated: a zip bomb lies about its sizes
                        if total > MAX_UNPACKED_BYTES:
                            raise CodeArchiveError(
                                f"the code archive inflates past {MAX_UNPACKED_BYTES} bytes (its sizes lie)"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                raise CodeArchiveError(f"{info.filename!r} in the code archive is unreadable: {e}") from e


def _check_entry(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if not name or "\x00" in name or "\\" in name:
        raise CodeArchiveError(f"{name!r} in the code archive is not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise CodeArchiveError(f"{name!r} in the code archive is an absolute path")
    if ".." in path.parts:
        raise CodeArchiveError(f"{name!r} in the code archive leaves its folder ('..')")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        what = "a symlink" if kind == stat.S_IFLNK else "not a regular file"
        raise CodeArchiveError(f"{name!r} in the code archive is {what}")
    if info.flag_bits & 0x1:
        raise CodeArchiveError(f"{name!r} in the code archive is encrypted")


# -- loading and calling ------------------------------------------------------------------------

#: Code roots this process loaded from, most recent last: a module of another root is never reused.
_loaded_roots: list[Path] = []


def _under(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True


def _forget_other_roots(root: Path) -> None:
    for old in _loaded_roots:
        if old == root:
            continue
        for name, mod in list(sys.modules.items()):
            if _under(getattr(mod, "__file__", None), old):
                del sys.modules[name]
        while str(old) in sys.path:
            sys.path.remove(str(old))
    _loaded_roots[:] = [r for r in _loaded_roots if r == root]
    if root not in _loaded_roots:
        _loaded_roots.append(root)


def load_function(root: Path, entry: str) -> Callable[..., Any]:
    """The function ``entry`` (``"module:function"``, ``"pkg.mod:f"``) of the code unpacked at ``root``.

    The module is imported from ``root`` alone; modules of a code root loaded earlier are forgotten
    first, so two archives with a module of the same name never see each other's."""
    root = root.resolve()
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise FunctionError(f"entry {entry!r} is not 'module:function'")
    _forget_other_roots(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.split(".")[0]
        if e.name is not None and (e.name == module_name or e.name.split(".")[0] == top):
            raise FunctionError(f"module {module_name!r} is not in the code archive") from e
        raise as_failure(e, root) from e
    except Exception as e:
        raise as_failure(e, root) from e
    if not _under(getattr(module, "__file__", None), root):
        raise FunctionError(f"module {module_name!r} is not in the code archive (it is the provider's own)")
    try:
        fn = getattr(module, attr)
    except AttributeError as e:
        raise FunctionError(f"module {module_name!r} has no function {attr!r}") from e
    fn = inspect.unwrap(fn) if callable(fn) else getattr(fn, "__wrapped__", fn)
    if not callable(fn):
        raise FunctionError(f"{entry!r} is a {type(fn).__name__}, not a function")
    out: Callable[..., Any] = fn
    return out


def call_function(
    fn: Callable[..., Any], xp: Any, args: dict[str, Any], arrays: dict[str, np.ndarray[Any, Any]], ctx: FunctionContext
) -> Any:
    """Call ``fn(xp, **args, **arrays[, ctx=ctx])``: arrays on ``ctx``'s device, ``ctx`` only when
    ``fn`` has a parameter of that name; a missing or unexpected argument is refused first."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise FunctionError(f"cannot read the signature of {getattr(fn, '__name__', fn)!r}: {e}") from e
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        raise FunctionError("the function's first parameter must take xp (the array namespace)")
    rest = params[1:]
    given = {**args, **{k: ctx.from_host(v) for k, v in arrays.items()}}
    names = {p.name for p in rest if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    if "ctx" in names:
        given["ctx"] = ctx
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in rest)
    for key in given:
        if key not in names and not takes_any:
            raise FunctionError(f"unexpected argument {key!r}: the function takes no such parameter")
    for p in rest:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty and p.name not in given:
            raise FunctionError(f"missing argument {p.name!r}")
        if p.kind == inspect.Parameter.POSITIONAL_ONLY:
            raise FunctionError(f"parameter {p.name!r} is positional-only; arguments are passed by name")
    return fn(xp, **given)


def _classify(exc: BaseException) -> str | None:
    # The backend's rule (by class name, so no CuPy is needed): out of memory, kernel errors.
    from gpu_runtime.backend import Backend

    return Backend(name="cpu", xp=np).classify(exc)


def as_failure(exc: BaseException, root: Path) -> WorkloadError:
    """A submitted function's exception as the failure its submitter reads: ``function_error`` (or
    ``out_of_memory``, ``kernel_error``) with the traceback trimmed to the code under ``root``."""
    if isinstance(exc, WorkloadError):
        return exc
    text = trim_traceback(exc, root)
    if isinstance(exc, ModuleNotFoundError) and exc.name and not _under(getattr(exc, "path", None), root):
        top = exc.name.split(".")[0]
        return FunctionError(
            f"the provider does not have the package {top!r}: declare it with requires={{{top!r}: ''}} "
            f"so the task goes only to providers that do\n{text}"
        )
    reason = _classify(exc)
    if reason is not None and reason != "function_error":
        return WorkloadError(reason, text)  # type: ignore[arg-type]
    return FunctionError(text)


def trim_traceback(exc: BaseException, root: Path) -> str:
    """The traceback of ``exc`` showing only frames of files under ``root`` (relative to it), then
    the exception line; the tail, when longer than ``MAX_TRACEBACK`` characters."""
    root = root.resolve()
    lines = ["Traceback (most recent call last):\n"]
    for frame in traceback.extract_tb(exc.__traceback__):
        try:
            rel = Path(frame.filename).resolve().relative_to(root)
        except (ValueError, OSError):
            continue
        lines.append(f'  File "{rel.as_posix()}", line {frame.lineno}, in {frame.name}\n')
        if frame.line:
            lines.append(f"    {frame.line.strip()}\n")
    tail = "".join(traceback.format_exception_only(type(exc), exc))
    lines.append(tail.replace(str(root) + "/", ""))
    text = "".join(lines).rstrip("\n")
    if len(text) > MAX_TRACEBACK:
        text = "...\n" + text[-(MAX_TRACEBACK - 4) :]
    return text


# -- results ------------------------------------------------------------------------------------


def _is_array(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return True
    if isinstance(v, np.generic):
        return False
    return hasattr(v, "__array_namespace__") or (hasattr(v, "get") and hasattr(v, "shape") and hasattr(v, "dtype"))


def _finite(x: float, path: str) -> float:
    if not math.isfinite(x):
        raise FunctionError(f"the result's {path} is {x!r}: JSON has no spelling for it")
    return x


def _scalar(v: Any, path: str) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return _finite(float(v), path)
    if isinstance(v, np.str_):
        return str(v)
    raise FunctionError(f"the result's {path} is a {type(v).__name__}, which has no JSON form (return an array)")


def _array_entry(a: np.ndarray[Any, Any], name: str, path: str) -> dict[str, Any]:
    if a.dtype.kind not in "biufc" or a.dtype.fields is not None:
        raise FunctionError(f"the result's {path} is an array of {a.dtype}: only numbers and booleans")
    if a.dtype.kind == "c":
        total = complex(np.sum(a, dtype=np.complex128)).real
        norm = float(np.sqrt(np.sum(np.abs(a.astype(np.complex128)) ** 2)))
    else:
        a64 = a.astype(np.float64)
        total, norm = float(np.sum(a64)), float(np.linalg.norm(a64.ravel()))
    return {
        _ARRAY_KEY: name,
        "shape": [int(n) for n in a.shape],
        "dtype": str(a.dtype),
        "sum": total if math.isfinite(total) else None,
        "norm": norm if math.isfinite(norm) else None,
    }


def encode_result(
    value: Any, to_host: Callable[[Any], np.ndarray[Any, Any]] = np.asarray
) -> tuple[dict[str, Any], bytes | None]:
    """A function's value as ``({"value": json}, npz of its arrays or None)``.

    Arrays stand in the JSON as ``{"$array": "a0", "shape", "dtype", "sum", "norm"}`` (sum and norm
    in float64, so replicas compare within a tolerance); a 0-d array and a NumPy scalar become a
    number (CuPy's sums are 0-d arrays, NumPy's are scalars: both are the same number). NaN and
    infinities are refused, naming where they are."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}

    def walk(v: Any, path: str, depth: int) -> Any:
        if depth > MAX_RESULT_DEPTH:
            raise FunctionError(f"the result's {path} is nested deeper than {MAX_RESULT_DEPTH}")
        if v is None or isinstance(v, str):
            return v
        if _is_array(v):
            a = np.asarray(to_host(v))
            if a.ndim == 0:
                return _scalar(a[()], path)
            name = f"a{len(arrays)}"
            entry = _array_entry(a, name, path)
            arrays[name] = np.ascontiguousarray(a)
            return entry
        if isinstance(v, dict):
            out: dict[str, Any] = {}
            for k, item in v.items():
                if not isinstance(k, str):
                    raise FunctionError(f"the result's {path} has a key {k!r}: keys must be strings")
                if k.startswith("$"):
                    raise FunctionError(f"the result's {path} has a key {k!r}: keys may not start with '$'")
                out[k] = walk(item, f"{path}.{k}", depth + 1)
            return out
        if isinstance(v, (list, tuple)):
            return [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v)]
        return _scalar(v, path)

    summary = {"value": walk(value, "value", 0)}
    size = len(json.dumps(summary, allow_nan=False, separators=(",", ":")))
    if size > MAX_RESULT_JSON:
        raise FunctionError(f"the result is {size} bytes of JSON, over {MAX_RESULT_JSON}: return big data as arrays")
    return summary, (save_arrays(arrays) if arrays else None)


def decode_result(summary: dict[str, Any], arrays: dict[str, np.ndarray[Any, Any]]) -> Any:
    """The inverse of :func:`encode_result`: placeholders become the NumPy arrays they name."""

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            if _ARRAY_KEY in v:
                name = v[_ARRAY_KEY]
                if name not in arrays:
                    raise FunctionError(f"the result names array {name!r}, which is missing")
                return arrays[name]
            return {k: walk(item) for k, item in v.items()}
        if isinstance(v, list):
            return [walk(item) for item in v]
        return v

    return walk(summary.get("value"))


def array_names(summary: Any) -> set[str]:
    """The array names a summary's placeholders refer to."""
    found: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if _ARRAY_KEY in v:
                found.add(str(v[_ARRAY_KEY]))
                return
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(summary)
    return found


def save_npy(a: Any) -> bytes:
    """One array as ``.npy`` bytes (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def load_npy(b: bytes) -> np.ndarray[Any, Any]:
    """The array of ``.npy`` bytes; never unpickles (an object array is refused)."""
    try:
        out: np.ndarray[Any, Any] = np.load(io.BytesIO(b), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FunctionError(f"not a valid .npy array: {e}") from e
    if not isinstance(out, np.ndarray):
        raise FunctionError("not a valid .npy array")
    return out
