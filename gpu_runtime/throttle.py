"""Progress throttling: at most ``max_per_second`` reports per task, the final one always let through."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ProgressThrottle"]


@dataclass
class ProgressThrottle:
    """Decides whether a progress report may go out now; pure, the caller passes the clock.

    Reports are spaced at least ``1 / max_per_second`` apart, so any window of one second holds at
    most ``max_per_second`` of them; a ``final`` report (100% done, or the last word before a
    failure) always passes.
    """

    max_per_second: float = 2.0
    _last: float | None = None

    def __post_init__(self) -> None:
        if self.max_per_second <= 0:
            raise ValueError("max_per_second must be positive")

    @property
    def interval(self) -> float:
        """The least spacing between two non-final reports, seconds."""
        return 1.0 / self.max_per_second

    def ready(self, now: float) -> bool:
        """True when a non-final report would be allowed at ``now`` (nothing is recorded)."""
        return self._last is None or now - self._last >= self.interval

    def allow(self, now: float, *, final: bool = False) -> bool:
        """True, and the report is counted, when one may be sent at ``now``."""
        if final or self.ready(now):
            self._last = now
            return True
        return False
