"""Workloads in-process on NumPy: checkpoints resume exactly, cancellation, results encoding, backend."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from events.types import Capabilities
from events.workloads import SleepParams, StencilParams, validate_params
from gpu_runtime.backend import select_backend
from gpu_runtime.errors import TaskCancelled, WorkloadError
from gpu_runtime.results import canonical_json, json_safe
from gpu_runtime.workloads import TaskContext, load_arrays, run_workload, save_arrays
from gpu_runtime.workloads.context import Outcome

CPU = select_backend("cpu")


def run(name: str, params: dict[str, Any], **ctx: Any) -> Outcome:
    return run_workload(TaskContext(CPU, **ctx), name, validate_params(name, params))


def test_cpu_backend_is_reported_as_such() -> None:
    caps = CPU.capabilities(slots=2)
    assert isinstance(caps, Capabilities)
    assert caps.backend == "cpu" and caps.slots == 2 and caps.compute_capability == 0.0
    assert caps.gpu_model and caps.vram_mb > 0 and caps.extra["array_module"].startswith("numpy")
    assert CPU.precisions() == ("fp64", "fp32", "fp16")
    assert CPU.memory_limit() == 0
    with pytest.raises(Exception, match="CUDA"):
        CPU.compile_kernel("", "k")


def test_library_errors_are_classified() -> None:
    assert CPU.classify(MemoryError()) == "out_of_memory"
    assert CPU.classify(type("OutOfMemoryError", (Exception,), {})()) == "out_of_memory"
    assert CPU.classify(type("CompileException", (Exception,), {})()) == "kernel_error"
    assert CPU.classify(ValueError()) is None


def test_stencil_checkpoints_resume_to_the_same_bits() -> None:
    sent: list[tuple[Any, ...]] = []
    whole = run("stencil", {"n": 32, "steps": 50, "checkpoint_every": 20}, send=sent.append)
    checkpoints = [m for m in sent if m[0] == "checkpoint"]
    assert [m[1] for m in checkpoints] == [20, 40]
    saved = load_arrays(checkpoints[0][2])
    assert int(saved["_step"]) == 20
    resumed = run("stencil", {"n": 32, "steps": 50, "checkpoint_every": 20}, resume_step=20, resume_arrays=saved)
    assert resumed.summary["resumed_from_step"] == 20 and resumed.summary["steps_run"] == 30
    for key in ("sum", "l2", "center"):
        assert resumed.summary[key] == whole.summary[key]


def test_stencil_refuses_a_checkpoint_of_another_shape() -> None:
    wrong = {"u": np.zeros((8, 8))}
    with pytest.raises(WorkloadError) as e:
        run("stencil", {"n": 32, "steps": 50}, resume_step=10, resume_arrays=wrong)
    assert e.value.reason == "invalid_params"


def test_cancel_flag_stops_a_running_workload() -> None:
    calls = iter([False, False, True])
    with pytest.raises(TaskCancelled) as e:
        run_workload(TaskContext(CPU, cancelled=lambda: next(calls, True)), "sleep", SleepParams(seconds=5, steps=50))
    assert e.value.reason == "cancelled"


def test_progress_is_pre_throttled_in_the_worker_but_the_last_step_always_sent() -> None:
    sent: list[tuple[Any, ...]] = []
    run_workload(TaskContext(CPU, send=sent.append), "stencil", StencilParams(n=8, steps=5000, checkpoint_every=10**6))
    progress = [m for m in sent if m[0] == "progress"]
    assert progress[-1][1:3] == (5000, 5000)
    assert len(progress) < 100


def test_tf32_and_bf16_are_refused_on_cpu() -> None:
    for dtype in ("tf32", "bf16"):
        with pytest.raises(WorkloadError) as e:
            run("matmul", {"n": 8, "dtype": dtype})
        assert e.value.reason == "unsupported"


def test_results_encode_canonically_and_safely() -> None:
    value = json_safe({"b": np.float32(1.5), "a": np.arange(3), "c": math.inf, "d": (1, np.int64(2)), "z": 1j})
    assert value == {"a": [0, 1, 2], "b": 1.5, "c": "inf", "d": [1, 2], "z": [0.0, 1.0]}
    assert canonical_json(value) == b'{"a":[0,1,2],"b":1.5,"c":"inf","d":[1,2],"z":[0.0,1.0]}'
    assert json.loads(canonical_json(value)) == value
    with pytest.raises(TypeError):
        json_safe({"x": object()})


def test_array_blobs_round_trip_without_pickle() -> None:
    arrays = {"u": np.arange(6.0).reshape(2, 3), "i": np.array([1, 2], dtype=np.int32)}
    back = load_arrays(save_arrays(arrays))
    assert set(back) == {"u", "i"} and np.array_equal(back["u"], arrays["u"]) and back["i"].dtype == np.int32
    with pytest.raises(WorkloadError):
        load_arrays(b"not an npz")
