"""Admission: each submitter's quotas (``events.quotas``), checked before anything it sends costs more.

- ``arrival``: the intake rate, a token bucket per identity, checked as a message is taken from the
  intake stream, before it is decoded: a flood past the rate costs one recorded refusal per message.
- ``admit_job``: jobs in flight, tasks queued and object bytes, checked before a submission is
  handled, against the submitter's usage in the log (``actors.window.Usage``) plus the submissions
  admitted here that the log does not show yet (so a burst handled concurrently cannot overshoot).
- ``tasks_running`` is the scheduler's (``actors.scheduler``): nothing is refused for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actors.window import Usage
from events.errors import InvalidPayload
from events.quotas import QuotaConfig, QuotaName, TokenBuckets, quota_field

__all__ = ["ASKS_PER_S", "ASK_BURST", "Admission", "QuotaExceeded"]

#: Quota requests (``gf.api.<role>.<name>.quota``) each identity may make a second, and at once.
ASKS_PER_S = 10.0
ASK_BURST = 20


class QuotaExceeded(InvalidPayload):
    """A submission past one of its sender's quotas; ``field`` is ``quota.<name>``."""


class Admission:
    """Per-submitter quota state in one orchestrator (several orchestrators each hold their own)."""

    def __init__(self, quotas: QuotaConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.quotas = quotas or QuotaConfig()
        self._clock = clock
        #: Intake rates (by submitter) and quota requests (by identity).
        self._rates = TokenBuckets(clock, max_keys=100_000)
        self._asks = TokenBuckets(clock)
        #: Messages refused for their rate, by submitter.
        self.rate_refused: dict[str, int] = {}
        #: submitter -> job -> task count: admitted here, not in the log yet.
        self._admitted: dict[str, dict[str, int]] = {}
        #: (submitter, job) -> submissions of a job admitted here again while its first one was not in
        #: the log yet: each one's ``release`` (the job's decider refused a duplicate) must not free the
        #: first one's reservation.
        self._again: dict[tuple[str, str], int] = {}
        #: Bytes of each submitter's inputs in the object store (kept by the orchestrator).
        self.object_bytes: dict[str, int] = {}

    def arrival(self, role: str, name: str) -> QuotaExceeded | None:
        """One intake message from ``role``/``name`` arrives now: None when its rate allows it, else the
        refusal to record. Only submitters are rate-limited: providers' reports are never refused for
        their rate (their volume is bounded by the leases they hold)."""
        if role != "submitter":
            return None
        q = self.quotas.of(name)
        if self._rates.take(name, q.intake_per_s, q.intake_burst):
            return None
        self.rate_refused[name] = self.rate_refused.get(name, 0) + 1
        return self._refuse(
            "intake_per_s", f"{name} sends faster than {q.intake_per_s:g} messages a second (burst {q.intake_burst:,})"
        )

    def ask(self, role: str, name: str) -> bool:
        """May ``role``/``name`` ask for its quotas now? At most ``ASKS_PER_S`` a second (a burst of
        ``ASK_BURST``) per identity: the answers are cheap, but not free."""
        return self._asks.take(f"{role}.{name}", ASKS_PER_S, ASK_BURST)

    def admit_job(
        self, submitter: str, job_id: str, tasks: int, usage: Usage, known: Callable[[str], bool]
    ) -> QuotaExceeded | None:
        """May ``submitter`` submit job ``job_id`` of ``tasks`` tasks now? None: admitted (until
        ``release``, or until ``known(job_id)``: the log has it); else the refusal to record.
        ``usage`` is the submitter's usage as the log shows it."""
        q = self.quotas.of(submitter)
        mine = self._admitted.get(submitter)
        if mine:
            for seen in [j for j in mine if known(j)]:
                del mine[seen]
                self._again.pop((submitter, seen), None)
        if known(job_id):
            return None  # a submission again: the job's decider says what it is (a no-op, or refused)
        if mine is not None and job_id in mine:
            # The same job again before the log shows the first: the decider says what it is, and
            # its release (if refused) is its own, not the first one's.
            self._again[(submitter, job_id)] = self._again.get((submitter, job_id), 0) + 1
            return None
        pending = mine or {}
        jobs = usage.jobs + len(pending)
        if jobs >= q.jobs_in_flight:
            return self._refuse(
                "jobs_in_flight",
                f"{submitter} has {jobs:,} jobs in flight, the most it may have is {q.jobs_in_flight:,}",
            )
        queued = usage.waiting + sum(pending.values())
        if queued + tasks > q.tasks_queued:
            return self._refuse(
                "tasks_queued",
                f"{submitter} has {queued:,} tasks waiting; {tasks:,} more would pass its limit of {q.tasks_queued:,}",
            )
        stored = self.object_bytes.get(submitter, 0)
        if stored > q.object_bytes:
            return self._refuse(
                "object_bytes",
                f"{submitter}'s inputs in the object store take {stored:,} bytes, over its limit of {q.object_bytes:,}",
            )
        self._admitted.setdefault(submitter, {})[job_id] = tasks
        return None

    def release(self, submitter: str, job_id: str) -> None:
        """The admitted submission was not recorded (refused, or failed): it holds nothing."""
        again = self._again.get((submitter, job_id), 0)
        if again > 0:  # a duplicate's: the first submission of the job still holds its reservation
            if again == 1:
                del self._again[(submitter, job_id)]
            else:
                self._again[(submitter, job_id)] = again - 1
            return
        mine = self._admitted.get(submitter)
        if mine is not None:
            mine.pop(job_id, None)
            if not mine:
                del self._admitted[submitter]

    def stored(self, submitter: str, size: int) -> None:
        """``size`` more bytes of ``submitter``'s inputs are in the object store."""
        self.object_bytes[submitter] = self.object_bytes.get(submitter, 0) + size

    def _refuse(self, name: QuotaName, detail: str) -> QuotaExceeded:
        return QuotaExceeded(detail, field=quota_field(name))

    def report(self, role: str, name: str, usage_of: Callable[[str], Usage], busy: list[str]) -> dict[str, Any]:
        """The answer to a quota request from ``role``/``name``: a submitter's own limits and usage;
        for an auditor, the defaults and every busy submitter's (at most 1,000)."""
        if role == "submitter":
            return {"submitter": name, **self._of(name, usage_of(name))}
        if role != "auditor":
            return {"error": f"quotas are for submitters and auditors, not {role}s", "field": "role"}
        return {
            "default": self.quotas.default.model_dump(),
            "submitters": {who: self._of(who, usage_of(who)) for who in busy[:1000]},
        }

    def _of(self, who: str, u: Usage) -> dict[str, Any]:
        return {
            "limits": self.quotas.of(who).model_dump(),
            "usage": {
                "jobs_in_flight": u.jobs,
                "tasks_queued": u.waiting,
                "tasks_running": u.running,
                "object_bytes": self.object_bytes.get(who, 0),
                "tasks_created_waiting": u.materialised,
                "intake_refused": self.rate_refused.get(who, 0),
            },
        }
