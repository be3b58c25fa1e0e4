"""The workload contracts: each workload's parameters and resource estimate, shared by all parties.

Submitters, the orchestrator and providers agree on these contracts; the implementations that run
them live in ``gpu_runtime``. Nothing here computes anything heavy or imports an array library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from events.errors import InvalidPayload
from events.types import Estimate, JsonValue, ObjectRef
from events.verification import Compare

__all__ = [
    "CODE_WORKLOAD",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_FILES",
    "MAX_UNPACKED_BYTES",
    "WORKLOADS",
    "CustomKernelParams",
    "ElementwiseParams",
    "FftParams",
    "FunctionParams",
    "KernelArg",
    "MatmulParams",
    "MonteCarloParams",
    "NoopParams",
    "ReductionParams",
    "SleepParams",
    "StencilParams",
    "WorkloadContract",
    "contract",
    "validate_params",
]

#: Seeded inputs come from a counter-based generator (splitmix64): about 20 passes of 8-byte words
#: over every generated value. It is real work on every backend, so the estimates count it.
_GEN_BYTES = 20 * 8

_DTYPE_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "complex64": 8, "complex128": 16}


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class NoopParams(_Params):
    """Does nothing; measures the system's own overhead."""

    payload: JsonValue = None


class SleepParams(_Params):
    """Sleeps, reporting progress; stands in for a job of known duration."""

    seconds: float = Field(default=1.0, ge=0.0, le=86400.0)
    steps: int = Field(default=10, ge=1, le=100_000)


class MatmulParams(_Params):
    """C = A @ B for square n x n matrices of one dtype, repeated ``repeat`` times."""

    n: int = Field(default=1024, ge=1, le=65536)
    dtype: Literal["fp64", "fp32", "tf32", "fp16", "bf16"] = "fp32"
    repeat: int = Field(default=1, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


class FftParams(_Params):
    """A batch of 1-D complex FFTs of length n."""

    n: int = Field(default=1 << 16, ge=2, le=1 << 28)
    batch: int = Field(default=1, ge=1, le=1 << 20)
    dtype: Literal["complex64", "complex128"] = "complex64"
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


class ReductionParams(_Params):
    """A reduction over n seeded values."""

    n: int = Field(default=1 << 20, ge=1, le=1 << 34)
    op: Literal["sum", "mean", "max", "min", "norm"] = "sum"
    dtype: Literal["fp64", "fp32"] = "fp64"
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


class ElementwiseParams(_Params):
    """An elementwise map over n seeded values, summarised by sum and a digest."""

    n: int = Field(default=1 << 20, ge=1, le=1 << 34)
    op: Literal["saxpy", "exp", "sigmoid", "sqrt"] = "saxpy"
    dtype: Literal["fp64", "fp32"] = "fp64"
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


class MonteCarloParams(_Params):
    """Estimate pi from ``samples`` points of a counter-based RNG: bit-exact on any backend."""

    samples: int = Field(default=1 << 22, ge=1, le=1 << 40)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    chunk: int = Field(default=1 << 20, ge=1024, le=1 << 28)


class StencilParams(_Params):
    """2-D heat diffusion by Jacobi steps: iterative, with real progress and checkpoints."""

    n: int = Field(default=256, ge=4, le=32768)
    steps: int = Field(default=200, ge=1, le=10_000_000)
    alpha: float = Field(default=0.1, gt=0.0, le=0.25)
    checkpoint_every: int = Field(default=50, ge=1, le=10_000_000)
    dtype: Literal["fp64", "fp32"] = "fp64"
    #: Sleep this long per step: lets a tiny grid run long enough to watch, in demos and tests.
    step_delay_s: float = Field(default=0.0, ge=0.0, le=10.0)


class KernelArg(_Params):
    """One argument of a custom kernel: an array (inline values or an object reference) or a scalar."""

    kind: Literal["array", "scalar"]
    dtype: Literal["float32", "float64", "int32", "int64", "uint32", "uint64"] = "float32"
    #: Scalars: the value. Arrays: inline values (small inputs only).
    value: JsonValue = None
    ref: ObjectRef | None = None
    #: Arrays without inline values: allocate zeros of this many elements (an output buffer).
    size: int = Field(default=0, ge=0, le=1 << 31)
    output: bool = False


#: One grid or block dimension (CUDA's own limit is 2**31 - 1 for grid x, less elsewhere).
_Dim = Annotated[int, Field(ge=1, le=2**31 - 1)]


class CustomKernelParams(_Params):
    """CUDA C source compiled on the provider with NVRTC, launched on the given grid."""

    source: str = Field(min_length=1, max_length=60_000)
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    grid: tuple[_Dim, _Dim, _Dim] | tuple[_Dim, _Dim] | tuple[_Dim]
    block: tuple[_Dim, _Dim, _Dim] | tuple[_Dim, _Dim] | tuple[_Dim]
    args: list[KernelArg] = Field(default_factory=list, max_length=64)
    shared_mem: int = Field(default=0, ge=0, le=227 * 1024)
    options: tuple[str, ...] = ()


#: The workload that runs a submitter's own Python function (sandboxed, on providers that opted in).
CODE_WORKLOAD = "function"
#: The largest code archive a job may pin (zip of the function's module and a small local package),
#: the most files in it, and the most bytes they may unpack to: the client builds within these, the
#: provider's sandbox refuses an archive outside them.
MAX_ARCHIVE_BYTES = 8 << 20
MAX_ARCHIVE_FILES = 1000
MAX_UNPACKED_BYTES = 64 << 20

_Ident = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")]


class FunctionParams(_Params):
    """The submitter's own Python function, shipped as source and run in a sandbox."""

    #: The code archive (a zip of source files) in the object store, pinned by its sha256.
    code: ObjectRef
    #: ``module:function`` inside the archive, e.g. ``saxpy:saxpy_sum`` or ``pkg.mod:f``.
    entry: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$", max_length=200
    )
    #: Keyword arguments, as JSON.
    args: dict[_Ident, JsonValue] = Field(default_factory=dict, max_length=64)
    #: Keyword arguments that are arrays: ``.npy`` objects in the object store.
    arrays: dict[_Ident, ObjectRef] = Field(default_factory=dict, max_length=32)
    #: The seed of ``ctx``'s random numbers (the same bits on NumPy and CuPy).
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    #: The submitter's guess of one call's seconds: the ETA before any call has been measured.
    expected_s: float = Field(default=0.0, ge=0.0, le=86400.0)

    @model_validator(mode="after")
    def _checked(self) -> FunctionParams:
        if self.code.size > MAX_ARCHIVE_BYTES:
            raise ValueError(f"the code archive is {self.code.size} bytes, over {MAX_ARCHIVE_BYTES}")
        both = sorted(set(self.args) & set(self.arrays))
        if both:
            raise ValueError(f"argument {both[0]!r} is given twice (in args and in arrays)")
        reserved = sorted({"xp", "ctx"} & (set(self.args) | set(self.arrays)))
        if reserved:
            raise ValueError(f"argument {reserved[0]!r} is reserved: the provider passes it")
        return self


def _estimate_function(p: FunctionParams) -> Estimate:
    # Nothing is known about a stranger's function but its arrays and the submitter's guess; the
    # runtime model learns its real duration from its first completions.
    mem = sum(ref.size for ref in p.arrays.values())
    return Estimate(fixed_seconds=p.expected_s, bytes_moved=float(mem), memory_bytes=mem)


def _estimate_matmul(p: MatmulParams) -> Estimate:
    size = _DTYPE_BYTES[p.dtype]
    return Estimate(
        flops=2.0 * p.n**3 * p.repeat,
        bytes_moved=3.0 * p.n * p.n * size * p.repeat + 2.0 * p.n * p.n * _GEN_BYTES,
        memory_bytes=3 * p.n * p.n * size,
        precision=p.dtype,
    )


def _estimate_fft(p: FftParams) -> Estimate:
    size = _DTYPE_BYTES[p.dtype]
    total = p.n * p.batch
    return Estimate(
        flops=5.0 * total * math.log2(p.n),
        bytes_moved=2.0 * total * size + 2.0 * total * _GEN_BYTES,
        memory_bytes=3 * total * size,
        precision="fp64" if p.dtype == "complex128" else "fp32",
    )


def _estimate_stream(p: ReductionParams | ElementwiseParams) -> Estimate:
    size = _DTYPE_BYTES[p.dtype]
    # Generating the seeded input dominates: a few integer ops per element.
    return Estimate(flops=12.0 * p.n, bytes_moved=3.0 * p.n * size, memory_bytes=3 * p.n * size, precision=p.dtype)


def _estimate_montecarlo(p: MonteCarloParams) -> Estimate:
    # Two generated coordinates per sample, then a compare and a count.
    return Estimate(flops=30.0 * p.samples, bytes_moved=p.samples * (16.0 + 2 * _GEN_BYTES), memory_bytes=48 * p.chunk)


def _estimate_stencil(p: StencilParams) -> Estimate:
    size = _DTYPE_BYTES[p.dtype]
    cells = p.n * p.n
    # A Jacobi step reads and writes the grid about eight times (shifted views, temporaries).
    return Estimate(
        flops=6.0 * cells * p.steps,
        bytes_moved=8.0 * cells * size * p.steps,
        memory_bytes=3 * cells * size,
        fixed_seconds=p.step_delay_s * p.steps,
        precision=p.dtype,
    )


def _estimate_kernel(p: CustomKernelParams) -> Estimate:
    threads = math.prod(p.grid) * math.prod(p.block)
    mem = 0
    for arg in p.args:
        if arg.kind == "array":
            count = arg.size or (len(arg.value) if isinstance(arg.value, list) else 0)
            if arg.ref is not None:
                count = max(count, arg.ref.size // 4)
            mem += count * 8
    return Estimate(flops=float(threads) * 10.0, bytes_moved=float(mem) * 2.0, memory_bytes=mem)


@dataclass(frozen=True, slots=True)
class WorkloadContract:
    """One workload as every party sees it: name, parameters, estimate, and what it needs."""

    name: str
    params: type[BaseModel]
    estimate: Callable[[Any], Estimate]
    #: "steps": reports fraction done as it goes; "none": only started and completed.
    progress: Literal["steps", "none"]
    requires_cuda: bool = False
    checkpoints: bool = False
    summary: str = ""
    #: How two providers' results of one task compare (``events.verification.agree``).
    compare: Compare = "tolerance"
    #: Result keys that are bookkeeping, not the result (ignored when comparing).
    ignore: frozenset[str] = frozenset()


def _contract(
    name: str,
    params: type[BaseModel],
    estimate: Callable[[Any], Estimate],
    progress: Literal["steps", "none"],
    *,
    compare: Compare = "tolerance",
    ignore: frozenset[str] = frozenset(),
    **kw: bool,
) -> WorkloadContract:
    summary = (params.__doc__ or "").strip().splitlines()[0]
    return WorkloadContract(name, params, estimate, progress, summary=summary, compare=compare, ignore=ignore, **kw)


WORKLOADS: dict[str, WorkloadContract] = {
    c.name: c
    for c in (
        _contract("noop", NoopParams, lambda p: Estimate(), "none", compare="none"),
        _contract("sleep", SleepParams, lambda p: Estimate(fixed_seconds=p.seconds), "steps", compare="none"),
        _contract("matmul", MatmulParams, _estimate_matmul, "steps"),
        _contract("fft", FftParams, _estimate_fft, "none"),
        _contract("reduction", ReductionParams, _estimate_stream, "none"),
        _contract("elementwise", ElementwiseParams, _estimate_stream, "none"),
        # Seeded integer hit counts: the same on every backend, bit for bit.
        _contract("montecarlo", MonteCarloParams, _estimate_montecarlo, "steps", compare="exact"),
        _contract(
            "stencil",
            StencilParams,
            _estimate_stencil,
            "steps",
            checkpoints=True,
            ignore=frozenset({"resumed_from_step", "steps_run"}),
        ),
        # The outputs' own digests and object names differ between providers; their values compare.
        _contract(
            "custom_kernel",
            CustomKernelParams,
            _estimate_kernel,
            "none",
            requires_cuda=True,
            ignore=frozenset({"sha256", "arrays"}),
        ),
        # A stranger's function: its value compares within the job's tolerance (``exact`` is a zero
        # tolerance). An array it returns stands in the value as its shape, dtype, sum and norm, which
        # compare; the object holding the arrays is named by its provider, so it does not.
        _contract(
            CODE_WORKLOAD, FunctionParams, _estimate_function, "steps", checkpoints=True, ignore=frozenset({"arrays"})
        ),
    )
}


def contract(name: str) -> WorkloadContract:
    """The contract of workload ``name``, or ``InvalidPayload`` naming the field ``workload``."""
    try:
        return WORKLOADS[name]
    except KeyError:
        known = ", ".join(sorted(WORKLOADS))
        raise InvalidPayload(f"unknown workload {name!r} (known: {known})", field="workload") from None


def validate_params(name: str, params: dict[str, JsonValue], *, field: str = "params") -> BaseModel:
    """Validate ``params`` against workload ``name``'s schema; errors name the field."""
    c = contract(name)
    try:
        # Strict JSON mode: "5" is not an int, but a JSON array is a fine tuple.
        return c.params.model_validate_json(json.dumps(params))
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidPayload(first["msg"], field=f"{field}.{loc}" if loc else field) from e
