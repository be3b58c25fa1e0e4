"""The projector's Prometheus metrics: its position, and how far it is behind the log.

The lag is asked of the store when Prometheus scrapes (``refresh``): the log's head, and when the
projector is behind, when the oldest event it has not folded yet was stored. A stalled projector
therefore shows a growing lag, not the last figure it happened to see.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from events.metrics import Families
from events.store.jetstream import JetStreamEventStore
from events.store.protocol import EventStore
from events.types import utc_now
from projections.projector import Projector

__all__ = ["ProjectorCollector", "projector_lag"]

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _parse_stamp(text: str) -> datetime | None:
    """A JetStream timestamp (RFC 3339, nanoseconds), to the microsecond; None if it is not one."""
    m = _STAMP.match(text.strip())
    if m is None:
        return None
    base, fraction, zone = m.groups()
    iso = f"{base}.{(fraction or '0')[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return None


async def _stored_at(store: EventStore, position: int) -> datetime | None:
    """When the event at ``position`` was stored (JetStream), or made (any other store)."""
    if isinstance(store, JetStreamEventStore):
        # One direct get, read raw: nothing is decoded, so an event that does not decode is not
        # reported (and quarantined) a second time here.
        async for raw in store.read_raw(after=position - 1, end=position, batch=1, window=1):
            return _parse_stamp(raw.headers.get("Nats-Time-Stamp", ""))
        return None
    async for env in store.read_all(after=position - 1):
        return env.time
    return None


async def projector_lag(store: EventStore, position: int) -> tuple[int, float | None]:
    """Events in the log after ``position``, and the age in seconds of the oldest of them (0 when
    none; None when its time cannot be read)."""
    behind = max(0, await store.head() - position)
    if behind == 0:
        return 0, 0.0
    at = await _stored_at(store, position + 1)
    return behind, None if at is None else max(0.0, (utc_now() - at).total_seconds())


class ProjectorCollector(Families):
    """The figures of one projector (``gpufleet_projector_*``)."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        #: The last lag asked for; None when the last ask failed (then it is left out).
        self.lag: tuple[int, float | None] | None = None

    async def refresh(self) -> None:
        """Ask the store for the log's head (and the oldest unfolded event's time)."""
        self.lag = None
        self.lag = await projector_lag(self.projector.events, self.projector.position)

    def _families(self, *, live: bool) -> list[Metric]:
        p = "gpufleet_projector"
        position = GaugeMetricFamily(f"{p}_position", "The last event of the log folded into the read models.")
        lag_events = GaugeMetricFamily(f"{p}_lag_events", "Events in the log the projector has not folded yet.")
        lag_s = GaugeMetricFamily(
            f"{p}_lag_seconds", "Age of the oldest event in the log the projector has not folded yet (0: none)."
        )
        applied = CounterMetricFamily(f"{p}_events_applied", "Events folded into the read models.")
        commits = CounterMetricFamily(f"{p}_commits", "Transactions that wrote the read models and their checkpoint.")
        quarantined = CounterMetricFamily(
            f"{p}_quarantined_events", "Stored events the read models skipped (did not decode, or a view failed)."
        )
        families: list[Metric] = [position, lag_events, lag_s, applied, commits, quarantined]
        if not live:
            return families
        pr = self.projector
        position.add_metric([], pr.position)
        if self.lag is not None:
            lag_events.add_metric([], self.lag[0])
            if self.lag[1] is not None:
                lag_s.add_metric([], self.lag[1])
        applied.add_metric([], pr.applied)
        commits.add_metric([], pr.batches)
        quarantined.add_metric([], pr.quarantined)
        return families
