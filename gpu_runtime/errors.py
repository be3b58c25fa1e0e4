"""Typed errors of the provider runtime; each carries the failure reason reported to the orchestrator."""

from __future__ import annotations

from events.errors import GpufleetError
from events.types import FailureReason

__all__ = ["BackendUnavailable", "RuntimeServiceError", "TaskCancelled", "WorkerStartError", "WorkloadError"]


class WorkloadError(GpufleetError):
    """A task could not run or failed; ``reason`` is the classified ``FailureReason``."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        self.reason: FailureReason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")

    def __reduce__(self) -> tuple[type[WorkloadError], tuple[FailureReason, str]]:
        return (type(self), (self.reason, self.message))


class TaskCancelled(WorkloadError):
    """The task saw its cancel flag (a revoked lease or a timeout) and stopped."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__("cancelled", message)

    def __reduce__(self) -> tuple[type[WorkloadError], tuple[FailureReason, str]]:
        return (WorkloadError, ("cancelled", self.message))


class BackendUnavailable(GpufleetError):
    """The requested array backend (CuPy with a GPU) is not available on this machine."""


class WorkerStartError(GpufleetError):
    """A worker process failed to start or to get ready."""


class RuntimeServiceError(GpufleetError):
    """The provider runtime service could not start or lost something it needs."""
