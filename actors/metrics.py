"""The orchestrator's Prometheus metrics, read from its live objects when Prometheus scrapes.

The orchestrator keeps plain counts on its hot path (``leases_granted``, the shells' ``conflicts``,
the store's append histograms, the world's refusals); this collector names them. Only the intake
backlog is asked of the server, once per scrape (``refresh``). Register one with a
``events.metrics.MetricsRegistry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nats.js.errors
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from actors.orchestrator import INTAKE_CONSUMER, INTAKE_CONSUMERS
from events.metrics import Families, histogram_family
from events.store.topology import Topology
from events.types import utc_now

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator

__all__ = ["OrchestratorCollector", "intake_backlog"]


async def intake_backlog(js: Any, topology: Topology) -> tuple[int, float]:
    """Intake messages that have no recorded outcome yet (delivered or not), and the age in seconds of
    the oldest one (0 when none): from the consumers every orchestrator shares (one per sender role;
    on a network whose orchestrators predate them, the single one they shared), one request each (two
    when behind)."""
    infos = []
    for name in INTAKE_CONSUMERS.values():
        try:
            infos.append(await js.consumer_info(topology.intake_stream, name))
        except nats.js.errors.NotFoundError:
            continue
    if not infos:
        infos.append(await js.consumer_info(topology.intake_stream, INTAKE_CONSUMER))
    behind = 0
    oldest = None
    for info in infos:
        pending = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        if pending == 0:
            continue
        behind += pending
        # Every message of the consumer up to its ack floor has its outcome; its next one is the
        # oldest without.
        floor = int(info.ack_floor.stream_seq) if info.ack_floor is not None else 0
        subject = info.config.filter_subject or f"{topology.intake_prefix}.>"
        msg = await js.get_msg(topology.intake_stream, seq=floor + 1, subject=subject, next=True)
        if msg.time is not None and (oldest is None or msg.time < oldest):
            oldest = msg.time
    if behind == 0:
        return 0, 0.0
    age = (utc_now() - oldest).total_seconds() if oldest is not None else 0.0
    return behind, max(0.0, age)


class OrchestratorCollector(Families):
    """The figures of one orchestrator (``gpufleet_orchestrator_*``)."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        #: The last intake backlog asked for; None when the last ask failed (then it is left out).
        self.backlog: tuple[int, float] | None = None
        #: Queue classes seen so far: an emptied class reads 0 rather than vanishing from graphs.
        self._classes: set[tuple[str, str]] = set()

    async def refresh(self) -> None:
        """Ask the server for the intake backlog."""
        self.backlog = None
        self.backlog = await intake_backlog(self.orch.js, self.orch.topology)

    def _families(self, *, live: bool) -> list[Metric]:
        p = "gpufleet_orchestrator"
        lag_msgs = GaugeMetricFamily(
            f"{p}_intake_lag_messages", "Intake messages with no outcome recorded in the log yet (delivered or not)."
        )
        lag_s = GaugeMetricFamily(
            f"{p}_intake_lag_seconds", "Age of the oldest intake message with no outcome recorded yet (0: none)."
        )
        delivered = CounterMetricFamily(
            f"{p}_intake_delivered", "Intake messages JetStream delivered to this orchestrator."
        )
        depth = GaugeMetricFamily(
            f"{p}_queue_depth",
            "Tasks waiting for a provider, by the class of provider they need (backend, workload).",
            labels=["backend", "workload"],
        )
        leases = CounterMetricFamily(f"{p}_leases", "Leases this orchestrator granted.")
        decisions = CounterMetricFamily(
            f"{p}_scheduler_decisions", "Placement decisions the scheduler made (placed or set aside)."
        )
        conflicts = CounterMetricFamily(
            f"{p}_concurrency_conflicts",
            "Appends refused because another writer got there first (then reloaded and retried).",
            labels=["aggregate"],
        )
        quarantined = CounterMetricFamily(
            f"{p}_quarantined_events", "Stored events that did not decode and were skipped."
        )
        admission = CounterMetricFamily(
            f"{p}_admission_refusals",
            "Submissions refused, by submitter: at intake (malformed, a name reused) or when decided.",
            labels=["submitter", "stage"],
        )
        intake_refused = CounterMetricFamily(
            f"{p}_intake_refusals",
            "Intake messages refused (recorded in the log), by the sender's role.",
            labels=["role"],
        )
        position = GaugeMetricFamily(f"{p}_log_position", "The last event of the log this orchestrator applied.")
        leader = GaugeMetricFamily(f"{p}_leader", "1 while this orchestrator places work (leads), else 0.")
        o = self.orch
        append = histogram_family(
            f"{p}_append_seconds",
            "Seconds from sending an append to the log to its acknowledgement: one event, or a batch.",
            ["mode"],
            [(["single"], o.store.append_seconds), (["batch"], o.store.batch_append_seconds)] if live else [],
        )
        families: list[Metric] = [
            lag_msgs,
            lag_s,
            delivered,
            depth,
            leases,
            decisions,
            append,
            conflicts,
            quarantined,
            admission,
            intake_refused,
            position,
            leader,
        ]
        if not live:
            return families
        if self.backlog is not None:
            lag_msgs.add_metric([], self.backlog[0])
            lag_s.add_metric([], self.backlog[1])
        delivered.add_metric([], o.intake_delivered)
        queued = o.core.scheduler.pending_by_class()
        self._classes.update(queued)
        for backend, workload in sorted(self._classes):
            depth.add_metric([backend, workload], queued.get((backend, workload), 0))
        leases.add_metric([], o.leases_granted)
        decisions.add_metric([], o.core.scheduler.decisions)
        for shell in (o.jobs, o.tasks, o.providers):
            conflicts.add_metric([shell.kind], shell.conflicts)
        quarantined.add_metric([], len(o.quarantined))
        w = o.world
        roles: dict[str, int] = {}
        for sender, n in sorted(w.intake_refusals.items()):
            role, _, name = sender.partition(".")
            roles[role] = roles.get(role, 0) + n
            if role == "submitter":
                admission.add_metric([name, "intake"], n)
        for submitter, n in sorted(w.jobs_rejected.items()):
            admission.add_metric([submitter, "decision"], n)
        for role, n in sorted(roles.items()):
            intake_refused.add_metric([role], n)
        position.add_metric([], w.position)
        leader.add_metric([], 1.0 if o.leadership.leading else 0.0)
        return families
