"""Metering: what one attempt may be billed, and what that costs. One rule, imported by every side.

The task decider bills with :func:`billable_ms`, the job decider prices with :func:`metered_amount`,
and the ledger view and the auditor check the log with the same two functions, so the write side,
the read side and the audit cannot disagree about a bill.

The network bills what it observed, not what a provider says: an attempt's GPU time is at most the
time from the lease's start to the accepted completion (both stamped by the orchestrator), and at
most the task's timeout. A provider's own figure can only lower the bill (a provider that reports
less time than its lease lasted, say because it queued the task behind another, is taken at its
word); it can never raise it.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["billable_ms", "metered_amount", "observed_ms"]


def observed_ms(leased_at: datetime, completed_at: datetime) -> int:
    """Whole milliseconds from a lease's start to its accepted completion (0 if the clock went back)."""
    delta = completed_at - leased_at
    # Integer arithmetic on the timedelta: no float rounding can add a millisecond.
    return max(0, (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) // 1000)


def billable_ms(reported_ms: int, leased_at: datetime, completed_at: datetime, timeout_s: float) -> int:
    """The GPU milliseconds an attempt is billed: the provider's figure, capped by what was observed.

    ``min(reported, observed from lease to completion, the task's timeout)``, never negative.
    """
    cap = min(observed_ms(leased_at, completed_at), int(timeout_s * 1000))
    return max(0, min(reported_ms, cap))


def metered_amount(gpu_ms: int, price_micros: int) -> int:
    """What ``gpu_ms`` of GPU time costs at ``price_micros`` per GPU-second: rounded up to a micro.

    Integers only: no float anywhere in money.
    """
    return -(-gpu_ms * price_micros // 1000)
