"""An attacker's review of submitters' code (issue 14), the client's and the placement's side.

- a symlink inside an ``include``d package that points outside it (at ``~/.ssh/id_rsa``, say) is
  refused, naming it, and its target's content is never shipped to a stranger's provider;
- a symlink that stays inside the package ships as the file it points at;
- a function job's code archive and per-task array arguments (a ParamsSplit) must be the
  submitter's own objects;
- a job's package specifiers, however odd, never crash the placement rule (the scheduler, the audit
  and the replayer share it).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from events.placement import bad_specifier, missing_packages
from events.subjects import OBJECTS_STREAM, object_name
from gpu_runtime.errors import WorkloadError
from gpu_runtime.workloads.context import load_arrays, save_arrays
from gpufleet.functions import FunctionDefinitionError

SOURCE = """
import gpufleet


@gpufleet.function(include=["{lib}"])
def f(xp):
    return 0
"""


@pytest.fixture
def module(tmp_path: Path) -> Iterator[ModuleType]:
    """A module ``leaky_mod`` that includes a package ``leaky`` holding a symlink to a secret."""
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- do not ship")
    lib = tmp_path / "leaky"
    lib.mkdir()
    (lib / "__init__.py").write_text("")
    (lib / "helper.py").write_text("X = 1\n")
    (lib / "alias.py").symlink_to(lib / "helper.py")  # inside the package: fine
    (lib / "key").symlink_to(secret)
    (tmp_path / "leaky_mod.py").write_text(textwrap.dedent(SOURCE.format(lib="leaky")))
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module("leaky_mod")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("leaky_mod", None)


def test_a_symlink_out_of_an_included_package_is_refused_and_never_shipped(module: ModuleType) -> None:
    with pytest.raises(FunctionDefinitionError, match="symlink") as info:
        module.f.archive()
    assert info.value.field == "include" and "leaky/key" in str(info.value) and "\n" not in str(info.value)


def test_a_symlink_inside_an_included_package_ships_as_its_file(module: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "leaky" / "key").unlink()
    data, _ = module.f.archive()
    z = zipfile.ZipFile(io.BytesIO(data))
    assert z.read("leaky/alias.py") == b"X = 1\n"
    assert b"PRIVATE KEY" not in data


ODD = [
    "",
    ">=1.0",
    "==1.*",
    "~=",
    "===" + "x" * 190,
    ">=1.0," * 33,
    "\x00",
    "=" * 200,
    "<" * 200,
    ">=1.0;python_version>'3'",
    "@ file:///etc/passwd",
    "!= 1.0.*.*",
    "(" * 200,
]


@pytest.mark.parametrize("spec", ODD)
def test_odd_specifiers_are_refused_or_matched_never_a_crash(spec: str) -> None:
    problem = bad_specifier(spec)
    assert problem is None or ("\n" not in problem and "not a version specifier" in problem)
    have = {"scipy": "1.11.0", "numpy": "not-a-version", "weird": "1.0" + "0" * 60}
    for name in ("scipy", "numpy", "weird", "absent"):
        out = missing_packages(have, {name: spec})
        assert all(isinstance(m, str) for m in out)


def _function_spec(code_owner: str, array_owner: str) -> Any:
    from events.job import JobSpec

    def ref(owner: str, data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        name = object_name("submitter", owner, digest)
        return {"bucket": OBJECTS_STREAM, "name": name, "sha256": digest, "size": len(data)}

    return JobSpec.model_validate(
        {
            "workload": "function",
            "params": {"code": ref(code_owner, b"zip"), "entry": "m:f"},
            "split": {"kind": "params", "params": [{"arrays": {"x": ref(array_owner, b"npy")}}]},
        }
    )


@pytest.mark.parametrize(
    ("code_owner", "array_owner", "where"), [("bob", "ann", "params.code"), ("ann", "bob", "split.params.0.arrays.x")]
)
def test_code_and_per_task_arrays_must_be_the_submitters_own_objects(
    code_owner: str, array_owner: str, where: str
) -> None:
    from datetime import UTC, datetime

    from actors.errors import NotYours
    from actors.job import SubmitJob, owned_spec

    cmd = SubmitJob(
        command_id="c1",
        at=datetime.now(UTC),
        job_id="ann.j1",
        spec=_function_spec(code_owner, array_owner),
        submitter="ann",
    )
    with pytest.raises(NotYours) as info:
        owned_spec(cmd)
    assert info.value.field == where
    ok = SubmitJob(
        command_id="c1", at=datetime.now(UTC), job_id="ann.j1", spec=_function_spec("ann", "ann"), submitter="ann"
    )
    assert owned_spec(ok).submitter == "ann"


# ---- a provider's arrays: never inflated past their own size ---------------------------------------


def _npz_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        member = io.BytesIO()
        np.save(member, np.zeros(10**7))  # 80 MB of zeros, deflated to ~80 KB
        z.writestr("a0.npy", member.getvalue())
    return buf.getvalue()


def _npz_lying_header() -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a0.npy", header.getvalue() + b"\0" * 64)  # 8 TB promised, 64 bytes given
    return buf.getvalue()


@pytest.mark.parametrize(("blob", "why"), [(_npz_bomb(), "claim"), (_npz_lying_header(), "promises")])
def test_an_npz_that_would_inflate_past_itself_is_refused(blob: bytes, why: str) -> None:
    # A result's arrays (read by the submitter) and a checkpoint (read by the next provider) come
    # from a stranger: save_arrays stores members uncompressed, so nothing honest inflates.
    with pytest.raises(WorkloadError, match=why) as info:
        load_arrays(blob)
    assert info.value.reason == "invalid_params"
    honest = save_arrays({"a0": np.arange(1000.0), "a1": np.ones((3, 4), dtype=np.float32), "a2": np.array(1.5)})
    assert {k: v.shape for k, v in load_arrays(honest).items()} == {"a0": (1000,), "a1": (3, 4), "a2": ()}
