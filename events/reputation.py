"""A provider's reputation: one rule, for the scheduler (``actors.world``) and the fleet view.

Reputation is a smoothed share of good outcomes over what a provider did with the leases it was
given (a Beta(1, 1) prior: a newcomer starts at 0.5, and the value is always in (0, 1))::

    reputation = (completions + 1) / (completions + faults + lost_leases + 2 * (refused_reports + invalid_results) + 2)

What counts against a provider, and only once:

* a **fault**: a failure it reports that is its own (``PROVIDER_FAULTS``: its worker crashed, a
  provider error). Failures the job causes (invalid parameters, a kernel error, out of memory) do
  not count; nor does a task's timeout, whose lease expiry below already counts;
* a **lost lease**: any lease that ended by expiring (not started in time, still running past the
  task's timeout, the provider lost, or the provider left while holding it);
* a **refused report**, counted twice: one naming a lease the sender never held, or carrying another
  identity's object. A late report for one of its own leases that has since ended is a race, not a
  fault (``TaskResultRejected.late``), and costs nothing;
* an **invalid result**, counted twice: a result that verification found disagreeing with the
  canonical one (``TaskResultJudged``, verdict ``invalid``).

A completion is an unverified task's ``TaskCompleted``, or a result judged ``valid``: a verified
task's ``TaskCompleted`` (``verified_by > 0``) is not counted again.

**Trust** (``consecutive_valid``) is the number of results judged valid since the provider's last
invalid one: what the spot-check probability is computed from (``events.verification``).
"""

from __future__ import annotations

from dataclasses import dataclass

from events.task import TaskFailed, TaskLeaseExpired, TaskResultJudged, TaskResultRejected

__all__ = ["PROVIDER_FAULTS", "Record", "counts_against", "reputation"]

#: Failure reasons a provider answers for.
PROVIDER_FAULTS = frozenset({"worker_crashed", "provider_error"})


def reputation(
    completions: int, faults: int, lost_leases: int, refused_reports: int, invalid_results: int = 0
) -> float:
    """The reputation formula (see the module docstring)."""
    return (completions + 1) / (completions + faults + lost_leases + 2 * (refused_reports + invalid_results) + 2)


@dataclass(slots=True)
class Record:
    """A provider's record, as the scheduler and the fleet view both keep it."""

    completed: int = 0
    failed: int = 0
    expired: int = 0
    refused: int = 0
    invalid: int = 0
    consecutive_valid: int = 0

    @property
    def value(self) -> float:
        """Its reputation: newcomers start at 0.5."""
        return reputation(self.completed, self.failed, self.expired, self.refused, self.invalid)

    def judged(self, e: TaskResultJudged) -> None:
        """A verdict on one of its results."""
        if e.verdict == "valid":
            self.completed += 1
            self.consecutive_valid += 1
        elif e.verdict == "invalid":
            self.invalid += 1
            self.consecutive_valid = 0


def counts_against(e: TaskFailed | TaskLeaseExpired | TaskResultRejected) -> bool:
    """Whether this event counts against the provider it names (as a fault, lost lease or refused report)."""
    if isinstance(e, TaskFailed):
        return e.provider_id is not None and e.reason in PROVIDER_FAULTS
    if isinstance(e, TaskLeaseExpired):
        return True
    return not e.late
