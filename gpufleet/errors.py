"""The errors a submitter's code sees; all are ``GpufleetError``s with one readable line."""

from __future__ import annotations

from events.errors import GpufleetError

__all__ = [
    "JobCancelledError",
    "JobEndedError",
    "JobFailedError",
    "JobRejectedError",
    "ResultIntegrityError",
    "UnknownJobError",
]


class UnknownJobError(GpufleetError):
    """No job has this id in the log."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job {job_id!r}")
        self.job_id = job_id


class JobEndedError(GpufleetError):
    """The job ended without a result."""

    def __init__(self, job_id: str, status: str, reason: str, field: str | None = None) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"job {job_id} {status}{where}: {reason}" if reason else f"job {job_id} {status}")
        self.job_id = job_id
        self.status = status
        self.reason = reason
        self.field = field


class JobRejectedError(JobEndedError):
    """The job was refused; ``field`` names what was wrong."""


class JobFailedError(JobEndedError):
    """A task died (retries exhausted), or the deadline passed under the fail policy."""


class JobCancelledError(JobEndedError):
    """The job was cancelled, or its deadline passed under the cancel policy."""


class ResultIntegrityError(GpufleetError):
    """A result's bytes do not match the sha256 recorded in the log."""
