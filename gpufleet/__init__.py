"""gpufleet: rent GPU compute across many independent providers.

The thin top-level package: the command line, the Python client, configuration and the wiring
that runs a whole network on one machine (``gpufleet up``). It is the only package that imports
all the others.
"""

from gpufleet.client import Client, Job, JobStatus, TaskResult, TaskStatus, new_job_id
from gpufleet.errors import (
    JobCancelledError,
    JobEndedError,
    JobFailedError,
    JobRejectedError,
    ResultIntegrityError,
    UnknownJobError,
)

__all__ = [
    "Client",
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
    "new_job_id",
]
