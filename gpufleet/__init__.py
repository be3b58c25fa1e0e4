"""gpufleet: rent GPU compute across many independent providers.

The thin top-level package: the command line, the Python client, configuration and the wiring
that runs a whole network on one machine (``gpufleet up``). It is the only package that imports
all the others.

Its names load when first used: a submitted function's module does ``import gpufleet`` for the
decorator, and a provider's sandbox imports that module, so ``import gpufleet`` alone must not pull
in the client (NATS, the deciders) before anything needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpufleet.client import Client, FunctionJob, Job, JobStatus, TaskResult, TaskStatus, new_job_id
    from gpufleet.errors import (
        JobCancelledError,
        JobEndedError,
        JobFailedError,
        JobRejectedError,
        ResultIntegrityError,
        UnknownJobError,
    )
    from gpufleet.functions import Function, function

#: Public name -> the module that defines it.
_WHERE = {
    **dict.fromkeys(("Client", "FunctionJob", "Job", "JobStatus", "TaskResult", "TaskStatus", "new_job_id"), "client"),
    **dict.fromkeys(
        (
            "JobCancelledError",
            "JobEndedError",
            "JobFailedError",
            "JobRejectedError",
            "ResultIntegrityError",
            "UnknownJobError",
        ),
        "errors",
    ),
    **dict.fromkeys(("Function", "function"), "functions"),
}

__all__ = [
    "Client",
    "Function",
    "FunctionJob",
    "Job",
    "JobCancelledError",
    "JobEndedError",
    "JobFailedError",
    "JobRejectedError",
    "JobStatus",
    "ResultIntegrityError",
    "TaskResult",
    "TaskStatus",
    "UnknownJobError",
    "function",
    "new_job_id",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'gpufleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gpufleet.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
