"""A provider's reputation: one rule, for the scheduler (``actors.world``) and the fleet view.

Reputation is a smoothed share of good outcomes over what a provider did with the leases it was
given (a Beta(1, 1) prior: a newcomer starts at 0.5, and the value is always in (0, 1))::

    reputation = (completions + 1) / (completions + faults + lost_leases + 2 * refused_reports + 2)

What counts against a provider, and only once:

* a **fault**: a failure it reports that is its own (``PROVIDER_FAULTS``: its worker crashed, a
  provider error). Failures the job causes (invalid parameters, a kernel error, out of memory) do
  not count; nor does a task's timeout, whose lease expiry below already counts;
* a **lost lease**: any lease that ended by expiring (not started in time, still running past the
  task's timeout, the provider lost, or the provider left while holding it);
* a **refused report**, counted twice: one naming a lease the sender never held, or carrying another
  identity's object. A late report for one of its own leases that has since ended is a race, not a
  fault (``TaskResultRejected.late``), and costs nothing.
"""

from __future__ import annotations

from events.task import TaskFailed, TaskLeaseExpired, TaskResultRejected

__all__ = ["PROVIDER_FAULTS", "counts_against", "reputation"]

#: Failure reasons a provider answers for.
PROVIDER_FAULTS = frozenset({"worker_crashed", "provider_error"})


def reputation(completions: int, faults: int, lost_leases: int, refused_reports: int) -> float:
    """The reputation formula (see the module docstring)."""
    return (completions + 1) / (completions + faults + lost_leases + 2 * refused_reports + 2)


def counts_against(e: TaskFailed | TaskLeaseExpired | TaskResultRejected) -> bool:
    """Whether this event counts against the provider it names (as a fault, lost lease or refused report)."""
    if isinstance(e, TaskFailed):
        return e.provider_id is not None and e.reason in PROVIDER_FAULTS
    if isinstance(e, TaskLeaseExpired):
        return True
    return not e.late
