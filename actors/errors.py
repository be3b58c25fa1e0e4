"""Typed domain errors: why a command was refused."""

from __future__ import annotations

from events.errors import GpufleetError

__all__ = [
    "DomainError",
    "DuplicateJob",
    "InvalidTransition",
    "NotYours",
    "UnknownAggregate",
]


class DomainError(GpufleetError):
    """A command is not valid in the aggregate's current state; nothing was appended."""


class InvalidTransition(DomainError):
    """The command does not apply to the aggregate in its current state."""

    def __init__(self, aggregate: str, state: str, command: str) -> None:
        super().__init__(f"{aggregate} is {state}: cannot {command}")
        self.aggregate = aggregate
        self.state = state
        self.command = command


class UnknownAggregate(DomainError):
    """The command targets an aggregate that does not exist."""

    def __init__(self, kind: str, aggregate_id: str) -> None:
        super().__init__(f"unknown {kind} {aggregate_id!r}")
        self.kind = kind
        self.aggregate_id = aggregate_id


class DuplicateJob(DomainError):
    """A job id was submitted again with a different spec."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job id {job_id!r} is already used by a different job")
        self.job_id = job_id


class NotYours(DomainError):
    """The sender's credentials do not own what the command touches, or a body names someone else.

    ``field`` names the offending part of the input, as ``InvalidPayload`` does.
    """

    def __init__(self, problem: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.problem = problem
        self.field = field
