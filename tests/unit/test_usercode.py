"""The pure side of submitters' code: results as JSON and arrays, archives, loading, tracebacks."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path
from typing import Any

import array_api_compat.numpy as xp
import numpy as np
import pytest

from events.workloads import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_FILES, MAX_UNPACKED_BYTES
from gpu_runtime.errors import TaskCancelled
from gpu_runtime.usercode import (
    CodeArchiveError,
    FunctionContext,
    FunctionError,
    as_failure,
    call_function,
    decode_result,
    encode_result,
    load_function,
    load_npy,
    resume_from_blob,
    save_npy,
    trim_traceback,
    unpack_archive,
)
from gpu_runtime.workloads.context import load_arrays


def zip_of(entries: dict[str, bytes | str], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def round_trip(value: Any) -> Any:
    summary, blob = encode_result(value)
    return summary, decode_result(summary, load_arrays(blob) if blob else {})


@pytest.mark.parametrize(
    "value",
    [None, True, 3, -2.5, "text", [1, [2, {"a": None}]], {"k": {"n": [True, 1.5]}}],
)
def test_json_values_round_trip_unchanged(value: Any) -> None:
    summary, back = round_trip(value)
    assert summary == {"value": value} and back == value


def test_numpy_scalars_and_tuples_become_plain_json() -> None:
    summary, back = round_trip((np.float32(1.5), np.int64(7), np.bool_(True), np.asarray(2.0)))
    assert summary == {"value": [1.5, 7, True, 2.0]} and back == [1.5, 7, True, 2.0]
    assert type(back[1]) is int and type(back[0]) is float


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint16", "bool", "complex64"])
def test_arrays_round_trip_bit_for_bit_with_a_comparable_stand_in(dtype: str) -> None:
    a = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    summary, back = round_trip({"out": [a, 1]})
    entry = summary["value"]["out"][0]
    assert entry["$array"] == "a0" and entry["shape"] == [3, 4] and entry["dtype"] == dtype
    assert isinstance(entry["sum"], float) and isinstance(entry["norm"], float)
    assert np.array_equal(back["out"][0], a) and back["out"][0].dtype == a.dtype and back["out"][1] == 1


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ([1.0, {"x": float("nan")}], "value[1].x is nan"),
        ({"y": np.float64("inf")}, "value.y is inf"),
        ({1: 2}, "keys must be strings"),
        ({"$array": "a0"}, "may not start with '$'"),
        ({"f": object()}, "value.f is a object"),
        (np.asarray([object()], dtype=object), "an array of object"),
    ],
)
def test_values_json_cannot_spell_are_refused_naming_where(value: Any, where: str) -> None:
    with pytest.raises(FunctionError, match=None) as e:
        encode_result(value)
    assert where in e.value.message and e.value.reason == "function_error"


def test_depth_and_size_are_bounded() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(FunctionError, match="nested deeper"):
        encode_result(deep)
    with pytest.raises(FunctionError, match="as arrays"):
        encode_result(["x" * 1000] * 2000)


def test_npy_never_unpickles() -> None:
    assert np.array_equal(load_npy(save_npy(np.arange(3))), np.arange(3))
    buf = io.BytesIO()
    np.save(buf, np.asarray([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FunctionError, match=r"\.npy"):
        load_npy(buf.getvalue())


# -- archives -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (zip_of({"../x.py": "x"}), "leaves its folder"),
        (zip_of({"pkg/../../x.py": "x"}), "leaves its folder"),
        (zip_of({"/etc/x": "x"}), "absolute path"),
        (zip_of({"ok.py": "x"}, symlink="link.py"), "is a symlink"),
        (zip_of({f"f{i}.py": "" for i in range(MAX_ARCHIVE_FILES + 1)}), "files, over"),
        (b"this is not a zip at all", "not a zip file"),
        (b"\0" * (MAX_ARCHIVE_BYTES + 1), "over"),
    ],
)
def test_unsafe_archives_are_refused(blob: bytes, why: str, tmp_path: Path) -> None:
    with pytest.raises(CodeArchiveError) as e:
        unpack_archive(blob, tmp_path / "code")
    assert why in e.value.message
    assert not (tmp_path / "x.py").exists() and not (tmp_path / "code" / "link.py").exists()


def test_a_zip_bomb_that_lies_about_its_size_is_stopped_while_inflating(tmp_path: Path) -> None:
    declared_big = zip_of({"big.bin": b"\0" * (MAX_UNPACKED_BYTES + 1)})
    with pytest.raises(CodeArchiveError, match="unpacks to"):
        unpack_archive(declared_big, tmp_path / "a")
    # The same archive with its sizes rewritten small: only counting inflated bytes catches it.
    raw = bytearray(declared_big)
    small = (1000).to_bytes(4, "little")
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    raw[local + 22 : local + 26] = small
    raw[central + 24 : central + 28] = small
    with pytest.raises(CodeArchiveError, match=r"unreadable|inflates past"):
        unpack_archive(bytes(raw), tmp_path / "b")
    written = sum(p.stat().st_size for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert written <= MAX_UNPACKED_BYTES


def test_a_plain_archive_unpacks(tmp_path: Path) -> None:
    unpack_archive(zip_of({"m.py": "X = 1\n", "pkg/__init__.py": "", "pkg/sub.py": "Y = 2\n"}), tmp_path)
    assert (tmp_path / "pkg" / "sub.py").read_text() == "Y = 2\n"


# -- loading and calling ------------------------------------------------------------------------


def code(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    root = tmp_path / name
    unpack_archive(zip_of(dict(files)), root)
    return root


def test_load_function_refuses_what_is_not_a_function(tmp_path: Path) -> None:
    root = code(tmp_path, "r", {"mod_a.py": "VALUE = 3\n\ndef f(xp):\n    return 1\n"})
    with pytest.raises(FunctionError, match="has no function 'g'"):
        load_function(root, "mod_a:g")
    with pytest.raises(FunctionError, match="not a function"):
        load_function(root, "mod_a:VALUE")
    with pytest.raises(FunctionError, match="not in the code archive"):
        load_function(root, "nowhere:f")
    with pytest.raises(FunctionError, match="provider's own"):
        load_function(root, "json:dumps")
    assert load_function(root, "mod_a:f")(None) == 1


def test_a_second_archive_never_sees_the_first_ones_module(tmp_path: Path) -> None:
    one = code(tmp_path, "one", {"shared_name.py": "def f(xp):\n    return 'one'\n", "only_one.py": "A = 1\n"})
    two = code(tmp_path, "two", {"shared_name.py": "def f(xp):\n    import only_one\n    return 'two'\n"})
    assert load_function(one, "shared_name:f")(None) == "one"
    fn = load_function(two, "shared_name:f")
    with pytest.raises(ModuleNotFoundError):
        fn(None)  # only_one came from the first archive: gone with it
    assert load_function(one, "shared_name:f")(None) == "one"


def test_the_decorators_wrapper_is_unwrapped(tmp_path: Path) -> None:
    src = (
        "class Wrapped:\n    def __init__(self, fn):\n        self.__wrapped__ = fn\n"
        "def raw(xp, n):\n    return n + 1\nf = Wrapped(raw)\n"
    )
    root = code(tmp_path, "w", {"deco_mod.py": src})
    assert load_function(root, "deco_mod:f")(None, n=1) == 2


def test_call_function_passes_xp_ctx_and_arrays_and_names_bad_arguments() -> None:
    def f(xp: Any, a: float, x: Any, ctx: FunctionContext, b: int = 2) -> Any:
        return float(xp.sum(a * x)) + b + ctx.seed

    ctx = FunctionContext(xp, seed=10)
    assert call_function(f, xp, {"a": 2.0}, {"x": np.ones(3)}, ctx) == 18.0
    with pytest.raises(FunctionError, match="missing argument 'x'"):
        call_function(f, xp, {"a": 2.0}, {}, ctx)
    with pytest.raises(FunctionError, match="unexpected argument 'zz'"):
        call_function(f, xp, {"a": 2.0, "zz": 1}, {"x": np.ones(3)}, ctx)

    def no_ctx(xp: Any) -> int:
        return 5

    assert call_function(no_ctx, xp, {}, {}, ctx) == 5


def test_ctx_progress_cancel_checkpoint_resume_and_rng() -> None:
    sent: list[tuple[Any, ...]] = []
    flag = [False]
    ctx = FunctionContext(xp, seed=3, send=sent.append, cancelled=lambda: flag[0])
    ctx.progress(0.25)
    ctx.progress(4, 4)
    assert sent[0] == ("progress", 250_000, 1_000_000, "steps") and sent[-1] == ("progress", 4, 4, "steps")
    ctx.checkpoint(7, acc=np.arange(3.0))
    kind, step, blob = sent[-1][0], sent[-1][1], bytes(sent[-1][2])
    assert kind == "checkpoint" and step == 7
    resumed = FunctionContext(xp, resume=resume_from_blob(blob))
    assert resumed.resume is not None and resumed.resume[0] == 7
    assert np.array_equal(resumed.resume[1]["acc"], np.arange(3.0))
    from gpu_runtime.rng import uniform

    assert np.array_equal(ctx.uniform(5, stream=2), uniform(np, 3, 2, 0, 5))
    flag[0] = True
    with pytest.raises(TaskCancelled):
        ctx.progress(0.5)


# -- tracebacks ---------------------------------------------------------------------------------


def test_tracebacks_show_only_the_users_frames(tmp_path: Path) -> None:
    root = code(
        tmp_path,
        "tb",
        {"tb_mod.py": "import json\n\ndef f(xp):\n    return g()\n\ndef g():\n    return json.loads('{')\n"},
    )
    fn = load_function(root, "tb_mod:f")
    with pytest.raises(ValueError) as e:
        call_function(fn, xp, {}, {}, FunctionContext(xp))
    text = trim_traceback(e.value, root)
    assert text.startswith("Traceback (most recent call last):")
    assert 'File "tb_mod.py", line 4, in f' in text and 'File "tb_mod.py", line 7, in g' in text
    assert "json/decoder.py" not in text and "usercode" not in text and str(tmp_path) not in text
    assert text.splitlines()[-1].startswith("json.decoder.JSONDecodeError")
    failure = as_failure(e.value, root)
    assert failure.reason == "function_error" and failure.message == text


def test_memory_errors_and_missing_packages_are_classified(tmp_path: Path) -> None:
    root = code(
        tmp_path,
        "mem",
        {"mem_mod.py": "def f(xp):\n    raise MemoryError('64 GB')\n\ndef g(xp):\n    import not_a_real_pkg_x\n"},
    )
    with pytest.raises(MemoryError) as e:
        load_function(root, "mem_mod:f")(None)
    oom = as_failure(e.value, root)
    assert oom.reason == "out_of_memory" and 'File "mem_mod.py"' in oom.message
    with pytest.raises(ModuleNotFoundError) as m:
        load_function(root, "mem_mod:g")(None)
    missing = as_failure(m.value, root)
    assert missing.reason == "function_error" and "does not have the package 'not_a_real_pkg_x'" in missing.message
    assert "requires=" in missing.message


def test_long_tracebacks_keep_their_tail() -> None:
    try:
        raise ValueError("x" * 5000 + "THE END")
    except ValueError as e:
        text = trim_traceback(e, Path("/nonexistent"))
    assert len(text) <= 2000 and text.endswith("THE END")


@pytest.mark.parametrize("prefix", ["/tmp/ci-clone/.venv", "/work/main/.venv", "/opt/venv"])
def test_no_later_mount_hides_an_earlier_bind(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wherever the interpreter lives (CI clones the repository under /tmp; here it is under /work),
    each read-only bind must stay visible: no tmpfs may be mounted over it afterwards."""
    from gpu_runtime import sandbox

    monkeypatch.setattr(sandbox.sys, "prefix", prefix)
    monkeypatch.setattr(sandbox.sys, "exec_prefix", prefix)
    args = sandbox.bwrap_command(sandbox.SandboxOptions(), ["python3"], bwrap="bwrap")
    binds: list[str] = []
    for i, a in enumerate(args):
        if a == "--tmpfs":
            mounted = args[i + 1]
            hidden = [b for b in binds if b == mounted or b.startswith(mounted.rstrip("/") + "/")]
            assert not hidden, f"--tmpfs {mounted} hides {hidden}"
        if a in ("--ro-bind", "--bind", "--dev-bind"):
            binds.append(args[i + 2])
    assert str(Path(prefix).resolve()) in binds or prefix.startswith("/usr")
